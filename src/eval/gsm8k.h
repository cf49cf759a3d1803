/* The gsm8k task as lm-evaluation-harness runs it (reference/formats-and-eval.md
 * 1.6): a prompt per test document from the few-shot prompter, greedy
 * generation with a KV cache until a stop string or EOS (at most 256 new
 * tokens, the context left-truncated to max_length - 256), the new tokens
 * decoded without special tokens and cut at the earliest stop string, then the
 * strict-match and flexible-extract filters and exact_match against the
 * reference answer. */
#ifndef RQ_EVAL_GSM8K_H
#define RQ_EVAL_GSM8K_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../backend/backend.h"
#include "../data/tasks.h"
#include "../model/model.h"

#define RQ_GSM8K_MAX_GEN_TOKENS 256

typedef struct rq_gsm8k_opts {
    rq_gsm8k_format format; /* few-shot (lm-eval gsm8k), zero-shot, fine-tuned */
    size_t num_fewshot;     /* few-shot format only (default 5) */
    uint64_t fewshot_seed;  /* 1234, lm-eval's fewshot_random_seed */
    int max_gen_tokens;     /* 0: 256 */
    int max_length;         /* 0: the model's max_position_embeddings */
    rq_bos_mode bos;
    size_t limit;           /* first N test documents; 0: all */
    bool keep_records;
    bool quiet;             /* no progress line */
} rq_gsm8k_opts;

void rq_gsm8k_default_opts(rq_gsm8k_opts *o);

typedef struct rq_gsm8k_record {
    size_t doc_index, source_line;
    char *response;        /* decoded new tokens, cut at the first stop string */
    char *strict, *flexible; /* the filtered answers ("[invalid]" when none) */
    bool strict_correct, flexible_correct;
    int prompt_tokens, new_tokens;
} rq_gsm8k_record;

typedef struct rq_gsm8k_result {
    size_t n_docs, n_docs_total;
    double strict, strict_stderr;     /* exact_match,strict-match */
    double flexible, flexible_stderr; /* exact_match,flexible-extract */
    int64_t prompt_tokens, new_tokens;
    size_t truncated_prompts;         /* prompts cut to max_length - max_gen_tokens */
    double seconds;
    rq_gsm8k_record *records;         /* [n_docs] when keep_records */
} rq_gsm8k_result;

/* The stop strings in lm-eval's order: "Question:", "</s>", "<|im_end|>", then
 * the tokenizer's EOS text when it is not one of those. *n receives the count;
 * the strings live in the tokenizer or are literals. */
void rq_gsm8k_stop_strings(const rq_tokenizer *tok, const char *stops[4], size_t *n);

/* Generate for one prompt and post-process: *response (malloc'd) is the
 * decoded continuation cut at the earliest stop string. */
rq_status rq_gsm8k_generate_one(const rq_model *m, rq_backend *be, const char *prompt, const rq_gsm8k_opts *o,
                                char **response, int *prompt_tokens, int *new_tokens, bool *truncated, rq_err *err);

/* Evaluate the first o->limit test documents. train may be NULL unless the
 * format is few-shot with num_fewshot > 0. */
rq_status rq_gsm8k_evaluate(const rq_model *m, rq_backend *be, const rq_gsm8k_set *test, const rq_gsm8k_set *train,
                            const rq_gsm8k_opts *o, rq_gsm8k_result *r, rq_err *err);
void rq_gsm8k_result_free(rq_gsm8k_result *r);

#endif /* RQ_EVAL_GSM8K_H */
