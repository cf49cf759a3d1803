/* LoRA / QA-LoRA adapters: forward, backward, initialization, PEFT files.
 * The conventions are documented at the top of adapter.h. */
#include "adapter.h"

#include "../model/bind.h"
#include "../quant/q2.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../io/safetensors.h"
#include "../quant/q2.h"

#define ADAPTER_CONFIG_FILE "adapter_config.json"
#define ADAPTER_WEIGHTS_FILE "adapter_model.safetensors"

const char *rq_adapter_type_name(rq_adapter_type t) { return t == RQ_ADAPTER_QALORA ? "qalora" : "lora"; }

static const char *const init_names[] = {"gaussian", "kaiming_uniform", "xavier_uniform", "zero"};

const char *rq_adapter_init_name(rq_adapter_init i) {
    return (unsigned)i < sizeof init_names / sizeof init_names[0] ? init_names[i] : "?";
}

rq_status rq_adapter_init_parse(const char *name, rq_adapter_init *out, rq_err *err) {
    for (int i = 0; i < (int)(sizeof init_names / sizeof init_names[0]); i++)
        if (strcmp(name, init_names[i]) == 0) {
            *out = (rq_adapter_init)i;
            return RQ_OK;
        }
    return RQ_FAIL(err, RQ_ERR_ARG,
                   "unknown adapter init '%s' (expected gaussian, kaiming_uniform, xavier_uniform or zero)", name);
}

/* ---- one adapter ------------------------------------------------------------------ */

const float *rq_adapter_input(rq_backend *be, const rq_adapter *a, const float *x, int N, float *pooled) {
    if (a->type == RQ_ADAPTER_LORA) return x;
    be->group_pool_fwd(be, pooled, x, N, a->in, a->group_size);
    return pooled;
}

void rq_adapter_forward(rq_backend *be, const rq_adapter *a, float *out, const float *xt, float *u, int N) {
    be->matmul_nt(be, u, xt, a->A, N, a->r, a->a_cols, false);
    /* Scaling u (N x r, small) rather than the output keeps out a pure
     * accumulation, and the scaled u is exactly what dB needs. */
    be->scale(be, u, a->scaling, (size_t)N * a->r);
    be->matmul_nt(be, out, u, a->B, N, a->out, a->r, true);
}

size_t rq_adapter_scratch_floats(const rq_adapter *a, int N) {
    size_t n = (size_t)N * a->r;
    if (a->type == RQ_ADAPTER_QALORA) n += (size_t)N * a->a_cols;
    return n;
}

void rq_adapter_backward(rq_backend *be, const rq_adapter *a, float *dx, const float *dout, const float *xt,
                         const float *u, int N, float *scratch) {
    /* dB[out][r] += dout^T u (u already carries the scaling) */
    be->matmul_tn_acc(be, a->dB, dout, u, N, a->out, a->r);
    /* t[N][r] = s * dout B, through linear_bwd_input with B seen as a linear r -> out */
    float *t = scratch;
    be->fill_zero(be, t, (size_t)N * a->r);
    const rq_linear b_lin = {.out = a->out, .in = a->r, .w = a->B, .q2 = NULL};
    be->linear_bwd_input(be, t, dout, &b_lin, N);
    be->scale(be, t, a->scaling, (size_t)N * a->r);
    /* dA[r][a_cols] += t^T xt */
    be->matmul_tn_acc(be, a->dA, t, xt, N, a->r, a->a_cols);
    if (!dx) return;
    const rq_linear a_lin = {.out = a->r, .in = a->a_cols, .w = a->A, .q2 = NULL};
    if (a->type == RQ_ADAPTER_LORA) {
        be->linear_bwd_input(be, dx, t, &a_lin, N);
        return;
    }
    float *dpooled = scratch + (size_t)N * a->r;
    be->fill_zero(be, dpooled, (size_t)N * a->a_cols);
    be->linear_bwd_input(be, dpooled, t, &a_lin, N);
    be->group_pool_bwd(be, dx, dpooled, N, a->in, a->group_size);
}

/* ---- shapes and names --------------------------------------------------------------- */

/* PEFT's key: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight */
/* The trained group scales of a projection: rilq's own tensor beside PEFT's. */
static void scales_key(char *buf, size_t n, int layer, int proj) {
    snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.rilq_scales", layer,
             proj <= RQ_PROJ_O ? "self_attn" : "mlp", rq_proj_names[proj]);
}

