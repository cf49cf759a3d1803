/* The results table and report.html of a run. */
#include "report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put_html(rq_buf *b, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': rq_buf_puts(b, "&lt;"); break;
        case '>': rq_buf_puts(b, "&gt;"); break;
        case '&': rq_buf_puts(b, "&amp;"); break;
        case '"': rq_buf_puts(b, "&quot;"); break;
        default: rq_buf_append(b, s, 1);
        }
    }
}

static const char *str_of(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* The value of row's column, NAN when absent. */
static double cell(const cJSON *row, const cJSON *col) {
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(row, "results");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(res, str_of(col, "task"));
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, str_of(col, "metric"));
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void fmt_cell(char *buf, size_t n, double v, const char *metric) {
    if (isnan(v)) snprintf(buf, n, "-");
    else if (!strcmp(metric, "ppl")) snprintf(buf, n, "%.2f", v);
    else snprintf(buf, n, "%.4f", v);
}

static void col_title(char *buf, size_t n, const cJSON *col) {
    const char *m = str_of(col, "metric");
    /* gsm8k's metric names are long; the table shows the filter only */
    if (!strncmp(m, "exact_match,", 12)) m += 12;
    snprintf(buf, n, "%s %s", str_of(col, "task"), m);
}

char *rq_report_table(const cJSON *results) {
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(results, "columns");
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(results, "rows");
    rq_buf b = {0};
    int label_w = 5;
    const cJSON *row, *col;
    cJSON_ArrayForEach(row, rows) {
        int l = (int)strlen(str_of(row, "label"));
        if (l > label_w) label_w = l;
    }
    rq_buf_appendf(&b, "%-*s", label_w, "model");
    cJSON_ArrayForEach(col, cols) {
        char t[128];
        col_title(t, sizeof t, col);
        rq_buf_appendf(&b, "  %16s", t);
    }
    rq_buf_puts(&b, "\n");
    cJSON_ArrayForEach(row, rows) {
        rq_buf_appendf(&b, "%-*s", label_w, str_of(row, "label"));
        cJSON_ArrayForEach(col, cols) {
            char v[64];
            fmt_cell(v, sizeof v, cell(row, col), str_of(col, "metric"));
            rq_buf_appendf(&b, "  %16s", v);
        }
        rq_buf_puts(&b, "\n");
    }
    char *table;
    if (rq_buf_finish(&b, &table, NULL, "the results table", NULL) != RQ_OK) return NULL;
    return table;
}

/* ---- curves ------------------------------------------------------------------------------- */

typedef struct series {
    const char *name, *color;
    double *x, *y;
    size_t n, cap;
} series;

static void series_add(series *s, double x, double y) {
    if (!isfinite(x) || !isfinite(y)) return;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        double *nx = realloc(s->x, cap * sizeof *nx);
        if (!nx) return;
        s->x = nx;
        double *ny = realloc(s->y, cap * sizeof *ny);
        if (!ny) return;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n] = y;
    s->n++;
}

static void series_free(series *s) {
    free(s->x);
    free(s->y);
}

/* One line chart: x = update, y = loss, linear axes with 5 ticks each. */
static void svg_chart(rq_buf *b, const char *title, series *ss, int n_series) {
    const double W = 640, H = 300, L = 64, R = 16, T = 28, B = 40;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    size_t pts = 0;
    for (int i = 0; i < n_series; i++)
        for (size_t k = 0; k < ss[i].n; k++) {
            x0 = fmin(x0, ss[i].x[k]), x1 = fmax(x1, ss[i].x[k]);
            y0 = fmin(y0, ss[i].y[k]), y1 = fmax(y1, ss[i].y[k]);
            pts++;
        }
    rq_buf_puts(b, "<h3>");
    put_html(b, title);
    rq_buf_puts(b, "</h3>\n");
    if (!pts) {
        rq_buf_puts(b, "<p>(no points)</p>\n");
        return;
    }
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + fmax(fabs(y0) * 0.01, 1e-6);
    double pad = (y1 - y0) * 0.05;
    y0 -= pad, y1 += pad;
    rq_buf_appendf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                      "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"11\">\n", W, H, W, H);
    rq_buf_appendf(b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"#fff\" stroke=\"#888\"/>\n",
                   L, T, W - L - R, H - T - B);
    for (int t = 0; t <= 4; t++) {
        double fx = L + (W - L - R) * t / 4.0, vx = x0 + (x1 - x0) * t / 4.0;
        double fy = H - B - (H - T - B) * t / 4.0, vy = y0 + (y1 - y0) * t / 4.0;
        rq_buf_appendf(b, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#eee\"/>"
                          "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.4g</text>\n",
                       fx, T, fx, H - B, fx, H - B + 14, vx);
        rq_buf_appendf(b, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                          "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n",
                       L, fy, W - R, fy, L - 4, fy + 4, vy);
    }
    rq_buf_appendf(b, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">update</text>\n", (L + W - R) / 2, H - 6);
    double lx = L + 8;
    for (int i = 0; i < n_series; i++) {
        if (!ss[i].n) continue;
        rq_buf_appendf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", ss[i].color);
        for (size_t k = 0; k < ss[i].n; k++)
            rq_buf_appendf(b, "%.1f,%.1f ", L + (W - L - R) * (ss[i].x[k] - x0) / (x1 - x0),
                           H - B - (H - T - B) * (ss[i].y[k] - y0) / (y1 - y0));
        rq_buf_puts(b, "\"/>\n");
        if (ss[i].n == 1) /* a single point draws no line */
            rq_buf_appendf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                           L + (W - L - R) * (ss[i].x[0] - x0) / (x1 - x0),
                           H - B - (H - T - B) * (ss[i].y[0] - y0) / (y1 - y0), ss[i].color);
        rq_buf_appendf(b, "<rect x=\"%.0f\" y=\"10\" width=\"12\" height=\"4\" fill=\"%s\"/><text x=\"%.0f\" y=\"16\">",
                       lx, ss[i].color, lx + 16);
        put_html(b, ss[i].name);
        rq_buf_puts(b, "</text>\n");
        lx += 24 + 7.0 * (double)strlen(ss[i].name);
    }
    rq_buf_puts(b, "</svg>\n");
}

