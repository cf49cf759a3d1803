/* Evaluation tasks: documents and prompts exactly as lm-evaluation-harness
 * (v0.4.x) builds them, read from local copies of the datasets.
 *
 * Multiple-choice tasks (piqa, arc_easy, arc_challenge, hellaswag, winogrande)
 * become rq_mc_doc: request i is (context_i, continuation_i), scored by
 * loglikelihood(continuation | context) (reference/formats-and-eval.md 1.2-1.5).
 * gsm8k is a generation task: documents plus the few-shot prompter (1.6, 1.8).
 *
 * Data location: every loader that takes `dataset_root` expects the layout of
 * datasets/README.md under it (callers pass $RILQ_DATA/datasets); evaluation
 * and fine-tuning both load through rq_task_load_mc / rq_task_load_gsm8k
 * (task_files.c), which know the file of every split:
 *   arc/ARC-Easy-Test.jsonl, arc/ARC-Challenge-Test.jsonl   (train: *-Train.jsonl)
 *   piqa/valid.jsonl, piqa/valid-labels.lst                 (train: a fold of the same)
 *   hellaswag/hellaswag_val_full.txt            (llama.cpp 6-line layout)
 *   winogrande/winogrande-dev.llmfoundry.jsonl, winogrande/dev-labels.lst
 *   gsm8k/test.jsonl                                        (train: gsm8k/train.jsonl)
 * The *_parse functions take file contents already in memory (tests, fuzzing);
 * `name` is only used in messages. Every error names the file, the line and
 * the field. */
#ifndef RQ_DATA_TASKS_H
#define RQ_DATA_TASKS_H

#include <stdbool.h>
#include <stddef.h>

#include "../core/core.h"
#include "pyrandom.h"

/* ---- registry ------------------------------------------------------------ */

typedef enum rq_task_id {
    RQ_TASK_PIQA = 0,
    RQ_TASK_ARC_EASY,
    RQ_TASK_ARC_CHALLENGE,
    RQ_TASK_HELLASWAG,
    RQ_TASK_WINOGRANDE,
    RQ_TASK_GSM8K,
    RQ_TASK_COUNT
} rq_task_id;

typedef enum rq_task_kind {
    RQ_TASK_MULTIPLE_CHOICE, /* loglikelihood of each choice; acc (+ acc_norm) */
    RQ_TASK_GENERATE         /* greedy generation; exact_match after filters */
} rq_task_kind;

/* Name -> id. An unknown name is RQ_ERR_ARG with the list of known names. */
rq_status rq_task_lookup(const char *name, rq_task_id *out, rq_err *err);
const char *rq_task_name(rq_task_id id);      /* "piqa", ..., NULL when out of range */
rq_task_kind rq_task_kind_of(rq_task_id id);
const char *rq_task_known_names(void);        /* "piqa, arc_easy, ..." */

/* ---- multiple-choice documents ---------------------------------------------- */

typedef struct rq_mc_doc {
    size_t n_choices;       /* 2..5 */
    size_t n_contexts;      /* 1, or n_choices (winogrande: the option is in the context) */
    size_t n_continuations; /* n_choices, or 1 shared by all choices (winogrande) */
    char **contexts;
    char **continuations;   /* with the leading target delimiter " " */
    /* Choice texts as doc_to_choice returns them (no leading space): acc_norm
     * divides by their length in code points. NULL for winogrande (acc only). */
    char **choice_texts;
    size_t gold;            /* index of the correct choice */
    size_t source_line;     /* 1-based line of the document in its source file */
} rq_mc_doc;

static inline const char *rq_mc_doc_context(const rq_mc_doc *d, size_t choice) {
    return d->contexts[d->n_contexts == 1 ? 0 : choice];
}
static inline const char *rq_mc_doc_continuation(const rq_mc_doc *d, size_t choice) {
    return d->continuations[d->n_continuations == 1 ? 0 : choice];
}

typedef struct rq_mc_task {
    rq_task_id id;
    rq_mc_doc *docs;
    size_t n_docs;
} rq_mc_task;

void rq_mc_task_free(rq_mc_task *task);

/* Per-dataset parsers. ARC: AI2 JSONL (question.stem, question.choices[].text
 * and .label, answerKey). `id` says arc_easy or arc_challenge. */
rq_status rq_arc_parse(const char *name, const char *jsonl, size_t size, rq_task_id id, rq_mc_task *out, rq_err *err);
/* PIQA: {goal, sol1, sol2} lines plus a labels file with one 0/1 per line. */
rq_status rq_piqa_parse(const char *name, const char *jsonl, size_t jsonl_size, const char *labels_name,
                        const char *labels, size_t labels_size, rq_mc_task *out, rq_err *err);
/* HellaSwag in llama.cpp's 6-line layout (see rq_hellaswag_query_from_line). */
rq_status rq_hellaswag_parse(const char *name, const char *text, size_t size, rq_mc_task *out, rq_err *err);
/* WinoGrande in llm-foundry's converted form plus the original dev-labels.lst
 * (1 = option1, 2 = option2), which must agree with the file's "gold". */
rq_status rq_winogrande_parse(const char *name, const char *jsonl, size_t jsonl_size, const char *labels_name,
                              const char *labels, size_t labels_size, rq_mc_task *out, rq_err *err);

/* lm-eval's hellaswag `preprocess`: strip; " [title]" -> ". "; delete every
 * non-greedy "[...]" span; then one left-to-right pass of "  " -> " ". */
rq_status rq_hellaswag_clean(const char *text, char **out, rq_err *err);
/* The query line of the 6-line file ("label: ctx", already cleaned by
 * llama.cpp's extractor) turned into lm-eval's query. What the extractor left
 * undone: ctx_b.capitalize() and the removal of bracket spans other than
 * [header]/[step]/[substeps]/[title]; see the comment in tasks.c. */
