/* Option tables (src/core/opts.h) and the stages' tables (src/pipeline/stages.h):
 * defaults, command-line parsing and its errors, the equivalent command line read
 * back to the same options, the recipe schema generated from the tables with the
 * same limits as the commands, and the message sink. */
#define _POSIX_C_SOURCE 200809L
#include "pipeline/recipe.h"
#include "pipeline/stages.h"
#include "test.h"

static bool has(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }

typedef struct table_case {
    const char *name;
    const rq_opt_table *t;
} table_case;

static const table_case tables[] = {
    {"quantize", &rq_stage_quantize_table}, {"calibrate", &rq_stage_calibrate_table},
    {"finetune", &rq_stage_finetune_table}, {"merge", &rq_stage_merge_table},
    {"export", &rq_stage_export_table},     {"eval", &rq_stage_eval_table},
};

/* Every table: defaults parse, flags and keys are unique, every key is in the recipe schema. */
static void test_tables(void) {
    char *schema = rq_recipe_schema_help();
    CHECK(schema != NULL);
    for (size_t k = 0; k < sizeof tables / sizeof tables[0]; k++) {
        const rq_opt_table t = *tables[k].t;
        void *o = calloc(1, t.size);
        rq_err err = {0};
        CHECKF(rq_opts_defaults(t, o, &err) == RQ_OK, "%s: %s", tables[k].name, err.msg);
        for (size_t i = 0; i < t.n; i++) {
            const rq_opt *e = &t.opt[i];
            CHECKF(e->flag || e->key, "%s: option %zu has neither a flag nor a key", tables[k].name, i);
            CHECKF(e->help && *e->help, "%s: %s has no help", tables[k].name, e->flag ? e->flag : e->key);
            for (size_t j = i + 1; j < t.n; j++) {
                CHECKF(!(e->flag && t.opt[j].flag && !strcmp(e->flag, t.opt[j].flag)), "%s: flag %s twice",
                       tables[k].name, e->flag);
                CHECKF(!(e->key && t.opt[j].key && !strcmp(e->key, t.opt[j].key)), "%s: key %s twice", tables[k].name,
                       e->key);
            }
            if (e->key) {
                char needle[128];
                snprintf(needle, sizeof needle, "  %s ", e->key);
                CHECKF(has(schema, needle), "%s: recipe key %s missing from rilq run --keys", tables[k].name, e->key);
            }
        }
        free(o);
    }
    free(schema);
}

static rq_status parse(rq_stage_calibrate_opts *o, int argc, const char **argv, const char **pos, int *n_pos,
                       rq_err *err) {
    bool help = false;
    rq_status st = rq_stage_calibrate_defaults(o, err);
    if (st) return st;
    return rq_opts_parse_argv(rq_stage_calibrate_table, o, argc, (char **)argv, pos, 2, n_pos, &help, err);
}

