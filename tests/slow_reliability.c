/* Reliability of the `rilq` command under damaged input, kills and careless
 * use (issue 16), on stories260K through the command line: each case is the
 * reproduction of one reported gap.
 *   1  a model with one NaN norm weight: calibrate and finetune stop with an
 *      error naming the step and the first projection that went non-finite,
 *      keep no NaN adapters, write no bare nan into metrics.jsonl; eval and
 *      ppl refuse to score it.
 *   2  a flipped byte in the teacher cache: the next calibrate rebuilds the
 *      cache and trains to the same adapters; a flipped bit in checkpoint.bin:
 *      --resume refuses it and says to delete it.
 *   4  stale temporary files of killed writers (dead pids) in a run directory
 *      and in the teacher cache are removed by the next run; others' kept.
 *   6  outputs checked before the work: export --out an existing file is
 *      refused and the file kept; eval and merge refuse a bad --out at once;
 *      run --out an unrelated directory deletes nothing of it; an empty
 *      quantize/artifact left in a run directory is not taken as done.
 *   8  a FIFO given as the model fails at once (it blocked forever); a
 *      directory given as the recipe is named as such (not "read error"); a
 *      0-byte or bad-magic .gguf is reported as a GGUF problem; an artifact
 *      whose config.json group_size was changed to another that fits every
 *      tensor's shape (64 -> 80 on stories260K) is refused.
 *   7  under `ulimit -v 300000` a command fails with a message that names the
 *      limit, or works; it never spins (OpenBLAS's start-up looped forever).
 *   5  a re-run may change keys that affect only stages not yet finished
 *      (their partial outputs are discarded, the run says which); a key that
 *      a finished stage used is still refused, naming that stage. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
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

/* A pid that no process has: a child that has exited and been reaped. */
static long dead_pid(void) {
    pid_t c = fork();
    if (c == 0) _exit(0);
    waitpid(c, NULL, 0);
    return (long)c;
}

static bool plant(const char *rel) {
    char p[4096];
    path(p, rel);
    FILE *f = fopen(p, "wb");
    if (f) fputs("stale", f);
    return f && fclose(f) == 0;
}

static char recipe[4096];
static const char *shrink = "stage1.windows=16 stage1.seq_len=64 stage1.val_windows=4 stage1.max_micro_steps=8 "
                            "stage1.accum=2 stage1.eval_every=2 stage2.limit=32 stage2.epochs=1 stage2.batch=8 "
                            "eval.limit=8 eval.ppl_windows=1 eval.models=q2 stage1.teacher_cache=cache";

static int run_recipe(const char *log, const char *out, const char *extra) {
    return sh(log, "'%s' run '%s' %s %s --out '%s' --threads 1", bin, recipe, shrink, extra, out);
}

