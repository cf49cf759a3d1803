/* Training that goes non-finite stops (issue 16, item 1): a teacher target
 * that turns NaN at step 4 fails rq_train with a message naming the step, the
 * checkpoint on disk stays the last finite one (step 3), metrics.jsonl stays
 * valid JSON; a NaN weight is named by the first projection whose output went
 * non-finite. JSON numbers are never written as nan / inf. */
#include <math.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "train/trainer.h"
#include "test.h"

#define T_LEN 8
#define DIM 16

typedef struct poison {
    int tokens[T_LEN + 1];
    int64_t calls, poison_from; /* example fetches before the teacher turns NaN */
} poison;

static rq_status get_example(void *user, int64_t ex, int *tokens, int *targets, float *teacher, int *len, rq_err *err) {
    (void)ex, (void)len, (void)err;
    poison *p = user;
    memcpy(tokens, p->tokens, sizeof(int) * T_LEN);
    memcpy(targets, p->tokens + 1, sizeof(int) * T_LEN);
    if (teacher)
        for (int i = 0; i < T_LEN * DIM; i++) teacher[i] = p->calls >= p->poison_from ? NAN : 0.1f * (float)(i % 7);
    p->calls++;
    return RQ_OK;
}

static bool jsonl_valid(const char *path) {
    char *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    if (rq_file_read_all(path, &text, &n, &err) != RQ_OK) return false;
    bool ok = true;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        if (!j) fprintf(stderr, "not JSON: %s\n", line);
        ok &= j != NULL;
        cJSON_Delete(j);
    }
    free(text);
    return ok;
}

/* The step counter of a checkpoint.bin (header: magic[8], version, has_best, step). */
static long long ckpt_step(const char *path) {
    FILE *f = fopen(path, "rb");
    uint8_t h[24];
    long long step = -1;
    if (f && fread(h, 1, sizeof h, f) == sizeof h) step = (long long)rq_rd_u64(h + 16);
    if (f) fclose(f);
    return step;
}

int main(void) {
    rq_err err = {0};
    rq_config cfg = {.dim = DIM, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 4,
                     .vocab_size = 31, .max_seq_len = 32, .norm_eps = 1e-5f, .rope_theta = 10000.0f};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    CHECK_OK(rq_model_random(&cfg, 11, &m, &err), &err);
    CHECK_OK(rq_backend_cpu_create(1, &be, &err), &err);
    if (!m || !be) return rq_test_finish();
    rq_adapter_config ac = {.type = RQ_ADAPTER_QALORA, .r = 4, .alpha = 8, .group_size = 4,
                            .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = 3};
    rq_adapter_set *ad = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    poison p = {.poison_from = 3 * 2}; /* accum 2: steps 1..3 are finite, step 4 is not */
    for (int t = 0; t <= T_LEN; t++) p.tokens[t] = (t * 7 + 3) % cfg.vocab_size;
    rq_train_data train = {get_example, &p, 4};
    char dir[4000], ckpt[4096], metrics[4096];
    snprintf(dir, sizeof dir, "%s", rq_test_out("nonfinite"));
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.bin", dir);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    unlink(ckpt);
    rq_train_opts o;
    rq_train_default_opts(&o);
    o.seq_len = T_LEN, o.micro_batch = 1, o.accum = 2, o.max_steps = 6, o.shuffle = false;
    o.ce_weight = 0.5, o.mse_weight = 0.5, o.schedule.lr = 1e-3, o.quiet = true;
    o.checkpoint_every = 1, o.out_dir = dir;
    rq_train_result r;
    rq_status st = rq_train(m, be, ad, &train, NULL, &o, NULL, NULL, &r, &err);
    CHECKF(st == RQ_ERR_NUMERIC, "status %d: %s", st, err.msg);
    CHECKF(strstr(err.msg, "step 4") && strstr(err.msg, "not finite"), "message: %s", err.msg);
    CHECKF(strstr(err.msg, "teacher"), "message does not blame the teacher targets: %s", err.msg);
    CHECKF(ckpt_step(ckpt) == 3, "checkpoint at step %lld, expected the last finite step 3", ckpt_step(ckpt));
    CHECK(jsonl_valid(metrics));

    /* a NaN weight in layer 1's gate projection: named in the message */
    rq_adapter_set_free(ad);
    ad = NULL;
    CHECK_OK(rq_adapter_set_create(&m->cfg, &ac, be, &ad, &err), &err);
    m->layers[1].w_gate.w[5] = NAN;
    p.calls = 0, p.poison_from = 1 << 30;
    o.out_dir = NULL;
    st = rq_train(m, be, ad, &train, NULL, &o, NULL, NULL, &r, &err);
    CHECKF(st == RQ_ERR_NUMERIC, "status %d: %s", st, err.msg);
    CHECKF(strstr(err.msg, "step 1") && strstr(err.msg, "layer 1 gate_proj"), "message: %s", err.msg);

    /* JSON numbers: finite values as %.9g, the rest as null */
    char buf[32];
    CHECK(!strcmp(rq_json_number(buf, 1.5), "1.5"));
    CHECK(!strcmp(rq_json_number(buf, NAN), "null"));
    CHECK(!strcmp(rq_json_number(buf, -INFINITY), "null"));

    rq_adapter_set_free(ad);
    rq_model_free(m);
    rq_backend_destroy(be);
    return rq_test_finish();
}
