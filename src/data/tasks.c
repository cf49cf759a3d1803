/* Task documents and prompts, built the way lm-evaluation-harness v0.4.x builds
 * them (reference/formats-and-eval.md 1.2-1.6). */
#include "tasks.h"

#include <stdio.h>
#include <stdlib.h>

#include "jsonl.h"

/* ---- registry ------------------------------------------------------------ */

static const char *const task_names[RQ_TASK_COUNT] = {"piqa",      "arc_easy",   "arc_challenge",
                                                      "hellaswag", "winogrande", "gsm8k"};

const char *rq_task_known_names(void) { return "piqa, arc_easy, arc_challenge, hellaswag, winogrande, gsm8k"; }

const char *rq_task_name(rq_task_id id) {
    return (unsigned)id < RQ_TASK_COUNT ? task_names[id] : NULL;
}

rq_task_kind rq_task_kind_of(rq_task_id id) {
    return id == RQ_TASK_GSM8K ? RQ_TASK_GENERATE : RQ_TASK_MULTIPLE_CHOICE;
}

rq_status rq_task_lookup(const char *name, rq_task_id *out, rq_err *err) {
    for (int i = 0; i < RQ_TASK_COUNT; i++) {
        if (name && strcmp(name, task_names[i]) == 0) {
            *out = (rq_task_id)i;
            return RQ_OK;
        }
    }
    return RQ_FAIL(err, RQ_ERR_ARG, "unknown task '%s' (known tasks: %s)", name ? name : "(null)",
                   rq_task_known_names());
}

/* ---- string building --------------------------------------------------------- */

/* Hand over the built string (never NULL on success, "" when nothing was appended). */
static rq_status sb_finish(rq_buf *sb, char **out, rq_err *err) {
    return rq_buf_finish(sb, out, NULL, "a prompt string", err);
}

static rq_status concat3(const char *a, const char *b, const char *c, char **out, rq_err *err) {
    rq_buf sb = {0};
    rq_buf_puts(&sb, a);
    rq_buf_puts(&sb, b);
    rq_buf_puts(&sb, c);
    return sb_finish(&sb, out, err);
}

static bool is_py_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

/* Python's str.strip() for ASCII-range whitespace. Non-ASCII spaces (U+00A0, ...)
 * are left alone; none of the datasets puts them at the ends of a field. */
static rq_status strip_copy(const char *s, char **out, rq_err *err) {
    size_t n = strlen(s), a = 0;
    while (a < n && is_py_space((unsigned char)s[a])) a++;
    while (n > a && is_py_space((unsigned char)s[n - 1])) n--;
    rq_buf sb = {0};
    rq_buf_append(&sb, s + a, n - a);
    return sb_finish(&sb, out, err);
}

size_t rq_utf8_length(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) n++;
    return n;
}

/* ---- multiple-choice documents --------------------------------------------- */

static void free_strings(char **v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void mc_doc_free(rq_mc_doc *d) {
    free_strings(d->contexts, d->n_contexts);
    free_strings(d->continuations, d->n_continuations);
    free_strings(d->choice_texts, d->n_choices);
    memset(d, 0, sizeof *d);
}

void rq_mc_task_free(rq_mc_task *task) {
    if (!task) return;
    for (size_t i = 0; i < task->n_docs; i++) mc_doc_free(&task->docs[i]);
    free(task->docs);
    memset(task, 0, sizeof *task);
}

static rq_status mc_doc_alloc(rq_mc_doc *d, size_t n_choices, size_t n_contexts, size_t n_continuations,
                              bool with_choice_texts, rq_err *err) {
    memset(d, 0, sizeof *d);
    d->n_choices = n_choices;
    d->n_contexts = n_contexts;
    d->n_continuations = n_continuations;
    d->contexts = rq_calloc(n_contexts, sizeof(char *), err);
    d->continuations = rq_calloc(n_continuations, sizeof(char *), err);
    if (with_choice_texts) d->choice_texts = rq_calloc(n_choices, sizeof(char *), err);
    if (!d->contexts || !d->continuations || (with_choice_texts && !d->choice_texts)) {
        mc_doc_free(d);
        return RQ_ERR_NOMEM;
    }
    return RQ_OK;
}

/* Append a zeroed document to the task and return it. */
static rq_status task_push(rq_mc_task *t, size_t *cap, rq_mc_doc **out, rq_err *err) {
    if (t->n_docs == *cap) {
        size_t ncap = *cap ? *cap * 2 : 256, bytes;
        if (!rq_mul_ok(ncap, sizeof(rq_mc_doc), &bytes)) return RQ_FAIL(err, RQ_ERR_NOMEM, "too many documents");
        rq_mc_doc *p = realloc(t->docs, bytes);
        if (!p) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for %zu documents", ncap);
        t->docs = p;
        *cap = ncap;
    }
    *out = &t->docs[t->n_docs];
    memset(*out, 0, sizeof **out);
    return RQ_OK;
}

/* ---- JSON field access with located messages --------------------------------- */

typedef struct json_where {
    const char *file;
    size_t line;
} json_where;

static rq_status json_string(const cJSON *obj, const char *key, const char *field, json_where w,
                             const char **out, rq_err *err) {
    const cJSON *item = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!cJSON_IsString(item) || !item->valuestring)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: field '%s' is missing or not a string", w.file, w.line, field);
    *out = item->valuestring;
    return RQ_OK;
}

