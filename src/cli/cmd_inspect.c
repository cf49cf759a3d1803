/* rilq inspect: what a model is and what it will cost to run. */
#include <stdlib.h>

#include "../model/forward.h"
#include "../quant/q2.h"
#include "cli.h"

static const char *inspect_help =
    "usage: rilq inspect MODEL [options]\n\n"
    "Print the architecture, parameter counts, source dtypes and the memory the\n"
    "model needs. MODEL is a Hugging Face directory, a GGUF file or a llama2.c .bin.\n\n"
    "options:\n" CLI_COMMON_HELP
    "  --ctx N               sequence length for the activation estimate (default min(context, 2048))\n";

static void print_bytes(const char *what, double bytes) {
    printf("  %-28s %10.2f MiB\n", what, bytes / 1048576.0);
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    cli_common common = {0};
    long ctx = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (cli_is_help(argv[i])) {
            fputs(inspect_help, stdout);
            return 0;
        }
        int r = cli_common_opt("inspect", argc, argv, &i, &common);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (cli_opt(argc, argv, &i, "--ctx", &v)) {
            if (!cli_parse_int(v, 1, 1 << 20, &ctx)) return cli_usage_error("inspect", "--ctx expects a positive integer");
        } else if (argv[i][0] == '-') {
            return cli_usage_error("inspect", "unknown option '%s'", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else {
            return cli_usage_error("inspect", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!path) return cli_usage_error("inspect", "missing MODEL");
    rq_err err = {0};
    rq_model *m = NULL;
    if (rq_model_load(path, common.tokenizer, &m, &err) != RQ_OK) return cli_fail("inspect", &err);
    const rq_config *c = &m->cfg;
    printf("model        %s\n", m->path);
    printf("format       %s\n", m->format);
    printf("architecture llama: %d layers, dim %d, ffn %d, %d heads (head dim %d), %d kv heads%s\n", c->n_layers,
           c->dim, c->hidden_dim, c->n_heads, c->head_dim, c->n_kv_heads,
           c->n_kv_heads != c->n_heads ? " (grouped-query attention)" : "");
    printf("vocabulary   %d tokens, embeddings %s\n", c->vocab_size, c->tie_embeddings ? "tied to the head" : "untied");
    printf("context      %d positions, rope theta %g%s, rms eps %g\n", c->max_seq_len, c->rope_theta,
           c->rope_scaling == RQ_ROPE_SCALING_LLAMA3   ? ", llama3 scaling"
           : c->rope_scaling == RQ_ROPE_SCALING_LINEAR ? ", linear scaling"
                                                       : "",
           c->norm_eps);
    printf("dtypes       %s\n", m->dtypes);
    /* q2 linears (a rilq artifact): how many, their format and cost */
    int n_q2 = 0;
    int64_t q2_weights = 0;
    size_t q2_bytes = 0;
    const rq_q2_tensor *q2_first = NULL;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < RQ_N_PROJ; p++) {
            const rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (!t) continue;
            if (!q2_first) q2_first = t;
            n_q2++;
            q2_weights += (int64_t)t->out * t->in;
            q2_bytes += rq_q2_nbytes(t);
        }
    if (q2_first)
        printf("quantized    %d of %d projections: 2-bit %s codebook, group size %d, method %s%s, %.4f bits per weight "
               "(%.3f M weights in %.2f MiB); source %s\n",
               n_q2, RQ_N_PROJ * c->n_layers, rq_q2_codebook_name(q2_first->kind), q2_first->group_size,
               m->quant.method[0] ? m->quant.method : "?", m->quant.clip_search ? " + clip search" : "",
               8.0 * (double)q2_bytes / (double)q2_weights, q2_weights / 1e6, q2_bytes / 1048576.0,
               m->quant.source_dtypes[0] ? m->quant.source_dtypes : "?");
    int64_t per_layer = (int64_t)c->dim * (c->n_heads * c->head_dim) * 2 + (int64_t)c->dim * c->n_kv_heads * c->head_dim * 2 +
                        (int64_t)c->dim * c->hidden_dim * 3 + 2 * c->dim;
    int64_t linear = ((int64_t)c->dim * (c->n_heads * c->head_dim) * 2 + (int64_t)c->dim * c->n_kv_heads * c->head_dim * 2 +
                      (int64_t)c->dim * c->hidden_dim * 3) * c->n_layers;
    printf("parameters   %.3f M total: embedding %.3f M, layers %.3f M (%.3f M in the 7 projections), head %s\n",
           m->n_params / 1e6, (double)c->vocab_size * c->dim / 1e6, (double)per_layer * c->n_layers / 1e6, linear / 1e6,
           c->tie_embeddings ? "tied" : "separate");
    if (m->tok)
        printf("tokenizer    %s, %d tokens, bos %d, eos %d\n",
               rq_tokenizer_kind(m->tok) == RQ_TOK_SPM ? "sentencepiece-style BPE" : "byte-level BPE",
               rq_tokenizer_vocab_size(m->tok), rq_tokenizer_bos(m->tok), rq_tokenizer_eos(m->tok));
    else
        printf("tokenizer    none\n");
    int T = ctx > 0 ? (int)ctx : (c->max_seq_len < 2048 ? c->max_seq_len : 2048);
    size_t kv = 2 * (size_t)c->n_layers * T * c->n_kv_heads * c->head_dim * sizeof(float);
    size_t act = (size_t)T * ((size_t)c->dim * 3 + (size_t)c->n_heads * c->head_dim * 2 +
                              (size_t)c->n_kv_heads * c->head_dim * 2 + (size_t)c->hidden_dim * 2) * sizeof(float);
    printf("memory (fp32 CPU backend, one sequence of %d tokens):\n", T);
    print_bytes(q2_first ? "weights (q2 + fp32)" : "weights", (double)rq_model_weight_bytes(m));
    print_bytes("activations", (double)act);
    print_bytes("KV cache (generation)", (double)kv);
    print_bytes("total", (double)rq_model_weight_bytes(m) + act + kv);
    rq_model_free(m);
    return 0;
}