static void case_outputs(void) {
    CHECK(sh("q-good.log", "'%s' quantize good.bin --tokenizer tok512.bin --method rtn --out good-q --threads 1", bin) == 0);
    /* a tampered group_size that fits the shapes (ceil(64/80) = ceil(64/64), ceil(172/80) = ceil(172/64)) */
    CHECK(sh("cp-q.log", "cp -r good-q tampered-q && sed -i 's/\"group_size\":\t64/\"group_size\":\t80/' "
              "tampered-q/config.json && grep -q '\"group_size\":.80' tampered-q/config.json") == 0);
    int rc = sh("tampered.log", "'%s' ppl tampered-q --dataset wikitext2 --max-windows 1 --threads 1", bin);
    CHECKF(rc != 0 && rc < 128, "an artifact with a tampered group_size loaded: exit %d", rc);
    CHECK(has("tampered.log", "group_size"));
    /* export --out an existing file: refused, the file kept */
    CHECK(plant("existing.gguf"));
    rc = sh("exp-exist.log", "'%s' export good-q --format gguf --out existing.gguf", bin);
    CHECKF(rc != 0 && rc < 128, "export over an existing file: exit %d", rc);
    CHECK(has("existing.gguf", "stale"));
    CHECK(has("exp-exist.log", "exists"));
    /* eval --out into a directory that cannot hold it: refused before any scoring */
    CHECK(plant("not-a-dir"));
    rc = sh("eval-out.log", "'%s' eval good-q --tasks arc_easy --limit 8 --out not-a-dir/r.json --threads 1", bin);
    CHECKF(rc != 0 && rc < 128, "eval --out under a file: exit %d", rc);
    CHECKF(!has("eval-out.log", "acc"), "eval scored before finding its --out unusable");
    /* and into directories that do not exist yet: they are made */
    CHECK(sh("eval-new.log", "'%s' eval good-q --tasks arc_easy --limit 2 --out new-dir/sub/r.json --threads 1", bin) == 0);
    CHECK(exists("new-dir/sub/r.json"));
    /* merge --out a non-empty directory: refused before loading anything */
    CHECK(sh("mk.log", "mkdir -p full-dir && echo x > full-dir/keep.txt") == 0);
    rc = sh("merge-out.log", "'%s' merge good-q int-a/adapter --out full-dir --threads 1", bin);
    CHECKF(rc != 0 && rc < 128, "merge --out a non-empty directory: exit %d", rc);
    CHECK(has("merge-out.log", "full-dir") && !has("merge-out.log", "merged "));
    CHECK(has("full-dir/keep.txt", "x"));

    /* run --out an unrelated directory: refused, nothing of it deleted */
    CHECK(sh("mk2.log", "mkdir -p unrelated/merge/artifact unrelated/export && echo x > unrelated/merge/artifact/mine.txt"
              " && echo y > unrelated/export/model.gguf && echo z > unrelated/notes.tmp") == 0);
    rc = run_recipe("run-unrelated.log", "unrelated", "");
    CHECKF(rc != 0 && rc < 128, "run into an unrelated directory: exit %d", rc);
    CHECK(has("unrelated/merge/artifact/mine.txt", "x") && has("unrelated/export/model.gguf", "y") &&
          has("unrelated/notes.tmp", "z"));
    CHECK(has("run-unrelated.log", "not a rilq run directory"));

    /* a run; then stale temporaries of a dead writer planted all over it, an empty
       quantize/artifact in place of the real one, and a re-run */
    rc = run_recipe("run-a.log", "run-a", "");
    CHECKF(rc == 0, "run a: exit %d", rc);
    long dead = dead_pid();
    char rel[512];
    const char *stale[] = {"results.json.tmp.%ld.0badf00d", "report.html.tmp.%ld", "calibrate/checkpoint.bin.tmp.%ld.12345678",
                           "finetune/adapter/adapter_model.safetensors.tmp.%ld.abcdef01", "eval/q2/stage.json.tmp.%ld"};
    for (size_t i = 0; i < sizeof stale / sizeof stale[0]; i++) {
        snprintf(rel, sizeof rel, "run-a/");
        snprintf(rel + 6, sizeof rel - 6, stale[i], dead);
        CHECKF(plant(rel), "%s", rel);
    }
    snprintf(rel, sizeof rel, "run-a/export.tmp-%ld.00c0ffee", dead);
    CHECK(sh("mk3.log", "mkdir -p '%s' && echo 1 > '%s/model.safetensors'", rel, rel) == 0);
    CHECK(plant("run-a/notes.tmp"));
    snprintf(rel, sizeof rel, "run-a/calibrate/live.tmp.%ld.11111111", (long)getpid()); /* a live writer's */
    CHECK(plant(rel));
    CHECK(sh("mk4.log", "rm -rf run-a/quantize/artifact run-a/quantize/stage.json && mkdir run-a/quantize/artifact") == 0);
    rc = run_recipe("run-a2.log", "run-a", "");
    CHECKF(rc == 0, "run a again: exit %d", rc);
    CHECK(sh("ls.log", "find run-a -name '*.tmp*' | sort") == 0);
    char *ls = slurp("ls.log");
    CHECKF(ls && !strstr(ls, "0badf00d") && !strstr(ls, "report.html.tmp") && !strstr(ls, "checkpoint.bin.tmp") &&
           !strstr(ls, "safetensors.tmp") && !strstr(ls, "stage.json.tmp") && !strstr(ls, "export.tmp"),
           "stale temporary files left: %s", ls ? ls : "");
    CHECKF(ls && strstr(ls, "notes.tmp") && strstr(ls, "live.tmp"), "a file that is not a stale temporary was removed");
    free(ls);
    CHECK(exists("run-a/quantize/artifact/config.json"));
    CHECK(!has("run-a2.log", "quantize         skipped"));

    /* a stand-alone calibrate run again into its directory removes its own dead temporaries */
    char rel2[512];
    snprintf(rel, sizeof rel, "int-d0/checkpoint.bin.tmp.%ld.01234567", dead);
    snprintf(rel2, sizeof rel2, "int-d0/adapter/adapter_model.safetensors.tmp.%ld", dead);
    CHECK(sh("mk5.log", "mkdir -p int-d0/adapter") == 0 && plant(rel) && plant(rel2));
    CHECK(sh("int-d0.log", CALIB_GOOD " --out int-d0", bin) == 0);
    CHECKF(!exists(rel) && !exists(rel2), "calibrate kept a dead writer's temporaries in its --out");
    /* the teacher cache: a dead writer's full-size temporary is removed by the next calibrate */
    snprintf(rel, sizeof rel, "cache/teacher-0123456789abcdef.rqt.tmp.%ld.0a0b0c0d", dead);
    CHECK(plant(rel));
    CHECK(sh("int-d.log", CALIB_GOOD " --out int-d --windows 10", bin) == 0);
    CHECKF(!exists(rel), "%s: a dead writer's cache temporary was kept", rel);
}

