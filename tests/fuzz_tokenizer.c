/* Deterministic mutation smoke test of the tokenizer loaders and codecs: bit
 * flips, truncations and corrupted length fields of a real tokenizer.bin and
 * tokenizer.json go through the loaders, random bytes go through encode and
 * decode. Passing means: no crash, no sanitizer report, and every failure is a
 * clean rq_status with a message. Fixed seed, a few seconds. */
#include <stdint.h>

#include "test.h"
#include "tokenizer/tokenizer.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void) { /* xorshift64*: reproducible across platforms */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static bool write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* Random text biased towards what tokenizers find interesting. */
static size_t random_text(char *buf, size_t cap) {
    static const char *const pieces[] = {" ", "  ", "\n", "\t", "'s", "'LL", "123", "a", "Z", "\xC3\xA9", "\xE2\x96\x81",
                                         "\xF0\x9F\x98\x80", "<s>", "</s>", "<|im_start|>", "<0x0A>", "\xFF", "\x80",
                                         "\xE2\x82", "\r\n", "\xC2\xA0", "\xE2\x80\xA8", "x"};
    size_t n = 0, want = rnd() % cap;
    while (n < want) {
        if (rnd() % 3 == 0) {
            buf[n++] = (char)(rnd() & 0xFF);
        } else {
            const char *p = pieces[rnd() % (sizeof pieces / sizeof pieces[0])];
            size_t len = strlen(p);
            if (n + len > cap) break;
            memcpy(buf + n, p, len);
            n += len;
        }
    }
    return n;
}

static void exercise(const rq_tokenizer *t, int rounds) {
    char text[512];
    for (int r = 0; r < rounds; r++) {
        size_t n = random_text(text, sizeof text);
        int *ids = NULL, n_ids = 0;
        rq_err err = {0};
        rq_status st = rq_tokenizer_encode(t, text, n, (rq_bos_mode)(rnd() % 3), &ids, &n_ids, &err);
        CHECKF(st == RQ_OK, "encode failed: %s", err.msg);
        if (st != RQ_OK) continue;
        bool in_range = true;
        for (int i = 0; i < n_ids; i++) in_range &= ids[i] >= 0 && ids[i] < rq_tokenizer_vocab_size(t);
        CHECK(in_range);
        char *back = NULL;
        st = rq_tokenizer_decode(t, ids, n_ids, rnd() & 1, &back, &err);
        CHECKF(st == RQ_OK && back, "decode failed: %s", err.msg);
        char piece[64];
        for (int i = 0; i < n_ids; i++) (void)rq_tokenizer_piece(t, i ? ids[i - 1] : -1, ids[i], piece, sizeof piece);
        /* random ids, valid or not */
        int junk[8];
        for (int i = 0; i < 8; i++) junk[i] = (int)(rnd() % (uint32_t)(rq_tokenizer_vocab_size(t) + 4)) - 2;
        char *junk_text = NULL;
        st = rq_tokenizer_decode(t, junk, 8, rnd() & 1, &junk_text, &err);
        CHECK(st == RQ_OK || (st == RQ_ERR_ARG && junk_text == NULL && err.msg[0]));
        free(junk_text);
        free(back);
        free(ids);
    }
}

/* One loader call on mutated bytes: OK, or an error with a message. */
static void load_mutant(const char *path, const uint8_t *data, size_t n, bool json, int vocab, int *ok_count) {
    if (!write_file(path, data, n)) {
        CHECK(0);
        return;
    }
    rq_tokenizer *t = NULL;
    rq_err err = {0};
    rq_status st = json ? rq_tokenizer_load_hf_json(path, &t, &err) : rq_tokenizer_load_llama2c(path, vocab, &t, &err);
    if (st == RQ_OK) {
        CHECK(t != NULL);
        (*ok_count)++;
        exercise(t, 2);
        rq_tokenizer_free(t);
    } else {
        CHECKF(t == NULL && err.msg[0], "failed load must leave no tokenizer and say why (status %d)", (int)st);
        rq_test_passed++;
    }
}