static rq_status json_require_object(const cJSON *v, const char *field, json_where w, rq_err *err) {
    if (!cJSON_IsObject(v))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: %s is missing or not a JSON object", w.file, w.line, field);
    return RQ_OK;
}

/* Labels files (piqa valid-labels.lst, winogrande dev-labels.lst): one small
 * integer per line. Blank trailing lines are tolerated, nothing else. */
typedef struct label_list {
    int *values;
    size_t count;
} label_list;

static rq_status labels_parse(const char *name, const char *text, size_t size, int lo, int hi, label_list *out,
                              rq_err *err) {
    memset(out, 0, sizeof *out);
    size_t lines = 1;
    for (size_t i = 0; i < size; i++) lines += text[i] == '\n';
    out->values = rq_calloc(lines, sizeof(int), err);
    if (!out->values) return RQ_ERR_NOMEM;
    size_t pos = 0, line_no = 0;
    bool saw_blank = false;
    while (pos < size) {
        const char *nl = memchr(text + pos, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - (text + pos)) : size - pos;
        const char *s = text + pos;
        pos += len + (nl ? 1 : 0);
        line_no++;
        size_t a = 0, b = len;
        while (a < b && is_py_space((unsigned char)s[a])) a++;
        while (b > a && is_py_space((unsigned char)s[b - 1])) b--;
        if (a == b) {
            saw_blank = true;
            continue;
        }
        if (saw_blank) {
            free(out->values);
            memset(out, 0, sizeof *out);
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: label after a blank line", name, line_no);
        }
        if (b - a != 1 || s[a] < '0' + lo || s[a] > '0' + hi) {
            free(out->values);
            memset(out, 0, sizeof *out);
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: label '%.*s' is not an integer in %d..%d", name, line_no,
                           (int)(b - a > 32 ? 32 : b - a), s + a, lo, hi);
        }
        out->values[out->count++] = s[a] - '0';
    }
    return RQ_OK;
}

/* Iterate the JSON objects of an in-memory JSONL text (evaluation data: a bad
 * line stops loading). */
typedef rq_status (*jsonl_record_fn)(void *ctx, const cJSON *obj, size_t record, json_where w, rq_err *err);

static rq_status jsonl_for_each(const char *name, const char *data, size_t size, jsonl_record_fn fn, void *ctx,
                                size_t *n_records, rq_err *err) {
    rq_jsonl_reader reader;
    RQ_TRY(rq_jsonl_open_memory(&reader, name, data, size, RQ_JSONL_STOP_ON_BAD_LINE, err));
    size_t record = 0;
    rq_status st = RQ_OK;
    for (;;) {
        cJSON *obj = NULL;
        st = rq_jsonl_next(&reader, &obj, err);
        if (st != RQ_OK || !obj) break;
        json_where w = {name, reader.line_no};
        st = json_require_object(obj, "the line", w, err);
        if (st == RQ_OK) st = fn(ctx, obj, record, w, err);
        cJSON_Delete(obj);
        if (st != RQ_OK) break;
        record++;
    }
    rq_jsonl_close(&reader);
    if (n_records) *n_records = record;
    return st;
}

/* ---- ARC ------------------------------------------------------------------------ */

#define MAX_CHOICES 16

