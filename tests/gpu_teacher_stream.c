/* The layer-streamed teacher pass on the CUDA backend against the CPU.
 *
 * The tiny GGUF of tests/io_fixtures.h (Q8_0 embedding, Q4_0 / Q4_1 / F32
 * projections, dequantized a layer at a time), 6 windows of 24 tokens:
 *  1. the cache the streamed pass writes on the device (the layer rebound
 *     after every load, residual streams in memory and in a scratch file)
 *     against the CPU's whole-model cache: every window's final hidden states
 *     within 1e-2 relative in norm (bf16 GEMM inputs, ~2e-3 relative rounding
 *     per input, through the model's layers; gpu_train.c's bound for a loss);
 *  2. the two device caches (streams in memory, in a file) byte-identical: the
 *     same ops on the same values in the same order.
 *
 * Skips (exit 77) when the cuda backend cannot be created, also under CI=true.
 * RILQ_GPU_TEST_DEVICE=cpu runs it against a second CPU backend (self-check:
 * then 1. holds with 0 difference). */
#include <math.h>

#include "io_fixtures.h"
#include "load/load.h"
#include "test.h"
#include "train/calib.h"

enum { T_WIN = 24, N_WIN = 6 };

static float *read_cache(const char *path, int dim) {
    rq_err err = {0};
    rq_teacher_cache *tc = NULL;
    bool stale = false;
    float *h = malloc(sizeof(float) * (size_t)N_WIN * T_WIN * dim);
    CHECK_OK(rq_teacher_cache_open(path, 9, dim, T_WIN, N_WIN, &tc, &stale, &err), &err);
    for (int k = 0; tc && k < N_WIN; k++)
        CHECK_OK(rq_teacher_cache_read(tc, k, h + (size_t)k * T_WIN * dim, &err), &err);
    rq_teacher_cache_close(tc);
    return h;
}

int main(void) {
    rq_err err = {0};
    rq_backend *gpu = NULL, *cpu = NULL;
    const char *dev = getenv("RILQ_GPU_TEST_DEVICE") ? getenv("RILQ_GPU_TEST_DEVICE") : "cuda";
    if (rq_backend_create(dev, 0, &gpu, &err) != RQ_OK) {
        printf("SKIPPED: cuda backend unavailable: %s\n", err.msg);
        return 77;
    }
    CHECK_OK(rq_backend_cpu_create(0, &cpu, &err), &err);
    tiny_gguf tg;
    tiny_gguf_build(&tg);
    const char *model = rq_test_out("gpu_stream_tiny.gguf");
    CHECK(write_bytes(model, tg.file.p, tg.file.n));
    by_free(&tg.file);
    rq_model *m = NULL;
    rq_checkpoint ck;
    CHECK_OK(rq_model_load(model, NULL, &m, &err), &err);
    CHECK_OK(rq_model_open_checkpoint(model, NULL, &ck, &err), &err);
    if (!m || !cpu || err.code) return rq_test_finish();
    const int dim = m->cfg.dim;
    int tokens[N_WIN * T_WIN];
    for (int i = 0; i < N_WIN * T_WIN; i++) tokens[i] = (i * 7 + 3) % m->cfg.vocab_size;
    rq_calib_windows w = {.T = T_WIN, .n = N_WIN, .n_val = 1, .tokens = tokens};
    char ref[4096], mem[4096], file[4096];
    snprintf(ref, sizeof ref, "%s", rq_test_out("gpu_stream_ref.rqt"));
    snprintf(mem, sizeof mem, "%s", rq_test_out("gpu_stream_mem.rqt"));
    snprintf(file, sizeof file, "%s", rq_test_out("gpu_stream_file.rqt"));
    CHECK_OK(rq_teacher_cache_write(m, cpu, &w, 9, "k", ref, true, &err), &err);
    CHECK_OK(rq_teacher_cache_write_streamed(&ck.cfg, ck.table, gpu, &w, 9, "k", mem, false, true, NULL, &err), &err);
    CHECK_OK(rq_teacher_cache_write_streamed(&ck.cfg, ck.table, gpu, &w, 9, "k", file, true, true, NULL, &err), &err);
    float *a = read_cache(ref, dim), *b = read_cache(mem, dim), *c = read_cache(file, dim);
    for (int k = 0; k < N_WIN; k++) {
        const size_t off = (size_t)k * T_WIN * dim, n = (size_t)T_WIN * dim;
        double d = 0, r = 0;
        for (size_t i = 0; i < n; i++) d += ((double)b[off + i] - a[off + i]) * ((double)b[off + i] - a[off + i]),
                                        r += (double)a[off + i] * a[off + i];
        CHECKF(sqrt(d / (r > 0 ? r : 1)) <= 1e-2, "window %d: the device's streamed hidden states differ from the "
               "CPU's by %.3g relative", k, sqrt(d / (r > 0 ? r : 1)));
    }
    CHECK(memcmp(b, c, sizeof(float) * (size_t)N_WIN * T_WIN * dim) == 0);
    free(a);
    free(b);
    free(c);
    rq_checkpoint_close(&ck);
    rq_model_free(m);
    rq_backend_destroy(gpu);
    rq_backend_destroy(cpu);
    return rq_test_finish();
}
