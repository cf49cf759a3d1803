/* Hugging Face LLaMA directories: config.json -> rq_config, weights through the
 * safetensors reader, tokenizer.json through the tokenizer module. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "checkpoint.h"
#include "hf.h"
#include "safetensors.h"

/* An integer-valued JSON number in [lo, hi]. */
static bool json_int_in(const cJSON *j, long long lo, long long hi, long long *out) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) return false;
    *out = (long long)d;
    return true;
}

/* Optional positive int: absent or null leaves *out unchanged. */
static rq_status get_int(const cJSON *o, const char *key, int *out, bool required, const char *what, rq_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) {
        if (required) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: missing required key '%s'", what, key);
        return RQ_OK;
    }
    long long v;
    if (!json_int_in(j, 0, INT32_MAX, &v))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s' must be a non-negative integer below 2^31", what, key);
    *out = (int)v;
    return RQ_OK;
}

static rq_status get_float(const cJSON *o, const char *key, float *out, const char *what, rq_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return RQ_OK;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s' must be a finite number", what, key);
    *out = (float)j->valuedouble;
    return RQ_OK;
}

static rq_status get_bool(const cJSON *o, const char *key, bool *out, const char *what, rq_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return RQ_OK;
    if (!cJSON_IsBool(j)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s' must be true or false", what, key);
    *out = cJSON_IsTrue(j);
    return RQ_OK;
}

/* eos_token_id: an int or a list of ints; ids already in cfg are kept once. */
static rq_status add_eos_ids(const cJSON *j, rq_config *cfg, const char *what, rq_err *err) {
    if (!j || cJSON_IsNull(j)) return RQ_OK;
    const cJSON *first = cJSON_IsArray(j) ? j->child : j;
    for (const cJSON *e = first; e; e = cJSON_IsArray(j) ? e->next : NULL) {
        long long id;
        if (!json_int_in(e, 0, INT32_MAX, &id))
            return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: 'eos_token_id' must be a non-negative integer or a list of them", what);
        bool seen = false;
        for (int k = 0; k < cfg->n_eos; k++) seen |= cfg->eos_ids[k] == (int)id;
        if (seen) continue;
        if (cfg->n_eos == (int)(sizeof cfg->eos_ids / sizeof cfg->eos_ids[0]))
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: more than %d eos_token_id values", what, cfg->n_eos);
        cfg->eos_ids[cfg->n_eos++] = (int)id;
    }
    return RQ_OK;
}

/* rope_scaling (transformers <= 4.x) or rope_parameters (v5): both carry
 * rope_type (or the older "type") and the factors. */
static rq_status parse_rope(const cJSON *r, const char *key, rq_config *cfg, const char *what, rq_err *err) {
    if (!r || cJSON_IsNull(r)) return RQ_OK;
    if (!cJSON_IsObject(r)) return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: '%s' must be an object or null", what, key);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(r, "rope_type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(r, "type");
    RQ_TRY(get_float(r, "rope_theta", &cfg->rope_theta, what, err)); /* v5 moves rope_theta here */
    const char *t = cJSON_IsString(type) ? type->valuestring : "default";
    if (strcmp(t, "default") == 0) {
        cfg->rope_scaling = RQ_ROPE_SCALING_NONE;
        return RQ_OK;
    }
    if (strcmp(t, "linear") == 0) cfg->rope_scaling = RQ_ROPE_SCALING_LINEAR;
    else if (strcmp(t, "llama3") == 0) cfg->rope_scaling = RQ_ROPE_SCALING_LLAMA3;
    else
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: %s.rope_type '%s' is not supported (only default, linear, llama3)",
                       what, key, t);
    RQ_TRY(get_float(r, "factor", &cfg->rope_factor, what, err));
    if (cfg->rope_scaling == RQ_ROPE_SCALING_LLAMA3) {
        RQ_TRY(get_float(r, "low_freq_factor", &cfg->rope_low_freq_factor, what, err));
        RQ_TRY(get_float(r, "high_freq_factor", &cfg->rope_high_freq_factor, what, err));
        RQ_TRY(get_int(r, "original_max_position_embeddings", &cfg->rope_orig_max_pos, true, what, err));
    }
    return RQ_OK;
}