static void mutate(uint8_t *buf, size_t *n, size_t cap, const uint8_t *orig, size_t orig_n, bool json) {
    memcpy(buf, orig, orig_n);
    *n = orig_n;
    int kind = (int)(rnd() % 5);
    if (kind == 0) { /* bit flips */
        int flips = 1 + (int)(rnd() % 8);
        for (int i = 0; i < flips; i++) buf[rnd() % *n] ^= (uint8_t)(1u << (rnd() % 8));
    } else if (kind == 1) { /* truncation */
        *n = rnd() % orig_n;
    } else if (kind == 2 && !json) { /* a length field of some token: walk to it, then corrupt */
        size_t off = 4;
        int target = (int)(rnd() % 512);
        for (int i = 0; i < target && off + 8 <= *n; i++) off += 8 + rq_rd_u32(buf + off + 4);
        static const int32_t evil[] = {-1, -2147483647 - 1, 2147483647, 0, 7, 8, 65536, 1000000};
        if (off + 8 <= *n) memcpy(buf + off + 4, &evil[rnd() % 8], 4);
    } else if (kind == 2) { /* JSON: a digit or quote replaced */
        for (int tries = 0; tries < 100; tries++) {
            size_t at = rnd() % *n;
            if ((buf[at] >= '0' && buf[at] <= '9') || buf[at] == '"') {
                static const char swaps[] = "-9\"{}[],:0 ";
                buf[at] = (uint8_t)swaps[rnd() % (sizeof swaps - 1)];
                break;
            }
        }
    } else if (kind == 3) { /* a block duplicated over another place */
        size_t len = 1 + rnd() % 64, from = rnd() % *n, to = rnd() % *n;
        if (from + len <= *n && to + len <= *n) memmove(buf + to, buf + from, len);
    } else { /* random bytes appended */
        size_t extra = rnd() % 32;
        for (size_t i = 0; i < extra && *n < cap; i++) buf[(*n)++] = (uint8_t)rnd();
    }
}

static void fuzz_file(const char *src, bool json, int vocab, int rounds) {
    char *orig = NULL;
    size_t orig_n = 0;
    rq_err err = {0};
    CHECK_OK(rq_file_read_all(src, &orig, &orig_n, &err), &err);
    if (!orig || orig_n == 0) return;
    size_t cap = orig_n + 64;
    uint8_t *buf = malloc(cap);
    const char *path = rq_test_out(json ? "fuzz_tok.json" : "fuzz_tok.bin");
    int ok_count = 0;
    double t0 = rq_now_seconds();
    for (int r = 0; r < rounds; r++) {
        size_t n;
        mutate(buf, &n, cap, (const uint8_t *)orig, orig_n, json);
        load_mutant(path, buf, n, json, vocab, &ok_count);
    }
    printf("%s: %d mutants, %d loaded, the rest refused cleanly (%.2f s)\n", src, rounds, ok_count, rq_now_seconds() - t0);
    free(buf);
    free(orig);
}

int main(void) {
    const char *tok512 = rq_test_data("models/stories260K/tok512.bin");
    rq_tokenizer *t = NULL;
    rq_err err = {0};
    CHECK_OK(rq_tokenizer_load_llama2c(tok512, 512, &t, &err), &err);
    if (t) {
        exercise(t, 1000);
        rq_tokenizer_free(t);
    }
    t = NULL;
    CHECK_OK(rq_tokenizer_load_hf_json("data/tokenizer/hf_gpt2_small.json", &t, &err), &err);
    if (t) {
        exercise(t, 1000);
        rq_tokenizer_free(t);
    }
    t = NULL;
    CHECK_OK(rq_tokenizer_load_hf_json("data/tokenizer/hf_llama3_small.json", &t, &err), &err);
    if (t) {
        exercise(t, 500);
        rq_tokenizer_free(t);
    }
    fuzz_file(tok512, false, 512, 2500);
    fuzz_file("data/tokenizer/hf_spm_tok512.json", true, 0, 800);
    fuzz_file("data/tokenizer/hf_gpt2_small.json", true, 0, 800);
    /* pre-tokenizer on random bytes: words must tile the text */
    for (int r = 0; r < 2000; r++) {
        char text[256];
        size_t n = random_text(text, sizeof text), *ends = NULL, n_words = 0;
        rq_status st = rq_pretokenize((rq_pretok)(r % 4), text, n, &ends, &n_words, &err);
        bool tiles = st == RQ_OK;
        size_t prev = 0;
        for (size_t i = 0; tiles && i < n_words; i++) tiles = ends[i] > prev && ends[i] <= n, prev = ends[i];
        CHECK(tiles && prev == n);
        free(ends);
    }
    return rq_test_finish();
}
