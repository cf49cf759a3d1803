/* Start-up under an address-space limit (`ulimit -v`).
 *
 * OpenBLAS reserves its GEMM buffers (here 2 x 128 MiB) in its library
 * constructor, before main, and when mmap fails it retries forever: under
 * `ulimit -v 300000` every command, `rilq --help` included, spun at 100% CPU.
 * Nothing in main can help (it never runs), so this hooks the executable's
 * .preinit_array, which the dynamic linker runs before any library's
 * constructor. When RLIMIT_AS is finite it arms a watchdog: start-up that has
 * not reached main after RQ_STARTUP_LIMIT_S seconds (it takes milliseconds)
 * ends with a message naming the limit; main disarms it. No effect without a
 * limit. Only async-signal-safe calls here: libc is not initialized yet. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"

#define RQ_STARTUP_LIMIT_S 10

static char limit_text[32]; /* the limit in MiB, formatted at preinit */

static void put(const char *s) { (void)!write(2, s, strlen(s)); }

static void startup_timeout(int sig) {
    (void)sig;
    put("rilq: start-up did not finish: the address space is limited to ");
    put(limit_text);
    put(" MiB (ulimit -v), too little for OpenBLAS to reserve its buffers at load time (it retries forever); "
        "raise the limit (ulimit -v unlimited, or a few hundred MiB more)\n");
    _exit(1);
}

static void format_mib(uint64_t bytes) {
    char tmp[24];
    int n = 0;
    uint64_t v = bytes >> 20;
    do tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < 20);
    for (int i = 0; i < n; i++) limit_text[i] = tmp[n - 1 - i];
    limit_text[n] = 0;
}

static void rq_preinit(int argc, char **argv, char **envp) {
    (void)argc, (void)argv, (void)envp;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
    format_mib((uint64_t)rl.rlim_cur);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = startup_timeout;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGALRM, &sa, NULL) == 0) alarm(RQ_STARTUP_LIMIT_S);
}

__attribute__((used, section(".preinit_array"))) static void (*const rq_preinit_entry)(int, char **, char **) = rq_preinit;

void cli_startup_done(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
    alarm(0);
    signal(SIGALRM, SIG_DFL);
}
