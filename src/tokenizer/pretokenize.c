/* The pre-tokenizer split for byte-level BPE, written as small hand matchers
 * instead of a regex engine: each pattern is a fixed list of alternatives tried
 * in order at the current position, and every alternative is a run over one or
 * two character classes, so a match is found by scanning forward once. The
 * split is "isolated" and the patterns match every character, so the words are
 * simply consecutive matches. */
#include <stdlib.h>

#include "tok_internal.h"
#include "unicode.h"

/* ---- UTF-8 and character classes ---------------------------------------------- */

int rq_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    int len;
    uint32_t c, min;
    if (b0 >= 0xC2 && b0 <= 0xDF) len = 2, c = b0 & 0x1F, min = 0x80;
    else if (b0 >= 0xE0 && b0 <= 0xEF) len = 3, c = b0 & 0x0F, min = 0x800;
    else if (b0 >= 0xF0 && b0 <= 0xF4) len = 4, c = b0 & 0x07, min = 0x10000;
    else goto invalid;
    if ((size_t)len > n) goto invalid;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) goto invalid;
        c = (c << 6) | (s[i] & 0x3F);
    }
    /* overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8 */
    if (c < min || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) goto invalid;
    *cp = c;
    return len;
invalid:
    *cp = 0xFFFFFFFFu;
    return 1;
}

rq_uclass rq_unicode_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return RQ_UCLASS_LETTER;
        if (cp >= '0' && cp <= '9') return RQ_UCLASS_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return RQ_UCLASS_SPACE;
        return RQ_UCLASS_OTHER;
    }
    int lo = 0, hi = rq_unicode_class_range_count - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const rq_unicode_range *r = &rq_unicode_class_ranges[mid];
        if (cp < r->first) hi = mid - 1;
        else if (cp > r->last) lo = mid + 1;
        else return (rq_uclass)r->uclass;
    }
    return RQ_UCLASS_OTHER; /* also the invalid-byte marker 0xFFFFFFFF */
}

/* One character of the text: its code point, class and byte length. */
typedef struct text_char {
    uint32_t cp;
    rq_uclass cls;
    int len;
} text_char;

static text_char char_at(const unsigned char *s, size_t pos, size_t end) {
    text_char c;
    c.len = rq_utf8_decode(s + pos, end - pos, &c.cp);
    c.cls = rq_unicode_class(c.cp);
    return c;
}

/* End of the run of characters of class cls starting at pos; at most max_chars
 * characters (0: unlimited). */
static size_t run_of_class(const unsigned char *s, size_t pos, size_t end, rq_uclass cls, int max_chars) {
    int count = 0;
    while (pos < end && (max_chars == 0 || count < max_chars)) {
        text_char c = char_at(s, pos, end);
        if (c.cls != cls) break;
        pos += (size_t)c.len;
        count++;
    }
    return pos;
}

/* 's 't 're 've 'm 'll 'd at pos; returns the end or 0. case_insensitive: the
 * LLaMA-3 (?i:...) group, which under Unicode simple case folding also lets the
 * long s U+017F stand for 's'. */
static size_t match_contraction(const unsigned char *s, size_t pos, size_t end, bool case_insensitive) {
    if (s[pos] != '\'' || pos + 1 >= end) return 0;
    unsigned char a = s[pos + 1], b = pos + 2 < end ? s[pos + 2] : 0;
    if (case_insensitive) {
        if (a >= 'A' && a <= 'Z') a = (unsigned char)(a - 'A' + 'a');
        if (b >= 'A' && b <= 'Z') b = (unsigned char)(b - 'A' + 'a');
        if (a == 0xC5 && b == 0xBF) return pos + 3; /* 'ſ */
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return pos + 3;
    return 0;
}

/* The whitespace alternatives shared by both patterns: \s+(?!\S)|\s+ .
 * A run followed by a non-space gives up its last character (which then starts
 * the next word, e.g. " hello"), unless the run is a single character. */
static size_t match_space_run(const unsigned char *s, size_t pos, size_t end) {
    size_t last_start = pos, p = pos;
    while (p < end) {
        text_char c = char_at(s, p, end);
        if (c.cls != RQ_UCLASS_SPACE) break;
        last_start = p;
        p += (size_t)c.len;
    }
    if (p == end || last_start == pos) return p;
    return last_start;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const unsigned char *s, size_t pos, size_t end) {
    size_t m = match_contraction(s, pos, end, false);
    if (m) return m;
    text_char c = char_at(s, pos, end);
    size_t body = pos;
    rq_uclass cls = c.cls;
    if (c.cp == ' ' && pos + 1 < end) {
        text_char next = char_at(s, pos + 1, end);
        if (next.cls != RQ_UCLASS_SPACE) { /* " ?" followed by a letter, number or other run */
            body = pos + 1;
            cls = next.cls;
        }
    }
    if (cls != RQ_UCLASS_SPACE) return run_of_class(s, body, end, cls, 0);
    return match_space_run(s, pos, end);
}

static bool is_cr_or_lf(uint32_t cp) { return cp == '\r' || cp == '\n'; }

/* LLaMA-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_llama3(const unsigned char *s, size_t pos, size_t end) {
    size_t m = match_contraction(s, pos, end, true);
    if (m) return m;
    text_char c = char_at(s, pos, end);
    if (c.cls == RQ_UCLASS_LETTER) return run_of_class(s, pos, end, RQ_UCLASS_LETTER, 0);
    size_t after = pos + (size_t)c.len;
    text_char next = {0, RQ_UCLASS_OTHER, 0};
    if (after < end) next = char_at(s, after, end);
    /* one leading char that is neither \r, \n, a letter nor a number, then letters */
    if (c.cls != RQ_UCLASS_NUMBER && !is_cr_or_lf(c.cp) && after < end && next.cls == RQ_UCLASS_LETTER)
        return run_of_class(s, after, end, RQ_UCLASS_LETTER, 0);
    if (c.cls == RQ_UCLASS_NUMBER) return run_of_class(s, pos, end, RQ_UCLASS_NUMBER, 3);
    /* " ?[^\s\p{L}\p{N}]+[\r\n]*" */
    size_t body = pos;
    bool has_body = c.cls == RQ_UCLASS_OTHER;
    if (!has_body && c.cp == ' ' && after < end && next.cls == RQ_UCLASS_OTHER) {
        body = after;
        has_body = true;
    }
    if (has_body) {
        size_t p = run_of_class(s, body, end, RQ_UCLASS_OTHER, 0);
        while (p < end && (s[p] == '\r' || s[p] == '\n')) p++;
        return p;
    }
    /* c is whitespace. "\s*[\r\n]+": the run up to and including its last newline */
    size_t p = pos, after_last_newline = 0;
    while (p < end) {
        text_char w = char_at(s, p, end);
        if (w.cls != RQ_UCLASS_SPACE) break;
        p += (size_t)w.len;
        if (is_cr_or_lf(w.cp)) after_last_newline = p;
    }
    if (after_last_newline) return after_last_newline;
    return match_space_run(s, pos, end);
}

