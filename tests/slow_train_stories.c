/* A short QA-LoRA run on the real stories260K model lowers its held-out
 * perplexity on WikiText-2 text (windows of the validation file; the last ones
 * held out), through the same trainer as `rilq train-lm`. */
#include <math.h>

#include "train/trainer.h"
#include "test.h"

typedef struct text_windows {
    const int *ids;
    int T;
    int64_t first;
} text_windows;

static rq_status get_window(void *user, int64_t ex, int *tokens, int *targets, float *teacher, int *len, rq_err *err) {
    const text_windows *w = user;
    memcpy(tokens, w->ids + (w->first + ex) * w->T, sizeof(int) * w->T);
    memcpy(targets, w->ids + (w->first + ex) * w->T + 1, sizeof(int) * w->T);
    return RQ_OK;
}

int main(void) {
    const char *model = rq_test_data("models/stories260K/stories260K.bin");
    const char *text_path = rq_test_data("datasets/wikitext2/wiki.valid.raw");
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    rq_adapter_set *ad = NULL;
    char *text = NULL;
    size_t len = 0;
    int *ids = NULL, n = 0;
    CHECK_OK(rq_model_load(model, NULL, &m, &err), &err);
    CHECK_OK(rq_backend_cpu_create(0, &be, &err), &err);
    CHECK_OK(rq_file_read_all(text_path, &text, &len, &err), &err);
    if (!m || !be || !text) return rq_test_finish();
    CHECK_OK(rq_tokenizer_encode(m->tok, text, len < 200000 ? len : 200000, RQ_BOS_DEFAULT, &ids, &n, &err), &err);
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 16, .alpha = 16, .group_size = 32,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 1};
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    const int T = 128;
    int64_t n_windows = (n - 1) / T, n_val = 8;
    text_windows tw = {ids, T, 0}, vw = {ids, T, n_windows - n_val};
    rq_train_data train = {get_window, &tw, n_windows - n_val}, val = {get_window, &vw, n_val};
    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = T;
    o.accum = 4;
    o.max_steps = 20;
    o.eval_every = 10;
    o.schedule.lr = 2e-3;
    o.quiet = true;
    rq_train_result r;
    CHECK_OK(rq_train(m, be, ad, &train, &val, &o, NULL, NULL, &r, &err), &err);
    printf("stories260K QA-LoRA r=16, 20 steps of 4 x %d tokens: held-out perplexity %.3f -> %.3f\n", T,
           exp(r.first_val), exp(r.best_val));
    CHECKF(r.best_val < r.first_val - 0.02, "held-out loss %.4f -> %.4f did not drop", r.first_val, r.best_val);
    free(text);
    free(ids);
    rq_adapter_set_free(ad);
    rq_backend_destroy(be);
    rq_model_free(m);
    return rq_test_finish();
}
