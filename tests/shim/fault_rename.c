/* An LD_PRELOAD shim for the fault-injection test (tests/slow_fault.c): it
 * wraps rename(2), through which every atomic write of rilq lands, and
 *   RQ_FAULT_LOG=FILE        appends "N OLD -> NEW" for each rename
 *   RQ_FAULT_KILL=N:before   SIGKILLs the process just before the N-th rename
 *   RQ_FAULT_KILL=N:after    ... or just after it
 * counting renames from 1 within the process. Built only for the tests. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int renames;

int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    const int n = ++renames;
    const char *log = getenv("RQ_FAULT_LOG"), *kill_at = getenv("RQ_FAULT_KILL");
    if (log) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dprintf(fd, "%d %s -> %s\n", n, from, to);
            close(fd);
        }
    }
    int at = kill_at ? atoi(kill_at) : 0;
    const char *colon = kill_at ? strchr(kill_at, ':') : NULL;
    const int before = colon && !strcmp(colon + 1, "before");
    if (at == n && before) raise(SIGKILL);
    int r = real(from, to);
    if (at == n && !before) raise(SIGKILL);
    return r;
}
