/* Evaluation data loading with the skip-bad-lines policy (see task_data.h). */
#include <stdio.h>
#include <stdlib.h>

#include "../data/jsonl.h"
#include "task_data.h"

static bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Checks one line the way the data layer will read it: one JSON object. On a
 * bad line, why receives "file:line: reason". */
static bool line_is_good(const char *name, const char *line, size_t len, size_t line_no, char *why, size_t cap) {
    rq_jsonl_reader reader;
    rq_err err = {0};
    if (rq_jsonl_open_memory(&reader, name, line, len, RQ_JSONL_STOP_ON_BAD_LINE, &err) != RQ_OK) {
        snprintf(why, cap, "%s:%zu: %.200s", name, line_no, err.msg);
        return false;
    }
    reader.line_no = line_no - 1; /* messages then name the line of the whole file */
    cJSON *value = NULL;
    bool good = rq_jsonl_next(&reader, &value, &err) == RQ_OK;
    if (!good) snprintf(why, cap, "%.300s", err.msg);
    else if (!cJSON_IsObject(value)) {
        snprintf(why, cap, "%s:%zu: the line is not a JSON object", name, line_no);
        good = false;
    }
    cJSON_Delete(value);
    rq_jsonl_close(&reader);
    return good;
}

/* Blank every malformed line in place (keeping line numbers for later
 * messages); bad_records receives the record index (count of non-blank lines
 * before it) of each, so labels files can drop the same entries. */
static rq_status blank_bad_lines(const char *name, char *data, size_t size, size_t **bad_records, size_t *n_bad,
                                 rq_skip_report *rep, rq_err *err) {
    *bad_records = NULL;
    *n_bad = 0;
    size_t cap = 0, pos = 0, line_no = 0, record = 0;
    while (pos < size) {
        char *line = data + pos;
        char *nl = memchr(line, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - line) : size - pos;
        pos += len + (nl ? 1 : 0);
        line_no++;
        size_t first = 0;
        while (first < len && is_json_space(line[first])) first++;
        if (first == len) continue;
        char why[320];
        if (!line_is_good(name, line, len, line_no, why, sizeof why)) {
            if (rep->skipped_lines++ == 0) snprintf(rep->first, sizeof rep->first, "%s", why);
            memset(line, ' ', len);
            if (*n_bad == cap) {
                cap = cap ? 2 * cap : 16;
                size_t *p = realloc(*bad_records, cap * sizeof *p);
                if (!p) {
                    free(*bad_records);
                    *bad_records = NULL;
                    return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory listing bad lines of %s", name);
                }
                *bad_records = p;
            }
            (*bad_records)[(*n_bad)++] = record;
        }
        record++;
    }
    return RQ_OK;
}

/* Remove the label lines of the given records (ascending) from a labels file:
 * the k-th non-blank line is record k. */
static void drop_label_lines(char *data, size_t *size, const size_t *records, size_t n) {
    size_t in = 0, out = 0, record = 0, next = 0;
    while (in < *size) {
        const char *line = data + in;
        const char *nl = memchr(line, '\n', *size - in);
        size_t len = nl ? (size_t)(nl - line) + 1 : *size - in;
        bool blank = true;
        for (size_t i = 0; i < len; i++) blank &= line[i] == ' ' || line[i] == '\t' || line[i] == '\r' || line[i] == '\n';
        bool drop = false;
        if (!blank) {
            while (next < n && records[next] < record) next++;
            drop = next < n && records[next] == record;
            record++;
        }
        if (!drop) {
            memmove(data + out, line, len);
            out += len;
        }
        in += len;
    }
    *size = out;
    data[out] = 0;
}

typedef struct loaded_file {
    char path[4096];
    char *data;
    size_t size;
} loaded_file;

static rq_status load(const char *datasets, const char *rel, loaded_file *f, rq_err *err) {
    f->data = NULL;
    if (!rq_path_join(f->path, sizeof f->path, datasets, rel))
        return RQ_FAIL(err, RQ_ERR_ARG, "dataset path too long: %s/%s", datasets, rel);
    rq_status st = rq_file_read_all(f->path, &f->data, &f->size, err);
    if (st != RQ_OK) rq_err_prefix(err, "dataset file %s missing or unreadable (layout: datasets/README.md): ", rel);
    return st;
}

