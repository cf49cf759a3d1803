/* Fault injection (issue 16): `rilq run` is killed (SIGKILL) just before and
 * just after each of its atomic renames, through the LD_PRELOAD shim
 * tests/shim/fault_rename.c; each killed run is run again without the shim and
 * must finish with the same adapters, merged artifact, GGUF and evaluation
 * numbers as an uninterrupted run, and leave no temporary file behind. Then
 * the disk-full case: a run whose directory is a small tmpfs fails with a
 * clear message and leaves no temporaries and no stage marked done that is
 * not; skipped (with a message) where a tmpfs cannot be mounted. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "test.h"

static char bin[4096], shim[4096], recipe[4096], root[2000];

static const char *shrink = "stage1.windows=16 stage1.seq_len=64 stage1.val_windows=4 stage1.max_micro_steps=8 "
                            "stage1.accum=2 stage1.eval_every=2 stage2.limit=32 stage2.epochs=2 stage2.batch=8 "
                            "eval.limit=8 eval.ppl_windows=1 eval.models=q2,finetuned,merged export.formats=gguf";

/* `rilq run` into root/NAME (its teacher cache in root/NAME-cache), with env
 * prepended; output into root/NAME.LOG.log; returns the exit status
 * (128 + signal when killed). */
static int run(const char *name, const char *log, const char *env) {
    char cmd[16384], flat[64]; /* the log beside root, never inside the run's own (perhaps full) file system */
    snprintf(flat, sizeof flat, "%s", name);
    for (char *c = flat; *c; c++)
        if (*c == '/') *c = '_';
    snprintf(cmd, sizeof cmd,
             "cd '%s' && env OMP_WAIT_POLICY=passive %s '%s' run '%s' %s stage1.teacher_cache=%s-cache --out %s "
             "--threads 1 > %s.%s.log 2>&1",
             root, env, bin, recipe, shrink, name, name, flat, log);
    int st = system(cmd);
    return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *slurp(const char *name, const char *rel) {
    char p[8400], *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    snprintf(p, sizeof p, "%s/%s/%s", root, name, rel);
    if (rq_file_read_all(p, &text, &n, &err) != RQ_OK) return NULL;
    return text;
}

static bool same(const char *a, const char *b, const char *rel) {
    char p[8400], q[8400], *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    rq_err err = {0};
    snprintf(p, sizeof p, "%s/%s/%s", root, a, rel);
    snprintf(q, sizeof q, "%s/%s/%s", root, b, rel);
    bool eq = rq_file_read_all(p, &x, &nx, &err) == RQ_OK && rq_file_read_all(q, &y, &ny, &err) == RQ_OK && nx == ny &&
              !memcmp(x, y, nx);
    free(x);
    free(y);
    return eq;
}

/* results.json's rows of two runs hold the same ids and numbers (their paths differ). */
static bool same_rows(const char *a, const char *b) {
    char *x = slurp(a, "results.json"), *y = slurp(b, "results.json");
    cJSON *jx = x ? cJSON_Parse(x) : NULL, *jy = y ? cJSON_Parse(y) : NULL;
    const cJSON *rx = cJSON_GetObjectItemCaseSensitive(jx, "rows"), *ry = cJSON_GetObjectItemCaseSensitive(jy, "rows");
    bool eq = cJSON_IsArray(rx) && cJSON_IsArray(ry) && cJSON_GetArraySize(rx) == cJSON_GetArraySize(ry) &&
              cJSON_GetArraySize(rx) == 3;
    for (int i = 0; eq && i < cJSON_GetArraySize(rx); i++) {
        const cJSON *u = cJSON_GetArrayItem(rx, i), *v = cJSON_GetArrayItem(ry, i);
        eq = cJSON_Compare(cJSON_GetObjectItemCaseSensitive(u, "id"), cJSON_GetObjectItemCaseSensitive(v, "id"), 1) &&
             cJSON_Compare(cJSON_GetObjectItemCaseSensitive(u, "results"), cJSON_GetObjectItemCaseSensitive(v, "results"), 1);
    }
    cJSON_Delete(jx);
    cJSON_Delete(jy);
    free(x);
    free(y);
    return eq;
}

static int count_lines(const char *path) {
    char *t = NULL;
    size_t n = 0;
    rq_err err = {0};
    int lines = 0;
    if (rq_file_read_all(path, &t, &n, &err) == RQ_OK)
        for (size_t i = 0; i < n; i++) lines += t[i] == '\n';
    free(t);
    return lines;
}

/* Temporary files or directories left under root/NAME and its cache. */
static int leftovers(const char *name) {
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cd '%s' && find %s %s-cache -name '*.tmp*' 2>/dev/null | tee %s.leftovers | wc -l", root,
             name, name, name);
    FILE *f = popen(cmd, "r");
    int n = -1;
    if (f) {
        if (fscanf(f, "%d", &n) != 1) n = -1;
        pclose(f);
    }
    return n;
}

