/* Python's `random`: MT19937 (Matsumoto & Nishimura's reference algorithm, as
 * in CPython's _randommodule.c) plus the pure-Python layer of random.py. */
#include "pyrandom.h"

#include <math.h>
#include <stdlib.h>

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER_MASK 0x80000000u
#define MT_LOWER_MASK 0x7fffffffu

static void mt_init_genrand(rq_pyrandom *rng, uint32_t s) {
    rng->mt[0] = s;
    for (uint32_t i = 1; i < RQ_PYRANDOM_N; i++)
        rng->mt[i] = 1812433253u * (rng->mt[i - 1] ^ (rng->mt[i - 1] >> 30)) + i;
    rng->index = RQ_PYRANDOM_N;
}

static void mt_init_by_array(rq_pyrandom *rng, const uint32_t *key, size_t key_length) {
    mt_init_genrand(rng, 19650218u);
    uint32_t *mt = rng->mt;
    size_t i = 1, j = 0;
    size_t k = RQ_PYRANDOM_N > key_length ? RQ_PYRANDOM_N : key_length;
    for (; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
        i++;
        j++;
        if (i >= RQ_PYRANDOM_N) {
            mt[0] = mt[RQ_PYRANDOM_N - 1];
            i = 1;
        }
        if (j >= key_length) j = 0;
    }
    for (k = RQ_PYRANDOM_N - 1; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= RQ_PYRANDOM_N) {
            mt[0] = mt[RQ_PYRANDOM_N - 1];
            i = 1;
        }
    }
    mt[0] = 0x80000000u; /* guarantees a non-zero initial state */
}

void rq_pyrandom_seed_words(rq_pyrandom *rng, const uint32_t *key, size_t n_words) {
    /* CPython builds the key from the minimal number of words (at least one). */
    while (n_words > 1 && key[n_words - 1] == 0) n_words--;
    static const uint32_t zero_key[1] = {0};
    if (n_words == 0) {
        key = zero_key;
        n_words = 1;
    }
    mt_init_by_array(rng, key, n_words);
}

void rq_pyrandom_seed(rq_pyrandom *rng, uint64_t seed) {
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    rq_pyrandom_seed_words(rng, key, 2);
}

