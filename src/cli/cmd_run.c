/* rilq run: a recipe end to end (quantize -> calibrate -> finetune -> merge ->
 * export -> eval), each stage through the same entry point as its command
 * line, in process, into a run directory that a re-run resumes. */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../pipeline/recipe.h"
#include "../pipeline/report.h"
#include "cli.h"

#ifndef RILQ_GIT_DESCRIBE
#define RILQ_GIT_DESCRIBE ""
#endif

static const char *run_help =
    "usage: rilq run RECIPE [key=value ...] [--out RUNDIR] [options]\n\n"
    "Run a recipe (recipes/*.json) end to end: quantize -> calibrate (stage 1) -> finetune\n"
    "(stage 2) -> merge -> export -> eval of every stage's model, each stage calling the\n"
    "same code as its own command (rilq quantize, calibrate, ...). key=value overrides a\n"
    "recipe key, checked against its type (stage1.lr=3e-4, stage2.epochs=1,\n"
    "eval.tasks=piqa,arc_easy); ${VAR} and ${VAR:-default} in the recipe's strings are\n"
    "environment variables.\n\n"
    "RUNDIR (default runs/NAME) receives recipe.json (resolved: defaults filled, overrides\n"
    "applied), versions.json, one subdirectory per stage (its outputs, command.txt, log.txt,\n"
    "and stage.json once its outputs are complete), metrics.jsonl (every stage's metrics,\n"
    "tagged \"stage\"), results.json and report.html (curves and the table). Running again\n"
    "skips the finished stages and resumes a killed calibrate or finetune from its\n"
    "checkpoint; a RUNDIR holding a different recipe is refused. A failed stage does not\n"
    "stop the stages that do not depend on it; the exit code is then 1.\n\n"
    "options:\n"
    "  --out RUNDIR          the run directory\n"
    "  --dry-run             print the resolved recipe and each stage's command; run nothing\n"
    "  --verbose             stages print to the terminal (default: RUNDIR/STAGE/log.txt)\n"
    "  --keys                list every recipe key with its type, default and meaning\n" CLI_COMMON_HELP;

#define MAX_ARGS 96
#define MAX_STAGES 24

typedef struct argv_b {
    char *v[MAX_ARGS + 1];
    int n;
} argv_b;

static void arg(argv_b *a, const char *s) {
    if (a->n < MAX_ARGS) a->v[a->n++] = strdup(s);
}
static void argf(argv_b *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void argf(argv_b *a, const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    arg(a, buf);
}
static void opt(argv_b *a, const char *name, const char *value) {
    arg(a, name);
    arg(a, value);
}
/* name "a,b,c": a recipe list as one comma-separated option value */
static void opt_list(argv_b *a, const char *name, const rq_recipe_list *l) {
    char list[512] = "";
    for (int k = 0; k < l->n; k++) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? "," : "", l->item[k]);
    opt(a, name, list);
}
static void opt_i(argv_b *a, const char *name, int64_t v) {
    arg(a, name);
    argf(a, "%lld", (long long)v);
}
/* The shortest of %.15g / %.17g that reads back as the same double. */
static void opt_d(argv_b *a, const char *name, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.15g", v);
    if (strtod(buf, NULL) != v) snprintf(buf, sizeof buf, "%.17g", v);
    arg(a, name);
    arg(a, buf);
}
static void argv_free(argv_b *a) {
    for (int i = 0; i < a->n; i++) free(a->v[i]);
    a->n = 0;
}

typedef struct stage_rec {
    char name[64];
    const char *status; /* done, skipped, failed, blocked, planned */
    double seconds;
} stage_rec;

typedef struct run_ctx {
    const rq_recipe *r;
    const char *dir;
    cli_common common;
    bool dry_run, verbose;
    stage_rec stages[MAX_STAGES];
    int n_stages, n_failed;
} run_ctx;

static const stage_rec *find_stage(const run_ctx *c, const char *name) {
    for (int i = 0; i < c->n_stages; i++)
        if (!strcmp(c->stages[i].name, name)) return &c->stages[i];
    return NULL;
}

/* A dependency holds when its stage finished, now or before. */
static bool stage_ok(const run_ctx *c, const char *name) {
    const stage_rec *s = find_stage(c, name);
    return s && (!strcmp(s->status, "done") || !strcmp(s->status, "skipped") || !strcmp(s->status, "planned"));
}

static void join(char *buf, size_t n, const char *a, const char *b) {
    if (!rq_path_join(buf, n, a, b)) buf[0] = 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}
/* Remove a partial output (a file or a tree) that a killed stage left. */
static void rm_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void shell_quote(FILE *f, const char *s) {
    if (*s && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == strlen(s)) {
        fputs(s, f);
        return;
    }
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputs("'\\''", f);
        else fputc(*s, f);
    }
    fputc('\'', f);
}

static void print_command(FILE *f, const argv_b *a) {
    fputs("rilq", f);
    for (int i = 0; i < a->n; i++) {
        fputc(' ', f);
        shell_quote(f, a->v[i]);
    }
    fputc('\n', f);
}

