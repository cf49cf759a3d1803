/* Recipe files: a fixed schema, strict checking, overrides, defaults, ${VAR}. */
#include "recipe.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum key_kind { K_OBJ, K_STR, K_INT, K_NUM, K_BOOL, K_LIST } key_kind;

typedef struct key_spec {
    const char *key;     /* "section.key" or "key" */
    key_kind kind;
    size_t off;          /* where the value goes in rq_recipe (leaves only) */
    const char *def;     /* default in override syntax; NULL: required */
    const char *choices; /* "a|b|c" for strings and list items; NULL: any */
    double min, max;     /* numbers: the values allowed */
    const char *help;
} key_spec;

#define OFF(member) offsetof(rq_recipe, member)
#define NOMIN (-1e300)
#define NOMAX 1e300

/* The schema: the recipe's own keys, then each section's keys from its stage's
 * option table. Sections come before their keys; the resolved tree follows this order. */
static const key_spec own_keys[] = {
    {"name", K_STR, OFF(name), NULL, NULL, NOMIN, NOMAX, "the recipe's name (the default run directory is runs/NAME)"},
    {"notes", K_STR, OFF(notes), "", NULL, NOMIN, NOMAX, "free text: what the recipe is for, what its budgets assume"},
    {"model", K_OBJ, 0, NULL, NULL, NOMIN, NOMAX, "the full-precision model"},
    {"model.path", K_STR, OFF(model.path), NULL, NULL, NOMIN, NOMAX, "HF directory, GGUF file or llama2.c .bin"},
    {"model.tokenizer", K_STR, OFF(model.tokenizer), "", NULL, NOMIN, NOMAX, "tokenizer file when the model has none beside it"},
};

typedef struct section_spec {
    const char *name, *help;
    const rq_opt_table *table;
    size_t base; /* offsetof(rq_recipe, section) - offsetof(table's struct, section's struct) */
} section_spec;

static const section_spec sections[] = {
    {"quantize", "the 2-bit quantizer (rilq quantize)", &rq_stage_quantize_table, OFF(quantize)},
    {"adapter", "the adapters both stages train", &rq_stage_calibrate_table,
     OFF(adapter) - offsetof(rq_stage_calibrate_opts, adapter)},
    {"stage1", "RILQ calibration (rilq calibrate)", &rq_stage_calibrate_table, OFF(stage1)},
    {"stage2", "task fine-tuning (rilq finetune)", &rq_stage_finetune_table, OFF(stage2)},
    {"merge", "fold the QA-LoRA adapters into the artifact (rilq merge)", &rq_stage_merge_table, OFF(merge)},
    {"export", "deployment files (rilq export)", &rq_stage_export_table, OFF(export_)},
    {"eval", "evaluation of each stage's model (rilq eval)", &rq_stage_eval_table, OFF(eval)},
};

#define MAX_SCHEMA 160
static key_spec schema[MAX_SCHEMA];
static char schema_help[MAX_SCHEMA][320];
static size_t N_SCHEMA;

static void build_schema(void) {
    if (N_SCHEMA) return;
    size_t n = 0;
    for (size_t i = 0; i < sizeof own_keys / sizeof own_keys[0]; i++) schema[n++] = own_keys[i];
    for (size_t s = 0; s < sizeof sections / sizeof sections[0]; s++) {
        const section_spec *sec = &sections[s];
        schema[n++] = (key_spec){sec->name, K_OBJ, 0, NULL, NULL, NOMIN, NOMAX, sec->help};
        size_t plen = strlen(sec->name);
        for (size_t k = 0; k < sec->table->n && n < MAX_SCHEMA; k++) {
            const rq_opt *e = &sec->table->opt[k];
            if (!e->key || strncmp(e->key, sec->name, plen) || e->key[plen] != '.') continue;
            static const key_kind kinds[] = {[RQ_OPT_STR] = K_STR, [RQ_OPT_INT] = K_INT, [RQ_OPT_NUM] = K_NUM,
                                             [RQ_OPT_BOOL] = K_BOOL, [RQ_OPT_LIST] = K_LIST};
            const key_kind kind = kinds[e->kind];
            const char *def = e->recipe_def ? e->recipe_def : e->def;
            if (!def && (kind == K_STR || kind == K_LIST)) def = "";
            /* the help on one line: its first line, then the rest joined with spaces */
            char *h = schema_help[n];
            snprintf(h, sizeof schema_help[n], "%s", e->help);
            for (char *c = h; *c; c++)
                if (*c == '\n') *c = ' ';
            schema[n++] = (key_spec){e->key, kind, sec->base + e->off, def, e->choices,
                                     kind == K_INT || kind == K_NUM ? e->min : NOMIN,
                                     kind == K_INT || kind == K_NUM ? e->max : NOMAX, h};
        }
    }
    N_SCHEMA = n;
}