static const char *outputs[] = {"calibrate/adapter/adapter_model.safetensors", "finetune/adapter/adapter_model.safetensors",
                                "merge/artifact/model.safetensors", "export/gguf/model.gguf",
                                "quantize/artifact/model.safetensors"};

static void disk_full(void) {
    char mnt[4200];
    snprintf(mnt, sizeof mnt, "%s/tmpfs", root);
    rq_mkdir_p(mnt, NULL);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=160k") != 0) {
        fprintf(stderr, "SKIPPED the disk-full case: cannot mount a tmpfs here (%s)\n", strerror(errno));
        return;
    }
    int rc = run("tmpfs/full", "run", "");
    CHECKF(rc == 1, "a run on a full disk: exit %d (expected 1: a stage failed)", rc);
    char log[8400];
    snprintf(log, sizeof log, "%s/tmpfs_full.run.log", root);
    char *t = NULL;
    size_t n = 0;
    rq_err err = {0};
    rq_file_read_all(log, &t, &n, &err);
    CHECKF(t && strstr(t, "No space left on device"), "no clear disk-full message in %s", log);
    free(t);
    CHECK(leftovers("tmpfs/full") == 0);
    /* a stage marked done holds its outputs: the quantized artifact loads if quantize says done */
    struct stat st;
    char p[8400];
    snprintf(p, sizeof p, "%s/tmpfs/full/quantize/stage.json", root);
    if (stat(p, &st) == 0) {
        snprintf(p, sizeof p, "%s/tmpfs/full/quantize/artifact/config.json", root);
        CHECK(stat(p, &st) == 0);
    }
    umount2(mnt, MNT_DETACH);
}

int main(void) {
    rq_test_data("models/stories260K/stories260K.bin");
    rq_test_data("datasets/c4/c4-validation-2k.jsonl");
    rq_test_data("datasets/arc/ARC-Easy-Train.jsonl");
    rq_test_data("datasets/wikitext2/wiki.test.raw");
    const char *b = getenv("RQ_BINARY_DIR"), *s = getenv("RQ_SOURCE_DIR");
    snprintf(bin, sizeof bin, "%s/rilq", b && *b ? b : "../build");
    snprintf(shim, sizeof shim, "%s/fault_rename.so", b && *b ? b : "../build");
    snprintf(recipe, sizeof recipe, "%s/recipes/demo-stories260k.json", s && *s ? s : "..");
    snprintf(root, sizeof root, "%s", rq_test_out("fault"));
    struct stat st;
    if (stat(shim, &st) != 0) rq_test_missing("the fault-injection shim fault_rename.so (a build without sanitizers)");
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "umount -l '%s/tmpfs' 2>/dev/null; rm -rf '%s' && mkdir -p '%s'", root, root, root);
    CHECK(system(cmd) == 0);

    /* the uninterrupted run, its renames logged */
    char env[8400], log[4200];
    snprintf(log, sizeof log, "%s/renames.txt", root);
    snprintf(env, sizeof env, "LD_PRELOAD='%s' RQ_FAULT_LOG='%s'", shim, log);
    CHECK(run("ref", "run", env) == 0);
    const int n_renames = count_lines(log);
    CHECKF(n_renames >= 20, "only %d renames logged", n_renames);
    fprintf(stderr, "uninterrupted run: %d atomic renames\n", n_renames);

    int tried = 0, bad = 0;
    for (int k = 1; k <= n_renames; k++)
        for (int after = 0; after < 2; after++) {
            char name[64];
            snprintf(name, sizeof name, "k%02d%s", k, after ? "a" : "b");
            snprintf(env, sizeof env, "LD_PRELOAD='%s' RQ_FAULT_KILL=%d:%s", shim, k, after ? "after" : "before");
            int rc = run(name, "killed", env);
            tried++;
            if (rc != 128 + SIGKILL) {
                CHECKF(rc == 128 + SIGKILL, "%s: the run was not killed at rename %d (exit %d)", name, k, rc);
                bad++;
                continue;
            }
            rc = run(name, "rerun", "");
            bool ok = rc == 0;
            CHECKF(rc == 0, "%s: the re-run after a kill %s rename %d exited %d", name, after ? "after" : "before", k, rc);
            for (size_t i = 0; i < sizeof outputs / sizeof outputs[0]; i++) {
                bool eq = same("ref", name, outputs[i]);
                CHECKF(eq, "%s: %s differs from the uninterrupted run's", name, outputs[i]);
                ok &= eq;
            }
            bool rows = same_rows("ref", name);
            CHECKF(rows, "%s: results.json's numbers differ from the uninterrupted run's", name);
            int left = leftovers(name);
            CHECKF(left == 0, "%s: %d temporary files left (see %s/%s.leftovers)", name, left, root, name);
            ok &= rows && left == 0;
            if (!ok) bad++;
            else { /* keep the disk small: a passing run's directory is not needed */
                snprintf(cmd, sizeof cmd, "cd '%s' && rm -rf %s %s-cache", root, name, name);
                CHECK(system(cmd) == 0);
            }
        }
    fprintf(stderr, "%d kill points, %d with a difference\n", tried, bad);
    disk_full();
    return rq_test_finish();
}
