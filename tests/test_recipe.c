/* Recipes (src/pipeline/recipe.h): strict keys and types with messages naming
 * the key and the file, defaults, overrides with type checks, ${VAR}
 * substitution, combination checks; every shipped recipe parses; the results
 * table and report.html of a run (src/pipeline/report.h). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>

#include "pipeline/recipe.h"
#include "pipeline/report.h"
#include "test.h"

static const char *minimal = "{\"name\": \"t\", \"model\": {\"path\": \"${RQ_TEST_MODEL_DIR}/m.gguf\"},"
                             " \"stage2\": {\"task\": \"arc_easy\"}, \"eval\": {\"tasks\": [\"arc_easy\"]}}";

/* Parse text with overrides; returns the status and leaves the message in err. */
static rq_status parse(const char *text, const char *const *ov, int n, rq_recipe *r, rq_err *err) {
    memset(err, 0, sizeof *err);
    return rq_recipe_parse(text, "recipes/x.json", ov, n, r, err);
}

static bool has(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

static void test_defaults_and_substitution(void) {
    rq_recipe r;
    rq_err err;
    setenv("RQ_TEST_MODEL_DIR", "/models", 1);
    CHECK_OK(parse(minimal, NULL, 0, &r, &err), &err);
    CHECK(!strcmp(r.model.path, "/models/m.gguf"));
    CHECK(!strcmp(r.quantize.method, "rtn") && r.quantize.group_size == 64 && !r.quantize.clip_search);
    CHECK(r.adapter.rank == 64 && r.adapter.alpha == 16.0 && !strcmp(r.adapter.type, "qalora"));
    CHECK(r.stage1.enabled && r.stage1.lr == 1e-4 && r.stage1.accum == 8 && r.stage1.windows == 320);
    CHECK(r.stage1.eval_every == 25 && r.stage1.patience == 5 && r.stage1.max_micro_steps == 10000);
    CHECK(r.stage2.enabled && !strcmp(r.stage2.task, "arc_easy") && r.stage2.epochs == 3);
    CHECK(r.merge.enabled && r.export_.formats.n == 0);
    CHECK(r.eval.models.n == 5 && r.eval.tasks.n == 1 && !strcmp(r.eval.tasks.item[0], "arc_easy"));
    /* the resolved tree holds every key, in schema order, substituted */
    char *json = rq_recipe_to_json(&r);
    CHECK(has(json, "\"/models/m.gguf\"") && has(json, "\"max_micro_steps\"") && has(json, "\"teacher_cache\""));
    CHECK(json && strstr(json, "\"name\"") < strstr(json, "\"model\"") &&
          strstr(json, "\"stage1\"") < strstr(json, "\"stage2\""));
    /* a resolved recipe parses back to the same tree */
    rq_recipe r2;
    CHECK_OK(parse(json, NULL, 0, &r2, &err), &err);
    char where[128];
    CHECK(rq_recipe_same(r.root, r2.root, where, sizeof where));
    rq_recipe_free(&r2);
    free(json);
    rq_recipe_free(&r);

    unsetenv("RQ_TEST_MODEL_DIR");
    CHECK(parse(minimal, NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "RQ_TEST_MODEL_DIR") && has(err.msg, "model.path") && has(err.msg, "recipes/x.json"), "%s",
           err.msg);

    char *s = NULL;
    CHECK_OK(rq_recipe_substitute("${RQ_TEST_UNSET_VAR:-.cache}/models/a", "k", "f", &s, &err), &err);
    CHECK(s && !strcmp(s, ".cache/models/a"));
    free(s);
    setenv("RQ_TEST_SET_VAR", "/x", 1);
    CHECK_OK(rq_recipe_substitute("${RQ_TEST_SET_VAR:-.cache}/a${RQ_TEST_SET_VAR}$b", "k", "f", &s, &err), &err);
    CHECK(s && !strcmp(s, "/x/a/x$b"));
    free(s);
    CHECK(rq_recipe_substitute("${RQ_TEST_SET_VAR", "k", "f", &s, &err) != RQ_OK);
    CHECK(has(err.msg, "closing"));
    CHECK(rq_recipe_substitute("${A B}", "k", "f", &s, &err) != RQ_OK);
}

static void test_unknown_and_wrong_type(void) {
    rq_recipe r;
    rq_err err;
    setenv("RQ_TEST_MODEL_DIR", "/models", 1);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"stage1\": {\"learning_rate\": 1}}", NULL, 0, &r,
                &err) != RQ_OK);
    CHECKF(has(err.msg, "recipes/x.json") && has(err.msg, "unknown key 'stage1.learning_rate'") && has(err.msg, "lr"),
           "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"optimizer\": {}}", NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "unknown key 'optimizer'"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"stage1\": {\"lr\": \"1e-4\"}}", NULL, 0, &r, &err) !=
          RQ_OK);
    CHECKF(has(err.msg, "recipes/x.json") && has(err.msg, "stage1.lr") && has(err.msg, "expected a number") &&
               has(err.msg, "found a string"),
           "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"stage1\": {\"windows\": 3.5}}", NULL, 0, &r, &err) !=
          RQ_OK);
    CHECKF(has(err.msg, "stage1.windows") && has(err.msg, "expected an integer"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"eval\": {\"tasks\": \"piqa\"}}", NULL, 0, &r, &err) !=
          RQ_OK);
    CHECKF(has(err.msg, "eval.tasks") && has(err.msg, "expected a list of strings"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": \"m\"}", NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "model: expected an object"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"merge\": {\"enabled\": 1}}", NULL, 0, &r, &err) !=
          RQ_OK);
    CHECKF(has(err.msg, "merge.enabled") && has(err.msg, "expected true or false"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\"}", NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "missing required key 'model.path'"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"quantize\": {\"method\": \"awq\"}}", NULL, 0, &r,
                &err) != RQ_OK);
    CHECKF(has(err.msg, "quantize.method") && has(err.msg, "rtn|nf2"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", ", NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "not valid JSON"), "%s", err.msg);
    /* combinations */
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}}", NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "stage2.task is needed"), "%s", err.msg);
    const char *ov_lora[] = {"adapter.type=lora"};
    CHECK(parse(minimal, ov_lora, 1, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "merge needs adapter.type qalora"), "%s", err.msg);
    const char *ov_gs[] = {"adapter.group_size=32"};
    CHECK(parse(minimal, ov_gs, 1, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "adapter.group_size"), "%s", err.msg);
}

