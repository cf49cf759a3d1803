/* Option tables: parsing, checking, defaults, help, JSON (see opts.h). */
#include "opts.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#define FIELD(o, e, T) ((T *)(void *)((char *)(o) + (e)->off))
#define CFIELD(o, e, T) ((const T *)(const void *)((const char *)(o) + (e)->off))

static const char *kind_word(rq_opt_kind k) {
    switch (k) {
    case RQ_OPT_STR: return "a string";
    case RQ_OPT_INT: return "an integer";
    case RQ_OPT_NUM: return "a number";
    case RQ_OPT_BOOL: return "true or false";
    case RQ_OPT_LIST: return "a list of strings";
    }
    return "?";
}

static bool in_choices(const char *choices, const char *v, size_t len) {
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && !strncmp(p, v, len)) return true;
        p += n + (bar ? 1 : 0);
    }
    return false;
}

rq_status rq_list_parse(const char *text, const char *choices, rq_list *out, const char *where, rq_err *err) {
    memset(out, 0, sizeof *out);
    for (const char *p = text; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0) return RQ_FAIL(err, RQ_ERR_ARG, "%s: an empty item in the list '%s'", where, text);
        if (len >= RQ_LIST_ITEM)
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: item '%.*s' is longer than %d characters", where, (int)len, p,
                           RQ_LIST_ITEM - 1);
        if (choices && !in_choices(choices, p, len))
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: unknown item '%.*s' (expected items of %s)", where, (int)len, p, choices);
        bool seen = false;
        for (int i = 0; i < out->n; i++) seen |= strlen(out->item[i]) == len && !strncmp(out->item[i], p, len);
        if (!seen) {
            if (out->n == RQ_LIST_MAX) return RQ_FAIL(err, RQ_ERR_ARG, "%s: more than %d items", where, RQ_LIST_MAX);
            memcpy(out->item[out->n], p, len);
            out->item[out->n++][len] = 0;
        }
        p += len + (comma ? 1 : 0);
    }
    return RQ_OK;
}

void rq_list_join(const rq_list *l, char *buf, size_t n) {
    size_t used = 0;
    if (n) buf[0] = 0;
    for (int i = 0; i < l->n && used < n; i++) {
        int w = snprintf(buf + used, n - used, "%s%s", i ? "," : "", l->item[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
}

bool rq_list_has(const rq_list *l, const char *item) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->item[i], item)) return true;
    return false;
}

rq_status rq_opt_set(const rq_opt *e, void *o, const char *text, const char *where, rq_err *err) {
    char *end = NULL;
    switch (e->kind) {
    case RQ_OPT_STR:
        if (e->choices && *text && !in_choices(e->choices, text, strlen(text)))
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected one of %s, found '%s'", where, e->choices, text);
        *FIELD(o, e, const char *) = text;
        return RQ_OK;
    case RQ_OPT_INT: {
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (!*text || *end || errno) {
            double d = strtod(text, &end);
            if (*text && !*end)
                return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected an integer, found %s'%s'", where,
                               isfinite(d) ? "the number " : "", text);
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected an integer, found '%s'", where, text);
        }
        if ((double)v < e->min || (double)v > e->max)
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected an integer in %.17g..%.17g, found %lld", where, e->min, e->max,
                           v);
        *FIELD(o, e, int64_t) = v;
        return RQ_OK;
    }
    case RQ_OPT_NUM: {
        errno = 0;
        double v = strtod(text, &end);
        if (!*text || *end || !isfinite(v))
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected a finite number, found '%s'", where, text);
        if (v < e->min || v > e->max)
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected a number in %g..%g, found %s", where, e->min, e->max, text);
        *FIELD(o, e, double) = v;
        return RQ_OK;
    }
    case RQ_OPT_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "1")) *FIELD(o, e, bool) = true;
        else if (!strcmp(text, "false") || !strcmp(text, "0")) *FIELD(o, e, bool) = false;
        else return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected true or false, found '%s'", where, text);
        return RQ_OK;
    case RQ_OPT_LIST: return rq_list_parse(text, e->choices, FIELD(o, e, rq_list), where, err);
    }
    return RQ_FAIL(err, RQ_ERR_INTERNAL, "%s: unknown option kind", where);
}

