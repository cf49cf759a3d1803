/* rilq: the command. Subcommands live in one file each (src/cli/cmd_*.c). */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const rq_command commands[] = {
    {"inspect", "print a model's architecture, parameters, dtypes and memory", cmd_inspect},
    {"generate", "generate text from a prompt (greedy or sampled, with a KV cache)", cmd_generate},
    {"ppl", "perplexity on WikiText-2 or C4 (the quantization papers' protocol)", cmd_ppl},
    {"quantize", "quantize a model to 2 bits and write the artifact directory", cmd_quantize},
    {"train-lm", "fine-tune LoRA / QA-LoRA adapters on plain text (next-token loss)", cmd_train_lm},
    {"calibrate", "RILQ stage 1: tune adapters of a 2-bit student toward the full-precision teacher", cmd_calibrate},
    {"finetune", "stage 2: fine-tune adapters on a task (arc, piqa, gsm8k), loss on the answers", cmd_finetune},
    {"merge", "fold QA-LoRA adapters into the group offsets of a 2-bit artifact (exact)", cmd_merge},
    {"export", "write a 2-bit artifact as GGUF (llama.cpp) or HQQ-layout safetensors", cmd_export},
    {"run", "run a recipe: quantize, calibrate, finetune, merge, export, eval", cmd_run},
    {"eval", "lm-eval-compatible accuracy (piqa, arc, hellaswag, winogrande), gsm8k, perplexity", cmd_eval},
};

static void usage(FILE *f) {
    fprintf(f, "rilq %s: fine-tuning and deployment of 2-bit LLaMA-family models\n\n", RILQ_VERSION);
    fprintf(f, "usage: rilq COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'rilq COMMAND --help' describes a command's options.\n");
}

int main(int argc, char **argv) {
    cli_startup_done(); /* before the re-exec: a pending alarm would survive it */
    rq_reexec_with_passive_openmp(argv);
    rq_log_set(cli_log_sink, NULL);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("rilq %s\n", RILQ_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "rilq: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
