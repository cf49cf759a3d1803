/* Process set-up helpers for the programs' main functions. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <unistd.h>

#include "core.h"

void rq_reexec_with_passive_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return; /* the user's choice stands */
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
    execv("/proc/self/exe", argv); /* returns only on failure: carry on with the default policy */
}
