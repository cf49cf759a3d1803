/* Reliability of the `rilq` command under damaged input, kills and careless
 * use (issue 16), on stories260K through the command line: each case is the
 * reproduction of one reported gap.
 *   1  a model with one NaN norm weight: calibrate and finetune stop with an
 *      error naming the step and the first projection that went non-finite,
 *      keep no NaN adapters, write no bare nan into metrics.jsonl; eval and
 *      ppl refuse to score it.
 *   2  a flipped byte in the teacher cache: the next calibrate rebuilds the
 *      cache and trains to the same adapters; a flipped bit in checkpoint.bin:
 *      --resume refuses it and says to delete it. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "test.h"

static char bin[4096], root[4096], model[4096], tok[4096];

static void path(char *buf, const char *rel) { snprintf(buf, 4096, "%.2000s/%.2000s", root, rel); }

/* Run a shell command (printf-style) with stdout and stderr into root/LOG;
 * returns the exit status (128 + signal when killed). */
__attribute__((format(printf, 2, 3))) static int sh(const char *log, const char *fmt, ...) {
    char cmd[16384], full[16384 + 8300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "cd '%s' && ( %s ) > '%s/%s' 2>&1", root, cmd, root, log);
    int st = system(full);
    int rc = st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    fprintf(stderr, "[%d] %s\n", rc, cmd);
    return rc;
}

static char *slurp(const char *rel) {
    char p[4096], *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    path(p, rel);
    if (rq_file_read_all(p, &text, &n, &err) != RQ_OK) return NULL;
    return text;
}

static bool has(const char *rel, const char *needle) {
    char *t = slurp(rel);
    bool yes = t && strstr(t, needle);
    if (!yes) fprintf(stderr, "  %s does not contain '%s'\n", rel, needle);
    free(t);
    return yes;
}

static bool exists(const char *rel) {
    char p[4096];
    struct stat st;
    path(p, rel);
    return lstat(p, &st) == 0;
}

/* Every line of a JSON-lines file parses (no bare nan / inf). */
static bool jsonl_valid(const char *rel) {
    char *t = slurp(rel);
    if (!t) return false;
    bool ok = true;
    for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        if (!j) {
            fprintf(stderr, "  %s: not JSON: %s\n", rel, line);
            ok = false;
        }
        cJSON_Delete(j);
    }
    free(t);
    return ok;
}

/* A copy of stories260K with the first attention-norm weight of layer 0 set to NaN. */
static void make_nan_model(void) {
    char p[4096];
    CHECK(sh("cp.log", "cp '%s' nan.bin && cp '%s' tok512.bin && cp '%s' good.bin", model, tok, model) == 0);
    path(p, "nan.bin");
    FILE *f = fopen(p, "r+b");
    int32_t hdr[7] = {0};
    CHECK(f && fread(hdr, 4, 7, f) == 7);
    long vocab = hdr[5] < 0 ? -hdr[5] : hdr[5];
    float nan_value = NAN;
    CHECK(f && fseek(f, 28 + vocab * hdr[0] * 4, SEEK_SET) == 0 && fwrite(&nan_value, 4, 1, f) == 1);
    if (f) fclose(f);
}

#define CALIB_SMALL "--windows 8 --seq-len 32 --val-windows 2 --max-micro-steps 8 --accum 2 --eval-every 2 --rank 4 --threads 1 --cache cache"