static void peft_key(char *buf, size_t n, int layer, int proj, char which) {
    const char *block = proj <= RQ_PROJ_O ? "self_attn" : "mlp";
    snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer, block, rq_proj_names[proj],
             which);
}

rq_status rq_adapter_targets_parse(const char *list, unsigned *targets, rq_err *err) {
    *targets = 0;
    if (strcmp(list, "all") == 0) {
        *targets = RQ_ADAPTER_ALL_PROJ;
        return RQ_OK;
    }
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int found = -1;
        for (int j = 0; j < RQ_N_PROJ; j++)
            if (strlen(rq_proj_names[j]) == len && strncmp(p, rq_proj_names[j], len) == 0) found = j;
        if (found < 0)
            return RQ_FAIL(err, RQ_ERR_ARG,
                           "unknown adapter target '%.*s' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, "
                           "up_proj, down_proj or all)",
                           (int)len, p);
        *targets |= 1u << found;
        p = e ? e + 1 : p + len;
    }
    if (!*targets) return RQ_FAIL(err, RQ_ERR_ARG, "empty adapter target list");
    return RQ_OK;
}

/* ---- the set ---------------------------------------------------------------------------- */

rq_adapter *rq_adapter_set_get(rq_adapter_set *s, int layer, int proj) {
    if (layer < 0 || layer >= s->model.n_layers || proj < 0 || proj >= RQ_N_PROJ) return NULL;
    rq_adapter *a = &s->items[(size_t)layer * RQ_N_PROJ + proj];
    return a->r ? a : NULL; /* r = 0: untargeted (a shape-only set has no A either) */
}

int rq_adapter_set_count(const rq_adapter_set *s) {
    int n = 0;
    for (size_t i = 0; i < (size_t)s->model.n_layers * RQ_N_PROJ; i++) n += s->items[i].r != 0;
    return n;
}

size_t rq_adapter_set_bytes(const rq_adapter_set *s) { return s->n_params * sizeof(float); }

void rq_adapter_set_free(rq_adapter_set *s) {
    if (!s) return;
    free(s->scale_scratch);
    if (s->be) {
        if (s->params) s->be->free(s->be, s->params);
        if (s->grads) s->be->free(s->be, s->grads);
    }
    free(s->items);
    free(s);
}

/* A set's shapes for model mc (items, n_params) with nothing allocated on a
 * backend: the size table rq_adapter_set_create allocates from and
 * rq_adapter_set_plan reports. */
static rq_status set_shape(const rq_config *mc, const rq_adapter_config *cfg, rq_adapter_set **out, rq_err *err) {
    *out = NULL;
    if (cfg->r < 1) return RQ_FAIL(err, RQ_ERR_ARG, "adapter rank r = %d: must be >= 1", cfg->r);
    if (!(cfg->alpha > 0.0f) || !isfinite(cfg->alpha))
        return RQ_FAIL(err, RQ_ERR_ARG, "adapter alpha = %g: must be a positive number", (double)cfg->alpha);
    if (!(cfg->targets & RQ_ADAPTER_ALL_PROJ)) return RQ_FAIL(err, RQ_ERR_ARG, "adapter targets no projection");
    if (cfg->type != RQ_ADAPTER_LORA && cfg->type != RQ_ADAPTER_QALORA)
        return RQ_FAIL(err, RQ_ERR_ARG, "unknown adapter type %d", (int)cfg->type);
    if (mc->n_layers < 1) return RQ_FAIL(err, RQ_ERR_ARG, "model has %d layers", mc->n_layers);
    if (cfg->train_scales && cfg->type != RQ_ADAPTER_QALORA)
        return RQ_FAIL(err, RQ_ERR_ARG, "trainable group scales need QA-LoRA adapters (a plain LoRA update does not "
                       "fold into the 2-bit groups); use --adapter qalora or leave --train-scales out");

    rq_adapter_set *s = rq_calloc(1, sizeof *s, err);
    if (!s) return RQ_ERR_NOMEM;
    s->cfg = *cfg;
    s->cfg.targets &= RQ_ADAPTER_ALL_PROJ;
    if (s->cfg.type == RQ_ADAPTER_QALORA && s->cfg.group_size <= 0) s->cfg.group_size = RQ_DEFAULT_GROUP_SIZE;
    if (s->cfg.type == RQ_ADAPTER_LORA) s->cfg.group_size = 0;
    s->model = *mc;
    s->items = rq_calloc((size_t)mc->n_layers * RQ_N_PROJ, sizeof *s->items, err);
    if (!s->items) {
        rq_adapter_set_free(s);
        return RQ_ERR_NOMEM;
    }
    /* A then B per adapter */
    size_t total = 0;
    for (int l = 0; l < mc->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            if (!(s->cfg.targets & (1u << p))) continue;
            rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
            rq_proj_shape(mc, p, &a->out, &a->in);
            a->type = s->cfg.type;
            a->r = s->cfg.r;
            a->group_size = s->cfg.group_size;
            a->a_cols = a->type == RQ_ADAPTER_QALORA ? (a->in + a->group_size - 1) / a->group_size : a->in;
            a->scaling = s->cfg.alpha / (float)s->cfg.r;
            total += (size_t)a->r * a->a_cols + (size_t)a->out * a->r;
            if (s->cfg.train_scales) total += (size_t)a->out * a->a_cols;
        }
    s->n_params = total;
    *out = s;
    return RQ_OK;
}