static void test_argv(void) {
    rq_stage_calibrate_opts o;
    rq_err err = {0};
    const char *pos[2];
    int n = 0;
    const char *a1[] = {"calibrate", "model.bin", "--lr=3e-4", "--rank", "8", "--resume", "--adapter", "lora",
                        "--out", "d", "--no-memory-check=false"};
    CHECK_OK(parse(&o, 11, a1, pos, &n, &err), &err);
    CHECK(n == 1 && !strcmp(pos[0], "model.bin"));
    CHECK(o.lr == 3e-4 && o.adapter.rank == 8 && o.resume && !strcmp(o.adapter.type, "lora") && !strcmp(o.out, "d"));
    CHECK(!o.no_memory_check && o.windows == 320 && o.head_error_windows == 16 && !strcmp(o.scope, "model"));
    struct {
        const char *args[3];
        int n;
        const char *want[3];
    } bad[] = {
        {{"calibrate", "--learning-rate", "1"}, 3, {"unknown option '--learning-rate'", NULL, NULL}},
        {{"calibrate", "--lr", NULL}, 2, {"--lr needs a value", NULL, NULL}},
        {{"calibrate", "--lr", "20"}, 3, {"--lr", "0..10", "20"}},
        {{"calibrate", "--rank", "5000"}, 3, {"--rank", "1..4096", "5000"}},
        {{"calibrate", "--rank", "2.5"}, 3, {"--rank", "expected an integer", "2.5"}},
        {{"calibrate", "--rank", "1e999"}, 3, {"--rank", "expected an integer", "1e999"}},
        {{"calibrate", "--scope", "global"}, 3, {"--scope", "model|layer|linear", "global"}},
        {{"calibrate", "--resume=maybe"}, 2, {"--resume", "true or false", NULL}},
        {{"calibrate", "a", "b"}, 3, {"unexpected argument 'b'", NULL, NULL}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = (rq_err){0};
        const char *args[3] = {bad[i].args[0], bad[i].args[1], bad[i].args[2]};
        rq_status st = bad[i].args[1] && !strcmp(bad[i].args[1], "a")
                           ? (rq_stage_calibrate_defaults(&o, &err),
                              rq_opts_parse_argv(rq_stage_calibrate_table, &o, 3, (char **)args, pos, 1, &n,
                                                 &(bool){false}, &err))
                           : parse(&o, bad[i].n, args, pos, &n, &err);
        CHECKF(st == RQ_ERR_ARG, "case %zu", i);
        for (int k = 0; k < 3; k++)
            if (bad[i].want[k]) CHECKF(has(err.msg, bad[i].want[k]), "case %zu: '%s' not in: %s", i, bad[i].want[k], err.msg);
    }
    /* lists: items checked against the choices, duplicates dropped */
    rq_stage_eval_opts e;
    CHECK_OK(rq_stage_eval_defaults(&e, &err), &err);
    const char *a2[] = {"eval", "--tasks", "piqa,arc_easy,piqa", "--ppl=c4"};
    bool help = false;
    CHECK_OK(rq_opts_parse_argv(rq_stage_eval_table, &e, 4, (char **)a2, pos, 1, &n, &help, &err), &err);
    CHECK(e.tasks.n == 2 && !strcmp(e.tasks.item[0], "piqa") && !strcmp(e.tasks.item[1], "arc_easy"));
    CHECK(e.ppl.n == 1 && rq_list_has(&e.ppl, "c4") && !rq_list_has(&e.ppl, "wikitext2"));
    const char *a3[] = {"eval", "--tasks", "piqa,,arc_easy"};
    CHECK(rq_opts_parse_argv(rq_stage_eval_table, &e, 3, (char **)a3, pos, 1, &n, &help, &err) == RQ_ERR_ARG);
    CHECKF(has(err.msg, "empty item"), "%s", err.msg);
    const char *a4[] = {"eval", "--tasks", "mmlu"};
    CHECK(rq_opts_parse_argv(rq_stage_eval_table, &e, 3, (char **)a4, pos, 1, &n, &help, &err) == RQ_ERR_ARG);
    CHECKF(has(err.msg, "unknown item 'mmlu'") && has(err.msg, "gsm8k"), "%s", err.msg);
    const char *a5[] = {"eval", "--help"};
    CHECK_OK(rq_opts_parse_argv(rq_stage_eval_table, &e, 2, (char **)a5, pos, 1, &n, &help, &err), &err);
    CHECK(help);
}

/* The command line that rilq run records reads back to the same options. */
static void test_command_line_round_trip(void) {
    rq_stage_calibrate_opts o, back;
    rq_err err = {0};
    const char *pos[2];
    int n = 0;
    const char *a[] = {"calibrate", "/models/my model.bin", "--lr", "0.1", "--rank", "8", "--resume",
                       "--cache", "it's here", "--model-weight", "0.30000000000000004", "--out", "d"};
    CHECK_OK(parse(&o, 13, a, pos, &n, &err), &err);
    char *line = rq_opts_command_line("calibrate", rq_stage_calibrate_table, &o, pos, n);
    CHECK(line && has(line, "'/models/my model.bin'") && has(line, "--model-weight 0.30000000000000004"));
    CHECK(line && !has(line, "--windows")); /* defaults are left out */
    /* read it back with the shell's quoting rules (sh -c 'printf "%s\n" ...') */
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "set -- %s; shift; for a; do printf '%%s\\n' \"$a\"; done", line);
    char script[4200];
    snprintf(script, sizeof script, "%s", rq_test_out("opts-round-trip.sh"));
    FILE *sf = fopen(script, "w");
    CHECK(sf != NULL);
    if (sf) {
        fputs(cmd, sf);
        fclose(sf);
    }
    char run[4400];
    snprintf(run, sizeof run, "sh '%s'", script);
    FILE *p = popen(run, "r");
    char *args[64];
    int argc = 0;
    char buf[1024];
    while (p && argc < 64 && fgets(buf, sizeof buf, p)) {
        buf[strcspn(buf, "\n")] = 0;
        args[argc++] = strdup(buf);
    }
    if (p) pclose(p);
    CHECKF(argc > 3 && !strcmp(args[0], "calibrate"), "%d words", argc);
    const char *pos2[2];
    int n2 = 0;
    CHECK_OK(parse(&back, argc, (const char **)args, pos2, &n2, &err), &err);
    CHECK(n2 == 1 && !strcmp(pos2[0], "/models/my model.bin"));
    cJSON *ja = rq_opts_to_json(rq_stage_calibrate_table, &o), *jb = rq_opts_to_json(rq_stage_calibrate_table, &back);
    CHECK(cJSON_Compare(ja, jb, true));
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    for (int i = 0; i < argc; i++) free(args[i]);
    free(line);
}

