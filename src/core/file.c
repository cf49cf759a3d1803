/* Files: mapped views, whole-file reads, directories, atomic writes. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/random.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

rq_status rq_file_map(const char *path, rq_file_view *out, rq_err *err) {
    memset(out, 0, sizeof *out);
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below) */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return RQ_FAIL(err, RQ_ERR_IO, "%s: %s", path,
                       S_ISDIR(st.st_mode) ? "is a directory, not a file" : "not a regular file (a FIFO, device or socket)");
    }
    out->size = (size_t)st.st_size;
    if (out->size == 0) {
        close(fd);
        static const uint8_t empty[1] = {0};
        out->data = empty;
        return RQ_OK;
    }
    void *p = mmap(NULL, out->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot map %zu bytes: %s", path, out->size, strerror(errno));
    out->map_base = p;
    out->data = p;
    return RQ_OK;
}

void rq_file_unmap(rq_file_view *v) {
    if (v->map_base) munmap(v->map_base, v->size);
    free(v->owned);
    memset(v, 0, sizeof *v);
}

rq_status rq_file_read_all(const char *path, char **out, size_t *size, rq_err *err) {
    *out = NULL;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below) */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rq_status s = RQ_FAIL(err, RQ_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return s;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return RQ_FAIL(err, RQ_ERR_IO, "%s: %s", path,
                       S_ISDIR(st.st_mode) ? "is a directory, not a file" : "not a regular file (a FIFO, device or socket)");
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (cap - n < 4096) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, cap * 2);
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return RQ_FAIL(err, RQ_ERR_IO, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    if (size) *size = n;
    return RQ_OK;
}

bool rq_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bool rq_dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

rq_status rq_mkdir_p(const char *path, rq_err *err) {
    size_t n = strlen(path);
    if (n == 0) return RQ_FAIL(err, RQ_ERR_ARG, "directory path too long or empty: '%s'", path);
    char *buf = rq_strdup(path, err);
    if (!buf) return RQ_ERR_NOMEM;
    rq_status s = RQ_OK;
    for (size_t i = 1; i <= n && s == RQ_OK; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                s = RQ_FAIL(err, RQ_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
            buf[i] = c;
        }
    }
    free(buf);
    if (s == RQ_OK && !rq_dir_exists(path)) s = RQ_FAIL(err, RQ_ERR_IO, "%s: exists and is not a directory", path);
    return s;
}

bool rq_path_join(char *buf, size_t n, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    int w = (dl > 0 && dir[dl - 1] == '/') ? snprintf(buf, n, "%s%s", dir, name) : snprintf(buf, n, "%s/%s", dir, name);
    return w >= 0 && (size_t)w < n;
}

/* 32 random bits for a temporary name: the kernel's, or (without getrandom)
 * the clock mixed with a counter; names are also created exclusively, so a
 * guessable one costs a retry, never a write through someone else's file. */
static uint32_t temp_nonce(void) {
    static unsigned counter;
    uint32_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r) return r;
    uint64_t x = (uint64_t)(rq_now_seconds() * 1e9) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)++counter * 0x9e3779b97f4a7c15ull;
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    return (uint32_t)(x ^ (x >> 29));
}

rq_status rq_atomic_open(rq_atomic_file *af, const char *path, rq_err *err) {
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 48;
    af->final_path = rq_strdup(path, err);
    af->tmp_path = malloc(n);
    if (!af->final_path || !af->tmp_path) {
        rq_atomic_abort(af);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
    }
    /* PATH.tmp.PID.NONCE beside PATH (the rename stays in one file system);
       O_EXCL | O_NOFOLLOW: never an existing file, never through a symlink */
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 64; attempt++) {
        snprintf(af->tmp_path, n, "%s.tmp.%ld.%08x", path, (long)getpid(), (unsigned)temp_nonce());
        fd = open(af->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    af->fp = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!af->fp) {
        rq_status s = RQ_FAIL(err, RQ_ERR_IO, "%s: cannot create: %s", af->tmp_path, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(af->tmp_path);
        }
        free(af->tmp_path);
        af->tmp_path = NULL; /* not ours: abort must not remove it */
        rq_atomic_abort(af);
        return s;
    }
    return RQ_OK;
}