static const char *kind_name(key_kind k) {
    switch (k) {
    case K_OBJ: return "an object";
    case K_STR: return "a string";
    case K_INT: return "an integer";
    case K_NUM: return "a number";
    case K_BOOL: return "true or false";
    case K_LIST: return "a list of strings";
    }
    return "?";
}

static const char *json_kind(const cJSON *v) {
    if (cJSON_IsObject(v)) return "an object";
    if (cJSON_IsArray(v)) return "a list";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsNumber(v) && !isfinite(v->valuedouble)) return "a number out of range";
    if (cJSON_IsNumber(v)) return v->valuedouble == floor(v->valuedouble) ? "an integer" : "a number";
    return "something else";
}

static const key_spec *find_spec(const char *path) {
    build_schema();
    for (size_t i = 0; i < N_SCHEMA; i++)
        if (!strcmp(schema[i].key, path)) return &schema[i];
    return NULL;
}

/* "a, b, c": the keys a section allows (for the unknown-key message). */
static void known_keys(const char *section, char *buf, size_t n) {
    build_schema();
    size_t used = 0, plen = section ? strlen(section) : 0;
    buf[0] = 0;
    for (size_t i = 0; i < N_SCHEMA; i++) {
        const char *k = schema[i].key, *dot = strchr(k, '.');
        const char *leaf;
        if (section) {
            if (!dot || (size_t)(dot - k) != plen || strncmp(k, section, plen)) continue;
            leaf = dot + 1;
        } else {
            if (dot) continue;
            leaf = k;
        }
        int w = snprintf(buf + used, n - used, "%s%s", used ? ", " : "", leaf);
        if (w < 0 || (size_t)w >= n - used) break;
        used += (size_t)w;
    }
}

static bool is_int_value(double v) { return v == floor(v) && fabs(v) <= 9007199254740992.0; }

static bool type_ok(const key_spec *s, const cJSON *v) {
    switch (s->kind) {
    case K_OBJ: return cJSON_IsObject(v);
    case K_STR: return cJSON_IsString(v);
    case K_INT: return cJSON_IsNumber(v) && is_int_value(v->valuedouble);
    case K_NUM: return cJSON_IsNumber(v) && isfinite(v->valuedouble);
    case K_BOOL: return cJSON_IsBool(v);
    case K_LIST: {
        if (!cJSON_IsArray(v)) return false;
        const cJSON *it;
        cJSON_ArrayForEach(it, v) if (!cJSON_IsString(it)) return false;
        return true;
    }
    }
    return false;
}

/* Every key of obj (at prefix) must be in the schema with the right type. */
static rq_status check_tree(const cJSON *obj, const char *prefix, const char *file, rq_err *err) {
    const cJSON *v;
    cJSON_ArrayForEach(v, obj) {
        char path[256];
        if (!v->string) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: a key without a name", file);
        snprintf(path, sizeof path, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", v->string);
        for (const cJSON *u = obj->child; u != v; u = u->next) /* cJSON keeps both and reads the first */
            if (u->string && !strcmp(u->string, v->string))
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: key '%s' given more than once", file, path);
        const key_spec *s = find_spec(path);
        if (!s) {
            char known[1024];
            known_keys(prefix, known, sizeof known);
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: unknown key '%s' (known%s%s: %s)", file, path, prefix ? " in " : "",
                           prefix ? prefix : "", known);
        }
        if (!type_ok(s, v))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: expected %s, found %s", file, path, kind_name(s->kind),
                           json_kind(v));
        if (s->kind == K_OBJ) RQ_TRY(check_tree(v, path, file, err));
    }
    return RQ_OK;
}