rq_status rq_adapter_set_plan(const rq_config *mc, const rq_adapter_config *cfg, rq_adapter_set **out, rq_err *err) {
    return set_shape(mc, cfg, out, err);
}

rq_status rq_adapter_set_create(const rq_config *mc, const rq_adapter_config *cfg, rq_backend *be,
                                rq_adapter_set **out, rq_err *err) {
    rq_adapter_set *s;
    RQ_TRY(set_shape(mc, cfg, &s, err));
    s->be = be;
    const size_t total = s->n_params;
    size_t bytes;
    if (!rq_mul_ok(total, sizeof(float), &bytes)) {
        rq_adapter_set_free(s);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "adapter parameter count %zu overflows", total);
    }
    s->params = be->alloc(be, bytes, err);
    if (s->params) s->grads = be->alloc(be, bytes, err);
    if (!s->params || !s->grads) {
        rq_adapter_set_free(s);
        return RQ_ERR_NOMEM;
    }
    be->fill_zero(be, s->params, total);
    be->fill_zero(be, s->grads, total);
    size_t off = 0;
    for (size_t i = 0; i < (size_t)mc->n_layers * RQ_N_PROJ; i++) {
        rq_adapter *a = &s->items[i];
        if (!a->r) continue;
        size_t na = (size_t)a->r * a->a_cols, nb = (size_t)a->out * a->r;
        a->A = s->params + off, a->dA = s->grads + off;
        a->B = s->params + off + na, a->dB = s->grads + off + na;
        off += na + nb;
        if (s->cfg.train_scales) {
            a->S = s->params + off, a->dS = s->grads + off;
            off += (size_t)a->out * a->a_cols;
        }
    }
    rq_status st = rq_adapter_set_init(s, s->cfg.init, s->cfg.seed, err);
    if (st != RQ_OK) {
        rq_adapter_set_free(s);
        return st;
    }
    *out = s;
    return RQ_OK;
}

rq_status rq_adapter_set_init(rq_adapter_set *s, rq_adapter_init init, uint64_t seed, rq_err *err) {
    rq_backend *be = s->be;
    size_t max_a = 0;
    for (size_t i = 0; i < (size_t)s->model.n_layers * RQ_N_PROJ; i++)
        if (s->items[i].A && (size_t)s->items[i].r * s->items[i].a_cols > max_a)
            max_a = (size_t)s->items[i].r * s->items[i].a_cols;
    float *host = rq_calloc(max_a ? max_a : 1, sizeof(float), err);
    if (!host) return RQ_ERR_NOMEM;
    rq_rng rng;
    rq_rng_seed(&rng, seed);
    rq_status st = RQ_OK;
    for (size_t i = 0; i < (size_t)s->model.n_layers * RQ_N_PROJ && st == RQ_OK; i++) {
        rq_adapter *a = &s->items[i];
        if (!a->A) continue;
        size_t na = (size_t)a->r * a->a_cols;
        /* fan_in of A is its number of columns (what it reads), fan_out is r. */
        double fan_in = (double)a->a_cols, fan_out = (double)a->r;
        switch (init) {
        case RQ_INIT_GAUSSIAN: {
            float std = 1.0f / (float)a->r;
            for (size_t j = 0; j < na; j++) host[j] = std * rq_rng_normal(&rng);
        } break;
        case RQ_INIT_KAIMING_UNIFORM:
        case RQ_INIT_XAVIER_UNIFORM: {
            /* kaiming_uniform(a = sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1/sqrt(fan_in) */
            float bound = init == RQ_INIT_KAIMING_UNIFORM ? (float)(1.0 / sqrt(fan_in))
                                                          : (float)sqrt(6.0 / (fan_in + fan_out));
            for (size_t j = 0; j < na; j++) host[j] = bound * (2.0f * rq_rng_uniform(&rng) - 1.0f);
        } break;
        case RQ_INIT_ZERO: memset(host, 0, na * sizeof(float)); break;
        default: st = RQ_FAIL(err, RQ_ERR_ARG, "unknown adapter init %d", (int)init); continue;
        }
        st = be->upload(be, a->A, host, na * sizeof(float), err);
        if (st == RQ_OK) be->fill_zero(be, a->B, (size_t)a->out * a->r);
    }
    free(host);
    if (st == RQ_OK) {
        s->cfg.init = init;
        s->cfg.seed = seed;
    }
    return st;
}