rq_status rq_scratch_open(rq_scratch_file *f, const char *beside, rq_err *err) {
    f->fd = -1;
    size_t n = strlen(beside) + 48;
    f->path = malloc(n);
    if (!f->path) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
    for (int attempt = 0; f->fd < 0 && attempt < 64; attempt++) {
        snprintf(f->path, n, "%s.tmp.%ld.%08x", beside, (long)getpid(), (unsigned)temp_nonce());
        f->fd = open(f->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (f->fd < 0 && errno != EEXIST) break;
    }
    if (f->fd < 0) {
        rq_status s = RQ_FAIL(err, RQ_ERR_IO, "%s: cannot create a scratch file: %s", f->path, strerror(errno));
        free(f->path);
        f->path = NULL;
        return s;
    }
    unlink(f->path); /* the open descriptor keeps the data; the name is gone */
    return RQ_OK;
}

/* all n bytes at off, looping over short transfers and EINTR */
static rq_status scratch_io(rq_scratch_file *f, uint64_t off, char *p, size_t n, bool write, rq_err *err) {
    while (n > 0) {
        ssize_t k = write ? pwrite(f->fd, p, n, (off_t)off) : pread(f->fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0)
            return RQ_FAIL(err, RQ_ERR_IO, "%s (scratch, already unlinked): %s of %zu bytes at %llu failed: %s", f->path,
                           write ? "write" : "read", n, (unsigned long long)off,
                           k < 0 ? strerror(errno) : write ? "no space written" : "past its end");
        p += k, off += (uint64_t)k, n -= (size_t)k;
    }
    return RQ_OK;
}

rq_status rq_scratch_pwrite(rq_scratch_file *f, uint64_t off, const void *data, size_t n, rq_err *err) {
    return scratch_io(f, off, (char *)data, n, true, err);
}

rq_status rq_scratch_pread(rq_scratch_file *f, uint64_t off, void *data, size_t n, rq_err *err) {
    return scratch_io(f, off, data, n, false, err);
}

void rq_scratch_close(rq_scratch_file *f) {
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    f->fd = -1;
    f->path = NULL;
}

rq_status rq_atomic_write(rq_atomic_file *af, const void *data, size_t n, rq_err *err) {
    if (n && fwrite(data, 1, n, (FILE *)af->fp) != n)
        return RQ_FAIL(err, RQ_ERR_IO, "%s: write failed: %s", af->tmp_path, strerror(errno));
    return RQ_OK;
}

/* fsync of a directory makes a rename in it durable; failures are ignored:
 * some file systems refuse fsync on directories. */
static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

/* fsync of the directory that holds path (the rename into it). */
static void fsync_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        fsync_dir(".");
        return;
    }
    char *dir = slash == path ? rq_strdup("/", NULL) : strndup(path, (size_t)(slash - path));
    if (dir) fsync_dir(dir);
    free(dir);
}

rq_status rq_atomic_commit(rq_atomic_file *af, rq_err *err) {
    FILE *f = af->fp;
    rq_status s = RQ_OK;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        s = RQ_FAIL(err, RQ_ERR_IO, "%s: flush failed: %s", af->tmp_path, strerror(errno));
    if (fclose(f) != 0 && s == RQ_OK) s = RQ_FAIL(err, RQ_ERR_IO, "%s: close failed: %s", af->tmp_path, strerror(errno));
    af->fp = NULL;
    if (s == RQ_OK && rename(af->tmp_path, af->final_path) != 0)
        s = RQ_FAIL(err, RQ_ERR_IO, "%s: cannot rename to %s: %s", af->tmp_path, af->final_path, strerror(errno));
    if (s == RQ_OK) fsync_parent(af->final_path);
    if (s != RQ_OK) unlink(af->tmp_path);
    free(af->tmp_path);
    free(af->final_path);
    memset(af, 0, sizeof *af);
    return s;
}

void rq_atomic_abort(rq_atomic_file *af) {
    if (af->fp) fclose((FILE *)af->fp);
    if (af->tmp_path) unlink(af->tmp_path);
    free(af->tmp_path);
    free(af->final_path);
    memset(af, 0, sizeof *af);
}