/* A value in override syntax -> a JSON item of the key's kind. */
static rq_status parse_value(const key_spec *s, const char *text, const char *where, cJSON **out, rq_err *err) {
    *out = NULL;
    char *end = NULL;
    switch (s->kind) {
    case K_STR: *out = cJSON_CreateString(text); break;
    case K_INT: {
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (!*text || *end || errno)
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: %s: expected an integer, found '%s'", where, s->key, text);
        *out = cJSON_CreateNumber((double)v);
        break;
    }
    case K_NUM: {
        errno = 0;
        double v = strtod(text, &end);
        if (!*text || *end || errno || !isfinite(v))
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: %s: expected a number, found '%s'", where, s->key, text);
        *out = cJSON_CreateNumber(v);
        break;
    }
    case K_BOOL:
        if (strcmp(text, "true") && strcmp(text, "false"))
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: %s: expected true or false, found '%s'", where, s->key, text);
        *out = cJSON_CreateBool(!strcmp(text, "true"));
        break;
    case K_LIST: {
        *out = cJSON_CreateArray();
        const char *p = text;
        while (*out && *p) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            while (len && (*p == ' ')) p++, len--;
            while (len && p[len - 1] == ' ') len--;
            if (len == 0) {
                cJSON_Delete(*out);
                *out = NULL;
                return RQ_FAIL(err, RQ_ERR_ARG, "%s: %s: empty item in list '%s'", where, s->key, text);
            }
            char item[256];
            snprintf(item, sizeof item, "%.*s", (int)(len < sizeof item - 1 ? len : sizeof item - 1), p);
            cJSON_AddItemToArray(*out, cJSON_CreateString(item));
            p += len;
            while (*p == ' ') p++;
            if (*p == ',') p++;
        }
        break;
    }
    case K_OBJ:
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: %s is a section; override one of its keys", where, s->key);
    }
    if (!*out) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
    return RQ_OK;
}

/* The section object of a leaf key in root (created when missing), and the leaf's name. */
static cJSON *section_of(cJSON *root, const char *key, const char **leaf) {
    const char *dot = strchr(key, '.');
    if (!dot) {
        *leaf = key;
        return root;
    }
    char sec[64];
    snprintf(sec, sizeof sec, "%.*s", (int)(dot - key), key);
    *leaf = dot + 1;
    cJSON *o = cJSON_GetObjectItemCaseSensitive(root, sec);
    if (!o) o = cJSON_AddObjectToObject(root, sec);
    return o;
}

static rq_status apply_override(cJSON *root, const char *ov, const char *file, rq_err *err) {
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov) return RQ_FAIL(err, RQ_ERR_ARG, "%s: override '%s': expected key=value (e.g. stage1.lr=3e-4)", file, ov);
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)(eq - ov), ov);
    const key_spec *s = find_spec(key);
    if (!s) {
        char known[1024], sec[64];
        const char *dot = strchr(key, '.');
        snprintf(sec, sizeof sec, "%.*s", dot ? (int)(dot - key) : 0, key);
        const key_spec *ss = dot ? find_spec(sec) : NULL;
        known_keys(ss ? sec : NULL, known, sizeof known);
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: override '%s': unknown key '%s' (known%s%s: %s)", file, ov, key,
                       ss ? " in " : "", ss ? sec : "", known);
    }
    char where[420];
    snprintf(where, sizeof where, "%.200s: override '%.200s'", file, ov);
    cJSON *item;
    RQ_TRY(parse_value(s, eq + 1, where, &item, err));
    const char *leaf;
    cJSON *sec = section_of(root, key, &leaf);
    if (!sec || !cJSON_IsObject(sec)) {
        cJSON_Delete(item);
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: the section of %s is not an object", where, key);
    }
    if (cJSON_GetObjectItemCaseSensitive(sec, leaf)) cJSON_ReplaceItemInObjectCaseSensitive(sec, leaf, item);
    else cJSON_AddItemToObject(sec, leaf, item);
    return RQ_OK;
}

