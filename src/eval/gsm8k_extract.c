/* GSM8K filters and exact_match normalization, hand-matched with Python `re`
 * semantics (see gsm8k_extract.h). */
#include "gsm8k_extract.h"

#include <stdlib.h>

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_strict_class(char c) { return is_digit(c) || c == '.' || c == ','; }            /* [0-9\.\,] */
static bool is_flexible_class(char c) { return is_digit(c) || c == '$' || c == '.' || c == ','; } /* [$0-9.,] */

static bool is_py_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

/* Copy s[0..n) with Python's strip() of ASCII-range whitespace. */
static rq_status strip_dup(const char *s, size_t n, char **out, rq_err *err) {
    size_t a = 0;
    while (a < n && is_py_space((unsigned char)s[a])) a++;
    while (n > a && is_py_space((unsigned char)s[n - 1])) n--;
    char *p = malloc(n - a + 1);
    if (!p) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory copying %zu bytes", n - a);
    memcpy(p, s + a, n - a);
    p[n - a] = 0;
    *out = p;
    return RQ_OK;
}

static rq_status invalid(char **out, rq_err *err) {
    *out = rq_strdup(RQ_GSM8K_INVALID, err);
    return *out ? RQ_OK : RQ_ERR_NOMEM;
}

rq_status rq_gsm8k_strict_match(const char *text, char **out, rq_err *err) {
    *out = NULL;
    /* "#### " then \-? (greedy, given back when no class character follows the
     * '-') then [0-9\.\,]+ (greedy). The first match wins. */
    for (const char *s = strstr(text, "#### "); s; s = strstr(s + 1, "#### ")) {
        const char *g = s + 5, *e = g;
        if (*e == '-' && is_strict_class(e[1])) e++;
        if (!is_strict_class(*e)) continue;
        while (is_strict_class(*e)) e++;
        return strip_dup(g, (size_t)(e - g), out, err);
    }
    return invalid(out, err);
}

/* Match "(-?[$0-9.,]{2,})|(-?[0-9]+)" at exactly position s; returns the end
 * of the match or NULL. Alternative 1 is tried first (leftmost-first). */
static const char *flexible_match_at(const char *s) {
    /* alternative 1: with the '-' if a run of >= 2 class characters follows it,
     * else without it (then s itself must start the run; '-' is not in the class) */
    if (*s == '-') {
        const char *e = s + 1;
        while (is_flexible_class(*e)) e++;
        if (e - (s + 1) >= 2) return e;
    } else {
        const char *e = s;
        while (is_flexible_class(*e)) e++;
        if (e - s >= 2) return e;
    }
    /* alternative 2 */
    const char *e = s;
    if (*e == '-' && is_digit(e[1])) e++;
    if (!is_digit(*e)) return NULL;
    while (is_digit(*e)) e++;
    return e;
}

rq_status rq_gsm8k_flexible_extract(const char *text, char **out, rq_err *err) {
    *out = NULL;
    const char *last = NULL, *last_end = NULL;
    /* re.findall: scan left to right; after a match resume at its end (matches
     * are never empty here). Either group is the whole match, so "first
     * non-empty group" is the matched text. */
    for (const char *s = text; *s;) {
        const char *e = flexible_match_at(s);
        if (e) {
            last = s;
            last_end = e;
            s = e;
        } else {
            s++;
        }
    }
    if (!last) return invalid(out, err);
    return strip_dup(last, (size_t)(last_end - last), out, err);
}

size_t rq_gsm8k_stop_length(const char *text, const char *const *stops, size_t n_stops) {
    size_t cut = strlen(text);
    for (size_t i = 0; i < n_stops; i++) {
        if (!stops[i] || !stops[i][0]) continue;
        const char *p = strstr(text, stops[i]);
        if (p && (size_t)(p - text) < cut) cut = (size_t)(p - text);
    }
    return cut;
}