static rq_status check_architecture(const cJSON *root, const char *what, rq_err *err) {
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && !cJSON_IsNull(mt) && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "llama") != 0))
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: model_type '%s' is not supported (rilq reads llama models)", what,
                       cJSON_IsString(mt) ? mt->valuestring : "?");
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (cJSON_IsArray(arch) && cJSON_GetArraySize(arch) > 0) {
        bool ok = false;
        for (const cJSON *a = arch->child; a; a = a->next) ok |= cJSON_IsString(a) && strcmp(a->valuestring, "LlamaForCausalLM") == 0;
        if (!ok)
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: architectures %s does not include LlamaForCausalLM", what,
                           cJSON_IsString(arch->child) ? arch->child->valuestring : "[?]");
    }
    const char *bias_keys[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++) {
        bool b = false;
        RQ_TRY(get_bool(root, bias_keys[i], &b, what, err));
        if (b)
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                           "%s: %s = true: projection biases are not supported (rilq's LLaMA has no biases)", what,
                           bias_keys[i]);
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0)
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported (only silu)", what, act->valuestring);
    /* rilq's own 2-bit artifact keeps the HF config keys beside its
     * quantization_config and is read by src/io/artifact.c through this
     * parser; other quantized checkpoints (GPTQ, AWQ, bitsandbytes) are not read. */
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (qc && !cJSON_IsNull(qc)) {
        const cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
        if (!cJSON_IsString(qm) || strcmp(qm->valuestring, "rilq-q2") != 0)
            return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                           "%s: quantization_config.quant_method '%s' is not supported (rilq reads full-precision "
                           "checkpoints and its own 'rilq-q2' artifacts)",
                           what, cJSON_IsString(qm) ? qm->valuestring : "?");
    }
    return RQ_OK;
}

rq_status rq_hf_parse_config(const char *json, size_t len, const char *what, rq_config *cfg, rq_err *err) {
    memset(cfg, 0, sizeof *cfg);
    cfg->bos_id = -1;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not a JSON object", what);
    }
    rq_status s = check_architecture(root, what, err);
    if (s == RQ_OK) s = get_int(root, "hidden_size", &cfg->dim, true, what, err);
    if (s == RQ_OK) s = get_int(root, "intermediate_size", &cfg->hidden_dim, true, what, err);
    if (s == RQ_OK) s = get_int(root, "num_hidden_layers", &cfg->n_layers, true, what, err);
    if (s == RQ_OK) s = get_int(root, "num_attention_heads", &cfg->n_heads, true, what, err);
    if (s == RQ_OK) s = get_int(root, "num_key_value_heads", &cfg->n_kv_heads, false, what, err);
    if (s == RQ_OK) s = get_int(root, "head_dim", &cfg->head_dim, false, what, err);
    if (s == RQ_OK) s = get_int(root, "vocab_size", &cfg->vocab_size, true, what, err);
    if (s == RQ_OK) s = get_int(root, "max_position_embeddings", &cfg->max_seq_len, false, what, err);
    cfg->norm_eps = 1e-6f; /* transformers' LlamaConfig default */
    if (s == RQ_OK) s = get_float(root, "rms_norm_eps", &cfg->norm_eps, what, err);
    cfg->rope_theta = 10000.0f;
    if (s == RQ_OK) s = get_float(root, "rope_theta", &cfg->rope_theta, what, err);
    if (s == RQ_OK) {
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
        const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
        s = parse_rope(rs, "rope_scaling", cfg, what, err);
        if (s == RQ_OK && (!rs || cJSON_IsNull(rs))) s = parse_rope(rp, "rope_parameters", cfg, what, err);
    }
    if (s == RQ_OK) s = get_bool(root, "tie_word_embeddings", &cfg->tie_embeddings, what, err);
    if (s == RQ_OK) {
        const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
        long long id;
        if (bos && !cJSON_IsNull(bos)) {
            if (json_int_in(bos, 0, INT32_MAX, &id)) cfg->bos_id = (int)id;
            else s = RQ_FAIL(err, RQ_ERR_FORMAT, "%s: 'bos_token_id' must be a non-negative integer", what);
        }
    }
    if (s == RQ_OK) s = add_eos_ids(cJSON_GetObjectItemCaseSensitive(root, "eos_token_id"), cfg, what, err);
    cJSON_Delete(root);
    return s;
}