rq_status rq_recipe_substitute(const char *in, const char *key, const char *file, char **out, rq_err *err) {
    rq_buf b = {0};
    const char *p = in;
    while (*p) {
        if (p[0] == '$' && p[1] == '{') {
            const char *close = strchr(p + 2, '}');
            if (!close) {
                rq_buf_free(&b);
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: '${' without a closing '}' in \"%s\"", file, key, in);
            }
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)(close - p - 2), p + 2);
            char *dflt = strstr(name, ":-");
            if (dflt) {
                *dflt = 0;
                dflt += 2;
            }
            bool name_ok = name[0] != 0;
            for (const char *c = name; *c; c++)
                if (!(*c == '_' || (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9')))
                    name_ok = false;
            if (!name_ok) {
                rq_buf_free(&b);
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: bad variable name in \"%s\"", file, key, in);
            }
            const char *v = getenv(name);
            if (dflt && (!v || !*v)) v = dflt;
            if (!v) {
                rq_buf_free(&b);
                return RQ_FAIL(err, RQ_ERR_ARG, "%s: %s: environment variable %s is not set (used in \"%s\"; "
                                                "write ${%s:-default} for a fallback)", file, key, name, in, name);
            }
            rq_buf_puts(&b, v); /* here, while name (where a default lives) is in scope */
            p = close + 1;
        } else {
            rq_buf_append(&b, p++, 1);
        }
    }
    return rq_buf_finish(&b, out, NULL, "a recipe value", err);
}

static rq_status substitute_item(cJSON *item, const char *key, const char *file, rq_err *err) {
    if (!cJSON_IsString(item) || !strstr(item->valuestring, "${")) return RQ_OK;
    char *s;
    RQ_TRY(rq_recipe_substitute(item->valuestring, key, file, &s, err));
    bool ok = cJSON_SetValuestring(item, s) != NULL;
    free(s);
    return ok ? RQ_OK : RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
}

static bool in_choices(const char *choices, const char *v) {
    size_t n = strlen(v);
    const char *p = choices;
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return true;
        p = bar ? bar + 1 : NULL;
    }
    return false;
}

/* Build the canonical tree (schema order, defaults filled, substituted) and fill r. */
static rq_status resolve(cJSON *given, const char *file, rq_recipe *r, rq_err *err) {
    build_schema();
    cJSON *root = cJSON_CreateObject();
    if (!root) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
    r->root = root;
    /* what the recipe does not set (the stages' command-line-only options) keeps the stage's default */
    RQ_TRY(rq_stage_quantize_defaults(&r->quantize, err));
    RQ_TRY(rq_stage_calibrate_defaults(&r->stage1, err));
    RQ_TRY(rq_stage_finetune_defaults(&r->stage2, err));
    RQ_TRY(rq_stage_merge_defaults(&r->merge, err));
    RQ_TRY(rq_stage_export_defaults(&r->export_, err));
    RQ_TRY(rq_stage_eval_defaults(&r->eval, err));
    r->adapter = r->stage1.adapter;
    for (size_t i = 0; i < N_SCHEMA; i++) {
        const key_spec *s = &schema[i];
        const char *leaf;
        cJSON *dst = section_of(root, s->key, &leaf);
        if (s->kind == K_OBJ) continue; /* created by section_of for its first key */
        cJSON *src_sec = strchr(s->key, '.') ? section_of(given, s->key, &leaf) : given;
        cJSON *v = cJSON_DetachItemFromObjectCaseSensitive(src_sec, leaf);
        if (!v) {
            if (!s->def)
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: missing required key '%s' (%s: %s)", file, s->key,
                               kind_name(s->kind), s->help);
            char where[300];
            snprintf(where, sizeof where, "%s (default)", file);
            RQ_TRY(parse_value(s, s->def, where, &v, err));
        }
        cJSON_AddItemToObject(dst, leaf, v);
        if (s->kind == K_STR) RQ_TRY(substitute_item(v, s->key, file, err));
        if (s->kind == K_LIST) {
            cJSON *it;
            int n = 0;
            cJSON_ArrayForEach(it, v) {
                RQ_TRY(substitute_item(it, s->key, file, err));
                if (s->choices && !in_choices(s->choices, it->valuestring))
                    return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: '%s' is not one of %s", file, s->key, it->valuestring,
                                   s->choices);
                n++;
            }
            if (n > RQ_LIST_MAX)
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: %d items, at most %d", file, s->key, n, RQ_LIST_MAX);
            rq_list *l = (rq_list *)(void *)((char *)r + s->off);
            memset(l, 0, sizeof *l);
            cJSON_ArrayForEach(it, v) {
                bool dup = false;
                for (int k = 0; k < l->n; k++) dup |= !strcmp(l->item[k], it->valuestring);
                if (dup) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: '%s' listed twice", file, s->key, it->valuestring);
                if (strlen(it->valuestring) >= RQ_LIST_ITEM)
                    return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: '%s' is longer than %d characters", file, s->key,
                                   it->valuestring, RQ_LIST_ITEM - 1);
                snprintf(l->item[l->n++], RQ_LIST_ITEM, "%s", it->valuestring);
            }
        } else if (s->kind == K_STR) {
            if (s->choices && *v->valuestring && !in_choices(s->choices, v->valuestring))
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: '%s' is not one of %s", file, s->key, v->valuestring,
                               s->choices);
            *(const char **)(void *)((char *)r + s->off) = v->valuestring;
        } else if (s->kind == K_BOOL) {
            *(bool *)(void *)((char *)r + s->off) = cJSON_IsTrue(v);
        } else {
            if (v->valuedouble < s->min)
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: %g is below the least allowed value %g", file, s->key,
                               v->valuedouble, s->min);
            if (v->valuedouble > s->max)
                return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: %s: %g is above the largest allowed value %g", file, s->key,
                               v->valuedouble, s->max);
            if (s->kind == K_INT) *(int64_t *)(void *)((char *)r + s->off) = (int64_t)v->valuedouble;
            else *(double *)(void *)((char *)r + s->off) = v->valuedouble;
        }
    }
    /* one adapter section for both training stages (each keeps its own init) */
    r->stage1.adapter.type = r->stage2.adapter.type = r->adapter.type;
    r->stage1.adapter.rank = r->stage2.adapter.rank = r->adapter.rank;
    r->stage1.adapter.alpha = r->stage2.adapter.alpha = r->adapter.alpha;
    r->stage1.adapter.group_size = r->stage2.adapter.group_size = r->adapter.group_size;
    return RQ_OK;
}