/* Start `rilq run` in the background and kill it (SIGKILL) once root/WAIT_FOR exists. */
static bool run_killed_at(const char *log, const char *out, const char *extra, const char *wait_for) {
    char cmd[16384], p[4096], lp[4096];
    snprintf(cmd, sizeof cmd, "exec '%s' run '%s' %s %s --out '%s' --threads 1", bin, recipe, shrink, extra, out);
    path(lp, log);
    path(p, wait_for);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (chdir(root) != 0 || !freopen(lp, "w", stdout)) _exit(127);
        dup2(fileno(stdout), 2);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    bool killed = false;
    for (int i = 0; i < 60000 && pid > 0; i++) {
        struct stat st;
        if (stat(p, &st) == 0) {
            kill(pid, SIGKILL);
            killed = true;
            break;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) return false;
        nanosleep(&(struct timespec){0, 5 * 1000 * 1000}, NULL);
    }
    waitpid(pid, NULL, 0);
    return killed;
}

static void case_rerun(void) {
    /* finished stages: a change that touches them is refused, naming them */
    int rc = run_recipe("rerun-1.log", "run-a", "stage1.lr=0.002");
    CHECKF(rc != 0 && rc < 128, "a finished calibration's key changed: exit %d", rc);
    CHECK(has("rerun-1.log", "stage1.lr") && has("rerun-1.log", "calibrate"));
    /* killed during fine-tuning (4 epochs, a checkpoint after each) */
    CHECK(run_killed_at("rerun-2.log", "run-b", "stage2.epochs=4", "run-b/finetune/checkpoint.bin"));
    CHECK(!exists("run-b/finetune/stage.json"));
    /* corrected: another learning rate for the unfinished fine-tuning, and fewer epochs */
    rc = run_recipe("rerun-3.log", "run-b", "stage2.epochs=2 stage2.lr=0.001");
    CHECKF(rc == 0, "a re-run that changes only unfinished stages' keys: exit %d", rc);
    CHECK(has("rerun-3.log", "stage2.epochs") && has("rerun-3.log", "finetune"));
    CHECK(!has("rerun-3.log", "(resumed)") && !has("run-b/finetune/log.txt", "(resumed)"));
    /* the same as a run that had those settings from the start */
    rc = run_recipe("rerun-4.log", "run-c", "stage2.epochs=2 stage2.lr=0.001");
    CHECK(rc == 0);
    CHECKF(same_files("run-b/finetune/adapter/adapter_model.safetensors", "run-c/finetune/adapter/adapter_model.safetensors"),
           "the re-run's fine-tuned adapters differ from an uninterrupted run's with the same settings");
    CHECK(same_files("run-b/recipe.json", "run-c/recipe.json"));
}

