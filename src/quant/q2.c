/* The q2 tensor: create, pack, dequantize. See q2.h for the format. */
#include "q2.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>

#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

/* ---- codebooks ------------------------------------------------------------- */

/* The standard normal quantile, Phi^-1(p), by bisection on erfc in double:
 * 200 halvings of [-40, 40] reach the spacing of doubles, so the result is the
 * quantile to double precision without an approximation formula to trust. */
static double normal_quantile(double p) {
    double lo = -40.0, hi = 40.0;
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid == lo || mid == hi) break;
        double cdf = 0.5 * erfc(-mid / sqrt(2.0));
        if (cdf < p) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

void rq_q2_codebook(rq_q2_codebook_kind kind, float levels[4]) {
    if (kind == RQ_Q2_NF2) {
        /* PEFT NFQuantizer / bitsandbytes create_normal_map(offset, symmetric=False)
         * for 2 bits: positive half Phi^-1(linspace(offset, 0.5, 3)[:-1]), one zero,
         * negative half -Phi^-1(linspace(offset, 0.5, 2)[:-1]), divided by the max. */
        const double offset = 0.9677083;
        double top = normal_quantile(offset);
        double mid = normal_quantile(offset + 0.5 * (0.5 - offset));
        levels[0] = -1.0f;
        levels[1] = 0.0f;
        levels[2] = (float)(mid / top);
        levels[3] = 1.0f;
    } else {
        for (int k = 0; k < 4; k++) levels[k] = (float)k;
    }
}

const char *rq_q2_codebook_name(rq_q2_codebook_kind kind) { return kind == RQ_Q2_NF2 ? "nf2" : "int2"; }

rq_status rq_q2_codebook_parse(const char *name, rq_q2_codebook_kind *kind, rq_err *err) {
    if (name && strcmp(name, "int2") == 0) *kind = RQ_Q2_INT2;
    else if (name && strcmp(name, "nf2") == 0) *kind = RQ_Q2_NF2;
    else return RQ_FAIL(err, RQ_ERR_ARG, "unknown q2 codebook '%s' (expected \"int2\" or \"nf2\")", name ? name : "(null)");
    return RQ_OK;
}

/* ---- lifetime ---------------------------------------------------------------- */

static int ceil_div(int a, int b) { return (int)(((long long)a + b - 1) / b); }

/* Sizes of the three arrays; false on overflow. */
static bool q2_sizes(int out, int in, int group_size, size_t *code_bytes, size_t *param_count) {
    if (out <= 0 || in <= 0 || group_size <= 0) return false;
    size_t row_bytes = (size_t)ceil_div(in, 4);
    size_t n_groups = (size_t)ceil_div(in, group_size);
    return rq_mul_ok((size_t)out, row_bytes, code_bytes) && rq_mul_ok((size_t)out, n_groups, param_count) &&
           *param_count <= SIZE_MAX / 4;
}

size_t rq_q2_data_bytes(int out, int in, int group_size) {
    size_t code_bytes, params;
    if (!q2_sizes(out, in, group_size, &code_bytes, &params)) return 0;
    if (code_bytes > SIZE_MAX - params * 4) return 0;
    return code_bytes + params * 4; /* two fp16 arrays */
}

size_t rq_q2_nbytes(const rq_q2_tensor *t) { return t ? rq_q2_data_bytes(t->out, t->in, t->group_size) : 0; }

double rq_q2_bits_per_weight(const rq_q2_tensor *t) {
    return 8.0 * (double)rq_q2_nbytes(t) / ((double)t->out * (double)t->in);
}

rq_status rq_q2_create(int out, int in, int group_size, rq_q2_codebook_kind kind, rq_q2_tensor **t,
                       rq_err *err) {
    *t = NULL;
    if (out <= 0 || in <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "q2 tensor of shape [%d][%d]: both dimensions must be at least 1", out, in);
    if (group_size <= 0)
        return RQ_FAIL(err, RQ_ERR_ARG, "q2 tensor group size %d: must be at least 1 (the default is %d)", group_size,
                       RQ_DEFAULT_GROUP_SIZE);
    if (kind != RQ_Q2_INT2 && kind != RQ_Q2_NF2)
        return RQ_FAIL(err, RQ_ERR_ARG, "q2 tensor: unknown codebook kind %d", (int)kind);
    size_t code_bytes, params;
    if (!q2_sizes(out, in, group_size, &code_bytes, &params))
        return RQ_FAIL(err, RQ_ERR_ARG, "q2 tensor of shape [%d][%d]: size overflows", out, in);

    rq_q2_tensor *q = rq_calloc(1, sizeof *q, err);
    if (!q) return err ? err->code : RQ_ERR_NOMEM;
    q->out = out;
    q->in = in;
    q->group_size = group_size;
    q->n_groups = ceil_div(in, group_size);
    q->row_bytes = ceil_div(in, 4);
    q->kind = kind;
    rq_q2_codebook(kind, q->codebook);
    q->codes = rq_alloc_aligned(code_bytes, err);
    q->scales = q->codes ? rq_alloc_aligned(params * sizeof(uint16_t), err) : NULL;
    q->offsets = q->scales ? rq_alloc_aligned(params * sizeof(uint16_t), err) : NULL;
    if (!q->offsets) {
        rq_q2_free(q);
        return err ? err->code : RQ_ERR_NOMEM;
    }
    *t = q;
    return RQ_OK;
}

