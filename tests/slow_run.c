/* `rilq run` end to end on stories260K with recipes/demo-stories260k.json,
 * shrunk through overrides: every stage's outputs, results.json, report.html
 * and metrics.jsonl; the merged model's evaluation against the adapters'
 * (once rilq merge exists; until then the merge must fail clearly and block
 * only what depends on it); the exported GGUF loaded back (once rilq export
 * exists); a re-run that skips every finished stage; and a run killed (SIGKILL)
 * in the middle of fine-tuning that, run again, resumes to adapters
 * byte-identical to the uninterrupted run's. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "test.h"

static char bin[4096], recipe[4096], root[4096];

/* The shrunk demo recipe: a few seconds per run on one core. Fine-tuning runs
 * 4 epochs with a checkpoint after each, so a kill after the first lands mid-stage. */
static const char *shrink[] = {"stage1.windows=16",   "stage1.seq_len=64",   "stage1.val_windows=4",
                               "stage1.max_micro_steps=16", "stage1.accum=2", "stage1.eval_every=2",
                               "stage2.limit=64",     "stage2.epochs=4",     "stage2.batch=8",
                               "eval.limit=20",       "eval.ppl_windows=2"};
#define N_SHRINK (sizeof shrink / sizeof shrink[0])

static bool read_text(const char *path, char **text) {
    size_t n = 0;
    rq_err err = {0};
    *text = NULL;
    return rq_file_read_all(path, text, &n, &err) == RQ_OK;
}

static bool file_has(const char *path, const char *needle) {
    char *x = NULL;
    bool has = read_text(path, &x) && strstr(x, needle) != NULL;
    free(x);
    return has;
}

static bool same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    rq_err err = {0};
    bool same = rq_file_read_all(a, &x, &nx, &err) == RQ_OK && rq_file_read_all(b, &y, &ny, &err) == RQ_OK &&
                nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; p && (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

/* argv for `rilq run RECIPE overrides... --out DIR --threads 1`, plus extra overrides. */
static void build_argv(char **argv, const char *out, const char *const *extra, int n_extra) {
    int k = 0;
    argv[k++] = bin;
    argv[k++] = "run";
    argv[k++] = recipe;
    for (size_t i = 0; i < N_SHRINK; i++) argv[k++] = (char *)shrink[i];
    for (int i = 0; i < n_extra; i++) argv[k++] = (char *)extra[i];
    argv[k++] = "--out";
    argv[k++] = (char *)out;
    argv[k++] = "--threads";
    argv[k++] = "1";
    argv[k] = NULL;
}

/* Start rilq run with stdout and stderr into log; returns the pid. */
static pid_t start(const char *out, const char *const *extra, int n_extra, const char *log) {
    char *argv[64];
    build_argv(argv, out, extra, n_extra);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "w", stdout);
        if (f) dup2(fileno(stdout), 2);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static int finish(pid_t pid) {
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static int run_to_end(const char *out, const char *const *extra, int n_extra, const char *log) {
    int rc = finish(start(out, extra, n_extra, log));
    fprintf(stderr, "rilq run --out %s: exit %d (log %s)\n", out, rc, log);
    return rc;
}

static void path(char *buf, const char *dir, const char *rel) { snprintf(buf, 4096, "%.2000s/%.2000s", dir, rel); }

/* The value of results.json rows[id].results[task][metric], NAN when absent. */
static double result(const cJSON *res, const char *id, const char *task, const char *metric) {
    const cJSON *row;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(res, "rows")) {
        const cJSON *rid = cJSON_GetObjectItemCaseSensitive(row, "id");
        if (!cJSON_IsString(rid) || strcmp(rid->valuestring, id)) continue;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(row, "results"), task);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, metric);
        return cJSON_IsNumber(v) ? v->valuedouble : NAN;
    }
    return NAN;
}

static const char *stage_status(const cJSON *res, const char *name) {
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(res, "stages")) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(s, "name");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, name))
            return cJSON_GetObjectItemCaseSensitive(s, "status")->valuestring;
    }
    return "";
}