static rq_status write_json(const char *path, const cJSON *o, rq_err *err) {
    char *t = cJSON_Print(o);
    if (!t) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path);
    size_t n = strlen(t);
    char *t2 = realloc(t, n + 2);
    if (!t2) {
        cJSON_free(t);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path);
    }
    t2[n] = '\n';
    rq_status st = rq_write_file_atomic(path, t2, n + 1, err);
    free(t2);
    return st;
}

static cJSON *read_json(const char *path) {
    char *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    if (rq_file_read_all(path, &text, &n, &err) != RQ_OK) return NULL;
    cJSON *o = cJSON_ParseWithLength(text, n);
    free(text);
    return o;
}

typedef void (*prepare_fn)(const run_ctx *c, const char *stage_dir);

/* Run one stage unless its stage.json says it finished. deps: stage names, NULL-terminated. */
static void run_stage(run_ctx *c, const char *name, const char *subdir, int (*fn)(int, char **), argv_b *a,
                      const char *const *deps, prepare_fn prepare) {
    if (c->n_stages == MAX_STAGES) return;
    stage_rec *rec = &c->stages[c->n_stages++];
    snprintf(rec->name, sizeof rec->name, "%s", name);
    rec->seconds = NAN;
    char dir[4096], marker[4096], path[4096];
    join(dir, sizeof dir, c->dir, subdir);
    join(marker, sizeof marker, dir, "stage.json");
    for (int i = 0; deps && deps[i]; i++) {
        if (!stage_ok(c, deps[i])) {
            rec->status = "blocked";
            printf("%-16s blocked: %s did not finish\n", name, deps[i]);
            c->n_failed++;
            argv_free(a);
            return;
        }
    }
    if (c->dry_run) {
        rec->status = "planned";
        printf("%-16s ", name);
        print_command(stdout, a);
        argv_free(a);
        return;
    }
    if (rq_file_exists(marker)) {
        cJSON *m = read_json(marker);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(m, "seconds");
        rec->seconds = cJSON_IsNumber(s) ? s->valuedouble : NAN;
        cJSON_Delete(m);
        rec->status = "skipped";
        printf("%-16s finished earlier (%s), skipped\n", name, marker);
        argv_free(a);
        return;
    }
    rq_err err = {0};
    if (rq_mkdir_p(dir, &err) != RQ_OK) {
        fprintf(stderr, "rilq run: %s: %s\n", name, err.msg);
        rec->status = "failed";
        c->n_failed++;
        argv_free(a);
        return;
    }
    if (prepare) prepare(c, dir);
    join(path, sizeof path, dir, "command.txt");
    FILE *cf = fopen(path, "w");
    if (cf) {
        print_command(cf, a);
        fclose(cf);
    }
    printf("%-16s running: ", name);
    print_command(stdout, a);
    fflush(stdout);
    /* the stage's own output goes to its log; errors (stderr) stay on the terminal */
    int saved = -1;
    join(path, sizeof path, dir, "log.txt");
    if (!c->verbose) {
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        saved = fd >= 0 ? dup(STDOUT_FILENO) : -1;
        if (saved >= 0) dup2(fd, STDOUT_FILENO);
        if (fd >= 0) close(fd);
    }
    double t0 = rq_now_seconds();
    a->v[a->n] = NULL;
    int rc = fn(a->n, a->v);
    double secs = rq_now_seconds() - t0;
    fflush(stdout);
    if (saved >= 0) {
        dup2(saved, STDOUT_FILENO);
        close(saved);
    }
    rec->seconds = secs;
    if (rc != 0) {
        rec->status = "failed";
        c->n_failed++;
        printf("%-16s FAILED (exit %d) after %.1fs; its output: %s\n", name, rc, secs, path);
        argv_free(a);
        return;
    }
    /* written last: the stage's outputs are complete once this exists */
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "stage", name);
    cJSON_AddNumberToObject(m, "seconds", secs);
    cJSON *cmd = cJSON_AddArrayToObject(m, "argv");
    cJSON_AddItemToArray(cmd, cJSON_CreateString("rilq"));
    for (int i = 0; i < a->n; i++) cJSON_AddItemToArray(cmd, cJSON_CreateString(a->v[i]));
    cJSON_AddNumberToObject(m, "finished_unix", (double)time(NULL));
    if (write_json(marker, m, &err) != RQ_OK) {
        fprintf(stderr, "rilq run: %s: %s\n", name, err.msg);
        rec->status = "failed";
        c->n_failed++;
    } else {
        rec->status = "done";
        printf("%-16s done in %.1fs\n", name, secs);
    }
    cJSON_Delete(m);
    argv_free(a);
}

/* ---- stages ---------------------------------------------------------------------------------- */

