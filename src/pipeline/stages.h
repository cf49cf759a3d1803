/* The pipeline's stages as library calls: quantize, calibrate (RILQ stage 1),
 * finetune (stage 2), merge, export, eval. Each takes a typed options struct
 * and fills a typed report:
 *
 *     rq_status rq_stage_X(const rq_stage_X_opts *o, rq_stage_X_report *rep, rq_err *err);
 *
 * Each options struct has one table (rq_stage_X_table) saying, per field, its
 * type, default, limits, command-line flag, recipe key and help: the command
 * `rilq X` parses argv with it and prints --help from it, a recipe's section is
 * read and checked with it, `rilq run --keys` lists it. rq_stage_X_defaults
 * fills the defaults. Messages go through rq_log (core.h): the command prints
 * them, `rilq run` writes them to the stage's log.txt. rq_stage_X_report_json
 * is what `rilq run` writes to the stage's stage.json. */
#ifndef RQ_STAGES_H
#define RQ_STAGES_H

#include <cjson/cJSON.h>

#include "../adapter/merge.h"
#include "../core/opts.h"
#include "../io/export.h"
#include "../quant/quantize_model.h"

/* Options every model-loading stage shares. */
typedef struct rq_common_opts {
    const char *device;    /* cpu (default) or cuda */
    int64_t threads;       /* CPU threads; 0: all cores */
    const char *tokenizer; /* for llama2.c models without one beside them */
} rq_common_opts;

/* The common options' table lines, for a stage struct O with a member `common`. */
#define RQ_COMMON_OPT_LINES(O)                                                                                    \
    RQ_OPT_S("--device", NULL, O, common.device, NULL, "cpu|cuda", NULL, "backend (default cpu)"),               \
        RQ_OPT_I("--threads", NULL, O, common.threads, NULL, 1, 1024, "N", "CPU threads (default: all cores)"),  \
        RQ_OPT_S("--tokenizer", NULL, O, common.tokenizer, NULL, NULL, "PATH",                                    \
                 "tokenizer file, for llama2.c models without one beside them")

/* Adapter settings shared by both training stages (recipe section "adapter"). */
typedef struct rq_adapter_opts {
    const char *type;   /* qalora | lora */
    int64_t rank;
    double alpha;
    int64_t group_size; /* QA-LoRA pooling group; 0: the quantization group of the 2-bit model */
    const char *init;   /* gaussian (RILQ), svd (LoftQ, calibrate), kaiming, xavier */
    bool train_scales;  /* the 2-bit weights' group scales train beside the adapters */
} rq_adapter_opts;

/* The adapter options' table lines (recipe section "adapter") for a stage struct O
 * with a member `adapter`; type_flag chooses the type ("--adapter" in calibrate,
 * "--type" in finetune, whose --adapter names a directory). */
#define RQ_ADAPTER_OPT_LINES(O, type_flag)                                                                        \
    RQ_OPT_S(type_flag, "adapter.type", O, adapter.type, "qalora", "qalora|lora", NULL, "qalora (mergeable) or lora"), \
        RQ_OPT_I("--rank", "adapter.rank", O, adapter.rank, "64", 1, 4096, "R", "rank r"),                          \
        RQ_OPT_N("--alpha", "adapter.alpha", O, adapter.alpha, "16", 1e-6, 1e6, "A", "alpha (scaling alpha / r)"),  \
        RQ_OPT_I("--group-size", "adapter.group_size", O, adapter.group_size, "0", 0, 1 << 20, "G",               \
                 "QA-LoRA pooling group (0: the model's quantization group, which a merge needs)"),            \
        RQ_OPT_B("--train-scales", "adapter.train_scales", O, adapter.train_scales, "false",                      \
                 "the 2-bit weights' group scales train beside the QA-LoRA adapters (PEQA /\n"                    \
                 "EfficientQAT's end-to-end step); saved with the adapters, folded by the merge;\n"               \
                 "CPU backend")

/* ---- quantize ----------------------------------------------------------------------------- */

