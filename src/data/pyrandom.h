/* Python's `random` module, reproduced bit for bit.
 *
 * lm-eval picks few-shot examples with random.Random(1234).sample(...) and the
 * GPTQ-style C4 perplexity windows come from random.seed(0) + randint(...).
 * Matching published numbers needs the same draws, so this is CPython's
 * generator (MT19937 seeded through init_by_array) and CPython's derived
 * algorithms (getrandbits, _randbelow_with_getrandbits, randint, sample,
 * shuffle), checked against outputs of python3 in tests/test_data.c. */
#ifndef RQ_DATA_PYRANDOM_H
#define RQ_DATA_PYRANDOM_H

#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"

#define RQ_PYRANDOM_N 624

/* Plain data: copying the struct copies the generator. */
typedef struct rq_pyrandom {
    uint32_t mt[RQ_PYRANDOM_N];
    uint32_t index; /* next word of mt to temper; RQ_PYRANDOM_N means "twist first" (CPython's mti) */
} rq_pyrandom;

/* random.Random(seed) for a non-negative integer seed: the key is the 32-bit
 * little-endian words of seed (seed 0 -> key [0]). */
void rq_pyrandom_seed(rq_pyrandom *rng, uint64_t seed);
/* Same for an arbitrarily large integer given as little-endian 32-bit words
 * (n_words >= 1; high zero words are dropped as CPython does). */
void rq_pyrandom_seed_words(rq_pyrandom *rng, const uint32_t *key, size_t n_words);

/* The next tempered 32-bit output (= getrandbits(32)). */
uint32_t rq_pyrandom_u32(rq_pyrandom *rng);
/* random(): a double in [0, 1) with 53 random bits. */
double rq_pyrandom_random(rq_pyrandom *rng);
/* getrandbits(k) for 0 <= k <= 64 (k = 0 draws nothing and returns 0);
 * k > 64 is an RQ_ERR_ARG. */
rq_status rq_pyrandom_getrandbits(rq_pyrandom *rng, int k, uint64_t *out, rq_err *err);
/* _randbelow(n): uniform in [0, n), n >= 1. */
rq_status rq_pyrandom_randbelow(rq_pyrandom *rng, uint64_t n, uint64_t *out, rq_err *err);
/* randint(a, b): uniform in [a, b]; b < a is an error ("empty range", as Python). */
rq_status rq_pyrandom_randint(rq_pyrandom *rng, int64_t a, int64_t b, int64_t *out, rq_err *err);
/* sample(population, k) for a population of n items: writes the k chosen
 * positions (indices into the population) to out_indices, in draw order.
 * Uses CPython's pool method or set method exactly as CPython chooses. */
rq_status rq_pyrandom_sample(rq_pyrandom *rng, size_t n, size_t k, size_t *out_indices, rq_err *err);
/* shuffle(x) in place over n items of item_size bytes each (item_size <= 256). */
rq_status rq_pyrandom_shuffle(rq_pyrandom *rng, void *items, size_t n, size_t item_size, rq_err *err);

/* State save/restore for checkpoints: 625 little-endian 32-bit words, mt[0..623]
 * then index, the same numbers as Python's getstate()[1]. */
#define RQ_PYRANDOM_STATE_BYTES ((RQ_PYRANDOM_N + 1) * 4)
void rq_pyrandom_state_save(const rq_pyrandom *rng, uint8_t out[RQ_PYRANDOM_STATE_BYTES]);
/* Rejects an index above 624 (as Python's setstate does). */
rq_status rq_pyrandom_state_load(rq_pyrandom *rng, const uint8_t in[RQ_PYRANDOM_STATE_BYTES], rq_err *err);

#endif /* RQ_DATA_PYRANDOM_H */