typedef struct mc_builder {
    rq_mc_task *task;
    size_t cap;
    const label_list *labels; /* piqa / winogrande */
    const char *labels_name;
} mc_builder;

static rq_status arc_record(void *vctx, const cJSON *obj, size_t record, json_where w, rq_err *err) {
    mc_builder *b = vctx;
    const cJSON *question = cJSON_GetObjectItemCaseSensitive(obj, "question");
    RQ_TRY(json_require_object(question, "field 'question'", w, err));
    const char *stem, *answer_key;
    RQ_TRY(json_string(question, "stem", "question.stem", w, &stem, err));
    RQ_TRY(json_string(obj, "answerKey", "answerKey", w, &answer_key, err));
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(question, "choices");
    if (!cJSON_IsArray(choices))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: field 'question.choices' is missing or not an array", w.file,
                       w.line);
    int n = cJSON_GetArraySize(choices);
    if (n < 2 || n > MAX_CHOICES)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: field 'question.choices' has %d entries, expected 2..%d",
                       w.file, w.line, n, MAX_CHOICES);
    const char *texts[MAX_CHOICES], *labels[MAX_CHOICES];
    int gold = -1;
    for (int i = 0; i < n; i++) {
        const cJSON *c = cJSON_GetArrayItem(choices, i);
        char field[64];
        snprintf(field, sizeof field, "question.choices[%d].text", i);
        RQ_TRY(json_string(c, "text", field, w, &texts[i], err));
        snprintf(field, sizeof field, "question.choices[%d].label", i);
        RQ_TRY(json_string(c, "label", field, w, &labels[i], err));
        for (int j = 0; j < i; j++)
            if (strcmp(labels[j], labels[i]) == 0)
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: choice label '%.32s' appears twice", w.file, w.line,
                               labels[i]);
        /* lm-eval: gold = choices.label.index(answerKey); labels may be A-E or 1-4 */
        if (strcmp(labels[i], answer_key) == 0) gold = i;
    }
    if (gold < 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: answerKey '%.32s' is not one of the %d choice labels", w.file,
                       w.line, answer_key, n);

    rq_mc_doc *d;
    RQ_TRY(task_push(b->task, &b->cap, &d, err));
    RQ_TRY(mc_doc_alloc(d, (size_t)n, 1, (size_t)n, true, err));
    b->task->n_docs++; /* owned by the task from here: freed with it on a later error */
    d->gold = (size_t)gold;
    d->source_line = w.line;
    (void)record;
    RQ_TRY(concat3("Question: ", stem, "\nAnswer:", &d->contexts[0], err));
    for (int i = 0; i < n; i++) {
        RQ_TRY(concat3(" ", texts[i], "", &d->continuations[i], err));
        RQ_TRY(concat3("", texts[i], "", &d->choice_texts[i], err));
    }
    return RQ_OK;
}

static rq_status finish_task(rq_status st, rq_mc_task *out) {
    if (st != RQ_OK) rq_mc_task_free(out);
    return st;
}

static rq_status require_docs(const char *name, rq_mc_task *out, rq_err *err) {
    if (out->n_docs == 0) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: no documents", name);
    return RQ_OK;
}

rq_status rq_arc_parse(const char *name, const char *jsonl, size_t size, rq_task_id id, rq_mc_task *out,
                       rq_err *err) {
    memset(out, 0, sizeof *out);
    if (id != RQ_TASK_ARC_EASY && id != RQ_TASK_ARC_CHALLENGE)
        return RQ_FAIL(err, RQ_ERR_ARG, "rq_arc_parse: task id %d is not arc_easy or arc_challenge", (int)id);
    out->id = id;
    mc_builder b = {.task = out};
    rq_status st = jsonl_for_each(name, jsonl, size, arc_record, &b, NULL, err);
    if (st == RQ_OK) st = require_docs(name, out, err);
    return finish_task(st, out);
}

/* ---- PIQA ----------------------------------------------------------------------- */