typedef struct rq_stage_quantize_opts {
    const char *model, *out;
    const char *method, *codebook;
    int64_t group_size;
    bool clip_search, compress;
    rq_list modules;
    /* GPTQ: calibration windows (the stage-1 sampler over C4 documents c4_docs) */
    int64_t calib_windows, calib_seq_len, seed, gptq_block;
    double damp;
    const char *c4_docs, *data_root;
    /* block-wise reconstruction after rtn or gptq */
    const char *refine; /* none | clip | weights */
    int64_t refine_epochs;
    double refine_lr, refine_weight_lr;
    rq_common_opts common;
} rq_stage_quantize_opts;

typedef struct rq_stage_quantize_report {
    rq_model_quant_report quant;
    const char *method; /* as recorded in the artifact */
    int64_t group_size;
    bool clip_search;
    size_t fp32_bytes, loaded_bytes; /* weights in memory before / once reloaded */
    uint64_t disk_bytes;
    bool kept; /* the artifact was complete already (a resumed run) */
    double seconds;
} rq_stage_quantize_report;

extern const rq_opt_table rq_stage_quantize_table;
rq_status rq_stage_quantize_defaults(rq_stage_quantize_opts *o, rq_err *err);
/* keep_existing: a complete artifact at o->out is kept (rilq run resumes) */
rq_status rq_stage_quantize(const rq_stage_quantize_opts *o, bool keep_existing, rq_stage_quantize_report *rep,
                            rq_err *err);
cJSON *rq_stage_quantize_report_json(const rq_stage_quantize_report *r);

/* ---- calibrate (RILQ stage 1) ---------------------------------------------------------------- */

typedef struct rq_stage_calibrate_opts {
    bool enabled; /* recipe only: run the stage */
    const char *model, *student, *quantize, *out;
    const char *data, *c4_docs, *text, *teacher_cache, *data_root;
    const char *teacher_streams; /* auto|memory|file: where the teacher pass keeps the windows' streams */
    int64_t windows, seq_len, val_windows, seed;
    rq_adapter_opts adapter;
    double model_weight, gt_weight, lr;
    const char *scope, *model_loss;
    int64_t accum, micro_batch, eval_every, patience, max_micro_steps, head_error_windows;
    bool resume, no_memory_check;
    rq_common_opts common;
} rq_stage_calibrate_opts;

typedef struct rq_stage_calibrate_report {
    int windows, seq_len, val_windows;
    int64_t updates;
    bool stopped_early, resumed, teacher_cache_reused;
    double first_val_loss, best_val_loss; /* NaN: no validation */
    int64_t best_update;
    double head_error_before, head_error_after; /* NaN: not measured */
    int head_error_windows;
    double train_seconds, validation_seconds, teacher_seconds, tokens_per_s, seconds;
    char adapter_dir[4096], teacher_cache[4096];
} rq_stage_calibrate_report;

extern const rq_opt_table rq_stage_calibrate_table;
rq_status rq_stage_calibrate_defaults(rq_stage_calibrate_opts *o, rq_err *err);
/* The options' values and combinations (not the paths): what a recipe can be refused for up front. */
rq_status rq_stage_calibrate_check(const rq_stage_calibrate_opts *o, rq_err *err);
rq_status rq_stage_calibrate(const rq_stage_calibrate_opts *o, rq_stage_calibrate_report *rep, rq_err *err);
cJSON *rq_stage_calibrate_report_json(const rq_stage_calibrate_report *r);

/* ---- finetune (stage 2) -------------------------------------------------------------------- */

typedef struct rq_stage_finetune_opts {
    bool enabled; /* recipe only */
    const char *model, *task, *out, *adapter_dir, *fold, *data_root;
    rq_adapter_opts adapter; /* fresh adapters only */
    int64_t epochs, batch, micro_batch, max_source, max_target, limit, seed;
    double lr, weight_decay, warmup_ratio, max_grad_norm;
    const char *optim, *schedule;
    bool resume, no_memory_check;
    rq_common_opts common;
} rq_stage_finetune_opts;

typedef struct rq_stage_finetune_report {
    int64_t examples, updates;
    bool resumed;
    double last_loss, tokens_per_s, train_seconds, seconds;
    char adapter_dir[4096];
} rq_stage_finetune_report;

extern const rq_opt_table rq_stage_finetune_table;
rq_status rq_stage_finetune_defaults(rq_stage_finetune_opts *o, rq_err *err);
rq_status rq_stage_finetune_check(const rq_stage_finetune_opts *o, rq_err *err);
rq_status rq_stage_finetune(const rq_stage_finetune_opts *o, rq_stage_finetune_report *rep, rq_err *err);
cJSON *rq_stage_finetune_report_json(const rq_stage_finetune_report *r);