rq_status rq_hf_read_config(const char *config_path, rq_config *cfg, rq_err *err) {
    char *text = NULL;
    size_t len = 0;
    RQ_TRY(rq_file_read_all(config_path, &text, &len, err));
    rq_status s = rq_hf_parse_config(text, len, config_path, cfg, err);
    free(text);
    return s;
}

rq_status rq_hf_read_generation_config(const char *path, rq_config *cfg, rq_err *err) {
    char *text = NULL;
    size_t len = 0;
    RQ_TRY(rq_file_read_all(path, &text, &len, err));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s: not a JSON object", path);
    }
    rq_status s = add_eos_ids(cJSON_GetObjectItemCaseSensitive(root, "eos_token_id"), cfg, path, err);
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    long long id;
    if (s == RQ_OK && cfg->bos_id < 0 && json_int_in(bos, 0, INT32_MAX, &id)) cfg->bos_id = (int)id;
    cJSON_Delete(root);
    return s;
}

rq_status rq_hf_load(const char *dir, rq_model **out, rq_err *err) {
    *out = NULL;
    rq_checkpoint ck;
    RQ_TRY(rq_checkpoint_open_hf(dir, &ck, err));
    rq_status s = rq_checkpoint_build(&ck, out, err);
    rq_checkpoint_close(&ck);
    return s;
}

cJSON *rq_hf_config_json(const rq_config *c, const char *torch_dtype) {
    cJSON *root = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddStringToObject(root, "model_type", "llama");
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    cJSON_AddNumberToObject(root, "hidden_size", c->dim);
    cJSON_AddNumberToObject(root, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(root, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(root, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(root, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(root, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(root, "rms_norm_eps", (double)c->norm_eps);
    cJSON_AddNumberToObject(root, "rope_theta", (double)c->rope_theta);
    if (c->rope_scaling == RQ_ROPE_SCALING_NONE) cJSON_AddNullToObject(root, "rope_scaling");
    else {
        cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", c->rope_scaling == RQ_ROPE_SCALING_LLAMA3 ? "llama3" : "linear");
        cJSON_AddNumberToObject(rs, "factor", (double)c->rope_factor);
        if (c->rope_scaling == RQ_ROPE_SCALING_LLAMA3) {
            cJSON_AddNumberToObject(rs, "low_freq_factor", (double)c->rope_low_freq_factor);
            cJSON_AddNumberToObject(rs, "high_freq_factor", (double)c->rope_high_freq_factor);
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->rope_orig_max_pos);
        }
    }
    cJSON_AddNumberToObject(root, "max_position_embeddings", c->max_seq_len);
    cJSON_AddNumberToObject(root, "vocab_size", c->vocab_size);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddBoolToObject(root, "attention_bias", false);
    cJSON_AddBoolToObject(root, "mlp_bias", false);
    if (c->bos_id >= 0) cJSON_AddNumberToObject(root, "bos_token_id", c->bos_id);
    if (c->n_eos == 1) cJSON_AddNumberToObject(root, "eos_token_id", c->eos_ids[0]);
    else if (c->n_eos > 1) cJSON_AddItemToObject(root, "eos_token_id", cJSON_CreateIntArray(c->eos_ids, c->n_eos));
    cJSON_AddStringToObject(root, "torch_dtype", torch_dtype);
    return root;
}