static rq_status piqa_record(void *vctx, const cJSON *obj, size_t record, json_where w, rq_err *err) {
    mc_builder *b = vctx;
    const char *goal, *sol1, *sol2;
    RQ_TRY(json_string(obj, "goal", "goal", w, &goal, err));
    RQ_TRY(json_string(obj, "sol1", "sol1", w, &sol1, err));
    RQ_TRY(json_string(obj, "sol2", "sol2", w, &sol2, err));
    if (record >= b->labels->count)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: record %zu has no label (%s has %zu labels)", w.file, w.line,
                       record + 1, b->labels_name, b->labels->count);
    rq_mc_doc *d;
    RQ_TRY(task_push(b->task, &b->cap, &d, err));
    RQ_TRY(mc_doc_alloc(d, 2, 1, 2, true, err));
    b->task->n_docs++;
    d->gold = (size_t)b->labels->values[record];
    d->source_line = w.line;
    /* Fields are used as they are (no strip), as the HF piqa loader yields them. */
    RQ_TRY(concat3("Question: ", goal, "\nAnswer:", &d->contexts[0], err));
    const char *sols[2] = {sol1, sol2};
    for (int i = 0; i < 2; i++) {
        RQ_TRY(concat3(" ", sols[i], "", &d->continuations[i], err));
        RQ_TRY(concat3("", sols[i], "", &d->choice_texts[i], err));
    }
    return RQ_OK;
}

/* A JSONL file whose gold answers sit in a separate labels file (one per line,
 * values lo..hi): records and labels must pair up one to one. */
static rq_status labelled_parse(rq_task_id id, const char *name, const char *jsonl, size_t jsonl_size,
                                const char *labels_name, const char *labels, size_t labels_size, int lo, int hi,
                                jsonl_record_fn record,
                                rq_mc_task *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    out->id = id;
    label_list ll;
    RQ_TRY(labels_parse(labels_name, labels, labels_size, lo, hi, &ll, err));
    mc_builder b = {.task = out, .labels = &ll, .labels_name = labels_name};
    size_t n_records = 0;
    rq_status st = jsonl_for_each(name, jsonl, jsonl_size, record, &b, &n_records, err);
    if (st == RQ_OK && n_records != ll.count)
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s has %zu labels but %s has %zu records", labels_name, ll.count, name,
                     n_records);
    if (st == RQ_OK) st = require_docs(name, out, err);
    free(ll.values);
    return finish_task(st, out);
}

rq_status rq_piqa_parse(const char *name, const char *jsonl, size_t jsonl_size, const char *labels_name,
                        const char *labels, size_t labels_size, rq_mc_task *out, rq_err *err) {
    return labelled_parse(RQ_TASK_PIQA, name, jsonl, jsonl_size, labels_name, labels, labels_size, 0, 1, piqa_record,
                          out, err);
}

/* ---- WinoGrande ------------------------------------------------------------------- */

static rq_status winogrande_record(void *vctx, const cJSON *obj, size_t record, json_where w, rq_err *err) {
    mc_builder *b = vctx;
    const cJSON *options = cJSON_GetObjectItemCaseSensitive(obj, "context_options");
    if (!cJSON_IsArray(options) || cJSON_GetArraySize(options) != 2)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: field 'context_options' is missing or not an array of 2 strings",
                       w.file, w.line);
    const char *ctx[2];
    for (int i = 0; i < 2; i++) {
        const cJSON *c = cJSON_GetArrayItem(options, i);
        if (!cJSON_IsString(c) || !c->valuestring)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: field 'context_options[%d]' is not a string", w.file, w.line,
                           i);
        ctx[i] = c->valuestring;
    }
    const char *continuation;
    RQ_TRY(json_string(obj, "continuation", "continuation", w, &continuation, err));
    const cJSON *gold = cJSON_GetObjectItemCaseSensitive(obj, "gold");
    if (!cJSON_IsNumber(gold) || (gold->valuedouble != 0.0 && gold->valuedouble != 1.0))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: field 'gold' is missing or not 0/1", w.file, w.line);
    if (record >= b->labels->count)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: record %zu has no label (%s has %zu labels)", w.file, w.line,
                       record + 1, b->labels_name, b->labels->count);
    int label = b->labels->values[record]; /* original answer: "1" -> option1, "2" -> option2 */
    if ((int)gold->valuedouble + 1 != label)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: gold %d disagrees with %s line %zu (answer %d)", w.file, w.line,
                       (int)gold->valuedouble, b->labels_name, record + 1, label);
    rq_mc_doc *d;
    RQ_TRY(task_push(b->task, &b->cap, &d, err));
    RQ_TRY(mc_doc_alloc(d, 2, 2, 1, false, err));
    b->task->n_docs++;
    d->gold = (size_t)(label - 1);
    d->source_line = w.line;
    /* lm-eval: contexts sentence[:idx] + option_i (llm-foundry's context_options
     * are exactly that), continuation " " + sentence[idx+1:].strip(). The strip
     * is applied again in case the converted text kept a space. */
    for (int i = 0; i < 2; i++) RQ_TRY(concat3("", ctx[i], "", &d->contexts[i], err));
    char *stripped;
    RQ_TRY(strip_copy(continuation, &stripped, err));
    rq_status st = concat3(" ", stripped, "", &d->continuations[0], err);
    free(stripped);
    return st;
}