static const char *recipe =
    "{\"name\": \"t\", \"model\": {\"path\": \"/m.bin\"}, \"adapter\": {\"rank\": 8},\n"
    " \"stage1\": {\"lr\": 0.001}, \"stage2\": {\"task\": \"piqa\", \"fold\": \"0:100\"},\n"
    " \"eval\": {\"tasks\": [\"piqa\"]}}";

/* A recipe's sections are the stages' options: same defaults, same limits. */
static void test_recipe_sections(void) {
    rq_recipe r;
    rq_err err = {0};
    CHECK_OK(rq_recipe_parse(recipe, "t.json", NULL, 0, &r, &err), &err);
    rq_stage_calibrate_opts d;
    CHECK_OK(rq_stage_calibrate_defaults(&d, &err), &err);
    CHECK(r.stage1.lr == 0.001 && r.stage1.windows == d.windows && r.stage1.head_error_windows == d.head_error_windows);
    CHECK(r.stage1.adapter.rank == 8 && r.stage2.adapter.rank == 8 && r.adapter.rank == 8);
    CHECK(r.adapter.group_size == 0); /* the quantizer's */
    CHECK(!strcmp(r.stage2.fold, "0:100") && !strcmp(r.quantize.method, "rtn") && r.quantize.modules.n == 7);
    rq_recipe_free(&r);
    /* the limits of the command line hold in recipes too, before anything runs */
    const char *bad[][2] = {{"stage1.lr=1e20", "stage1.lr"},          {"adapter.rank=5000", "adapter.rank"},
                            {"stage2.epochs=1000000000000", "stage2.epochs"}, {"stage1.c4_docs=9:3", "c4_docs"},
                            {"stage2.fold=x", "fold"},                    {"stage2.micro_batch=3", "micro_batch"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *ov[] = {bad[i][0]};
        err = (rq_err){0};
        CHECKF(rq_recipe_parse(recipe, "t.json", ov, 1, &r, &err) != RQ_OK, "%s accepted", bad[i][0]);
        CHECKF(has(err.msg, bad[i][1]) && has(err.msg, "t.json"), "%s: %s", bad[i][0], err.msg);
    }
}

typedef struct captured {
    int n[4];
    char last[256];
} captured;

static void capture(void *user, rq_log_level level, const char *line) {
    captured *c = user;
    c->n[level]++;
    snprintf(c->last, sizeof c->last, "%s", line);
}

static void test_log(void) {
    captured c = {0};
    rq_log_set(capture, &c);
    rq_info("step %d", 3);
    rq_warn("careful");
    rq_progress p;
    rq_progress_init(&p, "work", 10);
    rq_progress_finish(&p, 10, "items");
    CHECK(c.n[RQ_LOG_INFO] == 1 && c.n[RQ_LOG_WARN] == 1 && c.n[RQ_LOG_DONE] == 1);
    CHECKF(has(c.last, "work: 10/10 items"), "%s", c.last);
    rq_log_set(NULL, NULL);
    rq_info("nobody hears this");
    CHECK(c.n[RQ_LOG_INFO] == 1);
}

int main(void) {
    test_tables();
    test_argv();
    test_command_line_round_trip();
    test_recipe_sections();
    test_log();
    return rq_test_finish();
}