/* ---- merge ------------------------------------------------------------------------------- */

typedef struct rq_stage_merge_opts {
    bool enabled; /* recipe only */
    const char *artifact, *adapter, *out;
    bool requantize, no_verify, compress;
    int64_t verify_seqs, verify_len, verify_seed;
    const char *verify_tokens; /* "sampled" | "random" */
    double tolerance; /* 0: the default bound */
    rq_common_opts common;
} rq_stage_merge_opts;

typedef struct rq_stage_merge_report {
    rq_merge_report merge;
    double seconds;
} rq_stage_merge_report;

extern const rq_opt_table rq_stage_merge_table;
rq_status rq_stage_merge_defaults(rq_stage_merge_opts *o, rq_err *err);
/* Fills rep also when the verification fails (the figures exist then). */
rq_status rq_stage_merge(const rq_stage_merge_opts *o, rq_stage_merge_report *rep, rq_err *err);
cJSON *rq_stage_merge_report_json(const rq_stage_merge_report *r);

/* ---- export ------------------------------------------------------------------------------- */

typedef struct rq_stage_export_opts {
    rq_list formats; /* recipe only: every format to write */
    const char *artifact, *format, *out, *name;
    const char *dtype; /* hf: f16 | bf16 | f32 */
    rq_common_opts common;
} rq_stage_export_opts;

typedef struct rq_stage_export_report {
    rq_export_report exp;
    double seconds;
} rq_stage_export_report;

extern const rq_opt_table rq_stage_export_table;
rq_status rq_stage_export_defaults(rq_stage_export_opts *o, rq_err *err);
rq_status rq_stage_export(const rq_stage_export_opts *o, rq_stage_export_report *rep, rq_err *err);
cJSON *rq_stage_export_report_json(const rq_stage_export_report *r);

/* ---- eval ---------------------------------------------------------------------------------- */

typedef struct rq_stage_eval_opts {
    rq_list models; /* recipe only: the rows of the run's table */
    const char *model, *adapter, *out, *log_samples, *data_root, *bos, *gsm8k_format;
    rq_list tasks, ppl;
    int64_t limit, shots, max_gen_tokens, ppl_windows, batch, mc_batch_tokens;
    bool skip_bad_lines, naive, quiet;
    rq_common_opts common;
} rq_stage_eval_opts;

typedef struct rq_stage_eval_report {
    char *table; /* the results table (lm-eval's layout); owned */
    double seconds;
} rq_stage_eval_report;

extern const rq_opt_table rq_stage_eval_table;
rq_status rq_stage_eval_defaults(rq_stage_eval_opts *o, rq_err *err);
rq_status rq_stage_eval_check(const rq_stage_eval_opts *o, rq_err *err);
rq_status rq_stage_eval(const rq_stage_eval_opts *o, rq_stage_eval_report *rep, rq_err *err);
void rq_stage_eval_report_free(rq_stage_eval_report *r);

/* ---- helpers ---------------------------------------------------------------------------------- */

/* The run's memory plan (src/train/plan.h; o holds the run's settings, the device
 * and the student's q2 group size are filled from be and m) logged in one line,
 * then refused (RQ_ERR_NOMEM) when it exceeds be's free memory less `resident`
 * (bytes of the plan already allocated there). disabled: --no-memory-check. */
struct rq_backend;
struct rq_plan_opts;
rq_status rq_stage_memory_check(struct rq_backend *be, const rq_model *m, struct rq_plan_opts *o, uint64_t resident,
                                bool disabled, rq_err *err);
/* Whether that plan fits, decided as rq_stage_memory_check decides it, without a log line. */
bool rq_stage_memory_fits(struct rq_backend *be, const rq_model *m, struct rq_plan_opts *o, uint64_t resident);

/* The whole options struct as JSON (flag or key -> value), for stage.json. */
cJSON *rq_opts_to_json(rq_opt_table t, const void *o);
/* An equivalent command line "rilq CMD POS... --flag value ..." (options that differ
 * from their defaults), malloc'd; for command.txt and `rilq run --dry-run`. */
char *rq_opts_command_line(const char *cmd, rq_opt_table t, const void *o, const char *const *pos, int n_pos);

#endif