rq_status rq_write_file_atomic(const char *path, const void *data, size_t n, rq_err *err) {
    rq_atomic_file af;
    RQ_TRY(rq_atomic_open(&af, path, err));
    rq_status s = rq_atomic_write(&af, data, n, err);
    if (s != RQ_OK) {
        rq_atomic_abort(&af);
        return s;
    }
    return rq_atomic_commit(&af, err);
}

static bool dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return false;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)) != NULL) empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty;
}

static void remove_dir_files(const char *dir, const char *const *files, int n_files) {
    for (int i = 0; i < n_files; i++) {
        char *p = rq_path_join_alloc(dir, files[i], NULL);
        if (p) unlink(p);
        free(p);
    }
    rmdir(dir);
}

/* rq_write_dir_atomic with the paths worked out: dir (no trailing '/'), its
 * temporary sibling and its parent. */
static rq_status write_dir_atomic_at(const char *dir, char *tmp, const char *parent, const char *const *files,
                                     int n_files, rq_dir_fill_fn fill, void *user, rq_err *err) {
    if (rq_file_exists(dir)) return RQ_FAIL(err, RQ_ERR_ARG, "%s: exists and is a file, not a directory", dir);
    if (rq_dir_exists(dir) && !dir_is_empty(dir))
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: directory exists and is not empty (remove it or choose another --out)", dir);
    if (!rq_dir_exists(parent)) RQ_TRY(rq_mkdir_p(parent, err));
    /* DIR.tmp-PID.NONCE, created by this call (mkdir fails on anything that
       exists, a symlink included), so the clean-up below removes only our files */
    size_t tl = strlen(tmp);
    int made = -1;
    for (int attempt = 0; made != 0 && attempt < 64; attempt++) {
        snprintf(tmp + tl, 16, ".%08x", (unsigned)temp_nonce());
        made = mkdir(tmp, 0755);
        if (made != 0 && errno != EEXIST) break;
    }
    if (made != 0) return RQ_FAIL(err, RQ_ERR_IO, "%s: cannot create directory: %s", tmp, strerror(errno));
    rq_status s = fill(user, tmp, err);
    if (s == RQ_OK) {
        fsync_dir(tmp);
        if (rq_dir_exists(dir)) rmdir(dir); /* empty, checked above */
        if (rename(tmp, dir) != 0) s = RQ_FAIL(err, RQ_ERR_IO, "cannot rename %s to %s: %s", tmp, dir, strerror(errno));
        else fsync_dir(parent);
    }
    if (s != RQ_OK) remove_dir_files(tmp, files, n_files);
    return s;
}

rq_status rq_write_dir_atomic(const char *dir_in, const char *const *files, int n_files, rq_dir_fill_fn fill, void *user,
                              rq_err *err) {
    size_t n = strlen(dir_in);
    while (n > 1 && dir_in[n - 1] == '/') n--; /* "out/" and "out" name one directory */
    if (n == 0) return RQ_FAIL(err, RQ_ERR_ARG, "output directory path empty or too long");
    rq_buf dir = {0}, tmp = {0}, parent = {0};
    if (rq_buf_append(&dir, dir_in, n)) {
        rq_buf_appendf(&tmp, "%s.tmp-%ld", dir.data, (long)getpid());
        rq_buf_reserve(&tmp, 16); /* room for the nonce that write_dir_atomic_at appends */
        const char *slash = strrchr(dir.data, '/');
        if (slash && slash != dir.data) rq_buf_append(&parent, dir.data, (size_t)(slash - dir.data));
        else rq_buf_puts(&parent, slash ? "/" : ".");
    }
    rq_status s = rq_buf_status(&dir, "an output path", err);
    if (s == RQ_OK) s = rq_buf_status(&tmp, "an output path", err);
    if (s == RQ_OK) s = rq_buf_status(&parent, "an output path", err);
    if (s == RQ_OK) s = write_dir_atomic_at(dir.data, tmp.data, parent.data, files, n_files, fill, user, err);
    rq_buf_free(&dir);
    rq_buf_free(&tmp);
    rq_buf_free(&parent);
    return s;
}