rq_status rq_winogrande_parse(const char *name, const char *jsonl, size_t jsonl_size, const char *labels_name,
                              const char *labels, size_t labels_size, rq_mc_task *out, rq_err *err) {
    return labelled_parse(RQ_TASK_WINOGRANDE, name, jsonl, jsonl_size, labels_name, labels, labels_size, 1, 2,
                          winogrande_record, out, err);
}

/* ---- HellaSwag ---------------------------------------------------------------------- */

rq_status rq_hellaswag_clean(const char *text, char **out, rq_err *err) {
    char *stripped;
    RQ_TRY(strip_copy(text, &stripped, err));
    /* 1. " [title]" -> ". " */
    rq_buf a = {0};
    for (const char *s = stripped; *s;) {
        if (strncmp(s, " [title]", 8) == 0) {
            rq_buf_puts(&a, ". ");
            s += 8;
        } else {
            rq_buf_append(&a, s++, 1);
        }
    }
    free(stripped);
    char *titled;
    RQ_TRY(sb_finish(&a, &titled, err));
    /* 2. re.sub("\\[.*?\\]", "", t): from each "[", delete through the first "]"
     * after it; "." does not cross a newline, and an unclosed "[" stays. */
    rq_buf b = {0};
    for (const char *s = titled; *s;) {
        if (*s == '[') {
            const char *close = s + 1;
            while (*close && *close != ']' && *close != '\n') close++;
            if (*close == ']') {
                s = close + 1;
                continue;
            }
        }
        rq_buf_append(&b, s++, 1);
    }
    free(titled);
    char *unbracketed;
    RQ_TRY(sb_finish(&b, &unbracketed, err));
    /* 3. str.replace("  ", " "): non-overlapping, left to right, one pass */
    rq_buf c = {0};
    for (const char *s = unbracketed; *s;) {
        if (s[0] == ' ' && s[1] == ' ') {
            rq_buf_append(&c, " ", 1);
            s += 2;
        } else {
            rq_buf_append(&c, s++, 1);
        }
    }
    free(unbracketed);
    return sb_finish(&c, out, err);
}

/* What the 6-line file already did and what is left (datasets/README.md has
 * the same note). llama.cpp's extractor wrote clean-ish(activity_label + ": " +
 * ctx) where ctx = ctx_a + " " + ctx_b, without lm-eval's ctx_b.capitalize(),
 * and removed only the [header]/[step]/[substeps]/[title] tags.
 * Left for us:
 *  - capitalize ctx_b. ctx_a/ctx_b are no longer separate; ctx_b is the unfinished
 *    last sentence, so it is taken as the text after the last ". ", "! " or "? "
 *    when the context does not end with closing punctuation (ctx_b empty). In
 *    the validation file no such fragment has an upper-case letter after its
 *    first character, so str.capitalize's lower-casing of the rest is a no-op
 *    there and only the first letter changes ("... roof. he" -> "... roof. He").
 *  - lm-eval's clean() again (bracket spans such as "[www.x.org]" the
 *    extractor kept; a second strip and double-space pass). */
