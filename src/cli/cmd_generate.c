/* rilq generate: prompt -> text, streamed as it is produced. */
#include <stdlib.h>

#include "../model/generate.h"
#include "../pipeline/stages.h"
#include "cli.h"

static const char *usage =
    "usage: rilq generate MODEL [options]\n\n"
    "Continue a prompt with the model (KV cache, greedy by default).\n\n";

typedef struct generate_opts {
    const char *prompt, *bos;
    int64_t max_new, seed;
    double temperature, top_p;
    bool ids;
    rq_common_opts common;
} generate_opts;

#define O generate_opts
static const rq_opt opts[] = {
    RQ_OPT_S("--prompt", NULL, O, prompt, "", NULL, "TEXT", "the prompt (default: empty, i.e. just BOS)"),
    RQ_OPT_I("--max-new", NULL, O, max_new, "128", 1, 1 << 20, "N", "new tokens at most"),
    RQ_OPT_N("--temperature", NULL, O, temperature, "0", 0, 100, "T", "0 = greedy"),
    RQ_OPT_N("--top-p", NULL, O, top_p, "1", 1e-6, 1, "P", "nucleus sampling mass, 1 = off"),
    RQ_OPT_I("--seed", NULL, O, seed, "42", 0, (double)INT64_MAX, "S", "sampling seed"),
    RQ_OPT_S("--bos", NULL, O, bos, NULL, "on|off|default", NULL, "prepend BOS (default: as the tokenizer does)"),
    RQ_OPT_B("--ids", NULL, O, ids, "false", "also print the token ids"),
    RQ_COMMON_OPT_LINES(O),
};
static const rq_opt_table table = RQ_OPT_TABLE(opts, O);
#undef O

typedef struct stream_state {
    const rq_tokenizer *tok;
    int prev;
} stream_state;

static bool print_piece(void *user, int id) {
    stream_state *s = user;
    char buf[256];
    size_t n = rq_tokenizer_piece(s->tok, s->prev, id, buf, sizeof buf);
    fwrite(buf, 1, n, stdout);
    fflush(stdout);
    s->prev = id;
    return true;
}

int cmd_generate(int argc, char **argv) {
    generate_opts g = {0};
    rq_err err = {0};
    const char *pos[1];
    int n_pos = 0;
    if (rq_opts_defaults(table, &g, &err)) return cli_fail("generate", &err);
    int pr = cli_parse_table("generate", usage, NULL, table, &g, argc, argv, pos, 1, &n_pos);
    if (pr) return pr < 0 ? 0 : pr;
    rq_bos_mode bos;
    if (!g.bos || !strcmp(g.bos, "default")) bos = RQ_BOS_DEFAULT;
    else if (!strcmp(g.bos, "on")) bos = RQ_BOS_ON;
    else if (!strcmp(g.bos, "off")) bos = RQ_BOS_OFF;
    else return cli_usage_error("generate", "--bos expects on, off or default");
    if (!n_pos) return cli_usage_error("generate", "missing MODEL");
    const char *path = pos[0], *prompt = g.prompt;
    rq_sample_opts so = {.max_new = (int)g.max_new, .temperature = (float)g.temperature, .top_p = (float)g.top_p,
                         .seed = (uint64_t)g.seed};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    int *ids = NULL, *out = NULL, n_ids = 0, n_out = 0;
    int rc = 0;
    if (rq_model_load(path, g.common.tokenizer, &m, &err) != RQ_OK) return cli_fail("generate", &err);
    if (!m->tok) {
        RQ_FAIL(&err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", path);
        rc = cli_fail("generate", &err);
        goto done;
    }
    if (rq_backend_create(g.common.device, (int)g.common.threads, &be, &err) != RQ_OK ||
        rq_tokenizer_encode(m->tok, prompt, strlen(prompt), bos, &ids, &n_ids, &err) != RQ_OK) {
        rc = cli_fail("generate", &err);
        goto done;
    }
    if (n_ids == 0) { /* an empty prompt with BOS off: start from BOS anyway, there is nothing else */
        free(ids);
        ids = malloc(sizeof(int));
        n_ids = 1;
        ids[0] = rq_tokenizer_bos(m->tok) >= 0 ? rq_tokenizer_bos(m->tok) : 0;
    }
    fputs(prompt, stdout);
    stream_state ss = {m->tok, ids[n_ids - 1]};
    double t0 = rq_now_seconds();
    if (rq_generate(m, be, ids, n_ids, &so, m->cfg.eos_ids, m->cfg.n_eos, print_piece, &ss, &out, &n_out, &err) !=
        RQ_OK) {
        rc = cli_fail("generate", &err);
        goto done;
    }
    double dt = rq_now_seconds() - t0;
    printf("\n");
    if (g.ids) {
        printf("ids:");
        for (int i = 0; i < n_ids; i++) printf(" %d", ids[i]);
        printf(" |");
        for (int i = 0; i < n_out; i++) printf(" %d", out[i]);
        printf("\n");
    }
    fflush(stdout);
    fprintf(stderr, "generate: %d prompt + %d new tokens in %.2fs (%.1f tok/s)\n", n_ids, n_out, dt,
            dt > 0 ? n_out / dt : 0.0);
done:
    free(ids);
    free(out);
    rq_backend_destroy(be);
    rq_model_free(m);
    return rc;
}
