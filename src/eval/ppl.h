/* Perplexity with the protocol of the quantization papers (GPTQ-style):
 * the text tokenized once, non-overlapping windows of ctx tokens, each
 * evaluated from scratch, PPL = exp(mean over windows of the mean NLL of the
 * window's ctx-1 predictions). See docs in README ("Perplexity"). */
#ifndef RQ_PPL_H
#define RQ_PPL_H

#include "../backend/backend.h"
#include "../model/model.h"

typedef enum rq_ppl_dataset { RQ_PPL_WIKITEXT2 = 0, RQ_PPL_C4 = 1 } rq_ppl_dataset;

typedef struct rq_ppl_opts {
    rq_ppl_dataset dataset;
    const char *data_root;  /* the datasets/ folder (wikitext2/, c4/ below it) */
    int ctx;                /* window length; 0: min(model context, 2048) */
    int max_windows;        /* 0: all */
    int batch;              /* windows per forward call (default 1) */
    int c4_windows;         /* C4: windows drawn (256 in the papers) */
    int c4_doc_begin, c4_doc_end; /* C4: documents [begin, end) of the local sample that may be drawn
                                     (end 0: all), so calibration documents can be kept out */
    bool quiet;             /* no progress line */
} rq_ppl_opts;

typedef struct rq_ppl_result {
    double ppl;
    double mean_nll;
    int windows;
    int ctx;
    int64_t tokens_scored;
    int64_t text_tokens; /* tokens in the whole tokenized text (wikitext2) */
    double seconds;
    double tokens_per_s;  /* forward tokens per second */
} rq_ppl_result;

void rq_ppl_default_opts(rq_ppl_opts *o);
/* The dataset's file under the datasets/ folder; NULL for an unknown dataset. */
const char *rq_ppl_dataset_file(rq_ppl_dataset d);
rq_status rq_ppl_run(const rq_model *m, rq_backend *be, const rq_ppl_opts *o, rq_ppl_result *r, rq_err *err);

/* The window math alone, for tests: evaluate windows of tokens[n] given as
 * [n_windows][ctx] (already cut). */
rq_status rq_ppl_windows(const rq_model *m, rq_backend *be, const int *windows, int n_windows, int ctx, int batch,
                         bool quiet, rq_ppl_result *r, rq_err *err);

/* The WikiText-2 test text joined as the HF/GPTQ convention does: the raw
 * file's lines, blank lines (" \n") as empty rows, joined with "\n\n". */
rq_status rq_wikitext2_text(const char *raw_path, char **text, size_t *len, rq_err *err);

#endif