static void add_common(const run_ctx *c, argv_b *a, bool fp_model) {
    if (c->common.device) opt(a, "--device", c->common.device);
    if (c->common.threads > 0) opt_i(a, "--threads", c->common.threads);
    if (fp_model && *c->r->model.tokenizer) opt(a, "--tokenizer", c->r->model.tokenizer);
}

/* Outputs appear by an atomic rename when complete (DIR.tmp-PID directories,
 * FILE.tmp.* files before it): what a killed stage left of them is removed. */
static void remove_partials(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strstr(e->d_name, ".tmp")) continue;
        char p[4096];
        join(p, sizeof p, dir, e->d_name);
        rm_tree(p);
    }
    closedir(d);
}

/* quantize/artifact, once present, is complete (see cmd_quantize_or_keep). */
static void prepare_quantize(const run_ctx *c, const char *dir) {
    (void)c;
    remove_partials(dir);
}

static void prepare_fresh(const run_ctx *c, const char *dir, const char *name) {
    (void)c;
    char p[4096];
    remove_partials(dir);
    join(p, sizeof p, dir, name);
    rm_tree(p);
}
static void prepare_merge(const run_ctx *c, const char *dir) { prepare_fresh(c, dir, "artifact"); }
static void prepare_export(const run_ctx *c, const char *dir) {
    prepare_fresh(c, dir, "model.gguf");
    prepare_fresh(c, dir, "hqq");
}

static int cmd_quantize_or_keep(int argc, char **argv) {
    /* argv[..] ends with "--out DIR": a complete artifact there is kept */
    const char *out = argc >= 2 ? argv[argc - 1] : NULL;
    struct stat st;
    if (out && stat(out, &st) == 0) {
        printf("%s is complete (written before an interruption); kept\n", out);
        return 0;
    }
    return cmd_quantize(argc, argv);
}

static const char *row_label(const rq_recipe *r, const char *id, char *buf, size_t n) {
    if (!strcmp(id, "fp")) snprintf(buf, n, "full precision");
    else if (!strcmp(id, "q2"))
        snprintf(buf, n, "2-bit %s g%lld%s", !strcmp(r->quantize.method, "rtn") ? "RTN" : "NF2",
                 (long long)r->quantize.group_size, r->quantize.clip_search ? " + clip" : "");
    else if (!strcmp(id, "rilq")) snprintf(buf, n, "2-bit + RILQ");
    else if (!strcmp(id, "finetuned"))
        snprintf(buf, n, "2-bit + %s%s fine-tuning", r->stage1.enabled ? "RILQ + " : "", r->stage2.task);
    else snprintf(buf, n, "merged (2-bit, no adapters)");
    return buf;
}

/* Whether a table row's stage is part of this recipe. */
static bool row_enabled(const rq_recipe *r, const char *id) {
    if (!strcmp(id, "rilq")) return r->stage1.enabled;
    if (!strcmp(id, "finetuned")) return r->stage2.enabled;
    if (!strcmp(id, "merged")) return r->merge.enabled;
    return true;
}

