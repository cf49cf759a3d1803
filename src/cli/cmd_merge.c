/* rilq merge: not written yet (placeholder so the command table is stable). */
#include "cli.h"

int cmd_merge(int argc, char **argv) {
    (void)argc, (void)argv;
    rq_err err = {0};
    RQ_FAIL(&err, RQ_ERR_UNSUPPORTED, "'rilq merge' is not implemented yet");
    return cli_fail("merge", &err);
}
