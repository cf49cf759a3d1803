/* Mutation fuzz smoke test of the GGUF reader and the whole GGUF model load
 * (metadata, tensor table, config, conversion, tokenizer), fixed seed. */
#include "fuzz_common.h"
#include "io/gguf.h"
#include "model/model.h"
#include "test.h"

int main(void) {
    char dir[4096], path[4200];
    fz_scratch(dir, sizeof dir, "fuzz-gguf");
    rq_err err = {0};
    CHECK_OK(rq_mkdir_p(dir, &err), &err);
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    tiny_gguf tg;
    tiny_gguf_build(&tg);
    CHECK(write_bytes(path, tg.file.p, tg.file.n));
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err); /* the seed itself loads */
    rq_model_free(m);
    /* The header (KVs + tensor infos) ends where the 32-aligned data begins. */
    rq_gguf g;
    size_t hdr_end = tg.file.n;
    if (rq_gguf_open(path, &g, &err) == RQ_OK) {
        hdr_end = (size_t)g.data_offset;
        rq_gguf_close(&g);
    }

    fuzz_rng r = {0x6067f};
    bytes cur = {0};
    int accepted = 0, rejected = 0, loaded = 0;
    const int iters = 10000;
    for (int it = 0; it < iters; it++) {
        fz_mutate(&r, &tg.file, &cur, hdr_end);
        write_bytes(path, cur.p, cur.n);
        memset(&err, 0, sizeof err);
        if (rq_gguf_open(path, &g, &err) != RQ_OK) {
            rejected++;
            CHECKF(err.msg[0] != 0, "iteration %d: error without a message", it);
            continue;
        }
        accepted++;
        /* Every metadata getter on every key must answer without crashing. */
        for (int64_t k = 0; k < g.n_kv; k++) {
            const char *key = g.kv[k].key;
            uint32_t u;
            int64_t i64;
            float f;
            bool b;
            char *s = NULL;
            rq_gguf_strings strs;
            float *fa = NULL;
            int32_t *ia = NULL;
            int64_t n;
            rq_err e = {0};
            (void)rq_gguf_get_u32(&g, key, &u, &e);
            (void)rq_gguf_get_i64(&g, key, &i64, &e);
            (void)rq_gguf_get_f32(&g, key, &f, &e);
            (void)rq_gguf_get_bool(&g, key, &b, &e);
            if (rq_gguf_get_str(&g, key, &s, &e) == RQ_OK) free(s);
            if (rq_gguf_get_str_array(&g, key, &strs, &e) == RQ_OK) rq_gguf_strings_free(&strs);
            if (rq_gguf_get_f32_array(&g, key, &fa, &n, &e) == RQ_OK) free(fa);
            if (rq_gguf_get_i32_array(&g, key, &ia, &n, &e) == RQ_OK) free(ia);
        }
        rq_gguf_close(&g);
        if (rq_model_load(path, NULL, &m, &err) == RQ_OK) {
            loaded++;
            rq_model_free(m);
        } else {
            CHECKF(err.msg[0] != 0, "iteration %d: load error without a message", it);
        }
    }
    fprintf(stderr, "fuzz_gguf: %d inputs, %d opened, %d rejected, %d loaded as models\n", iters, accepted, rejected, loaded);
    CHECK(rejected > iters / 4 && accepted > iters / 20);
    unlink(path);
    rmdir(dir);
    by_free(&tg.file);
    by_free(&cur);
    return rq_test_finish();
}