/* Combinations the schema alone cannot express. */
static rq_status check_combination(const rq_recipe *r, const char *f, rq_err *err) {
    /* the name is the default run directory runs/NAME: one plain path component */
    bool name_ok = r->name && *r->name && strcmp(r->name, ".") && strcmp(r->name, "..") && strlen(r->name) <= 128;
    for (const char *c = r->name; name_ok && *c; c++)
        name_ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || strchr("._-", *c);
    if (!name_ok)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: name '%.140s' must be 1-128 letters, digits, '.', '_' or '-' (not '.' or "
                       "'..'): it names the run directory runs/NAME", f, r->name ? r->name : "");
    if (!*r->model.path) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: model.path is empty", f);
    if (r->quantize.modules.n == 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: quantize.modules is empty (list q, k, v, o, gate, up, down)", f);
    if (r->stage2.enabled && !*r->stage2.task)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: stage2.task is needed when stage2.enabled is true "
                                           "(arc_easy, arc_challenge, piqa, gsm8k)", f);
    if (r->stage1.enabled && r->stage1.val_windows >= r->stage1.windows)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: stage1.val_windows %lld must be below stage1.windows %lld", f,
                       (long long)r->stage1.val_windows, (long long)r->stage1.windows);
    if (r->stage1.enabled && !(r->stage1.model_weight > 0) && !(r->stage1.gt_weight > 0))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: stage1.model_weight and stage1.gt_weight are both 0: no loss", f);
    if (r->stage2.enabled && r->stage2.batch % r->stage2.micro_batch != 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: stage2.micro_batch %lld does not divide stage2.batch %lld", f,
                       (long long)r->stage2.micro_batch, (long long)r->stage2.batch);
    /* the stages' own checks of their options' combinations, before anything runs */
    if (r->stage1.enabled && rq_stage_calibrate_check(&r->stage1, err) != RQ_OK) {
        rq_err_prefix(err, "%s: stage1: ", f);
        return RQ_ERR_FORMAT;
    }
    if (r->stage2.enabled && rq_stage_finetune_check(&r->stage2, err) != RQ_OK) {
        rq_err_prefix(err, "%s: stage2: ", f);
        return RQ_ERR_FORMAT;
    }
    if (r->merge.enabled) {
        if (!r->stage1.enabled && !r->stage2.enabled)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: merge.enabled is true but neither stage trains adapters", f);
        if (strcmp(r->adapter.type, "qalora") != 0)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: merge needs adapter.type qalora (a LoRA product does not fold "
                                               "into group offsets); set merge.enabled=false", f);
        /* adapter.group_size 0 (the default) takes the quantizer's */
        if (r->adapter.group_size && r->adapter.group_size != r->quantize.group_size)
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: merge needs adapter.group_size (%lld) = quantize.group_size (%lld); "
                           "leave adapter.group_size out to take the quantizer's", f,
                           (long long)r->adapter.group_size, (long long)r->quantize.group_size);
    }
    if (r->eval.tasks.n == 0 && r->eval.ppl.n == 0 && r->eval.models.n > 0)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: eval.models lists rows but eval.tasks and eval.ppl are both empty "
                                           "(set eval.models to an empty list to evaluate nothing)", f);
    return RQ_OK;
}