static void case_ulimit(void) {
    int rc = sh("ulimit-help.log", "ulimit -v 300000 && exec timeout 30 '%s' --help", bin);
    CHECKF(rc != 124 && rc < 128, "rilq --help under ulimit -v 300000: exit %d (124: it hung)", rc);
    CHECKF(rc == 0 || has("ulimit-help.log", "ulimit -v"), "exit %d without a message naming the limit", rc);
    rc = sh("ulimit-inspect.log", "ulimit -v 300000 && exec timeout 30 '%s' inspect good.bin --tokenizer tok512.bin", bin);
    CHECKF(rc != 124 && rc < 128, "rilq inspect under ulimit -v 300000: exit %d (124: it hung)", rc);
    CHECKF(rc == 0 || has("ulimit-inspect.log", "ulimit -v"), "exit %d without a message naming the limit", rc);
}

static void case_minor(void) {
    CHECK(sh("fifo.log", "mkfifo fifo.bin") == 0);
    int rc = sh("fifo-inspect.log", "timeout 20 '%s' inspect fifo.bin", bin);
    CHECKF(rc != 0 && rc != 124 && rc < 128, "inspect of a FIFO: exit %d (124: it blocked)", rc);
    CHECK(has("fifo-inspect.log", "not a regular file"));
    rc = sh("fifo-run.log", "timeout 20 '%s' run fifo.bin --dry-run", bin);
    CHECKF(rc != 0 && rc != 124 && rc < 128, "run of a FIFO recipe: exit %d (124: it blocked)", rc);
    CHECK(sh("mkdir.log", "mkdir -p a-dir") == 0);
    rc = sh("run-dir.log", "'%s' run a-dir --dry-run", bin);
    CHECKF(rc != 0 && rc < 128, "run of a directory: exit %d", rc);
    CHECK(has("run-dir.log", "is a directory") && !has("run-dir.log", "read error"));
    CHECK(sh("gguf.log", ": > empty.gguf && printf 'GGUX0000000000000000000000000000' > bad.gguf") == 0);
    rc = sh("empty-gguf.log", "'%s' inspect empty.gguf", bin);
    CHECKF(rc != 0 && rc < 128, "inspect of an empty .gguf: exit %d", rc);
    CHECK(has("empty-gguf.log", "GGUF") && !has("empty-gguf.log", "llama2"));
    rc = sh("bad-gguf.log", "'%s' inspect bad.gguf", bin);
    CHECKF(rc != 0 && rc < 128, "inspect of a bad-magic .gguf: exit %d", rc);
    CHECK(has("bad-gguf.log", "GGUF") && !has("bad-gguf.log", "llama2"));
}

int main(void) {
    snprintf(model, sizeof model, "%s", rq_test_data("models/stories260K/stories260K.bin"));
    snprintf(tok, sizeof tok, "%s", rq_test_data("models/stories260K/tok512.bin"));
    rq_test_data("datasets/c4/c4-validation-2k.jsonl");
    rq_test_data("datasets/arc/ARC-Easy-Train.jsonl");
    rq_test_data("datasets/wikitext2/wiki.test.raw");
    const char *b = getenv("RQ_BINARY_DIR");
    snprintf(bin, sizeof bin, "%s/rilq", b && *b ? b : "../build");
    const char *src = getenv("RQ_SOURCE_DIR");
    snprintf(recipe, sizeof recipe, "%s/recipes/demo-stories260k.json", src && *src ? src : "..");
    snprintf(root, sizeof root, "%s", rq_test_out("reliability"));
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", root, root);
    CHECK(system(cmd) == 0);
    case_minor();
    case_nan();
    case_ulimit();
    case_integrity();
    case_outputs();
    case_rerun();
    return rq_test_finish();
}
