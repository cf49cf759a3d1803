/* Temporary files and directories of the atomic writers (issue 16, items 3
 * and 4): created exclusively under unpredictable names, so a symlink planted
 * at the old predictable name (PATH.tmp.PID, DIR.tmp-PID) neither redirects a
 * write nor a clean-up into another file or directory; and the leftovers of
 * a killed writer are recognised and removed, those of a live one kept. */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

static char root[4000];

static void at(char *buf, const char *rel) { snprintf(buf, 4096, "%s/%s", root, rel); }

static bool file_is(const char *path, const char *text) {
    char *x = NULL;
    size_t n = 0;
    rq_err err = {0};
    bool same = rq_file_read_all(path, &x, &n, &err) == RQ_OK && n == strlen(text) && !memcmp(x, text, n);
    free(x);
    return same;
}

static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

typedef struct fill_job {
    char tmp_seen[4096];
} fill_job;

static rq_status fill(void *user, const char *tmp, rq_err *err) {
    fill_job *j = user;
    snprintf(j->tmp_seen, sizeof j->tmp_seen, "%s", tmp);
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", tmp);
    return rq_write_file_atomic(p, "{}", 2, err);
}

static rq_status fill_then_die(void *user, const char *tmp, rq_err *err) {
    rq_status st = fill(user, tmp, err);
    raise(SIGKILL);
    return st;
}

static int count_entries(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) n += !strncmp(e->d_name, prefix, strlen(prefix));
    if (d) closedir(d);
    return n;
}

static void test_symlinks(void) {
    rq_err err = {0};
    char victim[4096], out[4096], link[4200], vdir[4096], vfile[4096], odir[4096];
    /* a file: the old temp name points at a victim */
    at(victim, "victim.txt");
    at(out, "out.bin");
    put(victim, "precious");
    snprintf(link, sizeof link, "%s.tmp.%ld", out, (long)getpid());
    CHECK(symlink(victim, link) == 0);
    CHECK_OK(rq_write_file_atomic(out, "new", 3, &err), &err);
    CHECKF(file_is(victim, "precious"), "the atomic writer wrote through a planted symlink");
    CHECK(file_is(out, "new"));
    struct stat st;
    CHECK(lstat(out, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0777) == 0644); /* umask 022 */
    unlink(link);
    /* a directory: the old temp name points at a victim directory holding an output's name */
    at(vdir, "victim-dir");
    at(vfile, "victim-dir/config.json");
    CHECK(mkdir(vdir, 0755) == 0);
    put(vfile, "precious");
    at(odir, "artifact");
    snprintf(link, sizeof link, "%s.tmp-%ld", odir, (long)getpid());
    CHECK(symlink(vdir, link) == 0);
    const char *files[] = {"config.json"};
    fill_job j = {0};
    CHECK_OK(rq_write_dir_atomic(odir, files, 1, fill, &j, &err), &err);
    CHECKF(file_is(vfile, "precious"), "the directory writer removed a file through a planted symlink");
    CHECKF(strcmp(j.tmp_seen, link) != 0, "the temporary directory has the predictable name %s", j.tmp_seen);
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/config.json", odir);
    CHECK(file_is(cfg, "{}"));
    CHECK(lstat(odir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0755);
    unlink(link);
}

/* A writer killed mid-write leaves its temporary file; a later clean-up of
 * the directory removes it, while a live writer's stays. */
static void test_stale(void) {
    rq_err err = {0};
    char dir[4096], out[4096];
    at(dir, "stale");
    CHECK_OK(rq_mkdir_p(dir, &err), &err);
    at(out, "stale/result.json");
    pid_t child = fork();
    if (child == 0) {
        rq_atomic_file af;
        if (rq_atomic_open(&af, out, NULL) == RQ_OK) {
            rq_atomic_write(&af, "partial", 7, NULL);
            fflush((FILE *)af.fp);
        }
        raise(SIGKILL); /* killed before the commit */
        _exit(0);
    }
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFSIGNALED(status));
    CHECKF(count_entries(dir, "result.json.tmp") == 1, "the killed writer left no temporary file");
    rq_atomic_file mine;
    CHECK_OK(rq_atomic_open(&mine, out, &err), &err); /* a live writer: this process */
    CHECK(count_entries(dir, "result.json.tmp") == 2);
    int removed = rq_remove_stale_temps(dir);
    CHECKF(removed == 1, "removed %d stale temporary files, expected 1", removed);
    CHECK(count_entries(dir, "result.json.tmp") == 1);
    CHECK_OK(rq_atomic_write(&mine, "done", 4, &err), &err);
    CHECK_OK(rq_atomic_commit(&mine, &err), &err);
    CHECK(file_is(out, "done") && count_entries(dir, "result.json.tmp") == 0);
    /* a killed directory writer: its temporary directory and its files go too */
    char odir[4096];
    at(odir, "stale/artifact");
    child = fork();
    if (child == 0) {
        const char *files[] = {"config.json"};
        fill_job j = {0};
        rq_write_dir_atomic(odir, files, 1, fill_then_die, &j, NULL);
        _exit(0);
    }
    CHECK(waitpid(child, &status, 0) == child && WIFSIGNALED(status));
    CHECK(!rq_dir_exists(odir));
    CHECK(count_entries(dir, "artifact.tmp") == 1);
    removed = rq_remove_stale_temps(dir);
    CHECKF(removed == 1 && count_entries(dir, "artifact.tmp") == 0, "removed %d, left %d", removed,
           count_entries(dir, "artifact.tmp"));
    /* names that only look like ours are kept */
    char other[4096];
    at(other, "stale/notes.tmp.txt");
    put(other, "mine");
    CHECK(rq_remove_stale_temps(dir) == 0 && rq_file_exists(other));
}

int main(void) {
    umask(022);
    snprintf(root, sizeof root, "%s", rq_test_out("files"));
    char cmd[8200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", root, root);
    CHECK(system(cmd) == 0);
    test_symlinks();
    test_stale();
    return rq_test_finish();
}