static void case_nan(void) {
    make_nan_model();
    /* calibrate: the teacher pass refuses to cache non-finite targets */
    int rc = sh("nan-calib.log", "'%s' calibrate nan.bin --tokenizer tok512.bin --quantize rtn --out nan-calib " CALIB_SMALL,
                bin);
    CHECKF(rc != 0 && rc < 128, "calibrate on a NaN model: exit %d", rc);
    CHECK(has("nan-calib.log", "not finite"));
    CHECK(has("nan-calib.log", "teacher"));
    CHECK(!exists("nan-calib/adapter"));
    if (exists("nan-calib/metrics.jsonl")) CHECK(jsonl_valid("nan-calib/metrics.jsonl"));
    /* finetune on the 2-bit NaN model */
    CHECK(sh("nan-q.log", "'%s' quantize nan.bin --tokenizer tok512.bin --method rtn --out nan-q --threads 1", bin) == 0);
    rc = sh("nan-ft.log", "'%s' finetune nan-q --task arc_easy --out nan-ft --limit 16 --batch 4 --rank 4 --threads 1", bin);
    CHECKF(rc != 0 && rc < 128, "finetune on a NaN model: exit %d", rc);
    CHECK(has("nan-ft.log", "step 1"));
    CHECK(has("nan-ft.log", "not finite"));
    CHECK(!exists("nan-ft/adapter"));
    if (exists("nan-ft/metrics.jsonl")) CHECK(jsonl_valid("nan-ft/metrics.jsonl"));
    /* eval and ppl refuse to score it */
    rc = sh("nan-eval.log", "'%s' eval nan-q --tasks arc_easy --limit 8 --out nan-eval.json --threads 1", bin);
    CHECKF(rc != 0 && rc < 128, "eval of a NaN model: exit %d", rc);
    CHECK(has("nan-eval.log", "not finite"));
    CHECK(!exists("nan-eval.json"));
    rc = sh("nan-ppl.log", "'%s' ppl nan-q --dataset wikitext2 --max-windows 1 --threads 1", bin);
    CHECKF(rc != 0 && rc < 128, "ppl of a NaN model: exit %d", rc);
    CHECK(has("nan-ppl.log", "not finite"));
}

static bool same_files(const char *a, const char *b) {
    char *x = slurp(a), *y = slurp(b);
    bool same = x && y && !strcmp(x, y);
    free(x);
    free(y);
    return same;
}

/* Flip one byte at fraction `where` of the file root/REL. */
static bool flip_byte(const char *rel, double where) {
    char p[4096];
    path(p, rel);
    FILE *f = fopen(p, "r+b");
    if (!f) return false;
    fseek(f, 0, SEEK_END);
    long at = (long)(where * (double)ftell(f));
    int c = fseek(f, at, SEEK_SET) == 0 ? fgetc(f) : EOF;
    bool ok = c != EOF && fseek(f, at, SEEK_SET) == 0 && fputc(c ^ 0x10, f) != EOF;
    fclose(f);
    return ok;
}

#define CALIB_GOOD "'%s' calibrate good.bin --tokenizer tok512.bin --quantize rtn " CALIB_SMALL

static void case_integrity(void) {
    CHECK(sh("int-a.log", CALIB_GOOD " --out int-a", bin) == 0);
    /* the cache entry, as the log of run a names it */
    char *log = slurp("int-a.log"), name[256] = "";
    const char *p = log ? strstr(log, "cache/teacher-") : NULL;
    if (p) sscanf(p, "cache/%64[^ ,]", name);
    free(log);
    char rel[300];
    snprintf(rel, sizeof rel, "cache/%s", name);
    CHECK(flip_byte(rel, 0.5));
    int rc = sh("int-b.log", CALIB_GOOD " --out int-b", bin);
    CHECKF(rc == 0, "calibrate with a damaged teacher cache: exit %d", rc);
    CHECK(has("int-b.log", "damaged"));
    CHECK(has("int-b.log", "rebuilding"));
    CHECKF(same_files("int-a/adapter/adapter_model.safetensors", "int-b/adapter/adapter_model.safetensors"),
           "adapters trained on a rebuilt cache differ from the first run's");
    /* a flipped bit in a checkpoint: refused by --resume, with what to delete */
    CHECK(flip_byte("int-a/checkpoint.bin", 0.5));
    rc = sh("int-c.log", CALIB_GOOD " --out int-a --resume --max-micro-steps 12", bin);
    CHECKF(rc != 0 && rc < 128, "resume from a damaged checkpoint: exit %d", rc);
    CHECK(has("int-c.log", "damaged checkpoint") && has("int-c.log", "delete"));
}

int main(void) {
    snprintf(model, sizeof model, "%s", rq_test_data("models/stories260K/stories260K.bin"));
    snprintf(tok, sizeof tok, "%s", rq_test_data("models/stories260K/tok512.bin"));
    rq_test_data("datasets/c4/c4-validation-2k.jsonl");
    rq_test_data("datasets/arc/ARC-Easy-Train.jsonl");
    rq_test_data("datasets/wikitext2/wiki.test.raw");
    const char *b = getenv("RQ_BINARY_DIR");
    snprintf(bin, sizeof bin, "%s/rilq", b && *b ? b : "../build");
    snprintf(root, sizeof root, "%s", rq_test_out("reliability"));
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", root, root);
    CHECK(system(cmd) == 0);
    case_nan();
    case_integrity();
    return rq_test_finish();
}