rq_status rq_hellaswag_query_from_line(const char *line, char **out, rq_err *err);

/* Number of Unicode code points of UTF-8 text (acc_norm's length). */
size_t rq_utf8_length(const char *s);

/* ---- gsm8k --------------------------------------------------------------------- */

typedef struct rq_gsm8k_doc {
    char *question;
    char *answer;        /* full solution, calculator annotations and final "#### N" included */
    size_t source_line;
} rq_gsm8k_doc;

typedef struct rq_gsm8k_set {
    rq_gsm8k_doc *docs;
    size_t n_docs;
} rq_gsm8k_set;

rq_status rq_gsm8k_parse(const char *name, const char *jsonl, size_t size, rq_gsm8k_set *out, rq_err *err);
void rq_gsm8k_set_free(rq_gsm8k_set *set);

typedef enum rq_gsm8k_format {
    RQ_GSM8K_FEWSHOT,   /* lm-eval `gsm8k`: k random train shots (default k = 5, seed 1234) */
    RQ_GSM8K_ZEROSHOT,  /* "Question: q\nAnswer:" alone */
    RQ_GSM8K_FINETUNED  /* same template as zero-shot: what stage-2 fine-tuning trains on */
} rq_gsm8k_format;

#define RQ_GSM8K_DEFAULT_SHOTS 5
#define RQ_GSM8K_DEFAULT_FEWSHOT_SEED 1234

/* Builds contexts document by document. lm-eval draws the shots with one
 * Random(seed) advanced in test-document order, so the prompter must see the
 * documents in order from the first one (also when only a prefix is scored). */
typedef struct rq_gsm8k_prompter {
    const rq_gsm8k_set *train;
    size_t num_fewshot; /* 0 for the zero-shot and fine-tuned formats */
    rq_pyrandom rng;
    size_t docs_done;
} rq_gsm8k_prompter;

/* train may be NULL when num_fewshot ends up 0; num_fewshot is ignored unless
 * format is RQ_GSM8K_FEWSHOT. */
rq_status rq_gsm8k_prompter_init(rq_gsm8k_prompter *p, const rq_gsm8k_set *train, rq_gsm8k_format format,
                                 size_t num_fewshot, uint64_t seed, rq_err *err);
/* Context for the next test document (malloc'd). shot_indices, when not NULL,
 * receives the num_fewshot train positions used, in prompt order. */
rq_status rq_gsm8k_prompter_next(rq_gsm8k_prompter *p, const rq_gsm8k_doc *doc, char **context,
                                 size_t *shot_indices, rq_err *err);

/* Training pair for the fine-tuned format: prompt "Question: q\nAnswer:" and
 * target " " + answer (the space is lm-eval's target delimiter). Both malloc'd. */
rq_status rq_gsm8k_finetune_pair(const rq_gsm8k_doc *doc, char **prompt, char **target, rq_err *err);

/* ---- loading from the dataset folder (task_files.c) ---------------------------------- */

typedef enum rq_task_split {
    RQ_SPLIT_EVAL = 0, /* what evaluation scores: test (arc, gsm8k) or validation (piqa, hellaswag, winogrande) */
    RQ_SPLIT_TRAIN     /* what fine-tuning learns from; piqa has none locally: its validation file, cut by folds */
} rq_task_split;

/* The files of a split, relative to the dataset root: documents, and labels
 * for piqa and winogrande (else NULL). False when the task has no such split
 * here (hellaswag and winogrande have no training split). */
bool rq_task_files(rq_task_id id, rq_task_split split, const char **docs, const char **labels);

/* Malformed JSONL lines stop loading by default: a silently dropped document
 * changes the score. With skip_bad_lines a line that is not one JSON object is
 * skipped and counted instead (its document is gone, and for piqa and
 * winogrande the matching line of the labels file too, so labels stay
 * aligned); lines that parse but lack a field, have empty choices or an
 * out-of-range label still stop loading, since those are not typos but a wrong
 * file. hellaswag is not JSONL and is never skipped in. */
typedef struct rq_skip_report {
    size_t skipped_lines;
    char first[320]; /* "file:line: why" of the first skipped line */
} rq_skip_report;

typedef struct rq_task_load_opts {
    rq_task_split split;
    bool skip_bad_lines;
    rq_skip_report *skipped; /* counts are added to it (zero it first); may be NULL */
} rq_task_load_opts;

/* opts may be NULL: the evaluation split, stopping at the first malformed line. */
rq_status rq_task_load_mc(const char *dataset_root, rq_task_id id, const rq_task_load_opts *opts, rq_mc_task *out,
                          rq_err *err);
rq_status rq_task_load_gsm8k(const char *dataset_root, const rq_task_load_opts *opts, rq_gsm8k_set *out, rq_err *err);
/* gsm8k's test split and, unless train is NULL, its train split (the few-shot
 * pool), both under opts' skip policy (opts->split is not used). */
rq_status rq_gsm8k_load_with(const char *dataset_root, const rq_task_load_opts *opts, rq_gsm8k_set *test,
                             rq_gsm8k_set *train, rq_err *err);

/* Shorthands: a multiple-choice task's evaluation split by registry name (gsm8k
 * is refused with a hint); rq_gsm8k_load_with stopping at malformed lines; a
 * gsm8k file by path. */
rq_status rq_mc_task_load(const char *name, const char *dataset_root, rq_mc_task *out, rq_err *err);
rq_status rq_gsm8k_load(const char *dataset_root, rq_gsm8k_set *test, rq_gsm8k_set *train, rq_err *err);
rq_status rq_gsm8k_load_file(const char *path, rq_gsm8k_set *out, rq_err *err);

#endif /* RQ_DATA_TASKS_H */
