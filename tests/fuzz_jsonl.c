/* Deterministic mutation smoke test of the JSONL reader, the task parsers and
 * the gsm8k extraction: mutate small valid inputs (fixed seed, fixed number of
 * rounds) and require that every call either succeeds with well-formed
 * documents or fails with a message, without crashes, leaks or sanitizer
 * reports. A few seconds; longer under sanitizers. */
#include <stdint.h>

#include "test.h"

#include "data/jsonl.h"
#include "data/tasks.h"
#include "eval/gsm8k_extract.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t next_u64(void) { /* xorshift64*: deterministic across platforms */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}
static size_t below(size_t n) { return n ? (size_t)(next_u64() % n) : 0; }

#define MAX_INPUT 8192

/* One to four edits: flip, insert an interesting byte, delete, duplicate, truncate. */
static size_t mutate(const char *seed, size_t n, char *out) {
    memcpy(out, seed, n);
    static const char interesting[] = "{}[]\":,\\\n\r 0129-.$#_utAE\xff\xc3\x80\xe2";
    int edits = 1 + (int)below(4);
    for (int e = 0; e < edits; e++) {
        switch (below(6)) {
        case 0:
            if (n) out[below(n)] ^= (char)(1u << below(8));
            break;
        case 1:
        case 2:
            if (n < MAX_INPUT - 1) {
                size_t at = below(n + 1);
                memmove(out + at + 1, out + at, n - at);
                out[at] = below(20) == 0 ? 0 : interesting[below(sizeof interesting - 1)];
                n++;
            }
            break;
        case 3:
            if (n) {
                size_t at = below(n), len = 1 + below(16);
                if (len > n - at) len = n - at;
                memmove(out + at, out + at + len, n - at - len);
                n -= len;
            }
            break;
        case 4:
            if (n) {
                size_t at = below(n), len = 1 + below(64);
                if (len > n - at) len = n - at;
                if (n + len < MAX_INPUT) {
                    memmove(out + at + len, out + at, n - at);
                    n += len;
                }
            }
            break;
        default: n = below(n + 1); break;
        }
    }
    return n;
}

static int bad_docs;

static void check_task(rq_status st, rq_mc_task *t, const rq_err *err) {
    if (st != RQ_OK) {
        if (!err->msg[0] || t->docs || t->n_docs) bad_docs++;
        return;
    }
    for (size_t i = 0; i < t->n_docs; i++) {
        const rq_mc_doc *d = &t->docs[i];
        if (d->gold >= d->n_choices) bad_docs++;
        for (size_t c = 0; c < d->n_choices; c++)
            if (!rq_mc_doc_context(d, c) || !rq_mc_doc_continuation(d, c)) bad_docs++;
    }
    rq_mc_task_free(t);
}

static const char arc_seed[] =
    "{\"id\":\"x1\",\"question\":{\"stem\":\"Which is a gas?\",\"choices\":[{\"text\":\"ice\",\"label\":\"A\"},"
    "{\"text\":\"steam\",\"label\":\"B\"},{\"text\":\"rock\",\"label\":\"C\"}]},\"answerKey\":\"B\"}\n"
    "{\"id\":\"x2\",\"question\":{\"stem\":\"Genes are made of\",\"choices\":[{\"text\":\"DNA\",\"label\":\"1\"},"
    "{\"text\":\"fat\",\"label\":\"2\"}]},\"answerKey\":\"1\"}\n";
static const char piqa_seed[] = "{\"goal\":\"open a jar\",\"sol1\":\"twist the lid\",\"sol2\":\"eat the lid \"}\n"
                                "{\"goal\":\"dresser\",\"sol1\":\"a  b\",\"sol2\":\"c\"}\n";
static const char piqa_labels[] = "0\n1\n";
static const char wino_seed[] = "{\"context_options\": [\"Sarah beat Maria so Sarah\", \"Sarah beat Maria so Maria\"], "
                                "\"continuation\": \"was happy.\", \"gold\": 0}\n"
                                "{\"context_options\": [\"A x\", \"A y\"], \"continuation\": \" z \", \"gold\": 1}\n";
static const char wino_labels[] = "1\n2\n";
static const char hellaswag_seed[] = "Roof shingle removal: A man is sitting on a roof. he\n3\nis using wrap.\n"
                                     "is ripping [tiles] off.\nis holding a cube.\nstarts pulling up roofing.\n"
                                     "Family Life: How to x.. Visit [www.a.org] now.\n0\na\nb  c\n[d\ne]\n";
static const char gsm8k_seed[] = "{\"question\":\"Janet has 16 eggs.\",\"answer\":\"16-3=<<16-3=13>>13\\n#### 1,300\"}\n"
                                 "{\"question\":\"q\",\"answer\":\"$5.\\n#### -5\"}\n";
static const char answer_seed[] = "So the total is $1,234.50.\n#### 1,234.5\nQuestion: next</s> -7 #### -3.";