rq_status rq_adapter_set_assign(rq_adapter_set *s, int layer, int proj, const float *A, const float *B,
                                rq_err *err) {
    rq_adapter *a = rq_adapter_set_get(s, layer, proj);
    if (!a)
        return RQ_FAIL(err, RQ_ERR_ARG, "layer %d %s has no adapter (layers: %d)", layer,
                       proj >= 0 && proj < RQ_N_PROJ ? rq_proj_names[proj] : "?", s->model.n_layers);
    RQ_TRY(s->be->upload(s->be, a->A, A, sizeof(float) * (size_t)a->r * a->a_cols, err));
    return s->be->upload(s->be, a->B, B, sizeof(float) * (size_t)a->out * a->r, err);
}

/* ---- PEFT save ----------------------------------------------------------------------------- */

static cJSON *config_to_json(const rq_adapter_config *c) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "peft_type", "LORA");
    cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
    cJSON_AddNumberToObject(root, "r", c->r);
    cJSON_AddNumberToObject(root, "lora_alpha", c->alpha);
    cJSON_AddNumberToObject(root, "lora_dropout", 0.0);
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(root, "use_rslora", 0);
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    /* PEFT spells its inits "gaussian" or true (kaiming); xavier has no PEFT
     * spelling, and our own key below records the exact one. */
    if (c->init == RQ_INIT_GAUSSIAN) cJSON_AddStringToObject(root, "init_lora_weights", "gaussian");
    else cJSON_AddBoolToObject(root, "init_lora_weights", 1);
    cJSON *targets = cJSON_AddArrayToObject(root, "target_modules");
    for (int p = 0; targets && p < RQ_N_PROJ; p++)
        if (c->targets & (1u << p)) cJSON_AddItemToArray(targets, cJSON_CreateString(rq_proj_names[p]));
    cJSON *ours = cJSON_AddObjectToObject(root, "rilq_adapter");
    if (ours) {
        cJSON_AddStringToObject(ours, "type", rq_adapter_type_name(c->type));
        if (c->type == RQ_ADAPTER_QALORA) {
            cJSON_AddNumberToObject(ours, "group_size", c->group_size);
            cJSON_AddStringToObject(ours, "pooling", "mean");
        }
        cJSON_AddNumberToObject(ours, "scaling", (double)(c->alpha / (float)c->r));
        if (c->train_scales) cJSON_AddBoolToObject(ours, "train_scales", 1);
        cJSON_AddStringToObject(ours, "init", rq_adapter_init_name(c->init));
    }
    return root;
}

