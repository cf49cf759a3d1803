/* Shared pieces of the deterministic mutation fuzz smoke tests: a fixed-seed
 * generator, the mutation strategies, and a scratch directory. A run passes
 * when no input crashes the reader or trips a sanitizer; each reader must
 * either accept the input or return an error with a message. */
#ifndef RQ_TEST_FUZZ_COMMON_H
#define RQ_TEST_FUZZ_COMMON_H

#include <unistd.h>

#include "io_fixtures.h"

typedef struct fuzz_rng {
    uint64_t s;
} fuzz_rng;

static inline uint64_t fz_next(fuzz_rng *r) {
    /* splitmix64: fixed seed, same sequence everywhere */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline size_t fz_below(fuzz_rng *r, size_t n) { return n ? (size_t)(fz_next(r) % n) : 0; }

/* Values that tend to break size arithmetic. */
static inline uint64_t fz_interesting(fuzz_rng *r, uint64_t file_size) {
    const uint64_t v[] = {0, 1, 2, 7, 8, 31, 32, 255, 256, 65535, 1u << 20, 0x7fffffffu, 0x80000000u, 0xffffffffu,
                          1ull << 32, 1ull << 53, 1ull << 62, 0x7fffffffffffffffull, 0x8000000000000000ull,
                          0xffffffffffffffffull, file_size, file_size - 1, file_size + 1, file_size * 2};
    return v[fz_below(r, sizeof v / sizeof v[0])];
}

static inline void fz_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void fz_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* One mutation of src into dst (dst->n may shrink). hot_end: bytes [0, hot_end)
 * hold the header, where field corruption is aimed. */
static inline void fz_mutate(fuzz_rng *r, const bytes *src, bytes *dst, size_t hot_end) {
    dst->n = 0;
    by_put(dst, src->p, src->n);
    size_t n = dst->n, hot = hot_end < n ? hot_end : n;
    switch (fz_below(r, 6)) {
    case 0: /* a few bit flips anywhere */
        for (size_t k = 1 + fz_below(r, 4); k > 0; k--) {
            size_t at = fz_below(r, n);
            dst->p[at] ^= (uint8_t)(1u << fz_below(r, 8));
        }
        break;
    case 1: /* truncation */
        dst->n = fz_below(r, n);
        break;
    case 2: /* a 64-bit length/offset/count field in the header */
        if (hot >= 8) fz_put_u64(dst->p + fz_below(r, hot - 7), fz_interesting(r, n));
        break;
    case 3: /* a 32-bit type/count field in the header */
        if (hot >= 4) fz_put_u32(dst->p + fz_below(r, hot - 3), (uint32_t)fz_interesting(r, n));
        break;
    case 4: /* random bytes in the header */
        for (size_t k = 1 + fz_below(r, 8); k > 0 && hot; k--) dst->p[fz_below(r, hot)] = (uint8_t)fz_next(r);
        break;
    default: { /* an aligned small integer, e.g. a type id or a dimension */
        if (hot >= 8) {
            size_t at = fz_below(r, hot - 7) & ~(size_t)3;
            fz_put_u32(dst->p + at, (uint32_t)fz_below(r, 40));
        }
        break;
    }
    }
}

/* A scratch directory under RQ_TEST_OUT (or /tmp). */
static inline void fz_scratch(char *buf, size_t cap, const char *name) {
    const char *out = getenv("RQ_TEST_OUT");
    snprintf(buf, cap, "%s/%s-%ld", out && *out ? out : "/tmp", name, (long)getpid());
}

#endif