void rq_q2_free(rq_q2_tensor *t) {
    if (!t) return;
    free(t->codes);
    free(t->scales);
    free(t->offsets);
    free(t);
}

rq_status rq_q2_clone(const rq_q2_tensor *src, rq_q2_tensor **dst, rq_err *err) {
    RQ_TRY(rq_q2_create(src->out, src->in, src->group_size, src->kind, dst, err));
    rq_q2_tensor *d = *dst;
    memcpy(d->codebook, src->codebook, sizeof d->codebook);
    memcpy(d->codes, src->codes, (size_t)src->out * (size_t)src->row_bytes);
    size_t params = (size_t)src->out * (size_t)src->n_groups;
    memcpy(d->scales, src->scales, params * sizeof(uint16_t));
    memcpy(d->offsets, src->offsets, params * sizeof(uint16_t));
    return RQ_OK;
}

/* ---- codes --------------------------------------------------------------------- */

void rq_q2_pack_codes(uint8_t *packed, const uint8_t *codes, int n) {
    int nb = ceil_div(n, 4);
    for (int j = 0; j < nb; j++) {
        unsigned byte = 0;
        for (int k = 0; k < 4 && 4 * j + k < n; k++) byte |= (unsigned)(codes[4 * j + k] & 3) << (2 * k);
        packed[j] = (uint8_t)byte;
    }
}

void rq_q2_unpack_codes(uint8_t *codes, const uint8_t *packed, int n) {
    for (int i = 0; i < n; i++) codes[i] = (uint8_t)((packed[i >> 2] >> ((i & 3) * 2)) & 3);
}

/* ---- dequantization -------------------------------------------------------------- */

static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h); /* exact, like rq_f16_to_f32, in one instruction */
#else
    return rq_f16_to_f32(h);
#endif
}

/* The 4 weights a group can take: lut[k] = fl(fl(s * level[k]) + m), the
 * defining formula evaluated once per group instead of once per weight. */
static inline void group_lut(const rq_q2_tensor *t, uint16_t s_half, uint16_t m_half, float lut[4]) {
    float s = half_to_float(s_half), m = half_to_float(m_half);
    for (int k = 0; k < 4; k++) lut[k] = s * t->codebook[k] + m;
}

/* dst[4 * nbytes] = lut[codes], 4 codes per byte. The SIMD paths broadcast a
 * word of codes to every lane, shift each lane to its own code and let the
 * in-lane variable permute (vpermilps, which reads the 2 low bits of each
 * index) pick from the 4-entry table: no masks, no gathers. */
static inline void expand_bytes(float *dst, const uint8_t *src, int nbytes, const float lut[4]) {
    int j = 0;
#if defined(__AVX512F__)
    {
        const __m512 table = _mm512_broadcast_f32x4(_mm_loadu_ps(lut));
        const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for (; j + 4 <= nbytes; j += 4) {
            uint32_t word;
            memcpy(&word, src + j, 4); /* x86: little endian, byte j holds columns 4j..4j+3 */
            __m512i idx = _mm512_srlv_epi32(_mm512_set1_epi32((int)word), shifts);
            _mm512_storeu_ps(dst + 4 * j, _mm512_permutevar_ps(table, idx));
        }
    }
#endif
#if defined(__AVX2__)
    {
        const __m128 lut4 = _mm_loadu_ps(lut);
        const __m256 table = _mm256_set_m128(lut4, lut4);
        const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
        for (; j + 2 <= nbytes; j += 2) {
            uint32_t half_word = (uint32_t)src[j] | ((uint32_t)src[j + 1] << 8);
            __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32((int)half_word), shifts);
            _mm256_storeu_ps(dst + 4 * j, _mm256_permutevar_ps(table, idx));
        }
    }
#endif
    for (; j < nbytes; j++) {
        unsigned b = src[j];
        dst[4 * j + 0] = lut[b & 3];
        dst[4 * j + 1] = lut[(b >> 2) & 3];
        dst[4 * j + 2] = lut[(b >> 4) & 3];
        dst[4 * j + 3] = lut[(b >> 6) & 3];
    }
}

