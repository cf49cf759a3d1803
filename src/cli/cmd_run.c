/* rilq run: not written yet (placeholder so the command table is stable). */
#include "cli.h"

int cmd_run(int argc, char **argv) {
    (void)argc, (void)argv;
    rq_err err = {0};
    RQ_FAIL(&err, RQ_ERR_UNSUPPORTED, "'rilq run' is not implemented yet");
    return cli_fail("run", &err);
}
