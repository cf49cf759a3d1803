/* rilq-merge ARTIFACT ADAPTER_DIR --out DIR [options]: the standalone merge
 * tool. It is 'rilq merge' under another name (src/cli/cmd_merge.c, whose
 * work is rq_merge_artifact in src/adapter/merge.c), so the two behave
 * identically; 'rilq-merge --help' lists the options. */
#include "cli/cli.h"

int main(int argc, char **argv) {
    rq_reexec_with_passive_openmp(argv);
    rq_log_set(cli_log_sink, NULL);
    return cmd_merge(argc, argv);
}