static void plan_and_run(run_ctx *c) {
    const rq_recipe *r = c->r;
    char art[4096], cal[4096], ft[4096], merged[4096], p[4096];
    join(art, sizeof art, c->dir, "quantize/artifact");
    join(cal, sizeof cal, c->dir, "calibrate");
    join(ft, sizeof ft, c->dir, "finetune");
    join(merged, sizeof merged, c->dir, "merge/artifact");
    argv_b a = {0};

    arg(&a, "quantize");
    arg(&a, r->model.path);
    opt(&a, "--method", r->quantize.method);
    opt_i(&a, "--group-size", r->quantize.group_size);
    if (r->quantize.clip_search) arg(&a, "--clip-search");
    if (r->quantize.modules.n < 7) opt_list(&a, "--modules", &r->quantize.modules);
    add_common(c, &a, true);
    opt(&a, "--out", art);
    run_stage(c, "quantize", "quantize", cmd_quantize_or_keep, &a, NULL, prepare_quantize);

    if (r->stage1.enabled) {
        arg(&a, "calibrate");
        arg(&a, r->model.path);
        opt(&a, "--student", art);
        opt(&a, "--out", cal);
        opt(&a, "--data", r->stage1.data);
        if (!strcmp(r->stage1.data, "c4")) opt(&a, "--c4-docs", r->stage1.c4_docs);
        opt_i(&a, "--windows", r->stage1.windows);
        opt_i(&a, "--seq-len", r->stage1.seq_len);
        opt_i(&a, "--val-windows", r->stage1.val_windows);
        opt_i(&a, "--seed", r->stage1.seed);
        opt(&a, "--adapter", r->adapter.type);
        opt_i(&a, "--rank", r->adapter.rank);
        opt_d(&a, "--alpha", r->adapter.alpha);
        opt_i(&a, "--group-size", r->adapter.group_size);
        opt_d(&a, "--model-weight", r->stage1.model_weight);
        opt_d(&a, "--gt-weight", r->stage1.gt_weight);
        opt(&a, "--scope", r->stage1.scope);
        opt(&a, "--model-loss", r->stage1.model_loss);
        opt_d(&a, "--lr", r->stage1.lr);
        opt_i(&a, "--accum", r->stage1.accum);
        opt_i(&a, "--micro-batch", r->stage1.micro_batch);
        opt_i(&a, "--eval-every", r->stage1.eval_every);
        opt_i(&a, "--patience", r->stage1.patience);
        opt_i(&a, "--max-micro-steps", r->stage1.max_micro_steps);
        if (*r->stage1.teacher_cache) opt(&a, "--cache", r->stage1.teacher_cache);
        arg(&a, "--resume"); /* continues from checkpoint.bin when a killed run left one */
        add_common(c, &a, true);
        const char *deps[] = {"quantize", NULL};
        run_stage(c, "calibrate", "calibrate", cmd_calibrate, &a, deps, NULL);
    }

    if (r->stage2.enabled) {
        arg(&a, "finetune");
        arg(&a, art);
        opt(&a, "--task", r->stage2.task);
        opt(&a, "--out", ft);
        if (r->stage1.enabled) {
            join(p, sizeof p, cal, "adapter");
            opt(&a, "--adapter", p);
        } else {
            opt(&a, "--type", r->adapter.type);
            opt_i(&a, "--rank", r->adapter.rank);
            opt_d(&a, "--alpha", r->adapter.alpha);
            opt_i(&a, "--group-size", r->adapter.group_size);
        }
        opt_i(&a, "--epochs", r->stage2.epochs);
        opt_d(&a, "--lr", r->stage2.lr);
        opt(&a, "--optim", r->stage2.optim);
        opt_d(&a, "--weight-decay", r->stage2.weight_decay);
        opt(&a, "--schedule", r->stage2.schedule);
        opt_d(&a, "--warmup-ratio", r->stage2.warmup_ratio);
        opt_d(&a, "--max-grad-norm", r->stage2.max_grad_norm);
        opt_i(&a, "--batch", r->stage2.batch);
        opt_i(&a, "--micro-batch", r->stage2.micro_batch);
        opt_i(&a, "--max-source", r->stage2.max_source);
        opt_i(&a, "--max-target", r->stage2.max_target);
        opt_i(&a, "--limit", r->stage2.limit);
        opt_i(&a, "--seed", r->stage2.seed);
        if (*r->stage2.fold) opt(&a, "--fold", r->stage2.fold);
        arg(&a, "--resume");
        add_common(c, &a, false);
        const char *deps[] = {"quantize", r->stage1.enabled ? "calibrate" : NULL, NULL};
        run_stage(c, "finetune", "finetune", cmd_finetune, &a, deps, NULL);
    }

    const char *final_adapter_stage = r->stage2.enabled ? "finetune" : "calibrate";
    char final_adapter[4096];
    join(final_adapter, sizeof final_adapter, r->stage2.enabled ? ft : cal, "adapter");
    if (r->merge.enabled) {
        arg(&a, "merge");
        arg(&a, art);
        arg(&a, final_adapter);
        opt(&a, "--out", merged);
        add_common(c, &a, false);
        const char *deps[] = {"quantize", final_adapter_stage, NULL};
        run_stage(c, "merge", "merge", cmd_merge, &a, deps, prepare_merge);
    }

    for (int i = 0; i < r->export_.formats.n; i++) {
        const char *f = r->export_.formats.item[i];
        char name[64], sub[64];
        snprintf(name, sizeof name, "export-%s", f);
        snprintf(sub, sizeof sub, "export/%s", f);
        join(p, sizeof p, c->dir, sub);
        char out[4200];
        join(out, sizeof out, p, !strcmp(f, "gguf") ? "model.gguf" : "hqq");
        arg(&a, "export");
        arg(&a, r->merge.enabled ? merged : art);
        opt(&a, "--format", f);
        opt(&a, "--name", r->name);
        opt(&a, "--out", out);
        const char *deps[] = {r->merge.enabled ? "merge" : "quantize", NULL};
        run_stage(c, name, sub, cmd_export, &a, deps, prepare_export);
    }

    for (int i = 0; i < r->eval.models.n; i++) {
        const char *id = r->eval.models.item[i];
        if (!row_enabled(r, id)) continue;
        char name[64], sub[64], out[4200];
        snprintf(name, sizeof name, "eval-%s", id);
        snprintf(sub, sizeof sub, "eval/%s", id);
        join(p, sizeof p, c->dir, sub);
        join(out, sizeof out, p, "results.json");
        arg(&a, "eval");
        const char *dep = NULL;
        if (!strcmp(id, "fp")) arg(&a, r->model.path);
        else if (!strcmp(id, "merged")) {
            arg(&a, merged);
            dep = "merge";
        } else {
            arg(&a, art);
            dep = "quantize";
        }
        char ad[4200];
        if (!strcmp(id, "rilq") || !strcmp(id, "finetuned")) {
            join(ad, sizeof ad, !strcmp(id, "rilq") ? cal : ft, "adapter");
            opt(&a, "--adapter", ad);
        }
        if (r->eval.tasks.n) opt_list(&a, "--tasks", &r->eval.tasks);
        if (r->eval.limit > 0) opt_i(&a, "--limit", r->eval.limit);
        if (r->eval.ppl.n) {
            opt_list(&a, "--ppl", &r->eval.ppl);
            if (r->eval.ppl_windows > 0) opt_i(&a, "--ppl-windows", r->eval.ppl_windows);
        }
        opt(&a, "--gsm8k-format", r->eval.gsm8k_format);
        opt_i(&a, "--shots", r->eval.shots);
        opt_i(&a, "--max-gen-tokens", r->eval.max_gen_tokens);
        opt(&a, "--out", out);
        add_common(c, &a, !strcmp(id, "fp"));
        const char *extra = !strcmp(id, "rilq") ? "calibrate" : !strcmp(id, "finetuned") ? "finetune" : NULL;
        const char *deps[] = {dep ? dep : extra, dep ? extra : NULL, NULL};
        run_stage(c, name, sub, cmd_eval, &a, deps, NULL);
    }
}

