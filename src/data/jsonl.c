/* JSON Lines reader: split lines, validate bytes, parse each line with cJSON. */
#include "jsonl.h"

#include <stdio.h>
#include <stdlib.h>

bool rq_utf8_valid(const char *text, size_t n) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

static rq_status reader_init(rq_jsonl_reader *r, const char *name, rq_jsonl_on_error on_error, rq_err *err) {
    memset(r, 0, sizeof *r);
    if (on_error != RQ_JSONL_STOP_ON_BAD_LINE && on_error != RQ_JSONL_SKIP_BAD_LINES)
        return RQ_FAIL(err, RQ_ERR_ARG, "%s: unknown bad-line policy %d", name, (int)on_error);
    r->on_error = on_error;
    r->name = rq_strdup(name, err);
    return r->name ? RQ_OK : RQ_ERR_NOMEM;
}

rq_status rq_jsonl_open(rq_jsonl_reader *r, const char *path, rq_jsonl_on_error on_error, rq_err *err) {
    RQ_TRY(reader_init(r, path, on_error, err));
    rq_status st = rq_file_read_all(path, &r->data, &r->size, err);
    if (st != RQ_OK) rq_jsonl_close(r);
    return st;
}

rq_status rq_jsonl_open_memory(rq_jsonl_reader *r, const char *name, const char *data, size_t size,
                               rq_jsonl_on_error on_error, rq_err *err) {
    RQ_TRY(reader_init(r, name, on_error, err));
    r->data = malloc(size + 1);
    if (!r->data) {
        rq_jsonl_close(r);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory copying %zu bytes", name, size);
    }
    if (size) memcpy(r->data, data, size);
    r->data[size] = 0;
    r->size = size;
    return RQ_OK;
}

void rq_jsonl_close(rq_jsonl_reader *r) {
    free(r->name);
    free(r->data);
    memset(r, 0, sizeof *r);
}

static bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* A JSON escape for U+0000 (backslash, "u0000") that is not an escaped backslash followed by "u0000". */
static bool has_nul_escape(const char *line, size_t len) {
    for (size_t i = 0; i + 6 <= len; i++) {
        if (line[i] != '\\' || memcmp(line + i + 1, "u0000", 5) != 0) continue;
        size_t backslashes = 0;
        for (size_t k = i + 1; k-- > 0 && line[k] == '\\';) backslashes++;
        if (backslashes % 2 == 1) return true;
    }
    return false;
}

/* A malformed line: fail, or count it and move on. Returns RQ_OK to continue. */
static rq_status bad_line(rq_jsonl_reader *r, rq_err *err, const char *why) {
    if (r->on_error == RQ_JSONL_STOP_ON_BAD_LINE)
        return RQ_FAIL(err, RQ_ERR_FORMAT, "%s:%zu: malformed JSON line: %s", r->name, r->line_no, why);
    if (r->skipped_lines++ == 0)
        snprintf(r->first_skip_msg, sizeof r->first_skip_msg, "%s:%zu: %s", r->name, r->line_no, why);
    return RQ_OK;
}

rq_status rq_jsonl_next(rq_jsonl_reader *r, cJSON **out, rq_err *err) {
    *out = NULL;
    while (r->pos < r->size) {
        const char *line = r->data + r->pos;
        size_t rest = r->size - r->pos;
        const char *nl = memchr(line, '\n', rest);
        size_t len = nl ? (size_t)(nl - line) : rest;
        r->pos += nl ? len + 1 : len;
        r->line_no++;

        size_t first = 0;
        while (first < len && is_json_space(line[first])) first++;
        if (first == len) continue; /* blank line */

        if (memchr(line, 0, len)) {
            RQ_TRY(bad_line(r, err, "NUL byte inside the line"));
            continue;
        }
        if (!rq_utf8_valid(line, len)) {
            RQ_TRY(bad_line(r, err, "invalid UTF-8"));
            continue;
        }
        if (has_nul_escape(line, len)) {
            /* cJSON would cut the decoded string at the NUL without telling us */
            RQ_TRY(bad_line(r, err, "a \\u0000 escape (NUL inside a string) is not supported"));
            continue;
        }
        const char *end = NULL;
        cJSON *value = cJSON_ParseWithLengthOpts(line, len, &end, 0);
        if (!value) {
            char why[96];
            size_t at = end && end >= line && end <= line + len ? (size_t)(end - line) : 0;
            snprintf(why, sizeof why, "parse error at column %zu", at + 1);
            RQ_TRY(bad_line(r, err, why));
            continue;
        }
        size_t used = end && end >= line && end <= line + len ? (size_t)(end - line) : len;
        while (used < len && is_json_space(line[used])) used++;
        if (used != len) {
            cJSON_Delete(value);
            char why[96];
            snprintf(why, sizeof why, "extra text after the JSON value at column %zu", used + 1);
            RQ_TRY(bad_line(r, err, why));
            continue;
        }
        *out = value;
        return RQ_OK;
    }
    return RQ_OK;
}

rq_status rq_text_lines_read(const char *path, char ***lines, size_t *count, rq_err *err) {
    *lines = NULL;
    *count = 0;
    char *text = NULL;
    size_t size = 0;
    RQ_TRY(rq_file_read_all(path, &text, &size, err));
    size_t n = 0;
    for (size_t i = 0; i < size; i++)
        if (text[i] == '\n') n++;
    if (size > 0 && text[size - 1] != '\n') n++; /* last line without newline */
    /* One block: the pointer table followed by the text, so free(*lines) frees all. */
    size_t table_bytes;
    if (!rq_mul_ok(n + 1, sizeof(char *), &table_bytes) || table_bytes > SIZE_MAX - size - 1) {
        free(text);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: file too large", path);
    }
    char **table = malloc(table_bytes + size + 1);
    if (!table) {
        free(text);
        return RQ_FAIL(err, RQ_ERR_NOMEM, "%s: out of memory for %zu lines", path, n);
    }
    char *copy = (char *)table + table_bytes;
    memcpy(copy, text, size);
    copy[size] = 0;
    free(text);
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= size && k < n; i++) {
        if (i == size || copy[i] == '\n') {
            size_t end = i;
            if (end > start && copy[end - 1] == '\r') end--;
            copy[end] = 0;
            table[k++] = copy + start;
            start = i + 1;
        }
    }
    table[k] = NULL;
    *lines = table;
    *count = k;
    return RQ_OK;
}
