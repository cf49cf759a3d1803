/* Mutation fuzz smoke test of the safetensors reader (fixed seed). */
#include "fuzz_common.h"
#include "io/safetensors.h"
#include "test.h"

/* JSON-significant replacements for the text part of the header. */
static void mutate_json(fuzz_rng *r, bytes *b, size_t hdr_end) {
    static const char chars[] = "{}[]\",:0123456789-.eE \\";
    for (size_t k = 1 + fz_below(r, 3); k > 0; k--) {
        size_t at = 8 + fz_below(r, hdr_end - 8);
        b->p[at] = (uint8_t)chars[fz_below(r, sizeof chars - 1)];
    }
}

int main(void) {
    char dir[4096], path[4200];
    fz_scratch(dir, sizeof dir, "fuzz-st");
    rq_err err = {0};
    CHECK_OK(rq_mkdir_p(dir, &err), &err);
    snprintf(path, sizeof path, "%s/seed.safetensors", dir);
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[4] = {0x3c00, 0x4000, 0x7c00, 0x0001}, s = 0x3f80;
    rq_st_tensor ts[] = {{"w.f32", RQ_F32, 2, {2, 3}, a}, {"w.f16", RQ_F16, 1, {4}, h}, {"s", RQ_BF16, 0, {0}, &s}};
    CHECK_OK(rq_safetensors_write(path, ts, 3, NULL, 0, &err), &err);
    bytes seed = {0}, cur = {0};
    char *text = NULL;
    size_t size = 0;
    CHECK_OK(rq_file_read_all(path, &text, &size, &err), &err);
    by_put(&seed, text, size);
    free(text);
    size_t hdr_end = 8 + (size_t)rq_rd_u64(seed.p);

    fuzz_rng r = {0x5afe7e45};
    int accepted = 0, rejected = 0;
    const int iters = 20000;
    for (int it = 0; it < iters; it++) {
        if (fz_below(&r, 3) == 0) {
            cur.n = 0;
            by_put(&cur, seed.p, seed.n);
            mutate_json(&r, &cur, hdr_end);
        } else {
            fz_mutate(&r, &seed, &cur, hdr_end);
        }
        write_bytes(path, cur.p, cur.n);
        rq_safetensors f;
        rq_tensor_table tab = {0};
        memset(&err, 0, sizeof err);
        if (rq_safetensors_open(path, &f, &tab, &err) == RQ_OK) {
            accepted++;
            for (int i = 0; i < tab.count; i++) {
                int64_t n = rq_tensor_numel(&tab.items[i]);
                if (n < 0 || n > (1 << 20)) continue;
                float *out = malloc((size_t)(n ? n : 1) * sizeof *out);
                rq_err e2 = {0};
                (void)rq_tensor_to_f32(&tab.items[i], out, &e2);
                free(out);
            }
            rq_safetensors_close(&f);
        } else {
            rejected++;
            CHECKF(err.msg[0] != 0, "iteration %d: error without a message", it);
            CHECK(tab.count == 0);
        }
        rq_tensor_table_free(&tab);
    }
    fprintf(stderr, "fuzz_safetensors: %d inputs, %d accepted, %d rejected\n", iters, accepted, rejected);
    CHECK(rejected > iters / 4);
    unlink(path);
    rmdir(dir);
    by_free(&seed);
    by_free(&cur);
    return rq_test_finish();
}