/* ---- results, metrics, report ---------------------------------------------------------------- */

static bool has_acc_norm(const char *task) {
    return strcmp(task, "winogrande") != 0 && strcmp(task, "gsm8k") != 0;
}

/* The merge's check of the merged logits, read from its log (rilq merge prints
 * "verification (...): merged vs adapter model: max |diff| A, relative R; ..."
 * and "bound: relative B: passed"). */
static cJSON *merge_summary(const char *dir) {
    char path[4096];
    join(path, sizeof path, dir, "merge/log.txt");
    char *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    if (rq_file_read_all(path, &text, &n, &err) != RQ_OK) return NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON *lines = cJSON_AddArrayToObject(o, "log");
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON_AddItemToArray(lines, cJSON_CreateString(line));
        const char *v = strstr(line, "merged vs adapter model: max |diff| ");
        double x, y;
        if (v && sscanf(v, "merged vs adapter model: max |diff| %lf, relative %lf", &x, &y) == 2) {
            cJSON_AddNumberToObject(o, "max_abs_logit_diff", x);
            cJSON_AddNumberToObject(o, "max_rel_logit_diff", y);
        }
        if (!strncmp(line, "bound: relative ", 16) && sscanf(line, "bound: relative %lf", &x) == 1) {
            cJSON_AddNumberToObject(o, "rel_bound", x);
            cJSON_AddBoolToObject(o, "passed", strstr(line, "passed") != NULL);
        }
    }
    free(text);
    return o;
}

static cJSON *build_results(const run_ctx *c) {
    const rq_recipe *r = c->r;
    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "recipe", r->name);
    cJSON_AddStringToObject(res, "notes", r->notes);
    cJSON_AddStringToObject(res, "recipe_file", r->file);
    cJSON_AddStringToObject(res, "run_dir", c->dir);
    cJSON_AddStringToObject(res, "rilq_version", RILQ_VERSION);
    cJSON *cols = cJSON_AddArrayToObject(res, "columns");
    for (int i = 0; i < r->eval.tasks.n; i++) {
        const char *t = r->eval.tasks.item[i];
        const char *metrics[2] = {"acc", has_acc_norm(t) ? "acc_norm" : NULL};
        if (!strcmp(t, "gsm8k")) metrics[0] = "exact_match,strict-match", metrics[1] = "exact_match,flexible-extract";
        for (int k = 0; k < 2; k++) {
            if (!metrics[k]) continue;
            cJSON *col = cJSON_CreateObject();
            cJSON_AddStringToObject(col, "task", t);
            cJSON_AddStringToObject(col, "metric", metrics[k]);
            cJSON_AddItemToArray(cols, col);
        }
    }
    for (int i = 0; i < r->eval.ppl.n; i++) {
        cJSON *col = cJSON_CreateObject();
        cJSON_AddStringToObject(col, "task", r->eval.ppl.item[i]);
        cJSON_AddStringToObject(col, "metric", "ppl");
        cJSON_AddItemToArray(cols, col);
    }
    cJSON *rows = cJSON_AddArrayToObject(res, "rows");
    for (int i = 0; i < r->eval.models.n; i++) {
        const char *id = r->eval.models.item[i];
        if (!row_enabled(r, id)) continue;
        char label[256], path[4096], sub[128];
        cJSON *row = cJSON_CreateObject();
        cJSON_AddStringToObject(row, "id", id);
        cJSON_AddStringToObject(row, "label", row_label(r, id, label, sizeof label));
        /* what was evaluated: the model and the adapters attached (none for fp, q2, merged) */
        const char *model_rel = !strcmp(id, "fp") ? NULL : !strcmp(id, "merged") ? "merge/artifact" : "quantize/artifact";
        const char *adapter_rel = !strcmp(id, "rilq") ? "calibrate/adapter" : !strcmp(id, "finetuned") ? "finetune/adapter"
                                                                                                      : NULL;
        if (model_rel) join(path, sizeof path, c->dir, model_rel);
        cJSON_AddStringToObject(row, "model", model_rel ? path : r->model.path);
        if (adapter_rel) {
            join(path, sizeof path, c->dir, adapter_rel);
            cJSON_AddStringToObject(row, "adapter", path);
        } else cJSON_AddNullToObject(row, "adapter");
        snprintf(sub, sizeof sub, "eval/%s/results.json", id);
        join(path, sizeof path, c->dir, sub);
        cJSON *ev = read_json(path);
        cJSON *out = cJSON_AddObjectToObject(row, "results");
        const cJSON *task;
        cJSON_ArrayForEach(task, cJSON_GetObjectItemCaseSensitive(ev, "results")) {
            cJSON *t = cJSON_AddObjectToObject(out, task->string);
            const cJSON *m;
            cJSON_ArrayForEach(m, task) {
                if (!cJSON_IsNumber(m)) continue;
                char key[128];
                snprintf(key, sizeof key, "%s", m->string);
                char *comma = strstr(key, ",none");
                if (comma) *comma = 0;
                cJSON_AddNumberToObject(t, key, m->valuedouble);
            }
        }
        if (ev) {
            const cJSON *ns = cJSON_GetObjectItemCaseSensitive(ev, "n-samples");
            if (ns) cJSON_AddItemToObject(row, "n-samples", cJSON_Duplicate(ns, true));
        }
        cJSON_Delete(ev);
        cJSON_AddItemToArray(rows, row);
    }
    cJSON *stages = cJSON_AddArrayToObject(res, "stages");
    for (int i = 0; i < c->n_stages; i++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "name", c->stages[i].name);
        cJSON_AddStringToObject(s, "status", c->stages[i].status);
        if (!isnan(c->stages[i].seconds)) cJSON_AddNumberToObject(s, "seconds", c->stages[i].seconds);
        cJSON_AddItemToArray(stages, s);
    }
    cJSON *merge = r->merge.enabled ? merge_summary(c->dir) : NULL;
    if (merge) cJSON_AddItemToObject(res, "merge", merge);
    return res;
}

