/* Mutation fuzz smoke test of the llama2.c loader (fixed seed). */
#include "fuzz_common.h"
#include "io/llama2c.h"
#include "model/model.h"
#include "test.h"

int main(void) {
    char dir[4096], path[4200];
    fz_scratch(dir, sizeof dir, "fuzz-l2c");
    rq_err err = {0};
    CHECK_OK(rq_mkdir_p(dir, &err), &err);
    snprintf(path, sizeof path, "%s/m.bin", dir);
    bytes seeds[2], cur = {0};
    tiny_llama2c_build(&seeds[0], false);
    tiny_llama2c_build(&seeds[1], true);
    fuzz_rng r = {0x11a3a2c};
    int loaded = 0, rejected = 0;
    const int iters = 10000;
    for (int it = 0; it < iters; it++) {
        const bytes *seed = &seeds[it & 1];
        int mode = (int)fz_below(&r, 3);
        if (mode == 0) { /* one header field set to an interesting int32 */
            cur.n = 0;
            by_put(&cur, seed->p, seed->n);
            const int32_t v[] = {0, 1, -1, 2, 3, 4, 7, 8, 64, 1 << 16, 1 << 30, INT32_MAX, INT32_MIN, -10, 1000003};
            fz_put_u32(cur.p + 4 * fz_below(&r, 7), (uint32_t)v[fz_below(&r, sizeof v / sizeof v[0])]);
        } else if (mode == 1) { /* append or cut a few floats */
            cur.n = 0;
            by_put(&cur, seed->p, seed->n);
            size_t k = 4 * (1 + fz_below(&r, 16));
            if (fz_below(&r, 2)) for (size_t i = 0; i < k; i++) by_u8(&cur, 0);
            else cur.n = cur.n > k ? cur.n - k : 0;
        } else {
            fz_mutate(&r, seed, &cur, 28);
        }
        write_bytes(path, cur.p, cur.n);
        rq_model *m = NULL;
        memset(&err, 0, sizeof err);
        if (rq_model_load(path, NULL, &m, &err) == RQ_OK) {
            loaded++;
            rq_model_free(m);
        } else {
            rejected++;
            CHECKF(err.msg[0] != 0, "iteration %d: error without a message", it);
        }
    }
    fprintf(stderr, "fuzz_llama2c: %d inputs, %d loaded, %d rejected\n", iters, loaded, rejected);
    CHECK(rejected > iters / 4 && loaded > 0);
    unlink(path);
    rmdir(dir);
    by_free(&seeds[0]);
    by_free(&seeds[1]);
    by_free(&cur);
    return rq_test_finish();
}
