/* Pieces the stages share: the memory check, the q2 group size of a model,
 * options as JSON and as a command line. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>

#include "../quant/q2.h"
#include "../train/plan.h"
#include "internal.h"

int rq_model_q2_group_size(const rq_model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (t) return t->group_size;
        }
    return 0;
}

rq_adapter_config rq_adapter_opts_config(const rq_adapter_opts *a, uint64_t seed) {
    rq_adapter_config c = {.type = !strcmp(a->type, "lora") ? RQ_ADAPTER_LORA : RQ_ADAPTER_QALORA,
                           .r = (int)a->rank, .alpha = (float)a->alpha, .group_size = (int)a->group_size,
                           .targets = RQ_ADAPTER_ALL_PROJ, .init = RQ_INIT_GAUSSIAN, .seed = seed,
                           .train_scales = a->train_scales};
    rq_adapter_init_parse(a->init, &c.init, NULL); /* svd / loftq: not a set init; the caller handles it */
    return c;
}

/* the plan of m's run on be */
static rq_status stage_plan(rq_backend *be, const rq_model *m, rq_plan_opts *o, rq_plan *plan, rq_err *err) {
    o->device = be->caps.device_memory ? RQ_PLAN_CUDA : RQ_PLAN_CPU;
    o->quant_group_size = rq_model_q2_group_size(m);
    o->student_q2 = o->quant_group_size > 0;
    return rq_plan_compute(&m->cfg, o, plan, err);
}

bool rq_stage_memory_fits(rq_backend *be, const rq_model *m, rq_plan_opts *o, uint64_t resident) {
    rq_plan plan;
    rq_err quiet = {0};
    return stage_plan(be, m, o, &plan, &quiet) == RQ_OK && rq_plan_check(&plan, o, be, resident, &quiet) == RQ_OK;
}

rq_status rq_stage_memory_check(rq_backend *be, const rq_model *m, rq_plan_opts *o, uint64_t resident, bool disabled,
                                rq_err *err) {
    rq_plan plan;
    RQ_TRY(stage_plan(be, m, o, &plan, err));
    const double mib = 1048576.0;
    char line[1024];
    int n = snprintf(line, sizeof line,
                     "memory plan (%s): weights %.1f MiB, adapters %.2f MiB, gradients %.2f MiB, moments %.2f MiB, "
                     "activations (%d x %d) %.1f MiB, scratch %.1f MiB, host %.1f MiB",
                     be->name, (plan.weights_q2 + plan.weights_dense) / mib, plan.adapters / mib, plan.grads / mib,
                     plan.moments / mib, o->micro_batch, o->seq_len, plan.activations / mib, plan.scratch / mib,
                     plan.host / mib);
    if (plan.teacher_weights && n > 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, ", teacher beside the student %.1f MiB",
                      (plan.teacher_weights + plan.teacher_activations) / mib);
    if (plan.teacher_pass && n > 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, ", teacher pass %.1f MiB (%s)", plan.teacher_pass / mib,
                      o->teacher_resident ? "the whole fp32 teacher"
                      : o->teacher_spill  ? "a layer at a time, the windows' streams in a scratch file"
                                          : "a layer at a time, the windows' streams in memory");
    if (n > 0 && (size_t)n < sizeof line) snprintf(line + n, sizeof line - (size_t)n, "; peak %.1f MiB", plan.total / mib);
    rq_info("%s", line);
    if (disabled) {
        rq_info("memory check skipped (--no-memory-check)");
        return RQ_OK;
    }
    return rq_plan_check(&plan, o, be, resident, err);
}

rq_status rq_json_write_file(const char *path, const cJSON *o, rq_err *err) {
    char *text = cJSON_Print(o);
    rq_buf b = {0};
    if (text) {
        rq_buf_puts(&b, text);
        rq_buf_puts(&b, "\n");
        cJSON_free(text);
    }
    rq_status st = !text || b.failed ? RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", path)
                                     : rq_write_file_atomic(path, b.data, b.len, err);
    rq_buf_free(&b);
    return st;
}

rq_status rq_stage_write_json(const char *dir, const char *name, const cJSON *o, rq_err *err) {
    char *path = rq_path_join_alloc(dir, name, err);
    if (!path) return RQ_ERR_NOMEM;
    rq_status st = rq_json_write_file(path, o, err);
    free(path);
    return st;
}

void rq_json_add_finite(cJSON *o, const char *key, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, key, v);
    else cJSON_AddNullToObject(o, key);
}

cJSON *rq_opts_to_json(rq_opt_table t, const void *o) {
    cJSON *j = cJSON_CreateObject();
    for (size_t i = 0; j && i < t.n; i++) {
        const rq_opt *e = &t.opt[i];
        const char *name = e->flag ? e->flag + 2 : e->key;
        if (!cJSON_GetObjectItemCaseSensitive(j, name)) cJSON_AddItemToObject(j, name, rq_opt_to_json(e, o));
    }
    return j;
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

char *rq_opts_command_line(const char *cmd, rq_opt_table t, const void *o, const char *const *pos, int n_pos) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fprintf(f, "rilq %s", cmd);
    for (int i = 0; i < n_pos; i++) {
        fputc(' ', f);
        shell_quote(f, pos[i]);
    }
    /* the defaults, to leave out what equals them */
    void *d = calloc(1, t.size);
    rq_err err = {0};
    if (d && rq_opts_defaults(t, d, &err) != RQ_OK) {
        free(d);
        d = NULL;
    }
    for (size_t i = 0; i < t.n; i++) {
        const rq_opt *e = &t.opt[i];
        if (!e->flag) continue;
        char v[1024], dv[1024];
        rq_opt_format(e, o, v, sizeof v);
        if (d) {
            rq_opt_format(e, d, dv, sizeof dv);
            if (!strcmp(v, dv)) continue;
        }
        if (e->kind == RQ_OPT_STR && !*(const char *const *)(const void *)((const char *)o + e->off)) continue;
        fprintf(f, " %s", e->flag);
        if (e->kind == RQ_OPT_BOOL) {
            if (strcmp(v, "true") != 0) fprintf(f, "=false");
            continue;
        }
        fputc(' ', f);
        shell_quote(f, v);
    }
    free(d);
    fclose(f);
    return buf;
}