/* Append a stage's metrics.jsonl, each line tagged {"stage": ...} first. */
static void append_stage_metrics(char **buf, size_t *len, const char *dir, const char *stage) {
    char sub[128], path[4096];
    snprintf(sub, sizeof sub, "%s/metrics.jsonl", stage);
    join(path, sizeof path, dir, sub);
    char *text = NULL;
    size_t n = 0;
    rq_err err = {0};
    if (rq_file_read_all(path, &text, &n, &err) != RQ_OK) return;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] != '{') continue;
        size_t ll = strlen(line), need = ll + strlen(stage) + 16;
        char *nb = realloc(*buf, *len + need + 1);
        if (!nb) break;
        *buf = nb;
        *len += (size_t)sprintf(*buf + *len, "{\"stage\":\"%s\",%s\n", stage, line + 1);
    }
    free(text);
}

static rq_status write_outputs(const run_ctx *c, const cJSON *results, rq_err *err) {
    char path[4096];
    char *metrics = calloc(1, 1);
    size_t len = 0;
    if (!metrics) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
    append_stage_metrics(&metrics, &len, c->dir, "calibrate");
    append_stage_metrics(&metrics, &len, c->dir, "finetune");
    /* evaluation numbers and stage timings, one line each */
    const cJSON *row, *task, *m, *st;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(results, "rows")) {
        cJSON_ArrayForEach(task, cJSON_GetObjectItemCaseSensitive(row, "results")) {
            cJSON_ArrayForEach(m, task) {
                char line[512];
                int w = snprintf(line, sizeof line,
                                 "{\"stage\":\"eval\",\"model\":\"%s\",\"task\":\"%s\",\"metric\":\"%s\",\"value\":%.9g}\n",
                                 cJSON_GetObjectItemCaseSensitive(row, "id")->valuestring, task->string, m->string,
                                 m->valuedouble);
                char *nb = w > 0 ? realloc(metrics, len + (size_t)w + 1) : NULL;
                if (!nb) continue;
                metrics = nb;
                memcpy(metrics + len, line, (size_t)w + 1);
                len += (size_t)w;
            }
        }
    }
    cJSON_ArrayForEach(st, cJSON_GetObjectItemCaseSensitive(results, "stages")) {
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(st, "seconds");
        char line[256];
        int w = snprintf(line, sizeof line, "{\"stage\":\"%s\",\"status\":\"%s\",\"seconds\":%.3f}\n",
                         cJSON_GetObjectItemCaseSensitive(st, "name")->valuestring,
                         cJSON_GetObjectItemCaseSensitive(st, "status")->valuestring,
                         cJSON_IsNumber(sec) ? sec->valuedouble : -1.0);
        char *nb = w > 0 ? realloc(metrics, len + (size_t)w + 1) : NULL;
        if (!nb) continue;
        metrics = nb;
        memcpy(metrics + len, line, (size_t)w + 1);
        len += (size_t)w;
    }
    /* quantize's weight error and the merge's logit check, from their logs */
    char extra[1024] = "";
    {
        char qlog[4096], *qtext = NULL;
        size_t qn = 0;
        rq_err qerr = {0};
        double mean, max;
        join(qlog, sizeof qlog, c->dir, "quantize/log.txt");
        const char *hit = rq_file_read_all(qlog, &qtext, &qn, &qerr) == RQ_OK ? strstr(qtext, "||W - Q(W)||/||W||: mean ")
                                                                               : NULL;
        if (hit && sscanf(hit, "||W - Q(W)||/||W||: mean %lf, max %lf", &mean, &max) == 2)
            snprintf(extra, sizeof extra, "{\"stage\":\"quantize\",\"mean_rel_weight_err\":%.9g,\"max_rel_weight_err\":%.9g}\n",
                     mean, max);
        free(qtext);
        const cJSON *mg = cJSON_GetObjectItemCaseSensitive(results, "merge");
        const cJSON *ma = cJSON_GetObjectItemCaseSensitive(mg, "max_abs_logit_diff");
        const cJSON *mr = cJSON_GetObjectItemCaseSensitive(mg, "max_rel_logit_diff");
        const cJSON *mb = cJSON_GetObjectItemCaseSensitive(mg, "rel_bound");
        if (cJSON_IsNumber(ma) && cJSON_IsNumber(mr) && cJSON_IsNumber(mb))
            snprintf(extra + strlen(extra), sizeof extra - strlen(extra),
                     "{\"stage\":\"merge\",\"max_abs_logit_diff\":%.9g,\"max_rel_logit_diff\":%.9g,\"rel_bound\":%.9g}\n",
                     ma->valuedouble, mr->valuedouble, mb->valuedouble);
        size_t w = strlen(extra);
        char *nb = w ? realloc(metrics, len + w + 1) : NULL;
        if (nb) {
            metrics = nb;
            memcpy(metrics + len, extra, w + 1);
            len += w;
        }
    }
    rq_status s = RQ_OK;
    join(path, sizeof path, c->dir, "metrics.jsonl");
    s = rq_write_file_atomic(path, metrics, len, err);
    join(path, sizeof path, c->dir, "results.json");
    if (s == RQ_OK) s = write_json(path, results, err);
    char *recipe = rq_recipe_to_json(c->r), *html = NULL;
    if (s == RQ_OK) s = rq_report_html(results, metrics, recipe, &html, err);
    join(path, sizeof path, c->dir, "report.html");
    if (s == RQ_OK) s = rq_write_file_atomic(path, html, strlen(html), err);
    free(html);
    free(recipe);
    free(metrics);
    return s;
}

