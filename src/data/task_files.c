/* Task documents from the dataset folder: which file holds which split, and
 * what a malformed JSONL line does (see tasks.h). Evaluation and fine-tuning
 * both load through here. */
#include <stdio.h>
#include <stdlib.h>

#include "jsonl.h"
#include "tasks.h"

/* ---- where each split lives ------------------------------------------------------ */

typedef struct split_files {
    const char *docs, *labels;
} split_files;

static const split_files task_files[RQ_TASK_COUNT][2] = {
    /* PIQA has no local training split: fine-tuning trains on a fold of the
     * validation file and evaluation scores the other documents. */
    [RQ_TASK_PIQA] = {[RQ_SPLIT_EVAL] = {"piqa/valid.jsonl", "piqa/valid-labels.lst"},
                      [RQ_SPLIT_TRAIN] = {"piqa/valid.jsonl", "piqa/valid-labels.lst"}},
    [RQ_TASK_ARC_EASY] = {[RQ_SPLIT_EVAL] = {"arc/ARC-Easy-Test.jsonl", NULL},
                          [RQ_SPLIT_TRAIN] = {"arc/ARC-Easy-Train.jsonl", NULL}},
    [RQ_TASK_ARC_CHALLENGE] = {[RQ_SPLIT_EVAL] = {"arc/ARC-Challenge-Test.jsonl", NULL},
                               [RQ_SPLIT_TRAIN] = {"arc/ARC-Challenge-Train.jsonl", NULL}},
    [RQ_TASK_HELLASWAG] = {[RQ_SPLIT_EVAL] = {"hellaswag/hellaswag_val_full.txt", NULL}},
    [RQ_TASK_WINOGRANDE] = {[RQ_SPLIT_EVAL] = {"winogrande/winogrande-dev.llmfoundry.jsonl",
                                               "winogrande/dev-labels.lst"}},
    [RQ_TASK_GSM8K] = {[RQ_SPLIT_EVAL] = {"gsm8k/test.jsonl", NULL}, [RQ_SPLIT_TRAIN] = {"gsm8k/train.jsonl", NULL}},
};

bool rq_task_files(rq_task_id id, rq_task_split split, const char **docs, const char **labels) {
    const split_files *f = (unsigned)id < RQ_TASK_COUNT && (unsigned)split <= RQ_SPLIT_TRAIN ? &task_files[id][split]
                                                                                             : NULL;
    if (docs) *docs = f ? f->docs : NULL;
    if (labels) *labels = f ? f->labels : NULL;
    return f && f->docs;
}

typedef struct loaded_file {
    char *path; /* dataset root + relative name: what messages name */
    char *data;
    size_t size;
} loaded_file;

static rq_status read_dataset_file(const char *root, const char *rel, loaded_file *f, rq_err *err) {
    f->data = NULL;
    f->size = 0;
    f->path = rq_path_join_alloc(root, rel, err);
    if (!f->path) return RQ_ERR_NOMEM;
    rq_status st = rq_file_read_all(f->path, &f->data, &f->size, err);
    if (st != RQ_OK)
        rq_err_prefix(err, "dataset file %s missing or unreadable (layout: datasets/README.md): ", rel);
    return st;
}

static void loaded_file_free(loaded_file *f) {
    free(f->path);
    free(f->data);
    memset(f, 0, sizeof *f);
}

/* ---- skipping malformed lines ----------------------------------------------------- */

static bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Checks one line the way the parsers will read it: one JSON object. On a bad
 * line, why receives "file:line: reason". */
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

/* Read a split's files and apply the skip policy: docs (and labels, when the
 * split has a labels file) hold what the parser gets. */
static rq_status read_split(const char *root, rq_task_id id, const rq_task_load_opts *opts, loaded_file *docs,
                            loaded_file *labels, rq_err *err) {
    const char *docs_rel, *labels_rel;
    rq_task_split split = opts ? opts->split : RQ_SPLIT_EVAL;
    if (!rq_task_files(id, split, &docs_rel, &labels_rel))
        return RQ_FAIL(err, RQ_ERR_ARG, "task '%s' has no local %s split", rq_task_name(id) ? rq_task_name(id) : "?",
                       split == RQ_SPLIT_TRAIN ? "training" : "evaluation");
    RQ_TRY(read_dataset_file(root, docs_rel, docs, err));
    if (labels_rel) RQ_TRY(read_dataset_file(root, labels_rel, labels, err));
    /* hellaswag is a 6-line text layout, not JSONL: nothing to skip line by line */
    if (!opts || !opts->skip_bad_lines || id == RQ_TASK_HELLASWAG) return RQ_OK;
    rq_skip_report local = {0};
    size_t *bad = NULL, n_bad = 0;
    rq_status st = blank_bad_lines(docs->path, docs->data, docs->size, &bad, &n_bad,
                                   opts->skipped ? opts->skipped : &local, err);
    if (st == RQ_OK && labels->data) drop_label_lines(labels->data, &labels->size, bad, n_bad);
    free(bad);
    return st;
}

