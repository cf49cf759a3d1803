/* A small llama.cpp client for tests/interop_llama.c: llama.cpp (libllama of
 * the cached b11434 build, tools/interop.sh) runs a GGUF file and writes what
 * the test compares with rilq. Compiled by the test itself against the cache:
 *
 *   cc -I$LLAMA/include llama_client.c $LLAMA/lib/libllama.a ... -lstdc++ -fopenmp -lm
 *
 * Usage (ids files: whitespace-separated token ids, one sequence per line):
 *   llama_client MODEL.gguf logits   IDS OUT.f32 KV   every window of IDS from an empty cache,
 *                                                     all positions' logits as raw float32
 *                                                     [windows][T][vocab]; KV = f32 | f16
 *   llama_client MODEL.gguf greedy   IDS N OUT.ids    N greedy (argmax) tokens after the first
 *                                                     line of IDS, one decode per token (F32 KV)
 *   llama_client MODEL.gguf tokenize TEXT OUT.ids     the text file's tokens as llama.cpp's
 *                                                     tools see them (add_special: the vocab's
 *                                                     add_bos; no special-token parsing)
 * Single-threaded, flash attention off (the plain attention path).
 * Exit 0 on success, 1 with a message on stderr otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static char *read_all(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0, *len = n;
    return buf;
}

/* Lines of ids: seqs[i] (malloc'ed), lens[i]; returns the number of lines. */
static int read_ids(const char *path, llama_token ***seqs, int **lens) {
    long n = 0;
    char *text = read_all(path, &n);
    if (!text) return -1;
    int cap = 64, count = 0;
    *seqs = calloc((size_t)cap, sizeof **seqs);
    *lens = calloc((size_t)cap, sizeof **lens);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (count == cap) {
            cap *= 2;
            *seqs = realloc(*seqs, (size_t)cap * sizeof **seqs);
            *lens = realloc(*lens, (size_t)cap * sizeof **lens);
        }
        int k = 0, kcap = 256;
        llama_token *ids = malloc((size_t)kcap * sizeof *ids);
        for (char *p = line, *end; ; p = end) {
            long v = strtol(p, &end, 10);
            if (end == p) break;
            if (k == kcap) ids = realloc(ids, (size_t)(kcap *= 2) * sizeof *ids);
            ids[k++] = (llama_token)v;
        }
        if (k == 0) {
            free(ids);
            continue;
        }
        (*seqs)[count] = ids;
        (*lens)[count++] = k;
    }
    free(text);
    return count;
}

static struct llama_context *make_context(struct llama_model *model, int n_ctx, int kv_f32) {
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = (uint32_t)n_ctx;
    cp.n_ubatch = (uint32_t)n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = kv_f32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    cp.type_v = kv_f32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    cp.no_perf = true;
    return llama_init_from_model(model, cp);
}

/* Decode tokens[0..n) at positions pos0.., all outputs requested. */
static int decode(struct llama_context *ctx, const llama_token *tokens, int n, int pos0) {
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = tokens[i];
        b.pos[i] = pos0 + i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc;
}

static int run_logits(struct llama_model *model, const char *ids_path, const char *out_path, const char *kv) {
    llama_token **seqs = NULL;
    int *lens = NULL;
    int n = read_ids(ids_path, &seqs, &lens);
    if (n <= 0) {
        fprintf(stderr, "llama_client: %s: no token ids\n", ids_path);
        return 1;
    }
    int max_len = 0;
    for (int i = 0; i < n; i++) max_len = lens[i] > max_len ? lens[i] : max_len;
    struct llama_context *ctx = make_context(model, max_len, strcmp(kv, "f16") != 0);
    FILE *out = fopen(out_path, "wb");
    if (!ctx || !out) {
        fprintf(stderr, "llama_client: cannot create the context or %s\n", out_path);
        return 1;
    }
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    for (int w = 0; w < n; w++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        if (decode(ctx, seqs[w], lens[w], 0) != 0) {
            fprintf(stderr, "llama_client: llama_decode failed on window %d\n", w);
            return 1;
        }
        for (int t = 0; t < lens[w]; t++)
            if (fwrite(llama_get_logits_ith(ctx, t), sizeof(float), (size_t)vocab, out) != (size_t)vocab) {
                fprintf(stderr, "llama_client: short write to %s\n", out_path);
                return 1;
            }
    }
    llama_free(ctx);
    return fclose(out) == 0 ? 0 : 1;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int run_greedy(struct llama_model *model, const char *ids_path, int n_new, const char *out_path) {
    llama_token **seqs = NULL;
    int *lens = NULL;
    if (read_ids(ids_path, &seqs, &lens) <= 0 || n_new <= 0) {
        fprintf(stderr, "llama_client: %s: no prompt, or N <= 0\n", ids_path);
        return 1;
    }
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_context *ctx = make_context(model, lens[0] + n_new, 1);
    FILE *out = fopen(out_path, "w");
    if (!ctx || !out || decode(ctx, seqs[0], lens[0], 0) != 0) {
        fprintf(stderr, "llama_client: prompt decode failed\n");
        return 1;
    }
    llama_token next = argmax(llama_get_logits_ith(ctx, lens[0] - 1), vocab);
    for (int i = 0; i < n_new; i++) {
        fprintf(out, "%d%c", next, i + 1 < n_new ? ' ' : '\n');
        if (i + 1 == n_new) break;
        if (decode(ctx, &next, 1, lens[0] + i) != 0) {
            fprintf(stderr, "llama_client: decode failed at step %d\n", i);
            return 1;
        }
        next = argmax(llama_get_logits_ith(ctx, 0), vocab);
    }
    llama_free(ctx);
    return fclose(out) == 0 ? 0 : 1;
}

static int run_tokenize(struct llama_model *model, const char *text_path, const char *out_path) {
    long len = 0;
    char *text = read_all(text_path, &len);
    if (!text) {
        fprintf(stderr, "llama_client: cannot read %s\n", text_path);
        return 1;
    }
    const struct llama_vocab *v = llama_model_get_vocab(model);
    int cap = (int)len + 16;
    llama_token *ids = malloc((size_t)cap * sizeof *ids);
    int n = llama_tokenize(v, text, (int32_t)len, ids, cap, true, false);
    FILE *out = fopen(out_path, "w");
    if (n < 0 || !out) {
        fprintf(stderr, "llama_client: tokenize failed (%d)\n", n);
        return 1;
    }
    for (int i = 0; i < n; i++) fprintf(out, "%d%c", ids[i], i + 1 < n ? ' ' : '\n');
    free(ids);
    free(text);
    return fclose(out) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: llama_client MODEL.gguf logits IDS OUT.f32 f32|f16 | greedy IDS N OUT | tokenize TEXT OUT\n");
        return 1;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "llama_client: llama.cpp could not load %s\n", argv[1]);
        return 1;
    }
    int rc = 1;
    if (!strcmp(argv[2], "logits") && argc == 6) rc = run_logits(model, argv[3], argv[4], argv[5]);
    else if (!strcmp(argv[2], "greedy") && argc == 6) rc = run_greedy(model, argv[3], atoi(argv[4]), argv[5]);
    else if (!strcmp(argv[2], "tokenize") && argc == 5) rc = run_tokenize(model, argv[3], argv[4]);
    else fprintf(stderr, "llama_client: unknown command or wrong arguments: %s\n", argv[2]);
    llama_model_free(model);
    llama_backend_free();
    return rc;
}