/* recipe.json: written on the first run; a later run must bring the same recipe. */
static rq_status check_or_write_recipe(const run_ctx *c, rq_err *err) {
    char path[4096], where[256];
    join(path, sizeof path, c->dir, "recipe.json");
    if (rq_file_exists(path)) {
        cJSON *old = read_json(path);
        if (!old) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not valid JSON", path);
        bool same = rq_recipe_same(old, c->r->root, where, sizeof where);
        cJSON_Delete(old);
        if (!same)
            return RQ_FAIL(err, RQ_ERR_ARG, "%s holds a different recipe (first difference: %s); resume it with the "
                                            "same recipe and overrides, or choose another --out", path, where);
        return RQ_OK;
    }
    char *text = rq_recipe_to_json(c->r);
    if (!text) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
    rq_status st = rq_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return st;
}

static rq_status write_versions(const run_ctx *c, int argc, char **argv, rq_err *err) {
    char path[4096];
    join(path, sizeof path, c->dir, "versions.json");
    cJSON *v = read_json(path);
    if (!v) v = cJSON_CreateObject();
    cJSON_DeleteItemFromObjectCaseSensitive(v, "rilq");
    cJSON_DeleteItemFromObjectCaseSensitive(v, "git_describe");
    cJSON_DeleteItemFromObjectCaseSensitive(v, "compiler");
    cJSON_AddStringToObject(v, "rilq", RILQ_VERSION);
    if (*RILQ_GIT_DESCRIBE) cJSON_AddStringToObject(v, "git_describe", RILQ_GIT_DESCRIBE);
    else cJSON_AddNullToObject(v, "git_describe");
    cJSON_AddStringToObject(v, "compiler", __VERSION__);
    /* one entry per invocation: a resumed run shows which binary did what */
    cJSON *inv = cJSON_GetObjectItemCaseSensitive(v, "invocations");
    if (!cJSON_IsArray(inv)) {
        cJSON_DeleteItemFromObjectCaseSensitive(v, "invocations");
        inv = cJSON_AddArrayToObject(v, "invocations");
    }
    cJSON *e = cJSON_CreateObject();
    char when[64];
    time_t now = time(NULL);
    struct tm tmv;
    gmtime_r(&now, &tmv);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    cJSON_AddStringToObject(e, "started", when);
    cJSON_AddStringToObject(e, "rilq", RILQ_VERSION);
    cJSON_AddStringToObject(e, "git_describe", RILQ_GIT_DESCRIBE);
    cJSON *args = cJSON_AddArrayToObject(e, "argv");
    cJSON_AddItemToArray(args, cJSON_CreateString("rilq"));
    for (int i = 0; i < argc; i++) cJSON_AddItemToArray(args, cJSON_CreateString(argv[i]));
    cJSON_AddItemToArray(inv, e);
    rq_status st = write_json(path, v, err);
    cJSON_Delete(v);
    return st;
}