rq_status rq_recipe_parse(const char *text, const char *file, const char *const *overrides, int n_overrides,
                          rq_recipe *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    const char *end = NULL;
    cJSON *given = cJSON_ParseWithOpts(text, &end, true);
    if (!given) {
        int line = 1;
        for (const char *p = text; end && p < end; p++) line += *p == '\n';
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not valid JSON (near line %d)", file, line);
    }
    rq_status st = RQ_OK;
    if (!cJSON_IsObject(given)) st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: expected a JSON object at the top", file);
    if (st == RQ_OK) st = check_tree(given, NULL, file, err);
    for (int i = 0; st == RQ_OK && i < n_overrides; i++) st = apply_override(given, overrides[i], file, err);
    if (st == RQ_OK) {
        out->file = rq_strdup(file, err);
        if (!out->file) st = RQ_ERR_NOMEM;
    }
    if (st == RQ_OK) st = resolve(given, file, out, err);
    if (st == RQ_OK) st = check_combination(out, file, err);
    cJSON_Delete(given);
    if (st != RQ_OK) rq_recipe_free(out);
    return st;
}

rq_status rq_recipe_load(const char *path, const char *const *overrides, int n_overrides, rq_recipe *out,
                         rq_err *err) {
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t n = 0;
    RQ_TRY(rq_file_read_all(path, &text, &n, err));
    rq_status st = rq_recipe_parse(text, path, overrides, n_overrides, out, err);
    free(text);
    return st;
}

void rq_recipe_free(rq_recipe *r) {
    if (!r) return;
    cJSON_Delete(r->root);
    free(r->file);
    memset(r, 0, sizeof *r);
}

char *rq_recipe_to_json(const rq_recipe *r) {
    char *t = cJSON_Print(r->root);
    if (!t) return NULL;
    rq_buf b = {0};
    rq_buf_puts(&b, t);
    rq_buf_puts(&b, "\n");
    cJSON_free(t);
    char *text;
    if (rq_buf_finish(&b, &text, NULL, "the recipe's text", NULL) != RQ_OK) return NULL;
    return text;
}

char *rq_recipe_schema_help(void) {
    build_schema();
    rq_buf b = {0};
    for (size_t i = 0; i < N_SCHEMA; i++) {
        const key_spec *s = &schema[i];
        if (s->kind == K_OBJ) rq_buf_appendf(&b, "%s: %s\n", s->key, s->help);
        else
            rq_buf_appendf(&b, "  %-24s %-8s %-22s %s\n", s->key,
                           s->kind == K_STR ? "string" : s->kind == K_INT ? "integer" : s->kind == K_NUM ? "number"
                           : s->kind == K_BOOL ? "bool" : "list",
                           s->def ? (*s->def ? s->def : "\"\"") : "(required)", s->help);
    }
    char *help;
    if (rq_buf_finish(&b, &help, NULL, "the recipe keys' help", NULL) != RQ_OK) return NULL;
    return help;
}

bool rq_recipe_same(const cJSON *a, const cJSON *b, char *where, size_t where_size) {
    if (cJSON_IsObject(a) && cJSON_IsObject(b)) {
        const cJSON *x;
        cJSON_ArrayForEach(x, a) {
            const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
            char sub[256];
            if (!y || !rq_recipe_same(x, y, sub, sizeof sub)) {
                snprintf(where, where_size, "%s%s%s", x->string, y && *sub ? "." : "", y ? sub : "");
                return false;
            }
        }
        cJSON_ArrayForEach(x, b) if (!cJSON_GetObjectItemCaseSensitive(a, x->string)) {
            snprintf(where, where_size, "%s", x->string);
            return false;
        }
        if (where_size) where[0] = 0;
        return true;
    }
    if (where_size) where[0] = 0;
    return cJSON_Compare(a, b, true);
}