void rq_pretok_iter_init(rq_pretok_iter *it, rq_pretok pattern, const char *text, size_t len) {
    it->pattern = pattern;
    it->text = (const unsigned char *)text;
    it->len = len;
    it->pos = 0;
    it->piece_end = 0;
}

bool rq_pretok_iter_next(rq_pretok_iter *it, size_t *start, size_t *end) {
    if (it->pos >= it->len) return false;
    const unsigned char *s = it->text;
    size_t pos = it->pos, stop;
    switch (it->pattern) {
    case RQ_PRETOK_GPT2: stop = match_gpt2(s, pos, it->len); break;
    case RQ_PRETOK_LLAMA3: stop = match_llama3(s, pos, it->len); break;
    case RQ_PRETOK_SMOLLM: {
        /* Digits(individual_digits): every number character is a word of its own;
         * the GPT-2 pattern then runs inside each stretch between them. */
        text_char c = char_at(s, pos, it->len);
        if (c.cls == RQ_UCLASS_NUMBER) {
            stop = pos + (size_t)c.len;
            break;
        }
        if (it->piece_end <= pos) {
            size_t p = pos;
            while (p < it->len) {
                text_char d = char_at(s, p, it->len);
                if (d.cls == RQ_UCLASS_NUMBER) break;
                p += (size_t)d.len;
            }
            it->piece_end = p;
        }
        stop = match_gpt2(s, pos, it->piece_end);
        break;
    }
    default: stop = it->len; break; /* RQ_PRETOK_NONE: one word */
    }
    if (stop <= pos) stop = pos + 1; /* cannot happen: every alternative consumes; guards the loop anyway */
    *start = pos;
    *end = stop;
    it->pos = stop;
    return true;
}

rq_status rq_pretokenize(rq_pretok pattern, const char *text, size_t len, size_t **word_ends, size_t *n_words,
                         rq_err *err) {
    *word_ends = NULL;
    *n_words = 0;
    if (!text && len) return RQ_FAIL(err, RQ_ERR_ARG, "rq_pretokenize: text is NULL but len is %zu", len);
    size_t cap = 16, n = 0;
    size_t *ends = rq_calloc(cap, sizeof *ends, err);
    if (!ends) return RQ_ERR_NOMEM;
    rq_pretok_iter it;
    rq_pretok_iter_init(&it, pattern, text, len);
    size_t start, stop;
    while (rq_pretok_iter_next(&it, &start, &stop)) {
        if (n == cap) {
            size_t bytes;
            if (!rq_mul_ok(cap * 2, sizeof *ends, &bytes)) {
                free(ends);
                return RQ_FAIL(err, RQ_ERR_NOMEM, "rq_pretokenize: too many words");
            }
            size_t *grown = realloc(ends, bytes);
            if (!grown) {
                free(ends);
                return RQ_FAIL(err, RQ_ERR_NOMEM, "rq_pretokenize: out of memory for %zu words", cap * 2);
            }
            ends = grown;
            cap *= 2;
        }
        ends[n++] = stop;
    }
    *word_ends = ends;
    *n_words = n;
    return RQ_OK;
}