int main(void) {
    rq_test_data("models/stories260K/stories260K.bin");
    rq_test_data("datasets/c4/c4-validation-2k.jsonl");
    rq_test_data("datasets/arc/ARC-Easy-Train.jsonl");
    rq_test_data("datasets/wikitext2/wiki.test.raw");
    const char *b = getenv("RQ_BINARY_DIR"), *s = getenv("RQ_SOURCE_DIR");
    snprintf(bin, sizeof bin, "%s/rilq", b && *b ? b : "../build");
    snprintf(recipe, sizeof recipe, "%s/recipes/demo-stories260k.json", s && *s ? s : "..");
    snprintf(root, sizeof root, "%s", rq_test_out("run"));
    char cmd[8192], p[4096], q[4096], a_dir[4096], b_dir[4096], log[4096], cache_ov[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%.3000s' && mkdir -p '%.3000s'", root, root);
    CHECK(system(cmd) == 0);
    path(a_dir, root, "a");
    path(b_dir, root, "b");
    snprintf(cache_ov, sizeof cache_ov, "stage1.teacher_cache=%.4000s/cache", root);
    /* merge and export are other commands' work; until they exist the run must
       fail clearly at those stages and finish the rest */
    snprintf(cmd, sizeof cmd, "'%s' merge --help > /dev/null 2>&1", bin);
    const bool have_merge = system(cmd) == 0;
    snprintf(cmd, sizeof cmd, "'%s' export --help > /dev/null 2>&1", bin);
    const bool have_export = system(cmd) == 0;
    fprintf(stderr, "rilq merge %s, rilq export %s\n", have_merge ? "present" : "not written yet",
            have_export ? "present" : "not written yet");

    /* ---- A: the whole recipe, uninterrupted ---- */
    const char *extra_a[] = {cache_ov};
    path(log, root, "a.log");
    int rc = run_to_end(a_dir, extra_a, 1, log);
    CHECKF(rc == (have_merge && have_export ? 0 : 1), "exit %d", rc);
    const char *stages[] = {"quantize", "calibrate", "finetune", "eval/fp", "eval/q2", "eval/rilq", "eval/finetuned"};
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        snprintf(q, sizeof q, "%s/stage.json", stages[i]);
        path(p, a_dir, q);
        CHECKF(rq_file_exists(p), "%s", p);
    }
    const char *outputs[] = {"recipe.json", "versions.json", "metrics.jsonl", "results.json", "report.html",
                             "quantize/artifact/config.json", "calibrate/adapter/adapter_model.safetensors",
                             "calibrate/calibrate.json", "finetune/adapter/adapter_model.safetensors",
                             "finetune/finetune.json", "eval/finetuned/results.json", "calibrate/command.txt"};
    for (size_t i = 0; i < sizeof outputs / sizeof outputs[0]; i++) {
        path(p, a_dir, outputs[i]);
        CHECKF(rq_file_exists(p), "%s", p);
    }
    path(p, a_dir, "metrics.jsonl");
    CHECK(file_has(p, "{\"stage\":\"calibrate\",\"step\":1,\"loss\""));
    CHECK(file_has(p, "{\"stage\":\"calibrate\",\"step\":0,\"val_loss\""));
    CHECK(file_has(p, "{\"stage\":\"finetune\",\"step\":1,"));
    CHECK(file_has(p, "{\"stage\":\"eval\",\"model\":\"q2\",\"task\":\"arc_easy\",\"metric\":\"acc\""));
    path(p, a_dir, "report.html");
    CHECK(file_has(p, "<svg") && file_has(p, "2-bit + RILQ") && !file_has(p, "<script"));
    path(p, a_dir, "recipe.json");
    CHECK(file_has(p, "\"max_micro_steps\":\t16") && file_has(p, "stories260K.bin") && !file_has(p, "${"));
    path(log, root, "a.log");
    CHECK(file_has(log, "full precision") && file_has(log, "2-bit + RILQ + arc_easy fine-tuning"));

    char *text = NULL;
    path(p, a_dir, "results.json");
    cJSON *res = read_text(p, &text) ? cJSON_Parse(text) : NULL;
    free(text);
    CHECK(res != NULL);
    const char *rows[] = {"fp", "q2", "rilq", "finetuned"};
    for (size_t i = 0; i < 4; i++) {
        CHECKF(!isnan(result(res, rows[i], "arc_easy", "acc")), "%s acc", rows[i]);
        CHECKF(result(res, rows[i], "wikitext2", "ppl") > 1.0, "%s ppl", rows[i]);
    }
    /* stage 1 lowers the quantized model's perplexity (it trains on exactly that) */
    CHECK(result(res, "rilq", "wikitext2", "ppl") < result(res, "q2", "wikitext2", "ppl"));
    if (have_merge) {
        CHECKF(!strcmp(stage_status(res, "merge"), "done"), "merge %s", stage_status(res, "merge"));
        /* the merged 2-bit model (no adapters) scores as the adapters did; the bound covers
           fp16 rounding of the merged offsets (the merge's own logit check is tighter) */
        double pf = result(res, "finetuned", "wikitext2", "ppl"), pm = result(res, "merged", "wikitext2", "ppl");
        CHECKF(fabs(pm - pf) <= 1e-2 * pf, "merged ppl %.6g vs adapters %.6g", pm, pf);
        CHECK_NEAR(result(res, "merged", "arc_easy", "acc"), result(res, "finetuned", "arc_easy", "acc"), 0.05 + 1e-9);
        /* the merge's own logit check, as results.json records it */
        const cJSON *mg = cJSON_GetObjectItemCaseSensitive(res, "merge");
        const cJSON *rel = cJSON_GetObjectItemCaseSensitive(mg, "max_rel_logit_diff");
        const cJSON *bound = cJSON_GetObjectItemCaseSensitive(mg, "rel_bound");
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(mg, "passed")));
        CHECK(cJSON_IsNumber(rel) && cJSON_IsNumber(bound) && rel->valuedouble <= bound->valuedouble);
    } else {
        CHECK(!strcmp(stage_status(res, "merge"), "failed"));
        CHECK(!strcmp(stage_status(res, "eval-merged"), "blocked"));
        CHECK(!strcmp(stage_status(res, "export-gguf"), "blocked"));
        path(p, a_dir, "merge/stage.json");
        CHECK(!rq_file_exists(p));
        CHECK(file_has(log, "merge") && file_has(log, "FAILED"));
    }
    if (have_merge && have_export) {
        CHECK(!strcmp(stage_status(res, "export-gguf"), "done"));
        /* our loader reads the exported GGUF back */
        path(p, a_dir, "export/gguf/model.gguf");
        snprintf(cmd, sizeof cmd, "'%.2000s' inspect '%.2000s' > '%.2000s/inspect.log' 2>&1", bin, p, root);
        CHECK(system(cmd) == 0);
    }
    cJSON_Delete(res);

    /* ---- A again: every finished stage is skipped, nothing rewritten ---- */
    char *before = NULL, *after = NULL;
    path(p, a_dir, "finetune/stage.json");
    read_text(p, &before);
    path(log, root, "a2.log");
    rc = run_to_end(a_dir, extra_a, 1, log);
    CHECKF(rc == (have_merge && have_export ? 0 : 1), "exit %d", rc);
    read_text(p, &after);
    CHECK(before && after && !strcmp(before, after));
    free(before);
    free(after);
    char *l2 = NULL;
    read_text(log, &l2);
    CHECKF(count(l2, "running:") == (have_merge ? 0 : 1), "%d stages ran again", count(l2, "running:"));
    CHECK(count(l2, "skipped") >= 7);
    free(l2);
    /* a different recipe into the same directory is refused, naming the key */
    const char *other[] = {cache_ov, "stage2.lr=1e-3"};
    path(log, root, "a3.log");
    CHECK(run_to_end(a_dir, other, 2, log) != 0);
    CHECK(file_has(log, "stage2.lr"));

    /* ---- B: killed during fine-tuning, then run again ---- */
    /* B exports the unmerged 2-bit artifact: the GGUF check does not wait for the merge */
    const char *extra_b[] = {cache_ov, "merge.enabled=false", "eval.models="};
    path(log, root, "b1.log");
    pid_t pid = start(b_dir, extra_b, 3, log);
    path(p, b_dir, "finetune/checkpoint.bin");
    path(q, b_dir, "finetune/stage.json");
    bool killed = false;
    for (int i = 0; i < 60000 && pid > 0; i++) { /* at most 10 minutes */
        if (rq_file_exists(p)) {
            kill(pid, SIGKILL);
            killed = true;
            break;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            pid = -1;
            break;
        }
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    if (pid > 0) finish(pid);
    CHECKF(killed, "the run ended before fine-tuning wrote a checkpoint");
    /* the kill came after epoch 1's checkpoint and before the stage finished */
    CHECKF(!rq_file_exists(q), "fine-tuning finished before the kill: the test did not interrupt it");
    path(log, root, "b2.log");
    CHECK(run_to_end(b_dir, extra_b, 3, log) == (have_export ? 0 : 1));
    CHECK(file_has(log, "calibrate") && file_has(log, "skipped"));
    path(p, b_dir, "finetune/log.txt");
    CHECKF(file_has(p, "(resumed)"), "%s does not say the fine-tuning resumed", p);
    path(p, a_dir, "finetune/adapter/adapter_model.safetensors");
    path(q, b_dir, "finetune/adapter/adapter_model.safetensors");
    CHECKF(same_file(p, q), "%s and %s differ", p, q);
    path(p, a_dir, "calibrate/adapter/adapter_model.safetensors");
    path(q, b_dir, "calibrate/adapter/adapter_model.safetensors");
    CHECK(same_file(p, q));
    if (have_export) { /* our loader reads the exported GGUF back and scores it as the artifact */
        path(p, b_dir, "export/gguf/model.gguf");
        snprintf(cmd, sizeof cmd, "'%.2000s' inspect '%.2000s' > '%.2000s/inspect-b.log' 2>&1", bin, p, root);
        CHECK(system(cmd) == 0);
        path(q, b_dir, "quantize/artifact");
        double ppl[2];
        for (int i = 0; i < 2; i++) {
            snprintf(cmd, sizeof cmd, "'%.2000s' ppl '%.2000s' --dataset wikitext2 --max-windows 2 --threads 1 2>/dev/null"
                     " | sed -n 's/.*perplexity: \\([0-9.e+]*\\).*/\\1/p'", bin, i ? q : p);
            FILE *f = popen(cmd, "r");
            ppl[i] = NAN;
            if (f) {
                if (fscanf(f, "%lf", &ppl[i]) != 1) ppl[i] = NAN;
                pclose(f);
            }
        }
        /* exact carrier: the same weights, so the same perplexity up to summation order */
        CHECKF(fabs(ppl[0] - ppl[1]) <= 1e-3 * ppl[1], "GGUF ppl %.6g vs artifact %.6g", ppl[0], ppl[1]);
    }
    return rq_test_finish();
}