rq_status rq_adapter_set_save_peft(const rq_adapter_set *s, const char *dir, rq_err *err) {
    RQ_TRY(rq_mkdir_p(dir, err));
    rq_remove_stale_temps(dir); /* what a killed earlier save into dir left */
    int n_adapters = rq_adapter_set_count(s);
    float *host = rq_calloc(s->n_params ? s->n_params : 1, sizeof(float), err);
    rq_st_tensor *tensors = host ? rq_calloc((size_t)3 * n_adapters, sizeof *tensors, err) : NULL;
    char(*names)[128] = tensors ? rq_calloc((size_t)3 * n_adapters, sizeof *names, err) : NULL;
    rq_status st = names ? RQ_OK : RQ_ERR_NOMEM;
    if (st == RQ_OK) st = s->be->download(s->be, host, s->params, sizeof(float) * s->n_params, err);
    int k = 0;
    for (int l = 0; st == RQ_OK && l < s->model.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
            if (!a->A) continue;
            for (int which = 0; which < 2; which++, k++) {
                peft_key(names[k], sizeof names[k], l, p, which ? 'B' : 'A');
                tensors[k].name = names[k];
                tensors[k].dtype = RQ_F32;
                tensors[k].ndim = 2;
                tensors[k].shape[0] = which ? a->out : a->r;
                tensors[k].shape[1] = which ? a->r : a->a_cols;
                tensors[k].data = host + ((which ? a->B : a->A) - s->params);
            }
            if (a->S) {
                scales_key(names[k], sizeof names[k], l, p);
                tensors[k] = (rq_st_tensor){.name = names[k], .dtype = RQ_F32, .ndim = 2,
                                            .shape = {a->out, a->a_cols}, .data = host + (a->S - s->params)};
                k++;
            }
        }
    if (st == RQ_OK) {
        char *path = rq_path_join_alloc(dir, ADAPTER_WEIGHTS_FILE, err);
        st = path ? rq_safetensors_write(path, tensors, k, NULL, 0, err) : RQ_ERR_NOMEM;
        free(path);
    }
    free(names);
    free(tensors);
    free(host);
    if (st != RQ_OK) return st;

    cJSON *json = config_to_json(&s->cfg);
    char *text = json ? cJSON_Print(json) : NULL;
    cJSON_Delete(json);
    if (!text) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory writing %s", ADAPTER_CONFIG_FILE);
    char *path = rq_path_join_alloc(dir, ADAPTER_CONFIG_FILE, err);
    st = path ? rq_write_file_atomic(path, text, strlen(text), err) : RQ_ERR_NOMEM;
    free(path);
    cJSON_free(text);
    return st;
}

/* ---- PEFT load ------------------------------------------------------------------------------ */