rq_status rq_opt_set_json(const rq_opt *e, void *o, const cJSON *v, const char *where, rq_err *err) {
    char buf[64];
    switch (e->kind) {
    case RQ_OPT_STR:
        if (!cJSON_IsString(v)) break;
        return rq_opt_set(e, o, v->valuestring, where, err);
    case RQ_OPT_INT:
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 9007199254740992.0)
            break;
        snprintf(buf, sizeof buf, "%.0f", v->valuedouble);
        return rq_opt_set(e, o, buf, where, err);
    case RQ_OPT_NUM:
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) break;
        if (v->valuedouble < e->min || v->valuedouble > e->max)
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected a number in %g..%g, found %.17g", where, e->min, e->max,
                           v->valuedouble);
        *FIELD(o, e, double) = v->valuedouble;
        return RQ_OK;
    case RQ_OPT_BOOL:
        if (!cJSON_IsBool(v)) break;
        *FIELD(o, e, bool) = cJSON_IsTrue(v);
        return RQ_OK;
    case RQ_OPT_LIST: {
        if (!cJSON_IsArray(v)) break;
        char text[RQ_LIST_MAX * RQ_LIST_ITEM + RQ_LIST_MAX] = "";
        size_t used = 0;
        const cJSON *it;
        int k = 0;
        cJSON_ArrayForEach(it, v) {
            if (!cJSON_IsString(it)) return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected a list of strings", where);
            if (strchr(it->valuestring, ',') || !*it->valuestring)
                return RQ_FAIL(err, RQ_ERR_ARG, "%s: item '%s' is empty or holds a comma", where, it->valuestring);
            if (++k > RQ_LIST_MAX) return RQ_FAIL(err, RQ_ERR_ARG, "%s: more than %d items", where, RQ_LIST_MAX);
            int w = snprintf(text + used, sizeof text - used, "%s%s", used ? "," : "", it->valuestring);
            if (w < 0 || (size_t)w >= sizeof text - used)
                return RQ_FAIL(err, RQ_ERR_ARG, "%s: item '%s' is too long", where, it->valuestring);
            used += (size_t)w;
        }
        return rq_opt_set(e, o, text, where, err);
    }
    }
    return RQ_FAIL(err, RQ_ERR_ARG, "%s: expected %s", where, kind_word(e->kind));
}

rq_status rq_opts_defaults(rq_opt_table t, void *o, rq_err *err) {
    for (size_t i = 0; i < t.n; i++) {
        const rq_opt *e = &t.opt[i];
        switch (e->kind) {
        case RQ_OPT_STR: *FIELD(o, e, const char *) = NULL; break;
        case RQ_OPT_INT: *FIELD(o, e, int64_t) = 0; break;
        case RQ_OPT_NUM: *FIELD(o, e, double) = 0; break;
        case RQ_OPT_BOOL: *FIELD(o, e, bool) = false; break;
        case RQ_OPT_LIST: memset(FIELD(o, e, rq_list), 0, sizeof(rq_list)); break;
        }
        if (e->def) RQ_TRY(rq_opt_set(e, o, e->def, e->flag ? e->flag : e->key, err));
    }
    return RQ_OK;
}

cJSON *rq_opt_to_json(const rq_opt *e, const void *o) {
    switch (e->kind) {
    case RQ_OPT_STR: {
        const char *s = *CFIELD(o, e, const char *);
        return s ? cJSON_CreateString(s) : cJSON_CreateNull();
    }
    case RQ_OPT_INT: return cJSON_CreateNumber((double)*CFIELD(o, e, int64_t));
    case RQ_OPT_NUM: return cJSON_CreateNumber(*CFIELD(o, e, double));
    case RQ_OPT_BOOL: return cJSON_CreateBool(*CFIELD(o, e, bool));
    case RQ_OPT_LIST: {
        const rq_list *l = CFIELD(o, e, rq_list);
        cJSON *a = cJSON_CreateArray();
        for (int i = 0; a && i < l->n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(l->item[i]));
        return a;
    }
    }
    return cJSON_CreateNull();
}