static void test_overrides(void) {
    rq_recipe r;
    rq_err err;
    setenv("RQ_TEST_MODEL_DIR", "/models", 1);
    const char *ov[] = {"stage1.lr=3e-4", "stage2.epochs=1", "quantize.clip_search=true", "eval.tasks=piqa, gsm8k",
                        "export.formats=gguf,hqq", "stage1.teacher_cache=${RQ_TEST_MODEL_DIR}/cache", "eval.ppl="};
    CHECK_OK(parse(minimal, ov, 7, &r, &err), &err);
    CHECK(r.stage1.lr == 3e-4 && r.stage2.epochs == 1 && r.quantize.clip_search);
    CHECK(r.eval.tasks.n == 2 && !strcmp(r.eval.tasks.item[0], "piqa") && !strcmp(r.eval.tasks.item[1], "gsm8k"));
    CHECK(r.export_.formats.n == 2 && r.eval.ppl.n == 0);
    CHECK(!strcmp(r.stage1.teacher_cache, "/models/cache"));
    rq_recipe base;
    CHECK_OK(parse(minimal, NULL, 0, &base, &err), &err);
    char where[128];
    CHECK(!rq_recipe_same(base.root, r.root, where, sizeof where));
    CHECKF(!strcmp(where, "quantize.clip_search"), "%s", where);
    rq_recipe_free(&base);
    rq_recipe_free(&r);

    const char *bad[][1] = {{"stage1.lr=fast"}, {"stage2.epochs=1.5"}, {"merge.enabled=yes"}, {"stage1.lrr=1"},
                            {"stage1=3"},       {"lr"},                {"eval.tasks=piqa,,arc_easy"},
                            {"eval.tasks=mmlu"}, {"stage2.epochs=0"}};
    const char *want[] = {"expected a number", "expected an integer", "expected true or false", "unknown key 'stage1.lrr'",
                          "is a section",      "key=value",           "empty item",
                          "'mmlu' is not one of", "below the least"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(parse(minimal, bad[i], 1, &r, &err) != RQ_OK);
        CHECKF(has(err.msg, want[i]) && has(err.msg, "recipes/x.json"), "override %s: %s", bad[i][0], err.msg);
    }
}

/* Every recipe in recipes/ parses, with the documented substitutions. */
static void test_shipped_recipes(void) {
    const char *src = getenv("RQ_SOURCE_DIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/recipes", src && *src ? src : "..");
    DIR *d = opendir(dir);
    CHECKF(d != NULL, "cannot open %s", dir);
    if (!d) return;
    setenv("RILQ_DATA", "/data", 1);
    int n = 0;
    bool saw_demo = false;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".json")) continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        rq_recipe r;
        rq_err err = {0};
        CHECKF(rq_recipe_load(path, NULL, 0, &r, &err) == RQ_OK, "%s", err.msg);
        CHECKF(*r.notes, "%s has no notes", path);
        if (!strcmp(e->d_name, "demo-stories260k.json")) {
            saw_demo = true;
            CHECK(!strcmp(r.model.path, "/data/models/stories260K/stories260K.bin"));
        }
        rq_recipe_free(&r);
        n++;
    }
    closedir(d);
    CHECK(saw_demo);
    CHECKF(n >= 9, "%d recipes", n);
}