rq_status rq_hellaswag_query_from_line(const char *line, char **out, rq_err *err) {
    *out = NULL;
    const char *sep = strstr(line, ": ");
    if (!sep) return RQ_FAIL(err, RQ_ERR_FORMAT, "hellaswag query line has no \"<activity label>: \" prefix");
    char *ctx = rq_strdup(sep + 2, err);
    if (!ctx) return RQ_ERR_NOMEM;
    size_t n = strlen(ctx);
    while (n > 0 && ctx[n - 1] == ' ') n--;
    char last = n ? ctx[n - 1] : '.';
    bool ends_sentence = strchr(".!?\"')]", last) != NULL;
    if (!ends_sentence) {
        size_t start = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if ((ctx[i] == '.' || ctx[i] == '!' || ctx[i] == '?') && ctx[i + 1] == ' ') start = i + 2;
        /* Python's str.capitalize on the fragment, for ASCII letters */
        if (start < n && ctx[start] >= 'a' && ctx[start] <= 'z') ctx[start] = (char)(ctx[start] - 'a' + 'A');
        for (size_t i = start + 1; i < n; i++)
            if (ctx[i] >= 'A' && ctx[i] <= 'Z') ctx[i] = (char)(ctx[i] - 'A' + 'a');
    }
    rq_buf sb = {0};
    rq_buf_append(&sb, line, (size_t)(sep - line) + 2);
    rq_buf_puts(&sb, ctx);
    free(ctx);
    char *query;
    RQ_TRY(sb_finish(&sb, &query, err));
    rq_status st = rq_hellaswag_clean(query, out, err);
    free(query);
    return st;
}