static rq_status config_read_file(const char *path, rq_adapter_config *cfg, rq_err *err) {
    char *text = NULL;
    size_t size = 0;
    RQ_TRY(rq_file_read_all(path, &text, &size, err));
    cJSON *root = cJSON_ParseWithLength(text, size);
    free(text);
    if (!root) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not valid JSON", path);

    rq_status st = RQ_OK;
    memset(cfg, 0, sizeof *cfg);
    cfg->init = RQ_INIT_ZERO;
    const cJSON *peft_type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    const cJSON *ours = cJSON_GetObjectItemCaseSensitive(root, "rilq_adapter");
    if (!cJSON_IsString(peft_type) || strcmp(peft_type->valuestring, "LORA") != 0) {
        st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: peft_type must be \"LORA\"", path);
    } else if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 1e6 ||
               r->valuedouble != (double)(int)r->valuedouble) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: \"r\" must be a positive integer", path);
    } else if (!cJSON_IsNumber(alpha) || !(alpha->valuedouble > 0)) {
        st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: \"lora_alpha\" must be a positive number", path);
    } else if (!cJSON_IsArray(targets)) {
        st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: \"target_modules\" must be a list of projection names", path);
    }
    if (st == RQ_OK) {
        cfg->r = r->valueint;
        cfg->alpha = (float)alpha->valuedouble;
        const cJSON *t;
        cJSON_ArrayForEach(t, targets) {
            int found = -1;
            for (int p = 0; cJSON_IsString(t) && p < RQ_N_PROJ; p++)
                if (strcmp(t->valuestring, rq_proj_names[p]) == 0) found = p;
            if (found < 0) {
                st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: unknown target module %s (expected one of q_proj, "
                             "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                             path, cJSON_IsString(t) ? t->valuestring : "(not a string)");
                break;
            }
            cfg->targets |= 1u << found;
        }
        if (st == RQ_OK && !cfg->targets) st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: empty target_modules", path);
    }
    /* PEFT keys that change what the adapter computes: honoured when they
       describe what rilq computes, refused otherwise (ignoring them would load,
       and merge, a different update) */
    const cJSON *rslora = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    const cJSON *fifo = cJSON_GetObjectItemCaseSensitive(root, "fan_in_fan_out");
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
    if (st == RQ_OK && rslora && !cJSON_IsFalse(rslora) && !cJSON_IsNull(rslora))
        st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: use_rslora (scaling alpha / sqrt(r)) is not supported: rilq scales by "
                     "alpha / r", path);
    if (st == RQ_OK && fifo && !cJSON_IsFalse(fifo) && !cJSON_IsNull(fifo))
        st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: fan_in_fan_out (transposed, Conv1D-style weights) is not supported", path);
    if (st == RQ_OK && bias && !cJSON_IsNull(bias) && !(cJSON_IsString(bias) && !strcmp(bias->valuestring, "none")))
        st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: bias \"%s\" is not supported (adapters without bias terms: \"none\")",
                     path, cJSON_IsString(bias) ? bias->valuestring : "(not a string)");
    if (st == RQ_OK && ours) {
        const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(ours, "scaling");
        const double expect = (double)((float)alpha->valuedouble / (float)r->valueint);
        if (scaling && (!cJSON_IsNumber(scaling) || fabs(scaling->valuedouble - expect) > 1e-6 * expect))
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: rilq_adapter.scaling %g does not match lora_alpha / r = %g", path,
                         cJSON_IsNumber(scaling) ? scaling->valuedouble : NAN, expect);
    }
    cfg->type = RQ_ADAPTER_LORA;
    if (st == RQ_OK && ours) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(ours, "type");
        const cJSON *gs = cJSON_GetObjectItemCaseSensitive(ours, "group_size");
        const cJSON *pooling = cJSON_GetObjectItemCaseSensitive(ours, "pooling");
        if (cJSON_IsString(type) && strcmp(type->valuestring, "qalora") == 0) {
            cfg->type = RQ_ADAPTER_QALORA;
            if (!cJSON_IsNumber(gs) || gs->valuedouble < 1 || gs->valuedouble > 1e6)
                st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: rilq_adapter.group_size must be a positive integer", path);
            else if (!cJSON_IsString(pooling) || strcmp(pooling->valuestring, "mean") != 0)
                st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: rilq_adapter.pooling must be \"mean\" (found %s)", path,
                             cJSON_IsString(pooling) ? pooling->valuestring : "nothing");
            else cfg->group_size = gs->valueint;
        } else if (!cJSON_IsString(type) || strcmp(type->valuestring, "lora") != 0) {
            st = RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: rilq_adapter.type must be \"lora\" or \"qalora\"", path);
        }
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(ours, "train_scales");
        if (st == RQ_OK && ts && !cJSON_IsBool(ts))
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: rilq_adapter.train_scales must be true or false", path);
        cfg->train_scales = cJSON_IsTrue(ts);
    }
    cJSON_Delete(root);
    return st;
}

rq_status rq_adapter_config_read_peft(const char *dir, rq_adapter_config *cfg, rq_err *err) {
    char *path = rq_path_join_alloc(dir, ADAPTER_CONFIG_FILE, err);
    if (!path) return RQ_ERR_NOMEM;
    rq_status st = config_read_file(path, cfg, err);
    free(path);
    return st;
}

static void shape_str(char *buf, size_t n, const int64_t *shape, int ndim) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