rq_status rq_eval_load_mc(const char *name, const char *datasets, bool skip_bad_lines, rq_mc_task *out,
                          rq_skip_report *skipped, rq_err *err) {
    memset(out, 0, sizeof *out);
    rq_skip_report local = {0};
    if (!skipped) skipped = &local;
    memset(skipped, 0, sizeof *skipped);
    rq_task_id id;
    RQ_TRY(rq_task_lookup(name, &id, err));
    /* hellaswag is a 6-line text layout, not JSONL: nothing to skip line by line */
    if (!skip_bad_lines || id == RQ_TASK_HELLASWAG) return rq_mc_task_load(name, datasets, out, err);
    if (rq_task_kind_of(id) != RQ_TASK_MULTIPLE_CHOICE)
        return RQ_FAIL(err, RQ_ERR_ARG, "task '%s' is a generation task, not multiple choice", name);
    static const char *const files[RQ_TASK_COUNT][2] = {
        [RQ_TASK_PIQA] = {"piqa/valid.jsonl", "piqa/valid-labels.lst"},
        [RQ_TASK_ARC_EASY] = {"arc/ARC-Easy-Test.jsonl", NULL},
        [RQ_TASK_ARC_CHALLENGE] = {"arc/ARC-Challenge-Test.jsonl", NULL},
        [RQ_TASK_WINOGRANDE] = {"winogrande/winogrande-dev.llmfoundry.jsonl", "winogrande/dev-labels.lst"},
    };
    loaded_file main_file = {0}, labels = {0};
    size_t *bad = NULL, n_bad = 0;
    rq_status st = load(datasets, files[id][0], &main_file, err);
    if (st == RQ_OK && files[id][1]) st = load(datasets, files[id][1], &labels, err);
    if (st == RQ_OK) st = blank_bad_lines(main_file.path, main_file.data, main_file.size, &bad, &n_bad, skipped, err);
    if (st == RQ_OK && labels.data) drop_label_lines(labels.data, &labels.size, bad, n_bad);
    if (st == RQ_OK) {
        switch (id) {
        case RQ_TASK_PIQA:
            st = rq_piqa_parse(main_file.path, main_file.data, main_file.size, labels.path, labels.data, labels.size,
                               out, err);
            break;
        case RQ_TASK_WINOGRANDE:
            st = rq_winogrande_parse(main_file.path, main_file.data, main_file.size, labels.path, labels.data,
                                     labels.size, out, err);
            break;
        default: st = rq_arc_parse(main_file.path, main_file.data, main_file.size, id, out, err); break;
        }
    }
    free(bad);
    free(main_file.data);
    free(labels.data);
    return st;
}

static rq_status load_gsm8k_file(const char *datasets, const char *rel, bool skip_bad_lines, rq_gsm8k_set *set,
                                 rq_skip_report *skipped, rq_err *err) {
    loaded_file f = {0};
    size_t *bad = NULL, n_bad = 0;
    rq_status st = load(datasets, rel, &f, err);
    if (st == RQ_OK && skip_bad_lines) st = blank_bad_lines(f.path, f.data, f.size, &bad, &n_bad, skipped, err);
    if (st == RQ_OK) st = rq_gsm8k_parse(f.path, f.data, f.size, set, err);
    free(bad);
    free(f.data);
    return st;
}

rq_status rq_eval_load_gsm8k(const char *datasets, bool skip_bad_lines, rq_gsm8k_set *test, rq_gsm8k_set *train,
                             rq_skip_report *skipped, rq_err *err) {
    memset(test, 0, sizeof *test);
    if (train) memset(train, 0, sizeof *train);
    rq_skip_report local = {0};
    if (!skipped) skipped = &local;
    memset(skipped, 0, sizeof *skipped);
    RQ_TRY(load_gsm8k_file(datasets, "gsm8k/test.jsonl", skip_bad_lines, test, skipped, err));
    if (train) {
        rq_status st = load_gsm8k_file(datasets, "gsm8k/train.jsonl", skip_bad_lines, train, skipped, err);
        if (st != RQ_OK) {
            rq_gsm8k_set_free(test);
            return st;
        }
    }
    return RQ_OK;
}
