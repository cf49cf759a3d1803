/* rilq generate: prompt -> text, streamed as it is produced. */
#include <stdlib.h>

#include "../eval/generate.h"
#include "cli.h"

static const char *generate_help =
    "usage: rilq generate MODEL [options]\n\n"
    "Continue a prompt with the model (KV cache, greedy by default).\n\n"
    "options:\n"
    "  --prompt TEXT         the prompt (default: empty, i.e. just BOS)\n"
    "  --max-new N           new tokens at most (default 128)\n"
    "  --temperature T       0 = greedy (default 0)\n"
    "  --top-p P             nucleus sampling mass (default 1 = off)\n"
    "  --seed S              sampling seed (default 42)\n"
    "  --bos on|off|default  prepend BOS (default: as the tokenizer does)\n"
    "  --ids                 also print the token ids\n" CLI_COMMON_HELP;

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
    const char *path = NULL, *prompt = "", *v;
    cli_common common = {0};
    rq_sample_opts so = {.max_new = 128, .temperature = 0.0f, .top_p = 1.0f, .seed = 42};
    rq_bos_mode bos = RQ_BOS_DEFAULT;
    bool show_ids = false;
    for (int i = 1; i < argc; i++) {
        long n;
        double f;
        if (cli_is_help(argv[i])) {
            fputs(generate_help, stdout);
            return 0;
        }
        int r = cli_common_opt("generate", argc, argv, &i, &common);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (cli_opt(argc, argv, &i, "--prompt", &v)) {
            if (!v) return cli_usage_error("generate", "--prompt needs a value");
            prompt = v;
        } else if (cli_opt(argc, argv, &i, "--max-new", &v)) {
            if (!cli_parse_int(v, 1, 1 << 20, &n)) return cli_usage_error("generate", "--max-new expects a positive integer");
            so.max_new = (int)n;
        } else if (cli_opt(argc, argv, &i, "--temperature", &v)) {
            if (!cli_parse_float(v, 0, 100, &f)) return cli_usage_error("generate", "--temperature expects 0..100");
            so.temperature = (float)f;
        } else if (cli_opt(argc, argv, &i, "--top-p", &v)) {
            if (!cli_parse_float(v, 1e-6, 1, &f)) return cli_usage_error("generate", "--top-p expects a value in (0, 1]");
            so.top_p = (float)f;
        } else if (cli_opt(argc, argv, &i, "--seed", &v)) {
            if (!cli_parse_int(v, 0, __LONG_MAX__, &n)) return cli_usage_error("generate", "--seed expects a non-negative integer");
            so.seed = (uint64_t)n;
        } else if (cli_opt(argc, argv, &i, "--bos", &v)) {
            if (v && !strcmp(v, "on")) bos = RQ_BOS_ON;
            else if (v && !strcmp(v, "off")) bos = RQ_BOS_OFF;
            else if (v && !strcmp(v, "default")) bos = RQ_BOS_DEFAULT;
            else return cli_usage_error("generate", "--bos expects on, off or default");
        } else if (cli_flag(argv, i, "--ids")) {
            show_ids = true;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("generate", "unknown option '%s'", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else {
            return cli_usage_error("generate", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!path) return cli_usage_error("generate", "missing MODEL");
    rq_err err = {0};
    rq_model *m = NULL;
    rq_backend *be = NULL;
    int *ids = NULL, *out = NULL, n_ids = 0, n_out = 0;
    int rc = 0;
    if (rq_model_load(path, common.tokenizer, &m, &err) != RQ_OK) return cli_fail("generate", &err);
    if (!m->tok) {
        RQ_FAIL(&err, RQ_ERR_ARG, "%s has no tokenizer; pass --tokenizer PATH", path);
        rc = cli_fail("generate", &err);
        goto done;
    }
    if (rq_backend_create(common.device, common.threads, &be, &err) != RQ_OK ||
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
    if (show_ids) {
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