/* ---- loaders ------------------------------------------------------------------------ */

rq_status rq_task_load_mc(const char *dataset_root, rq_task_id id, const rq_task_load_opts *opts, rq_mc_task *out,
                          rq_err *err) {
    memset(out, 0, sizeof *out);
    if ((unsigned)id >= RQ_TASK_COUNT) return RQ_FAIL(err, RQ_ERR_ARG, "task id %d is not a task", (int)id);
    if (rq_task_kind_of(id) != RQ_TASK_MULTIPLE_CHOICE)
        return RQ_FAIL(err, RQ_ERR_ARG, "task '%s' is a generation task, not multiple choice (use rq_gsm8k_load)",
                       rq_task_name(id));
    if (!dataset_root) return RQ_FAIL(err, RQ_ERR_ARG, "no dataset root directory given");
    loaded_file docs = {0}, labels = {0};
    rq_status st = read_split(dataset_root, id, opts, &docs, &labels, err);
    if (st == RQ_OK) {
        switch (id) {
        case RQ_TASK_ARC_EASY:
        case RQ_TASK_ARC_CHALLENGE: st = rq_arc_parse(docs.path, docs.data, docs.size, id, out, err); break;
        case RQ_TASK_PIQA:
            st = rq_piqa_parse(docs.path, docs.data, docs.size, labels.path, labels.data, labels.size, out, err);
            break;
        case RQ_TASK_HELLASWAG: st = rq_hellaswag_parse(docs.path, docs.data, docs.size, out, err); break;
        case RQ_TASK_WINOGRANDE:
            st = rq_winogrande_parse(docs.path, docs.data, docs.size, labels.path, labels.data, labels.size, out, err);
            break;
        default: st = RQ_FAIL(err, RQ_ERR_INTERNAL, "task '%s' has no loader", rq_task_name(id)); break;
        }
    }
    loaded_file_free(&docs);
    loaded_file_free(&labels);
    return st;
}

rq_status rq_task_load_gsm8k(const char *dataset_root, const rq_task_load_opts *opts, rq_gsm8k_set *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    if (!dataset_root) return RQ_FAIL(err, RQ_ERR_ARG, "no dataset root directory given");
    loaded_file docs = {0}, labels = {0};
    rq_status st = read_split(dataset_root, RQ_TASK_GSM8K, opts, &docs, &labels, err);
    if (st == RQ_OK) st = rq_gsm8k_parse(docs.path, docs.data, docs.size, out, err);
    loaded_file_free(&docs);
    loaded_file_free(&labels);
    return st;
}

rq_status rq_mc_task_load(const char *name, const char *dataset_root, rq_mc_task *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    rq_task_id id;
    RQ_TRY(rq_task_lookup(name, &id, err));
    return rq_task_load_mc(dataset_root, id, NULL, out, err);
}

rq_status rq_gsm8k_load_file(const char *path, rq_gsm8k_set *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    char *data;
    size_t size;
    RQ_TRY(rq_file_read_all(path, &data, &size, err));
    rq_status st = rq_gsm8k_parse(path, data, size, out, err);
    free(data);
    return st;
}

rq_status rq_gsm8k_load_with(const char *dataset_root, const rq_task_load_opts *opts, rq_gsm8k_set *test,
                             rq_gsm8k_set *train, rq_err *err) {
    if (train) memset(train, 0, sizeof *train);
    rq_task_load_opts split = opts ? *opts : (rq_task_load_opts){0};
    split.split = RQ_SPLIT_EVAL;
    RQ_TRY(rq_task_load_gsm8k(dataset_root, &split, test, err));
    if (train) {
        split.split = RQ_SPLIT_TRAIN;
        rq_status st = rq_task_load_gsm8k(dataset_root, &split, train, err);
        if (st != RQ_OK) {
            rq_gsm8k_set_free(test);
            return st;
        }
    }
    return RQ_OK;
}

rq_status rq_gsm8k_load(const char *dataset_root, rq_gsm8k_set *test, rq_gsm8k_set *train, rq_err *err) {
    return rq_gsm8k_load_with(dataset_root, NULL, test, train, err);
}