static void mt_twist(rq_pyrandom *rng) {
    uint32_t *mt = rng->mt;
    int kk;
    for (kk = 0; kk < RQ_PYRANDOM_N - MT_M; kk++) {
        uint32_t y = (mt[kk] & MT_UPPER_MASK) | (mt[kk + 1] & MT_LOWER_MASK);
        mt[kk] = mt[kk + MT_M] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    for (; kk < RQ_PYRANDOM_N - 1; kk++) {
        uint32_t y = (mt[kk] & MT_UPPER_MASK) | (mt[kk + 1] & MT_LOWER_MASK);
        mt[kk] = mt[kk + (MT_M - RQ_PYRANDOM_N)] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    uint32_t y = (mt[RQ_PYRANDOM_N - 1] & MT_UPPER_MASK) | (mt[0] & MT_LOWER_MASK);
    mt[RQ_PYRANDOM_N - 1] = mt[MT_M - 1] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    rng->index = 0;
}

uint32_t rq_pyrandom_u32(rq_pyrandom *rng) {
    /* index > N can only come from a corrupted struct; twisting repairs it. */
    if (rng->index >= RQ_PYRANDOM_N) mt_twist(rng);
    uint32_t y = rng->mt[rng->index++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
}

double rq_pyrandom_random(rq_pyrandom *rng) {
    uint32_t a = rq_pyrandom_u32(rng) >> 5, b = rq_pyrandom_u32(rng) >> 6;
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

rq_status rq_pyrandom_getrandbits(rq_pyrandom *rng, int k, uint64_t *out, rq_err *err) {
    *out = 0;
    if (k < 0 || k > 64) return RQ_FAIL(err, RQ_ERR_ARG, "getrandbits: k = %d, supported 0..64", k);
    if (k == 0) return RQ_OK;
    if (k <= 32) {
        *out = rq_pyrandom_u32(rng) >> (32 - k);
        return RQ_OK;
    }
    /* CPython fills 32-bit words from the least significant one; only the
     * last (most significant) word is shortened. */
    uint64_t low = rq_pyrandom_u32(rng);
    uint64_t high = rq_pyrandom_u32(rng) >> (64 - k);
    *out = low | (high << 32);
    return RQ_OK;
}

static int bit_length_u64(uint64_t n) {
    int bits = 0;
    while (n) {
        bits++;
        n >>= 1;
    }
    return bits;
}

rq_status rq_pyrandom_randbelow(rq_pyrandom *rng, uint64_t n, uint64_t *out, rq_err *err) {
    *out = 0;
    if (n == 0) return RQ_FAIL(err, RQ_ERR_ARG, "randbelow(0): empty range");
    /* CPython uses bit_length(n), not bit_length(n - 1): for a power of two
     * this wastes draws, and those wasted draws are part of the stream. */
    int k = bit_length_u64(n);
    uint64_t r;
    do {
        RQ_TRY(rq_pyrandom_getrandbits(rng, k, &r, err));
    } while (r >= n);
    *out = r;
    return RQ_OK;
}

rq_status rq_pyrandom_randint(rq_pyrandom *rng, int64_t a, int64_t b, int64_t *out, rq_err *err) {
    *out = 0;
    if (b < a)
        return RQ_FAIL(err, RQ_ERR_ARG, "randint(%lld, %lld): empty range", (long long)a, (long long)b);
    /* width = b - a + 1 in unsigned arithmetic; the full int64 span (2^64) does not fit */
    uint64_t width = (uint64_t)b - (uint64_t)a + 1u;
    if (width == 0) return RQ_FAIL(err, RQ_ERR_ARG, "randint: range of 2^64 values is not supported");
    uint64_t r;
    RQ_TRY(rq_pyrandom_randbelow(rng, width, &r, err));
    *out = (int64_t)((uint64_t)a + r);
    return RQ_OK;
}

/* CPython: setsize = 21; if k > 5: setsize += 4 ** ceil(log(3k, 4)).
 * Python's math.log(x, 4) is log(x) / log(4) in doubles, so the same libm
 * expression gives the same threshold (3k is never a power of 4, so there is
 * no rounding knife-edge). */
static size_t sample_set_size(size_t k) {
    size_t setsize = 21;
    if (k > 5) {
        double e = ceil(log((double)k * 3.0) / log(4.0));
        if (e >= 31) return SIZE_MAX; /* 4**31 overflows: every population is "small" */
        size_t p = 1;
        for (int i = 0; i < (int)e; i++) p *= 4;
        setsize += p;
    }
    return setsize;
}

rq_status rq_pyrandom_sample(rq_pyrandom *rng, size_t n, size_t k, size_t *out_indices, rq_err *err) {
    if (k > n) return RQ_FAIL(err, RQ_ERR_ARG, "sample: k = %zu larger than the population (%zu)", k, n);
    if (k == 0) return RQ_OK;
    if (n <= sample_set_size(k)) {
        /* pool method: a partial Fisher-Yates over a copy of the positions */
        size_t *pool = rq_calloc(n, sizeof *pool, err);
        if (!pool) return RQ_ERR_NOMEM;
        for (size_t i = 0; i < n; i++) pool[i] = i;
        for (size_t i = 0; i < k; i++) {
            uint64_t j;
            rq_status st = rq_pyrandom_randbelow(rng, (uint64_t)(n - i), &j, err);
            if (st != RQ_OK) {
                free(pool);
                return st;
            }
            out_indices[i] = pool[j];
            pool[j] = pool[n - i - 1];
        }
        free(pool);
        return RQ_OK;
    }
    /* set method: redraw positions already taken. A bitmap of n bits is at most
     * 1/64 of the population's own index space, which the caller holds. */
    uint8_t *taken = rq_calloc(n / 8 + 1, 1, err);
    if (!taken) return RQ_ERR_NOMEM;
    for (size_t i = 0; i < k; i++) {
        uint64_t j;
        do {
            rq_status st = rq_pyrandom_randbelow(rng, (uint64_t)n, &j, err);
            if (st != RQ_OK) {
                free(taken);
                return st;
            }
        } while (taken[j >> 3] & (1u << (j & 7)));
        taken[j >> 3] |= (uint8_t)(1u << (j & 7));
        out_indices[i] = (size_t)j;
    }
    free(taken);
    return RQ_OK;
}

rq_status rq_pyrandom_shuffle(rq_pyrandom *rng, void *items, size_t n, size_t item_size, rq_err *err) {
    if (item_size == 0 || item_size > 256)
        return RQ_FAIL(err, RQ_ERR_ARG, "shuffle: item size %zu, supported 1..256", item_size);
    uint8_t *base = items, tmp[256];
    /* CPython: for i in reversed(range(1, len(x))): j = randbelow(i + 1); swap */
    for (size_t i = n; i-- > 1;) {
        uint64_t j;
        RQ_TRY(rq_pyrandom_randbelow(rng, (uint64_t)i + 1, &j, err));
        if (j == i) continue;
        memcpy(tmp, base + i * item_size, item_size);
        memcpy(base + i * item_size, base + (size_t)j * item_size, item_size);
        memcpy(base + (size_t)j * item_size, tmp, item_size);
    }
    return RQ_OK;
}

static void put_u32_le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

void rq_pyrandom_state_save(const rq_pyrandom *rng, uint8_t out[RQ_PYRANDOM_STATE_BYTES]) {
    for (int i = 0; i < RQ_PYRANDOM_N; i++) put_u32_le(out + 4 * i, rng->mt[i]);
    put_u32_le(out + 4 * RQ_PYRANDOM_N, rng->index);
}

rq_status rq_pyrandom_state_load(rq_pyrandom *rng, const uint8_t in[RQ_PYRANDOM_STATE_BYTES], rq_err *err) {
    uint32_t index = rq_rd_u32(in + 4 * RQ_PYRANDOM_N);
    if (index > RQ_PYRANDOM_N)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "random state: index %u out of range 0..%d", index, RQ_PYRANDOM_N);
    for (int i = 0; i < RQ_PYRANDOM_N; i++) rng->mt[i] = rq_rd_u32(in + 4 * i);
    rng->index = index;
    return RQ_OK;
}