int main(void) {
    static char buf[MAX_INPUT], buf2[MAX_INPUT];
    rq_err err;
    const int rounds = 20000;
    size_t ok_parses = 0;
    for (int round = 0; round < rounds; round++) {
        rq_mc_task t;
        size_t n;

        n = mutate(arc_seed, sizeof arc_seed - 1, buf);
        memset(&err, 0, sizeof err);
        rq_status st = rq_arc_parse("fuzz-arc.jsonl", buf, n, RQ_TASK_ARC_EASY, &t, &err);
        ok_parses += st == RQ_OK;
        check_task(st, &t, &err);

        /* the JSONL reader in skip mode must always reach the end */
        rq_jsonl_reader r;
        if (rq_jsonl_open_memory(&r, "fuzz.jsonl", buf, n, RQ_JSONL_SKIP_BAD_LINES, &err) == RQ_OK) {
            cJSON *v;
            size_t values = 0;
            while ((st = rq_jsonl_next(&r, &v, &err)) == RQ_OK && v) {
                values++;
                cJSON_Delete(v);
            }
            if (st != RQ_OK || r.line_no > n + 1) bad_docs++;
            (void)values;
            rq_jsonl_close(&r);
        }

        n = mutate(piqa_seed, sizeof piqa_seed - 1, buf);
        size_t n2 = mutate(piqa_labels, sizeof piqa_labels - 1, buf2);
        memset(&err, 0, sizeof err);
        st = rq_piqa_parse("fuzz-piqa.jsonl", buf, n, "fuzz-piqa.lst", round % 2 ? buf2 : piqa_labels,
                           round % 2 ? n2 : sizeof piqa_labels - 1, &t, &err);
        ok_parses += st == RQ_OK;
        check_task(st, &t, &err);

        n = mutate(wino_seed, sizeof wino_seed - 1, buf);
        n2 = mutate(wino_labels, sizeof wino_labels - 1, buf2);
        memset(&err, 0, sizeof err);
        st = rq_winogrande_parse("fuzz-wino.jsonl", buf, n, "fuzz-wino.lst", round % 2 ? buf2 : wino_labels,
                                 round % 2 ? n2 : sizeof wino_labels - 1, &t, &err);
        ok_parses += st == RQ_OK;
        check_task(st, &t, &err);

        n = mutate(hellaswag_seed, sizeof hellaswag_seed - 1, buf);
        memset(&err, 0, sizeof err);
        st = rq_hellaswag_parse("fuzz-hellaswag.txt", buf, n, &t, &err);
        ok_parses += st == RQ_OK;
        check_task(st, &t, &err);

        n = mutate(gsm8k_seed, sizeof gsm8k_seed - 1, buf);
        rq_gsm8k_set gs;
        memset(&err, 0, sizeof err);
        st = rq_gsm8k_parse("fuzz-gsm8k.jsonl", buf, n, &gs, &err);
        if (st == RQ_OK) {
            ok_parses++;
            rq_gsm8k_prompter p;
            size_t shots = gs.n_docs < 3 ? gs.n_docs : 3;
            if (rq_gsm8k_prompter_init(&p, &gs, RQ_GSM8K_FEWSHOT, shots, (uint64_t)round, &err) == RQ_OK) {
                char *ctx = NULL;
                if (rq_gsm8k_prompter_next(&p, &gs.docs[0], &ctx, NULL, &err) != RQ_OK || !ctx) bad_docs++;
                free(ctx);
            }
            rq_gsm8k_set_free(&gs);
        } else if (!err.msg[0] || gs.docs) {
            bad_docs++;
        }

        /* extraction on arbitrary bytes (NUL-terminated at the first NUL) */
        n = mutate(answer_seed, sizeof answer_seed - 1, buf);
        buf[n] = 0;
        char *a = NULL, *b = NULL, *c = NULL, *q = NULL;
        if (rq_gsm8k_strict_match(buf, &a, &err) != RQ_OK || rq_gsm8k_flexible_extract(buf, &b, &err) != RQ_OK ||
            rq_gsm8k_normalize(buf, &c, &err) != RQ_OK || rq_hellaswag_clean(buf, &q, &err) != RQ_OK)
            bad_docs++;
        static const char *const stops[] = {"Question:", "</s>", ""};
        if (rq_gsm8k_stop_length(buf, stops, 3) > strlen(buf)) bad_docs++;
        if (c && strlen(c) > strlen(buf)) bad_docs++;
        free(a);
        free(b);
        free(c);
        free(q);
        if (rq_hellaswag_query_from_line(buf, &q, &err) == RQ_OK) free(q);
    }
    CHECKF(bad_docs == 0, "%d invariant violations", bad_docs);
    /* the mutations must leave some inputs valid, or the success paths go untested */
    CHECKF(ok_parses > (size_t)rounds / 4, "only %zu successful parses", ok_parses);
    return rq_test_finish();
}