int rq_opt_format(const rq_opt *e, const void *o, char *buf, size_t n) {
    switch (e->kind) {
    case RQ_OPT_STR: {
        const char *s = *CFIELD(o, e, const char *);
        return snprintf(buf, n, "%s", s ? s : "");
    }
    case RQ_OPT_INT: return snprintf(buf, n, "%lld", (long long)*CFIELD(o, e, int64_t));
    case RQ_OPT_NUM: {
        /* the shortest of %.15g / %.17g that reads back as the same double */
        double v = *CFIELD(o, e, double);
        char t[64];
        snprintf(t, sizeof t, "%.15g", v);
        if (strtod(t, NULL) != v) snprintf(t, sizeof t, "%.17g", v);
        return snprintf(buf, n, "%s", t);
    }
    case RQ_OPT_BOOL: return snprintf(buf, n, "%s", *CFIELD(o, e, bool) ? "true" : "false");
    case RQ_OPT_LIST: {
        rq_list_join(CFIELD(o, e, rq_list), buf, n);
        return (int)strlen(buf);
    }
    }
    return 0;
}

const rq_opt *rq_opt_find_flag(rq_opt_table t, const char *flag) {
    for (size_t i = 0; i < t.n; i++)
        if (t.opt[i].flag && !strcmp(t.opt[i].flag, flag)) return &t.opt[i];
    return NULL;
}

const rq_opt *rq_opt_find_key(rq_opt_table t, const char *key) {
    for (size_t i = 0; i < t.n; i++)
        if (t.opt[i].key && !strcmp(t.opt[i].key, key)) return &t.opt[i];
    return NULL;
}

rq_status rq_opts_parse_argv(rq_opt_table t, void *o, int argc, char **argv, const char **pos, int max_pos, int *n_pos,
                             bool *help, rq_err *err) {
    *n_pos = 0;
    *help = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *help = true;
            return RQ_OK;
        }
        if (a[0] != '-' || a[1] == 0) {
            if (*n_pos == max_pos) return RQ_FAIL(err, RQ_ERR_ARG, "unexpected argument '%s'", a);
            pos[(*n_pos)++] = a;
            continue;
        }
        char name[128];
        const char *eq = strchr(a, '='), *value = NULL;
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        if (len >= sizeof name) return RQ_FAIL(err, RQ_ERR_ARG, "unknown option '%s'", a);
        memcpy(name, a, len);
        name[len] = 0;
        const rq_opt *e = rq_opt_find_flag(t, name);
        if (!e) return RQ_FAIL(err, RQ_ERR_ARG, "unknown option '%s'", a);
        if (e->kind == RQ_OPT_BOOL) {
            if (eq) RQ_TRY(rq_opt_set(e, o, eq + 1, name, err));
            else *FIELD(o, e, bool) = true;
            continue;
        }
        if (eq) value = eq + 1;
        else if (i + 1 < argc) value = argv[++i];
        else return RQ_FAIL(err, RQ_ERR_ARG, "%s needs a value (%s)", name, e->meta ? e->meta : kind_word(e->kind));
        RQ_TRY(rq_opt_set(e, o, value, name, err));
    }
    return RQ_OK;
}

void rq_opts_print_help(rq_opt_table t, FILE *f) {
    for (size_t i = 0; i < t.n; i++) {
        const rq_opt *e = &t.opt[i];
        if (!e->flag) continue;
        char head[96];
        const char *meta = e->meta ? e->meta : e->choices ? e->choices
                                             : e->kind == RQ_OPT_INT ? "N"
                                             : e->kind == RQ_OPT_NUM ? "X"
                                             : e->kind == RQ_OPT_LIST ? "LIST"
                                                                      : "S";
        if (e->kind == RQ_OPT_BOOL) snprintf(head, sizeof head, "%s", e->flag);
        else snprintf(head, sizeof head, "%s %s", e->flag, meta);
        char def[160] = "";
        if (e->def && e->kind != RQ_OPT_BOOL && *e->def) snprintf(def, sizeof def, " (default %s)", e->def);
        if (strlen(head) <= 21) fprintf(f, "  %-21s ", head);
        else fprintf(f, "  %s\n  %-21s ", head, "");
        for (const char *c = e->help; *c; c++) {
            fputc(*c, f);
            if (*c == '\n') fprintf(f, "%24s", "");
        }
        fprintf(f, "%s\n", def);
    }
}
