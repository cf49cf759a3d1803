/* The teacher pass of `rilq calibrate` alone, for tools/bench/bench_teacher.sh:
 *
 *   bench_teacher MODEL OUT.rqt --mode whole|memory|file [--windows N] [--val N] [--seq-len T]
 *                 [--threads K] [--data-root DIR]
 *
 * Draws the calibration windows as rilq calibrate does (C4 documents 0:1000 of
 * $RILQ_DATA, seed 42), then writes the teacher cache OUT.rqt:
 *   whole   the whole model loaded in fp32 (rq_model_load), rq_teacher_cache_write
 *   memory  layer-streamed (rq_teacher_cache_write_streamed), residual streams in memory
 *   file    layer-streamed, residual streams in an unlinked scratch file beside OUT
 * and prints key=value lines: the pass's seconds, tokens/s and the memory the
 * plan gives the teacher's own buffers. Peak RSS is measured from outside
 * (/usr/bin/time -f %M in the script). Asserts nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "load/load.h"
#include "train/calib.h"

static int usage(void) {
    fprintf(stderr, "usage: bench_teacher MODEL OUT.rqt --mode whole|memory|file [--windows N] [--val N] "
                    "[--seq-len T] [--threads K] [--data-root DIR]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 3) return usage();
    const char *model = argv[1], *out = argv[2], *mode = NULL, *root = getenv("RILQ_DATA");
    int windows = 320, val = 64, T = 512, threads = 1;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--mode")) mode = argv[i + 1];
        else if (!strcmp(argv[i], "--windows")) windows = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--val")) val = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq-len")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--data-root")) root = argv[i + 1];
        else return usage();
    }
    if (!mode || (strcmp(mode, "whole") && strcmp(mode, "memory") && strcmp(mode, "file")) || !root) return usage();
    rq_err err = {0};
    rq_backend *be = NULL;
    rq_model *m = NULL;
    rq_checkpoint ck;
    memset(&ck, 0, sizeof ck);
    rq_calib_windows w = {0};
    char data[4096];
    snprintf(data, sizeof data, "%s/datasets/c4/c4-validation-2k.jsonl", root);
    rq_calib_opts co;
    rq_calib_default_opts(&co);
    co.path = data, co.n_windows = windows, co.n_val = val, co.seq_len = T;
    const bool whole = !strcmp(mode, "whole");
    rq_status st = rq_backend_create("cpu", threads, &be, &err);
    if (st == RQ_OK) st = whole ? rq_model_load(model, NULL, &m, &err) : rq_model_open_checkpoint(model, NULL, &ck, &err);
    const rq_config *cfg = whole ? (m ? &m->cfg : NULL) : &ck.cfg;
    if (st == RQ_OK) st = rq_calib_windows_build(whole ? m->tok : ck.tok, &co, &w, &err);
    double t0 = rq_now_seconds(), seconds = 0;
    if (st == RQ_OK) {
        if (whole) st = rq_teacher_cache_write(m, be, &w, 42, "bench", out, true, &err);
        else
            st = rq_teacher_cache_write_streamed(&ck.cfg, ck.table, be, &w, 42, "bench", out, !strcmp(mode, "file"),
                                                 true, NULL, &err);
        seconds = rq_now_seconds() - t0;
    }
    if (st == RQ_OK) {
        rq_teacher_stream_size sz;
        rq_teacher_stream_size_of(cfg, w.n, w.T, !strcmp(mode, "file"), &sz);
        printf("mode=%s\nwindows=%d\nseq_len=%d\nthreads=%d\nseconds=%.3f\ntokens_per_s=%.1f\n", mode, w.n, w.T,
               threads, seconds, (double)w.n * w.T / seconds);
        printf("fp32_model_bytes=%llu\nstream_buffers_bytes=%llu\n",
               (unsigned long long)rq_config_n_params(cfg) * 4ull, (unsigned long long)sz.total);
    } else {
        fprintf(stderr, "bench_teacher: %s\n", err.msg);
    }
    rq_calib_windows_free(&w);
    rq_checkpoint_close(&ck);
    rq_model_free(m);
    rq_backend_destroy(be);
    return st == RQ_OK ? 0 : 1;
}