/* ---- stale temporary files ----------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

/* The writer's pid in a temporary name of ours: NAME.tmp.PID.NONCE (files),
 * NAME.tmp-PID.NONCE (directories), or the older NAME.tmp.PID / NAME.tmp-PID;
 * 0 when the name is not one of these. */
static long temp_owner(const char *name) {
    const char *t = NULL;
    for (const char *p = strstr(name, ".tmp"); p; p = strstr(p + 1, ".tmp")) t = p; /* the last ".tmp" */
    if (!t || t == name || (t[4] != '.' && t[4] != '-')) return 0;
    char *end = NULL;
    errno = 0;
    long pid = strtol(t + 5, &end, 10);
    if (errno || pid <= 0 || end == t + 5) return 0;
    if (*end == 0) return pid;
    if (*end != '.' || strlen(end + 1) != 8) return 0;
    for (const char *h = end + 1; *h; h++)
        if (!((*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'f'))) return 0;
    return pid;
}

int rq_remove_stale_temps(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long pid = temp_owner(e->d_name);
        if (pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* its writer may still run */
        char *p = rq_path_join_alloc(dir, e->d_name, NULL);
        struct stat st;
        if (p && lstat(p, &st) == 0) {
            /* a directory's tree, never following a symlink out of it */
            int r = S_ISDIR(st.st_mode) ? nftw(p, remove_entry, 16, FTW_DEPTH | FTW_PHYS) : unlink(p);
            removed += r == 0;
        }
        free(p);
    }
    closedir(d);
    return removed;
}

/* ---- outputs checked before the work ----------------------------------------------- */

rq_status rq_check_output(const char *path, rq_output_kind kind, rq_err *err) {
    if (!path || !*path) return RQ_FAIL(err, RQ_ERR_ARG, "output path empty");
    struct stat st;
    if (stat(path, &st) == 0) {
        const bool is_dir = S_ISDIR(st.st_mode);
        if (kind == RQ_OUT_DIR_NEW) {
            if (!is_dir) return RQ_FAIL(err, RQ_ERR_ARG, "%s: exists and is not a directory (choose another --out)", path);
            if (!dir_is_empty(path))
                return RQ_FAIL(err, RQ_ERR_ARG, "%s: directory exists and is not empty (remove it or choose another --out)",
                               path);
        } else if (is_dir) {
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: is a directory; --out names a file here", path);
        } else if (kind == RQ_OUT_FILE_NEW) {
            return RQ_FAIL(err, RQ_ERR_ARG, "%s: exists (the output must be new: remove it or choose another --out)", path);
        }
    }
    /* the nearest existing ancestor must be a directory we can write into (the rest is created) */
    char *dir = rq_strdup(path, err);
    if (!dir) return RQ_ERR_NOMEM;
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') dir[--n] = 0;
    rq_status s = RQ_OK;
    for (;;) {
        char *slash = strrchr(dir, '/');
        if (!slash) {
            snprintf(dir, 2, ".");
        } else if (slash == dir) {
            dir[1] = 0;
        } else {
            *slash = 0;
        }
        if (stat(dir, &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                s = RQ_FAIL(err, RQ_ERR_ARG, "%s: cannot be written: %s is not a directory", path, dir);
            else if (access(dir, W_OK | X_OK) != 0)
                s = RQ_FAIL(err, RQ_ERR_IO, "%s: cannot be written: %s: %s", path, dir, strerror(errno));
            break;
        }
        if (errno != ENOENT) {
            s = RQ_FAIL(err, RQ_ERR_IO, "%s: cannot be written: %s: %s", path, dir, strerror(errno));
            break;
        }
        if (!strcmp(dir, ".") || !strcmp(dir, "/")) break;
    }
    free(dir);
    if (s == RQ_OK && kind != RQ_OUT_DIR_NEW) { /* a file's writer opens it in place: its directory must exist */
        const char *slash = strrchr(path, '/');
        if (slash && slash != path) {
            char *parent = strndup(path, (size_t)(slash - path));
            s = parent ? rq_mkdir_p(parent, err) : RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory");
            free(parent);
        }
    }
    return s;
}