int cmd_run(int argc, char **argv) {
    const char *recipe_path = NULL, *out = NULL, *v;
    const char *overrides[64];
    int n_over = 0;
    run_ctx c = {0};
    /* line-buffered: the stage lines and the stages' own errors (stderr) interleave in order */
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(run_help, stdout);
            return 0;
        }
        int r = cli_common_opt("run", argc, argv, &i, &c.common);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (cli_opt(argc, argv, &i, "--out", &v)) {
            if (!v || !*v) return cli_usage_error("run", "--out needs a directory");
            out = v;
        } else if (cli_flag(argv, i, "--dry-run")) {
            c.dry_run = true;
        } else if (cli_flag(argv, i, "--verbose")) {
            c.verbose = true;
        } else if (cli_flag(argv, i, "--keys")) {
            char *h = rq_recipe_schema_help();
            if (h) fputs(h, stdout);
            free(h);
            return 0;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("run", "unknown option '%s'", argv[i]);
        } else if (!recipe_path) {
            recipe_path = argv[i];
        } else if (strchr(argv[i], '=')) {
            if (n_over == 64) return cli_usage_error("run", "more than 64 overrides");
            overrides[n_over++] = argv[i];
        } else {
            return cli_usage_error("run", "unexpected argument '%s' (overrides are key=value)", argv[i]);
        }
    }
    if (!recipe_path) return cli_usage_error("run", "missing RECIPE (a recipes/*.json file)");
    rq_err err = {0};
    rq_recipe r;
    if (rq_recipe_load(recipe_path, overrides, n_over, &r, &err) != RQ_OK) return cli_fail("run", &err);
    char dir[4096];
    if (out) snprintf(dir, sizeof dir, "%s", out);
    else snprintf(dir, sizeof dir, "runs/%s", r.name);
    c.r = &r;
    c.dir = dir;
    double t0 = rq_now_seconds();
    int rc = 0;
    printf("rilq run: recipe %s (%s), run directory %s\n", r.name, recipe_path, dir);
    if (c.dry_run) {
        char *text = rq_recipe_to_json(&r);
        if (text) fputs(text, stdout);
        free(text);
        plan_and_run(&c);
        rq_recipe_free(&r);
        return 0;
    }
    /* one run per directory at a time: a POSIX record lock, released when the process ends (also by a kill) */
    char lock_path[4200];
    int lock_fd = -1;
    join(lock_path, sizeof lock_path, dir, ".lock");
    if (rq_mkdir_p(dir, &err) == RQ_OK) {
        lock_fd = open(lock_path, O_RDWR | O_CREAT, 0644);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        if (lock_fd < 0 || fcntl(lock_fd, F_SETLK, &fl) != 0) {
            RQ_FAIL(&err, RQ_ERR_IO, "%s: another rilq run is using this directory (or the lock %s cannot be taken)",
                    dir, lock_path);
            if (lock_fd >= 0) close(lock_fd);
            rq_recipe_free(&r);
            return cli_fail("run", &err);
        }
    }
    if (rq_mkdir_p(dir, &err) || check_or_write_recipe(&c, &err) || write_versions(&c, argc, argv, &err)) {
        rc = cli_fail("run", &err);
        rq_recipe_free(&r);
        if (lock_fd >= 0) close(lock_fd);
        return rc;
    }
    plan_and_run(&c);
    cJSON *results = build_results(&c);
    if (write_outputs(&c, results, &err) != RQ_OK) rc = cli_fail("run", &err);
    char *table = rq_report_table(results);
    printf("\n%s\n%s", r.name, table ? table : "");
    free(table);
    printf("\nrun directory %s: results.json, report.html, metrics.jsonl (%.1fs this invocation)\n", dir,
           rq_now_seconds() - t0);
    if (c.n_failed) {
        fprintf(stderr, "rilq run: %d stage(s) failed or blocked:", c.n_failed);
        for (int i = 0; i < c.n_stages; i++)
            if (!strcmp(c.stages[i].status, "failed") || !strcmp(c.stages[i].status, "blocked"))
                fprintf(stderr, " %s (%s)", c.stages[i].name, c.stages[i].status);
        fprintf(stderr, "\n");
        rc = 1;
    }
    cJSON_Delete(results);
    rq_recipe_free(&r);
    if (lock_fd >= 0) close(lock_fd);
    return rc;
}