/* The curves of one stage from the tagged metrics lines. */
static void stage_curves(rq_buf *b, const char *metrics, const char *stage, const char *title) {
    series ss[2] = {{.name = "training loss", .color = "#1f77b4"}, {.name = "validation loss", .color = "#d62728"}};
    const char *p = metrics;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        cJSON *o = cJSON_ParseWithLength(p, len);
        if (o && !strcmp(str_of(o, "stage"), stage)) {
            const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
            const cJSON *loss = cJSON_GetObjectItemCaseSensitive(o, "loss");
            const cJSON *val = cJSON_GetObjectItemCaseSensitive(o, "val_loss");
            if (cJSON_IsNumber(step) && cJSON_IsNumber(loss)) series_add(&ss[0], step->valuedouble, loss->valuedouble);
            if (cJSON_IsNumber(step) && cJSON_IsNumber(val)) series_add(&ss[1], step->valuedouble, val->valuedouble);
        }
        cJSON_Delete(o);
        p = nl ? nl + 1 : NULL;
    }
    if (ss[0].n || ss[1].n) svg_chart(b, title, ss, 2);
    series_free(&ss[0]);
    series_free(&ss[1]);
}

rq_status rq_report_html(const cJSON *results, const char *metrics_jsonl, const char *recipe_json, char **out,
                         rq_err *err) {
    *out = NULL;
    rq_buf b = {0};
    const char *name = str_of(results, "recipe");
    rq_buf_puts(&b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rilq run: ");
    put_html(&b, name);
    rq_buf_puts(&b, "</title>\n<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
                    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}"
                    "td.n{text-align:right;font-family:monospace}th{background:#f4f4f4}"
                    "pre{background:#f8f8f8;padding:8px;overflow-x:auto;font-size:12px}</style></head><body>\n");
    rq_buf_puts(&b, "<h1>rilq run: ");
    put_html(&b, name);
    rq_buf_puts(&b, "</h1>\n<p>");
    put_html(&b, str_of(results, "notes"));
    rq_buf_puts(&b, "</p>\n<h2>Results</h2>\n<table><tr><th>model</th>");
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(results, "columns");
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(results, "rows");
    const cJSON *row, *col, *st;
    cJSON_ArrayForEach(col, cols) {
        char t[128];
        col_title(t, sizeof t, col);
        rq_buf_puts(&b, "<th>");
        put_html(&b, t);
        rq_buf_puts(&b, "</th>");
    }
    rq_buf_puts(&b, "</tr>\n");
    cJSON_ArrayForEach(row, rows) {
        rq_buf_puts(&b, "<tr><td>");
        put_html(&b, str_of(row, "label"));
        rq_buf_puts(&b, "</td>");
        cJSON_ArrayForEach(col, cols) {
            char v[64];
            fmt_cell(v, sizeof v, cell(row, col), str_of(col, "metric"));
            rq_buf_appendf(&b, "<td class=\"n\">%s</td>", v);
        }
        rq_buf_puts(&b, "</tr>\n");
    }
    rq_buf_puts(&b, "</table>\n<p>acc: lm-eval accuracy; ppl: perplexity (lower is better); gsm8k: exact match. "
                    "Every row is evaluated with the same settings (see the recipe's eval section).</p>\n");
    const cJSON *merge = cJSON_GetObjectItemCaseSensitive(results, "merge");
    if (cJSON_IsObject(merge)) {
        char *mt = cJSON_Print(merge);
        rq_buf_puts(&b, "<h2>Merge check</h2>\n<pre>");
        put_html(&b, mt);
        rq_buf_puts(&b, "</pre>\n");
        cJSON_free(mt);
    }
    rq_buf_puts(&b, "<h2>Training curves</h2>\n");
    stage_curves(&b, metrics_jsonl, "calibrate", "Stage 1: RILQ calibration (0.5 Model-Loss + 0.5 GT-Loss)");
    stage_curves(&b, metrics_jsonl, "finetune", "Stage 2: task fine-tuning (cross-entropy on the answers)");
    rq_buf_puts(&b, "<h2>Stages</h2>\n<table><tr><th>stage</th><th>status</th><th>seconds</th></tr>\n");
    cJSON_ArrayForEach(st, cJSON_GetObjectItemCaseSensitive(results, "stages")) {
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(st, "seconds");
        rq_buf_puts(&b, "<tr><td>");
        put_html(&b, str_of(st, "name"));
        rq_buf_puts(&b, "</td><td>");
        put_html(&b, str_of(st, "status"));
        if (cJSON_IsNumber(sec)) rq_buf_appendf(&b, "</td><td class=\"n\">%.1f</td></tr>\n", sec->valuedouble);
        else rq_buf_puts(&b, "</td><td class=\"n\">-</td></tr>\n");
    }
    rq_buf_puts(&b, "</table>\n");
    if (recipe_json) {
        rq_buf_puts(&b, "<h2>Recipe (resolved)</h2>\n<pre>");
        put_html(&b, recipe_json);
        rq_buf_puts(&b, "</pre>\n");
    }
    rq_buf_puts(&b, "</body></html>\n");
    return rq_buf_finish(&b, out, NULL, "report.html", err);
}