rq_status rq_adapter_set_load_peft(rq_adapter_set *s, const char *dir, rq_err *err) {
    rq_adapter_config fc;
    RQ_TRY(rq_adapter_config_read_peft(dir, &fc, err));
    const rq_adapter_config *c = &s->cfg;
    if (fc.type != c->type || fc.r != c->r || fc.alpha != c->alpha || fc.targets != c->targets ||
        fc.train_scales != c->train_scales ||
        (c->type == RQ_ADAPTER_QALORA && fc.group_size != c->group_size))
        return RQ_FAIL(err, RQ_ERR_FORMAT,
                       "%s/%s: adapter config (type %s, r %d, alpha %g, group size %d, targets 0x%x) differs from "
                       "the expected one (type %s, r %d, alpha %g, group size %d, targets 0x%x)",
                       dir, ADAPTER_CONFIG_FILE, rq_adapter_type_name(fc.type), fc.r, (double)fc.alpha,
                       fc.group_size, fc.targets, rq_adapter_type_name(c->type), c->r, (double)c->alpha,
                       c->group_size, c->targets);

    char *path = rq_path_join_alloc(dir, ADAPTER_WEIGHTS_FILE, err);
    if (!path) return RQ_ERR_NOMEM;
    rq_safetensors file;
    rq_tensor_table tab = {0};
    rq_status open_st = rq_safetensors_open(path, &file, &tab, err);
    if (open_st != RQ_OK) {
        free(path);
        rq_tensor_table_free(&tab); /* what the header's valid entries added before the failure */
        return open_st;
    }
    float *host = rq_calloc(s->n_params ? s->n_params : 1, sizeof(float), err);
    rq_status st = host ? RQ_OK : RQ_ERR_NOMEM;
    int expected = 0;
    char name[RQ_TENSOR_NAME_MAX], want[64], got[64];
    for (int l = 0; st == RQ_OK && l < s->model.n_layers; l++)
        for (int p = 0; st == RQ_OK && p < RQ_N_PROJ; p++) {
            const rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
            if (!a->A) continue;
            for (int which = 0; st == RQ_OK && which < 2; which++) {
                peft_key(name, sizeof name, l, p, which ? 'B' : 'A');
                expected++;
                int64_t shape[2] = {which ? a->out : a->r, which ? a->r : a->a_cols};
                shape_str(want, sizeof want, shape, 2);
                const rq_tensor_view *v = rq_tensor_table_find(&tab, name);
                if (!v) {
                    st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: missing tensor %s (expected shape %s)", path, name, want);
                    break;
                }
                if (v->ndim != 2 || v->shape[0] != shape[0] || v->shape[1] != shape[1]) {
                    shape_str(got, sizeof got, v->shape, v->ndim);
                    st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor %s has shape %s, expected %s for this model", path,
                                 name, got, want);
                    break;
                }
                st = rq_tensor_to_f32(v, host + ((which ? a->B : a->A) - s->params), err);
                if (st != RQ_OK) rq_err_prefix(err, "%s: tensor %s: ", path, name);
            }
            if (st == RQ_OK && a->S) {
                scales_key(name, sizeof name, l, p);
                expected++;
                int64_t shape[2] = {a->out, a->a_cols};
                shape_str(want, sizeof want, shape, 2);
                const rq_tensor_view *v = rq_tensor_table_find(&tab, name);
                if (!v) st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: missing tensor %s (expected shape %s)", path, name, want);
                else if (v->ndim != 2 || v->shape[0] != shape[0] || v->shape[1] != shape[1]) {
                    shape_str(got, sizeof got, v->shape, v->ndim);
                    st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: tensor %s has shape %s, expected %s for this model", path,
                                 name, got, want);
                } else {
                    st = rq_tensor_to_f32(v, host + (a->S - s->params), err);
                    if (st != RQ_OK) rq_err_prefix(err, "%s: tensor %s: ", path, name);
                }
            }
        }
    /* A tensor the model has no place for (another layer count, another
     * target list) is an error rather than silently dropped. */
    for (int i = 0; st == RQ_OK && tab.count != expected && i < tab.count; i++) {
        bool known = false;
        for (int l = 0; !known && l < s->model.n_layers; l++)
            for (int p = 0; !known && p < RQ_N_PROJ; p++)
                for (int which = 0; !known && which < 3; which++) {
                    const rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
                    if (!a->A || (which == 2 && !a->S)) continue;
                    if (which == 2) scales_key(name, sizeof name, l, p);
                    else peft_key(name, sizeof name, l, p, which ? 'B' : 'A');
                    known = strcmp(name, tab.items[i].name) == 0;
                }
        if (!known)
            st = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: unexpected tensor %s: no such adapter in this model (%d layers, "
                         "targets from %s/" ADAPTER_CONFIG_FILE ")", path, tab.items[i].name, s->model.n_layers, dir);
    }
    if (st == RQ_OK) st = s->be->upload(s->be, s->params, host, sizeof(float) * s->n_params, err);
    if (st == RQ_OK && s->cfg.train_scales) s->scales_loaded = true;
    free(host);
    free(path);
    rq_safetensors_close(&file);
    rq_tensor_table_free(&tab);
    return st;
}

rq_status rq_adapter_set_open_peft(const char *dir, const rq_config *mc, rq_backend *be, rq_adapter_set **out,
                                   rq_err *err) {
    *out = NULL;
    rq_adapter_config cfg;
    RQ_TRY(rq_adapter_config_read_peft(dir, &cfg, err));
    rq_adapter_set *s;
    RQ_TRY(rq_adapter_set_create(mc, &cfg, be, &s, err));
    rq_status st = rq_adapter_set_load_peft(s, dir, err);
    if (st != RQ_OK) {
        rq_adapter_set_free(s);
        return st;
    }
    *out = s;
    return RQ_OK;
}