static void test_report(void) {
    const char *text =
        "{\"recipe\": \"demo\", \"columns\": [{\"task\": \"arc_easy\", \"metric\": \"acc\"}, {\"task\": \"wikitext2\", "
        "\"metric\": \"ppl\"}], \"rows\": [{\"id\": \"fp\", \"label\": \"full precision\", \"results\": {\"arc_easy\": "
        "{\"acc\": 0.25}, \"wikitext2\": {\"ppl\": 119.5}}}, {\"id\": \"merged\", \"label\": \"merged <x>\", \"results\": "
        "{}}], \"stages\": [{\"name\": \"quantize\", \"status\": \"done\", \"seconds\": 1.5}]}";
    cJSON *res = cJSON_Parse(text);
    CHECK(res != NULL);
    char *table = rq_report_table(res);
    CHECKF(has(table, "arc_easy acc") && has(table, "0.2500") && has(table, "119.50") && has(table, "merged <x>"), "%s",
           table ? table : "(null)");
    /* the merged row has no numbers: dashes */
    const char *merged = table ? strstr(table, "merged") : NULL;
    CHECK(merged && strchr(merged, '-'));
    free(table);
    const char *metrics = "{\"stage\":\"calibrate\",\"step\":0,\"val_loss\":4.2}\n"
                          "{\"stage\":\"calibrate\",\"step\":1,\"loss\":4.0}\n"
                          "{\"stage\":\"calibrate\",\"step\":2,\"loss\":3.5,\"val_loss\":3.9}\n"
                          "{\"stage\":\"finetune\",\"step\":1,\"loss\":2.0}\n";
    char *html = NULL;
    rq_err err = {0};
    CHECK_OK(rq_report_html(res, metrics, "{\"name\": \"demo\"}", &html, &err), &err);
    CHECK(has(html, "<svg") && has(html, "<polyline") && has(html, "Stage 2"));
    CHECK(has(html, "merged &lt;x&gt;") && has(html, "0.2500"));
    /* self-contained: nothing fetched */
    CHECK(!has(html, "<script") && !has(html, "<link") && !has(html, "src=") && !has(html, "url("));
    free(html);
    cJSON_Delete(res);
}

/* Issue 16: a duplicate key is an error (cJSON alone keeps the first value
 * silently); a number out of range is not called an integer. */
static void test_duplicates_and_range(void) {
    rq_recipe r;
    rq_err err;
    setenv("RQ_TEST_MODEL_DIR", "/models", 1);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"stage2\": {\"task\": \"arc_easy\", "
                "\"lr\": 1e-4, \"lr\": 3e-4}}", NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "recipes/x.json") && has(err.msg, "stage2.lr") && has(err.msg, "more than once"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"stage2\": {\"task\": \"arc_easy\"}, "
                "\"stage2\": {\"task\": \"piqa\"}}", NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "'stage2'") && has(err.msg, "more than once"), "%s", err.msg);
    CHECK(parse("{\"name\": \"t\", \"model\": {\"path\": \"m\"}, \"stage2\": {\"task\": \"arc_easy\", "
                "\"lr\": 1e999}}", NULL, 0, &r, &err) != RQ_OK);
    CHECKF(has(err.msg, "stage2.lr") && !has(err.msg, "integer") && has(err.msg, "out of range"), "%s", err.msg);
    /* the name is the default run directory runs/NAME: "" made it runs/, "../.." escaped runs/ */
    const char *bad_names[] = {"", "..", "../..", "a/b", ".", "x\\ny"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "{\"name\": \"%s\", \"model\": {\"path\": \"m\"}, \"stage2\": {\"task\": "
                 "\"arc_easy\"}, \"eval\": {\"tasks\": [\"arc_easy\"]}}", bad_names[i]);
        CHECKF(parse(text, NULL, 0, &r, &err) != RQ_OK && has(err.msg, "name"), "name '%s': %s", bad_names[i], err.msg);
    }
    const char *ov_name[] = {"name=../../etc"};
    CHECK(parse(minimal, ov_name, 1, &r, &err) != RQ_OK && has(err.msg, "name"));
    const char *ov_ok[] = {"name=my-run_2.1"};
    CHECK_OK(parse(minimal, ov_ok, 1, &r, &err), &err);
    rq_recipe_free(&r);
}

int main(void) {
    test_duplicates_and_range();
    test_defaults_and_substitution();
    test_unknown_and_wrong_type();
    test_overrides();
    test_report();
    test_shipped_recipes();
    return rq_test_finish();
}