/* Python's str.lower for the blocks gsm8k output plausibly contains. */
static uint32_t lower_code_point(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c < 0xC0) return c;
    if (c <= 0xDE) return c == 0xD7 ? c : c + 32; /* Latin-1, except the multiplication sign */
    if (c >= 0x100 && c <= 0x17F) {
        if (c == 0x130) return c; /* İ lowers to two code points in Python; left as is */
        if (c == 0x178) return 0xFF;
        bool even_upper = (c <= 0x137 && c != 0x131) || (c >= 0x14A && c <= 0x177);
        bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
        if (even_upper && c % 2 == 0) return c + 1;
        if (odd_upper && c % 2 == 1) return c + 1;
        return c;
    }
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    /* Greek capitals (U+03A2 is unassigned). Python turns a word-final capital
     * sigma into U+03C2; that context rule is not reproduced. */
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    if (c >= 0x410 && c <= 0x42F) return c + 32;
    return c;
}

/* Decode one UTF-8 sequence at s (n bytes left); invalid bytes come back as
 * themselves with length 1 so that they are copied through unchanged. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp, bool *valid) {
    *valid = false;
    *cp = s[0];
    if (s[0] < 0x80) {
        *valid = true;
        return 1;
    }
    size_t len = (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || len > n) return 1;
    uint32_t c = s[0] & (0xFF >> (len + 1));
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) return 1;
        c = (c << 6) | (s[k] & 0x3F);
    }
    static const uint32_t min_for_len[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min_for_len[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 1;
    *cp = c;
    *valid = true;
    return len;
}

static size_t utf8_encode(uint32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

rq_status rq_gsm8k_normalize(const char *text, char **out, rq_err *err) {
    *out = NULL;
    size_t n = strlen(text);
    /* Lower-casing the mapped code points never lengthens UTF-8 (every mapping
     * stays within its encoded length), so n + 1 bytes always suffice. */
    char *buf = malloc(n + 1);
    if (!buf) return RQ_FAIL(err, RQ_ERR_NOMEM, "out of memory normalizing %zu bytes", n);
    /* "," and "\$": delete all */
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        if (text[i] != ',' && text[i] != '$') buf[len++] = text[i];
    buf[len] = 0;
    /* "(?s).*#### ": the greedy .* backtracks to the LAST "#### "; the match
     * runs from 0 through it, and no later match can exist. */
    const char *last = NULL;
    for (const char *p = strstr(buf, "#### "); p; p = strstr(p + 1, "#### ")) last = p;
    if (last) {
        size_t cut = (size_t)(last - buf) + 5;
        memmove(buf, buf + cut, len - cut + 1);
        len -= cut;
    }
    /* "\.$": Python's $ matches at the very end and just before a final "\n",
     * so the one possible match is a '.' at the end or right before a final
     * newline (only one of the two can hold). */
    if (len >= 1 && buf[len - 1] == '.') {
        buf[--len] = 0;
    } else if (len >= 2 && buf[len - 1] == '\n' && buf[len - 2] == '.') {
        buf[len - 2] = '\n';
        buf[--len] = 0;
    }
    /* lower-case, in place (output never longer than input, see above) */
    size_t w = 0;
    for (size_t r = 0; r < len;) {
        uint32_t cp;
        bool valid;
        size_t used = utf8_decode((const unsigned char *)buf + r, len - r, &cp, &valid);
        if (!valid) {
            buf[w++] = buf[r++];
            continue;
        }
        char enc[4];
        size_t m = utf8_encode(lower_code_point(cp), enc);
        if (m > used) { /* cannot happen with the mappings above; keep the original */
            memmove(buf + w, buf + r, used);
            w += used;
        } else {
            memcpy(buf + w, enc, m);
            w += m;
        }
        r += used;
    }
    buf[w] = 0;
    *out = buf;
    return RQ_OK;
}

rq_status rq_gsm8k_exact_match(const char *prediction, const char *reference, bool *match, rq_err *err) {
    *match = false;
    char *p, *r;
    RQ_TRY(rq_gsm8k_normalize(prediction, &p, err));
    rq_status st = rq_gsm8k_normalize(reference, &r, err);
    if (st == RQ_OK) *match = strcmp(p, r) == 0;
    free(p);
    free(r);
    return st;
}