rq_status rq_hellaswag_parse(const char *name, const char *text, size_t size, rq_mc_task *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    out->id = RQ_TASK_HELLASWAG;
    if (memchr(text, 0, size)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: contains a NUL byte", name);
    if (!rq_utf8_valid(text, size)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not valid UTF-8", name);
    char *copy = malloc(size + 1);
    if (!copy) return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory", name);
    memcpy(copy, text, size);
    copy[size] = 0;
    size_t cap = 0, line_no = 0;
    rq_status st = RQ_OK;
    char *p = copy, *end = copy + size;
    char *group[6];
    int in_group = 0;
    while (st == RQ_OK && p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line_end = nl ? nl : end;
        if (line_end > p && line_end[-1] == '\r') line_end[-1] = 0;
        *line_end = 0;
        group[in_group++] = p;
        line_no++;
        p = nl ? nl + 1 : end;
        if (in_group < 6) continue;
        in_group = 0;
        size_t first_line = line_no - 5;
        const char *label = group[1];
        if (!(label[0] >= '0' && label[0] <= '3' && label[1] == 0)) {
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: label '%.16s' is not 0..3 (expected 6 lines per task: query, "
                         "label, 4 endings)", name, first_line + 1, label);
            break;
        }
        rq_mc_doc *d;
        if ((st = task_push(out, &cap, &d, err)) != RQ_OK) break;
        if ((st = mc_doc_alloc(d, 4, 1, 4, true, err)) != RQ_OK) break;
        out->n_docs++;
        d->gold = (size_t)(label[0] - '0');
        d->source_line = first_line;
        st = rq_hellaswag_query_from_line(group[0], &d->contexts[0], err);
        if (st != RQ_OK) {
            rq_err_prefix(err, "%s:%zu: ", name, first_line);
            break;
        }
        for (int i = 0; i < 4 && st == RQ_OK; i++) {
            st = rq_hellaswag_clean(group[2 + i], &d->choice_texts[i], err);
            if (st == RQ_OK) st = concat3(" ", d->choice_texts[i], "", &d->continuations[i], err);
        }
    }
    if (st == RQ_OK && in_group != 0)
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %zu lines is not a multiple of 6 (query, label, 4 endings per task)",
                     name, line_no);
    free(copy);
    if (st == RQ_OK) st = require_docs(name, out, err);
    return finish_task(st, out);
}

/* ---- gsm8k -------------------------------------------------------------------------------- */

void rq_gsm8k_set_free(rq_gsm8k_set *set) {
    if (!set) return;
    for (size_t i = 0; i < set->n_docs; i++) {
        free(set->docs[i].question);
        free(set->docs[i].answer);
    }
    free(set->docs);
    memset(set, 0, sizeof *set);
}

typedef struct gsm8k_builder {
    rq_gsm8k_set *set;
    size_t cap;
} gsm8k_builder;

static rq_status gsm8k_record(void *vctx, const cJSON *obj, size_t record, json_where w, rq_err *err) {
    gsm8k_builder *b = vctx;
    const char *question, *answer;
    RQ_TRY(json_string(obj, "question", "question", w, &question, err));
    RQ_TRY(json_string(obj, "answer", "answer", w, &answer, err));
    (void)record;
    if (b->set->n_docs == b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 256, bytes;
        if (!rq_mul_ok(ncap, sizeof(rq_gsm8k_doc), &bytes)) return RQ_FAIL(err, RQ_ERR_NOMEM, "too many documents");
        rq_gsm8k_doc *p = realloc(b->set->docs, bytes);
        if (!p) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory for %zu documents", ncap);
        b->set->docs = p;
        b->cap = ncap;
    }
    rq_gsm8k_doc *d = &b->set->docs[b->set->n_docs];
    memset(d, 0, sizeof *d);
    b->set->n_docs++;
    d->source_line = w.line;
    d->question = rq_strdup(question, err);
    d->answer = rq_strdup(answer, err);
    return d->question && d->answer ? RQ_OK : RQ_ERR_NOMEM;
}

rq_status rq_gsm8k_parse(const char *name, const char *jsonl, size_t size, rq_gsm8k_set *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    gsm8k_builder b = {.set = out};
    rq_status st = jsonl_for_each(name, jsonl, size, gsm8k_record, &b, NULL, err);
    if (st == RQ_OK && out->n_docs == 0) st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: no documents", name);
    if (st != RQ_OK) rq_gsm8k_set_free(out);
    return st;
}

rq_status rq_gsm8k_prompter_init(rq_gsm8k_prompter *p, const rq_gsm8k_set *train, rq_gsm8k_format format,
                                 size_t num_fewshot, uint64_t seed, rq_err *err) {
    memset(p, 0, sizeof *p);
    if (format != RQ_GSM8K_FEWSHOT && format != RQ_GSM8K_ZEROSHOT && format != RQ_GSM8K_FINETUNED)
        return RQ_FAIL(err, RQ_ERR_ARG, "gsm8k: unknown prompt format %d", (int)format);
    p->num_fewshot = format == RQ_GSM8K_FEWSHOT ? num_fewshot : 0;
    if (p->num_fewshot > 0) {
        if (!train || train->n_docs == 0)
            return RQ_FAIL(err, RQ_ERR_ARG, "gsm8k: %zu-shot prompts need the train split as the shot pool",
                           p->num_fewshot);
        if (p->num_fewshot > train->n_docs)
            return RQ_FAIL(err, RQ_ERR_ARG, "gsm8k: %zu shots requested, the train pool has %zu documents",
                           p->num_fewshot, train->n_docs);
    }
    p->train = train;
    rq_pyrandom_seed(&p->rng, seed);
    return RQ_OK;
}

static void append_question(rq_buf *sb, const char *question) {
    rq_buf_puts(sb, "Question: ");
    rq_buf_puts(sb, question);
    rq_buf_puts(sb, "\nAnswer:");
}

rq_status rq_gsm8k_prompter_next(rq_gsm8k_prompter *p, const rq_gsm8k_doc *doc, char **context,
                                 size_t *shot_indices, rq_err *err) {
    *context = NULL;
    rq_buf sb = {0};
    if (p->num_fewshot > 0) {
        size_t *picked = shot_indices ? shot_indices : rq_calloc(p->num_fewshot, sizeof(size_t), err);
        if (!picked) return RQ_ERR_NOMEM;
        /* lm-eval: rnd.sample(train_docs, k); the test doc cannot be among them
         * (different split), so exactly k are drawn and used in draw order. */
        rq_status st = rq_pyrandom_sample(&p->rng, p->train->n_docs, p->num_fewshot, picked, err);
        if (st == RQ_OK) {
            for (size_t i = 0; i < p->num_fewshot; i++) {
                const rq_gsm8k_doc *shot = &p->train->docs[picked[i]];
                append_question(&sb, shot->question);
                rq_buf_puts(&sb, " "); /* target_delimiter */
                rq_buf_puts(&sb, shot->answer);
                rq_buf_puts(&sb, "\n\n"); /* fewshot_delimiter, also after the last shot */
            }
        }
        if (picked != shot_indices) free(picked);
        if (st != RQ_OK) {
            rq_buf_free(&sb);
            return st;
        }
    }
    append_question(&sb, doc->question);
    p->docs_done++;
    return sb_finish(&sb, context, err);
}

rq_status rq_gsm8k_finetune_pair(const rq_gsm8k_doc *doc, char **prompt, char **target, rq_err *err) {
    *prompt = *target = NULL;
    rq_buf sb = {0};
    append_question(&sb, doc->question);
    RQ_TRY(sb_finish(&sb, prompt, err));
    rq_status st = concat3(" ", doc->answer, "", target, err);
    if (st != RQ_OK) {
        free(*prompt);
        *prompt = NULL;
    }
    return st;
}