/* ---- trained group scales ------------------------------------------------------------------- */

rq_status rq_adapter_set_attach_scales(rq_adapter_set *s, rq_model *m, rq_err *err) {
    if (!s->cfg.train_scales) return RQ_OK;
    if (!s->be->caps.weights_on_host)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "trainable group scales run on the CPU backend only (for now)");
    size_t max_numel = 0;
    for (int l = 0; l < s->model.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
            if (!a->S) continue;
            rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (!t || t->group_size != a->group_size)
                return RQ_FAIL(err, RQ_ERR_ARG, "trainable group scales: model.layers.%d.%s.%s must be 2-bit with "
                               "group size %d (the adapters' pooling group); it is %s", l,
                               p <= RQ_PROJ_O ? "self_attn" : "mlp", rq_proj_names[p], a->group_size,
                               t ? "2-bit with another group size" : "not quantized");
            a->q2 = t;
            if ((size_t)a->out * a->in > max_numel) max_numel = (size_t)a->out * a->in;
        }
    free(s->scale_scratch);
    s->scale_scratch = rq_calloc(max_numel ? max_numel : 1, sizeof(float), err);
    if (!s->scale_scratch) return RQ_ERR_NOMEM;
    s->scales_model = m;
    if (s->scales_loaded) return rq_adapter_set_sync_scales(s, err);
    /* a fresh set starts at the model's scales */
    for (int l = 0; l < s->model.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
            if (!a->S) continue;
            for (size_t k = 0; k < (size_t)a->out * a->a_cols; k++) a->S[k] = rq_f16_to_f32(a->q2->scales[k]);
        }
    s->scales_loaded = true;
    return RQ_OK;
}

rq_status rq_adapter_set_sync_scales(rq_adapter_set *s, rq_err *err) {
    if (!s->cfg.train_scales || !s->scales_model) return RQ_OK;
    for (int l = 0; l < s->model.n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            rq_adapter *a = &s->items[(size_t)l * RQ_N_PROJ + p];
            if (!a->S || !a->q2) continue;
            for (size_t k = 0; k < (size_t)a->out * a->a_cols; k++) {
                if (!(fabsf(a->S[k]) <= 65504.0f))
                    return RQ_FAIL(err, RQ_ERR_ARG, "trained scale of model.layers.%d.%s row %zu group %zu is %g: "
                                   "not an fp16 value", l, rq_proj_names[p], k / (size_t)a->a_cols,
                                   k % (size_t)a->a_cols, a->S[k]);
                a->q2->scales[k] = rq_f32_to_f16(a->S[k]);
            }
        }
    return rq_model_rebind(s->scales_model, s->be, err);
}

void rq_adapter_scale_backward(rq_backend *be, const rq_adapter_set *s, const rq_adapter *a, const float *x,
                               const float *dout, int N) {
    const rq_q2_tensor *t = a->q2;
    float *dW = s->scale_scratch;
    if (!t || !dW) return;
    memset(dW, 0, sizeof(float) * (size_t)a->out * a->in);
    be->matmul_tn_acc(be, dW, dout, x, N, a->out, a->in);
#pragma omp parallel for schedule(static)
    for (int o = 0; o < a->out; o++)
        for (int g = 0; g < a->a_cols; g++) {
            const int c0 = g * a->group_size, c1 = c0 + a->group_size < a->in ? c0 + a->group_size : a->in;
            double acc = 0;
            for (int i = c0; i < c1; i++) acc += (double)dW[(size_t)o * a->in + i] * t->codebook[rq_q2_get_code(t, o, i)];
            a->dS[(size_t)o * a->a_cols + g] += (float)acc;
        }
}

rq_status rq_adapter_set_open_for(const char *dir, rq_model *m, rq_backend *be, rq_adapter_set **out, rq_err *err) {
    RQ_TRY(rq_adapter_set_open_peft(dir, &m->cfg, be, out, err));
    rq_status st = rq_adapter_set_attach_scales(*out, m, err);
    if (st != RQ_OK) {
        rq_adapter_set_free(*out);
        *out = NULL;
    }
    return st;
}