#if defined(__AVX512F__)
/* Whole groups of a multiple of 16 columns, the common case (gs 32, 64, 128):
 * the table is built in a register (the same fl(fl(s * level) + m) as
 * group_lut: separate multiply and add, no contraction) and each 32-bit word
 * of codes becomes 16 weights. */
static void dequant_full_groups_avx512(const rq_q2_tensor *t, const uint8_t *codes, const uint16_t *s,
                                       const uint16_t *m, float *dst, int n_full) {
    const __m128 levels = _mm_loadu_ps(t->codebook);
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const int gs = t->group_size, words = gs / 16;
    for (int g = 0; g < n_full; g++) {
        __m128 lut4 = _mm_add_ps(_mm_mul_ps(_mm_set1_ps(half_to_float(s[g])), levels),
                                 _mm_set1_ps(half_to_float(m[g])));
        const __m512 table = _mm512_broadcast_f32x4(lut4);
        const uint8_t *src = codes + (size_t)g * (size_t)(gs / 4);
        float *out = dst + (size_t)g * (size_t)gs;
        for (int j = 0; j < words; j++) {
            uint32_t word;
            memcpy(&word, src + 4 * j, 4);
            __m512i idx = _mm512_srlv_epi32(_mm512_set1_epi32((int)word), shifts);
            _mm512_storeu_ps(out + 16 * j, _mm512_permutevar_ps(table, idx));
        }
    }
}
#endif

void rq_q2_dequant_row(const rq_q2_tensor *t, int row, float *dst) {
    const uint8_t *codes = t->codes + (size_t)row * (size_t)t->row_bytes;
    const uint16_t *s = t->scales + (size_t)row * (size_t)t->n_groups;
    const uint16_t *m = t->offsets + (size_t)row * (size_t)t->n_groups;
    const int gs = t->group_size, in = t->in;
    float lut[4];
    int g0 = 0;
#if defined(__AVX512F__)
    if (gs % 16 == 0) {
        g0 = in / gs; /* whole groups; a ragged last one goes the general way below */
        dequant_full_groups_avx512(t, codes, s, m, dst, g0);
    }
#endif
    if (gs % 4 == 0) {
        /* Groups start on whole bytes; only a ragged last group can end inside one. */
        for (int g = g0; g < t->n_groups; g++) {
            int c0 = g * gs;
            int len = in - c0 < gs ? in - c0 : gs;
            group_lut(t, s[g], m[g], lut);
            int full = len >> 2;
            expand_bytes(dst + c0, codes + (c0 >> 2), full, lut);
            if (len & 3) { /* the row's padded last byte */
                unsigned last = codes[(c0 >> 2) + full];
                for (int k = 0; k < (len & 3); k++) dst[c0 + 4 * full + k] = lut[(last >> (2 * k)) & 3];
            }
        }
    } else {
        /* Groups straddle bytes: per weight. Rare (group sizes are 32/64/128). */
        for (int g = 0; g < t->n_groups; g++) {
            int c0 = g * gs;
            int c1 = in - c0 < gs ? in : c0 + gs;
            group_lut(t, s[g], m[g], lut);
            for (int i = c0; i < c1; i++) dst[i] = lut[(codes[i >> 2] >> ((i & 3) * 2)) & 3];
        }
    }
}

void rq_q2_dequant_rows(const rq_q2_tensor *t, int r0, int r1, float *dst, int n_threads) {
    if (r1 <= r0) return;
    /* Below ~64k weights a parallel region's fork/join costs more than the work. */
    long long work = (long long)(r1 - r0) * t->in;
    int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    if (nt <= 1 || work < (1 << 16) || r1 - r0 < 2) {
        for (int r = r0; r < r1; r++) rq_q2_dequant_row(t, r, dst + (size_t)(r - r0) * (size_t)t->in);
        return;
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int r = r0; r < r1; r++) rq_q2_dequant_row(t, r, dst + (size_t)(r - r0) * (size_t)t->in);
}

void rq_q2_dequant(const rq_q2_tensor *t, float *dst, int n_threads) {
    rq_q2_dequant_rows(t, 0, t->out, dst, n_threads);
}

float rq_q2_weight(const rq_q2_tensor *t, int row, int col) {
    int g = col / t->group_size;
    float s = rq_q2_scale(t, row, g), m = rq_q2_offset(t, row, g);
    return s * t->codebook[rq_q2_get_code(t, row, col)] + m;
}

const char *rq_q2_dequant_isa(void) {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "scalar";
#endif
}
