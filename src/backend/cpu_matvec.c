/* Matrix-vector kernels for decode steps (cpu_matvec.h): q2 codes expanded in
 * registers, fp32 rows streamed once; portable C, AVX2 and AVX-512 variants
 * chosen at run time. */
#include "cpu_matvec.h"

#include <omp.h>
#include <stdatomic.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define RQ_MATVEC_X86 1
#include <cpuid.h>
#include <immintrin.h>
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_AVX512 __attribute__((target("avx512f")))
#endif

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Activation rows one pass over the weight serves (4 accumulators each). */
#define ROW_M 4
/* Groups whose 4-entry tables a row builds at once: 1 KiB on the stack, a
 * multiple of 16 (the AVX-512 table builder's step). */
#define LUT_GROUPS 64
/* Output rows per scheduling block, and the smallest weight (out x in) worth
 * a parallel region: below it fork/join costs more than the rows. */
#define BLOCK_ROWS 16
#define PARALLEL_MIN_WEIGHTS (1 << 15)

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* ---- which variant -------------------------------------------------------------- */

static int detect_best(void) {
#if RQ_MATVEC_X86
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the wide registers */
    if (__builtin_cpu_supports("avx512f")) return RQ_MATVEC_AVX512;
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) return RQ_MATVEC_AVX2;
#endif
    return RQ_MATVEC_SCALAR;
}

rq_matvec_isa rq_matvec_isa_best(void) {
    /* probed once: CPUID traps to the hypervisor in a virtual machine */
    static atomic_int best = -1;
    int b = atomic_load_explicit(&best, memory_order_relaxed);
    if (b < 0) {
        b = detect_best();
        atomic_store_explicit(&best, b, memory_order_relaxed);
    }
    return (rq_matvec_isa)b;
}

/* Every variant above the best one needs more of the CPU (AVX-512F CPUs have AVX2, FMA and F16C). */
bool rq_matvec_isa_supported(rq_matvec_isa isa) { return isa >= RQ_MATVEC_SCALAR && isa <= rq_matvec_isa_best(); }

const char *rq_matvec_isa_name(rq_matvec_isa isa) {
    switch (isa) {
    case RQ_MATVEC_AVX512: return "avx512";
    case RQ_MATVEC_AVX2: return "avx2";
    default: return "scalar";
    }
}

/* ---- group tables ------------------------------------------------------------------- */

/* The code of column c of a packed row. */
static inline unsigned code_at(const uint8_t *codes, int c) { return (codes[c >> 2] >> ((c & 3) * 2)) & 3u; }

/* lut[4 g + k] = fl(fl(s[g] * levels[k]) + m[g]) for n groups: the defining formula (q2.h) */
static void luts_scalar(const float *levels, const uint16_t *s, const uint16_t *m, int n, float *lut) {
    for (int g = 0; g < n; g++) {
        float sc = rq_f16_to_f32(s[g]), off = rq_f16_to_f32(m[g]);
        for (int k = 0; k < 4; k++) lut[4 * g + k] = sc * levels[k] + off;
    }
}

/* ---- portable C ----------------------------------------------------------------------- */

/* sum[mi] = row `row` of W . x[mi] for mi < M, four partial sums per row. */
static ALWAYS_INLINE void q2_row_scalar(const rq_q2_tensor *t, int row, const float *x, const int M, float *sum) {
    const int in = t->in, gs = t->group_size;
    const uint8_t *codes = t->codes + (size_t)row * (size_t)t->row_bytes;
    const uint16_t *s = t->scales + (size_t)row * (size_t)t->n_groups;
    const uint16_t *m = t->offsets + (size_t)row * (size_t)t->n_groups;
    float acc[ROW_M][4] = {{0}};
    float lut[4 * LUT_GROUPS];
    for (int g0 = 0; g0 < t->n_groups; g0 += LUT_GROUPS) {
        const int gn = min_int(LUT_GROUPS, t->n_groups - g0);
        luts_scalar(t->codebook, s + g0, m + g0, gn, lut);
        for (int gi = 0; gi < gn; gi++) {
            const float *l = lut + 4 * gi;
            const int c0 = (g0 + gi) * gs, c1 = min_int(c0 + gs, in);
            int c = c0;
            if ((c0 & 3) == 0) /* the group starts on a whole byte: 4 weights per byte */
                for (; c + 4 <= c1; c += 4) {
                    const unsigned b = codes[c >> 2];
                    const float w0 = l[b & 3], w1 = l[(b >> 2) & 3], w2 = l[(b >> 4) & 3], w3 = l[b >> 6];
                    for (int mi = 0; mi < M; mi++) {
                        const float *xr = x + (size_t)mi * in + c;
                        acc[mi][0] += w0 * xr[0];
                        acc[mi][1] += w1 * xr[1];
                        acc[mi][2] += w2 * xr[2];
                        acc[mi][3] += w3 * xr[3];
                    }
                }
            for (; c < c1; c++) {
                const float w = l[code_at(codes, c)];
                for (int mi = 0; mi < M; mi++) acc[mi][c & 3] += w * x[(size_t)mi * in + c];
            }
        }
    }
    for (int mi = 0; mi < M; mi++) sum[mi] = (acc[mi][0] + acc[mi][1]) + (acc[mi][2] + acc[mi][3]);
}

static ALWAYS_INLINE void f32_row_scalar(const float *w, int in, const float *x, const int M, float *sum) {
    float acc[ROW_M][4] = {{0}};
    int c = 0;
    for (; c + 4 <= in; c += 4)
        for (int mi = 0; mi < M; mi++) {
            const float *xr = x + (size_t)mi * in + c;
            for (int k = 0; k < 4; k++) acc[mi][k] += w[c + k] * xr[k];
        }
    for (; c < in; c++)
        for (int mi = 0; mi < M; mi++) acc[mi][c & 3] += w[c] * x[(size_t)mi * in + c];
    for (int mi = 0; mi < M; mi++) sum[mi] = (acc[mi][0] + acc[mi][1]) + (acc[mi][2] + acc[mi][3]);
}

/* ---- AVX2 + FMA --------------------------------------------------------------------- */
#if RQ_MATVEC_X86

/* luts_scalar, 8 groups per step: the same multiply and add in every lane */
TARGET_AVX2 static ALWAYS_INLINE void luts_avx2(const float *levels, const uint16_t *s, const uint16_t *m, int n,
                                                float *lut) {
    const __m256 lv = _mm256_broadcast_ps((const __m128 *)(const void *)levels);
    const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    for (int g = 0; g < n; g += 8) {
        const int cnt = min_int(8, n - g);
        uint16_t sb[8] = {0}, mb[8] = {0};
        memcpy(sb, s + g, sizeof(uint16_t) * (size_t)cnt);
        memcpy(mb, m + g, sizeof(uint16_t) * (size_t)cnt);
        const __m256 s8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)sb));
        const __m256 m8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)mb));
        for (int p = 0; 2 * p < cnt; p++) { /* groups g + 2p, g + 2p + 1 */
            const __m256i idx = _mm256_add_epi32(spread, _mm256_set1_epi32(2 * p));
            const __m256 l = _mm256_add_ps(_mm256_mul_ps(_mm256_permutevar8x32_ps(s8, idx), lv),
                                           _mm256_permutevar8x32_ps(m8, idx));
            _mm256_storeu_ps(lut + 4 * (g + 2 * p), l);
        }
    }
}

/* 8 weights from 16 bits of codes: every lane gets the word shifted to its own
 * code, and the in-lane permute reads the 2 low bits of its index */
#define Q2_W8(table, shifts, cb) \
    _mm256_permutevar_ps(table, _mm256_srlv_epi32(_mm256_set1_epi32((int)rq_rd_u16(cb)), shifts))

TARGET_AVX2 static ALWAYS_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TARGET_AVX2 static ALWAYS_INLINE void q2_row_avx2(const rq_q2_tensor *t, int row, const float *x, const int M,
                                                  float *sum) {
    const int in = t->in, gs = t->group_size;
    const uint8_t *codes = t->codes + (size_t)row * (size_t)t->row_bytes;
    const uint16_t *s = t->scales + (size_t)row * (size_t)t->n_groups;
    const uint16_t *m = t->offsets + (size_t)row * (size_t)t->n_groups;
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    __m256 acc[ROW_M][4];
    float tail[ROW_M] = {0};
    for (int mi = 0; mi < M; mi++)
        for (int k = 0; k < 4; k++) acc[mi][k] = _mm256_setzero_ps();
    float lut[4 * LUT_GROUPS] __attribute__((aligned(32)));
    for (int g0 = 0; g0 < t->n_groups; g0 += LUT_GROUPS) {
        const int gn = min_int(LUT_GROUPS, t->n_groups - g0);
        luts_avx2(t->codebook, s + g0, m + g0, gn, lut);
        for (int gi = 0; gi < gn; gi++) {
            const int c0 = (g0 + gi) * gs, len = min_int(gs, in - c0);
            const __m256 table = _mm256_broadcast_ps((const __m128 *)(const void *)(lut + 4 * gi));
            const uint8_t *cb = codes + (c0 >> 2);
            const float *xg = x + c0;
            int j = 0;
            for (; j + 32 <= len; j += 32) {
                const __m256 w0 = Q2_W8(table, shifts, cb + j / 4), w1 = Q2_W8(table, shifts, cb + j / 4 + 2);
                const __m256 w2 = Q2_W8(table, shifts, cb + j / 4 + 4), w3 = Q2_W8(table, shifts, cb + j / 4 + 6);
#pragma GCC unroll 4
                for (int mi = 0; mi < M; mi++) {
                    const float *xr = xg + (size_t)mi * in + j;
                    acc[mi][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[mi][0]);
                    acc[mi][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[mi][1]);
                    acc[mi][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), acc[mi][2]);
                    acc[mi][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), acc[mi][3]);
                }
            }
            for (; j + 8 <= len; j += 8) {
                const __m256 w = Q2_W8(table, shifts, cb + j / 4);
#pragma GCC unroll 4
                for (int mi = 0; mi < M; mi++)
                    acc[mi][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xg + (size_t)mi * in + j), acc[mi][0]);
            }
            for (; j < len; j++) { /* a ragged last group */
                const float w = lut[4 * gi + code_at(cb, j)];
                for (int mi = 0; mi < M; mi++) tail[mi] += w * xg[(size_t)mi * in + j];
            }
        }
    }
#pragma GCC unroll 4
    for (int mi = 0; mi < M; mi++)
        sum[mi] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[mi][0], acc[mi][1]), _mm256_add_ps(acc[mi][2], acc[mi][3]))) +
                  tail[mi];
}

TARGET_AVX2 static ALWAYS_INLINE void f32_row_avx2(const float *w, int in, const float *x, const int M, float *sum) {
    __m256 acc[ROW_M][4];
    float tail[ROW_M] = {0};
    for (int mi = 0; mi < M; mi++)
        for (int k = 0; k < 4; k++) acc[mi][k] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 32 <= in; c += 32) {
        const __m256 w0 = _mm256_loadu_ps(w + c), w1 = _mm256_loadu_ps(w + c + 8);
        const __m256 w2 = _mm256_loadu_ps(w + c + 16), w3 = _mm256_loadu_ps(w + c + 24);
#pragma GCC unroll 4
        for (int mi = 0; mi < M; mi++) {
            const float *xr = x + (size_t)mi * in + c;
            acc[mi][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[mi][0]);
            acc[mi][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[mi][1]);
            acc[mi][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), acc[mi][2]);
            acc[mi][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), acc[mi][3]);
        }
    }
    for (; c + 8 <= in; c += 8) {
        const __m256 wv = _mm256_loadu_ps(w + c);
#pragma GCC unroll 4
        for (int mi = 0; mi < M; mi++)
            acc[mi][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)mi * in + c), acc[mi][0]);
    }
    for (; c < in; c++)
        for (int mi = 0; mi < M; mi++) tail[mi] += w[c] * x[(size_t)mi * in + c];
#pragma GCC unroll 4
    for (int mi = 0; mi < M; mi++)
        sum[mi] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[mi][0], acc[mi][1]), _mm256_add_ps(acc[mi][2], acc[mi][3]))) +
                  tail[mi];
}

/* ---- AVX-512 --------------------------------------------------------------------------- */

/* luts_scalar, 16 groups per step */
TARGET_AVX512 static ALWAYS_INLINE void luts_avx512(const float *levels, const uint16_t *s, const uint16_t *m, int n,
                                                    float *lut) {
    const __m512 lv = _mm512_broadcast_f32x4(_mm_loadu_ps(levels));
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int g = 0; g < n; g += 16) {
        const int cnt = min_int(16, n - g);
        uint16_t sb[16] = {0}, mb[16] = {0};
        memcpy(sb, s + g, sizeof(uint16_t) * (size_t)cnt);
        memcpy(mb, m + g, sizeof(uint16_t) * (size_t)cnt);
        const __m512 s16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)sb));
        const __m512 m16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)mb));
        for (int q = 0; 4 * q < cnt; q++) { /* groups g + 4q .. g + 4q + 3 */
            const __m512i idx = _mm512_add_epi32(spread, _mm512_set1_epi32(4 * q));
            const __m512 l = _mm512_add_ps(_mm512_mul_ps(_mm512_permutexvar_ps(idx, s16), lv),
                                           _mm512_permutexvar_ps(idx, m16));
            _mm512_storeu_ps(lut + 4 * (g + 4 * q), l);
        }
    }
}

/* 16 weights from 32 bits of codes (as Q2_W8) */
#define Q2_W16(table, shifts, cb) \
    _mm512_permutevar_ps(table, _mm512_srlv_epi32(_mm512_set1_epi32((int)rq_rd_u32(cb)), shifts))

TARGET_AVX512 static ALWAYS_INLINE void q2_row_avx512(const rq_q2_tensor *t, int row, const float *x, const int M,
                                                      float *sum) {
    const int in = t->in, gs = t->group_size;
    const uint8_t *codes = t->codes + (size_t)row * (size_t)t->row_bytes;
    const uint16_t *s = t->scales + (size_t)row * (size_t)t->n_groups;
    const uint16_t *m = t->offsets + (size_t)row * (size_t)t->n_groups;
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    __m512 acc[ROW_M][4];
    float tail[ROW_M] = {0};
    for (int mi = 0; mi < M; mi++)
        for (int k = 0; k < 4; k++) acc[mi][k] = _mm512_setzero_ps();
    float lut[4 * LUT_GROUPS] __attribute__((aligned(64)));
    for (int g0 = 0; g0 < t->n_groups; g0 += LUT_GROUPS) {
        const int gn = min_int(LUT_GROUPS, t->n_groups - g0);
        luts_avx512(t->codebook, s + g0, m + g0, gn, lut);
        for (int gi = 0; gi < gn; gi++) {
            const int c0 = (g0 + gi) * gs, len = min_int(gs, in - c0);
            const __m512 table = _mm512_broadcast_f32x4(_mm_load_ps(lut + 4 * gi));
            const uint8_t *cb = codes + (c0 >> 2);
            const float *xg = x + c0;
            int j = 0;
            for (; j + 64 <= len; j += 64) {
                const __m512 w0 = Q2_W16(table, shifts, cb + j / 4), w1 = Q2_W16(table, shifts, cb + j / 4 + 4);
                const __m512 w2 = Q2_W16(table, shifts, cb + j / 4 + 8), w3 = Q2_W16(table, shifts, cb + j / 4 + 12);
#pragma GCC unroll 4
                for (int mi = 0; mi < M; mi++) {
                    const float *xr = xg + (size_t)mi * in + j;
                    acc[mi][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc[mi][0]);
                    acc[mi][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc[mi][1]);
                    acc[mi][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xr + 32), acc[mi][2]);
                    acc[mi][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xr + 48), acc[mi][3]);
                }
            }
            for (; j + 16 <= len; j += 16) {
                const __m512 w = Q2_W16(table, shifts, cb + j / 4);
#pragma GCC unroll 4
                for (int mi = 0; mi < M; mi++)
                    acc[mi][0] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xg + (size_t)mi * in + j), acc[mi][0]);
            }
            for (; j < len; j++) { /* a ragged last group */
                const float w = lut[4 * gi + code_at(cb, j)];
                for (int mi = 0; mi < M; mi++) tail[mi] += w * xg[(size_t)mi * in + j];
            }
        }
    }
#pragma GCC unroll 4
    for (int mi = 0; mi < M; mi++)
        sum[mi] = _mm512_reduce_add_ps(
                      _mm512_add_ps(_mm512_add_ps(acc[mi][0], acc[mi][1]), _mm512_add_ps(acc[mi][2], acc[mi][3]))) +
                  tail[mi];
}

TARGET_AVX512 static ALWAYS_INLINE void f32_row_avx512(const float *w, int in, const float *x, const int M,
                                                       float *sum) {
    __m512 acc[ROW_M][4];
    float tail[ROW_M] = {0};
    for (int mi = 0; mi < M; mi++)
        for (int k = 0; k < 4; k++) acc[mi][k] = _mm512_setzero_ps();
    int c = 0;
    for (; c + 64 <= in; c += 64) {
        const __m512 w0 = _mm512_loadu_ps(w + c), w1 = _mm512_loadu_ps(w + c + 16);
        const __m512 w2 = _mm512_loadu_ps(w + c + 32), w3 = _mm512_loadu_ps(w + c + 48);
#pragma GCC unroll 4
        for (int mi = 0; mi < M; mi++) {
            const float *xr = x + (size_t)mi * in + c;
            acc[mi][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc[mi][0]);
            acc[mi][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc[mi][1]);
            acc[mi][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xr + 32), acc[mi][2]);
            acc[mi][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xr + 48), acc[mi][3]);
        }
    }
    for (; c + 16 <= in; c += 16) {
        const __m512 wv = _mm512_loadu_ps(w + c);
#pragma GCC unroll 4
        for (int mi = 0; mi < M; mi++)
            acc[mi][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + (size_t)mi * in + c), acc[mi][0]);
    }
    for (; c < in; c++)
        for (int mi = 0; mi < M; mi++) tail[mi] += w[c] * x[(size_t)mi * in + c];
#pragma GCC unroll 4
    for (int mi = 0; mi < M; mi++)
        sum[mi] = _mm512_reduce_add_ps(
                      _mm512_add_ps(_mm512_add_ps(acc[mi][0], acc[mi][1]), _mm512_add_ps(acc[mi][2], acc[mi][3]))) +
                  tail[mi];
}
#endif /* RQ_MATVEC_X86 */

/* ---- rows [r0, r1) of one variant, M = 1..4 activation rows ---------------------------- */

/* The body of every rows function: the row kernel with M a constant, so its
 * accumulator arrays live in registers. */
#define DEFINE_ROWS(name, attr, row_call)                                                                        \
    attr static ALWAYS_INLINE void name##_m(const void *W, size_t ldw, int in, int r0, int r1, const float *x,  \
                                            const int M, float *y, int ldy, bool accumulate) {                 \
        for (int r = r0; r < r1; r++) {                                                                         \
            float sum[ROW_M];                                                                                   \
            row_call;                                                                                           \
            for (int mi = 0; mi < M; mi++) {                                                                    \
                float *o = y + (size_t)mi * (size_t)ldy + r;                                                    \
                *o = accumulate ? *o + sum[mi] : sum[mi];                                                       \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
    attr static void name(const void *W, size_t ldw, int in, int r0, int r1, const float *x, int M, float *y,   \
                          int ldy, bool accumulate) {                                                           \
        switch (M) {                                                                                            \
        case 1: name##_m(W, ldw, in, r0, r1, x, 1, y, ldy, accumulate); break;                                  \
        case 2: name##_m(W, ldw, in, r0, r1, x, 2, y, ldy, accumulate); break;                                  \
        case 3: name##_m(W, ldw, in, r0, r1, x, 3, y, ldy, accumulate); break;                                  \
        default: name##_m(W, ldw, in, r0, r1, x, 4, y, ldy, accumulate); break;                                 \
        }                                                                                                       \
    }

/* W: the q2 tensor (ldw unused) or the fp32 matrix with row stride ldw */
DEFINE_ROWS(q2_rows_scalar, , q2_row_scalar(W, r, x, M, sum))
DEFINE_ROWS(f32_rows_scalar, , f32_row_scalar((const float *)W + (size_t)r * ldw, in, x, M, sum))
#if RQ_MATVEC_X86
DEFINE_ROWS(q2_rows_avx2, TARGET_AVX2, q2_row_avx2(W, r, x, M, sum))
DEFINE_ROWS(f32_rows_avx2, TARGET_AVX2, f32_row_avx2((const float *)W + (size_t)r * ldw, in, x, M, sum))
DEFINE_ROWS(q2_rows_avx512, TARGET_AVX512, q2_row_avx512(W, r, x, M, sum))
DEFINE_ROWS(f32_rows_avx512, TARGET_AVX512, f32_row_avx512((const float *)W + (size_t)r * ldw, in, x, M, sum))
#endif

typedef void (*rows_fn)(const void *W, size_t ldw, int in, int r0, int r1, const float *x, int M, float *y, int ldy,
                        bool accumulate);

/* All out rows, ROW_M activation rows at a time, over threads when the weight is large. */
static void run_rows(rows_fn fn, const void *W, size_t ldw, int out, int in, const float *x, int M, float *y,
                     int ldy, bool accumulate, int n_threads) {
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    const bool parallel = nt > 1 && (long long)out * in >= PARALLEL_MIN_WEIGHTS && out >= 2 * BLOCK_ROWS;
    const int n_blocks = (out + BLOCK_ROWS - 1) / BLOCK_ROWS;
    for (int m0 = 0; m0 < M; m0 += ROW_M) {
        const int mm = min_int(ROW_M, M - m0);
        const float *xm = x + (size_t)m0 * (size_t)in;
        float *ym = y + (size_t)m0 * (size_t)ldy;
        if (!parallel) {
            fn(W, ldw, in, 0, out, xm, mm, ym, ldy, accumulate);
            continue;
        }
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int b = 0; b < n_blocks; b++)
            fn(W, ldw, in, b * BLOCK_ROWS, min_int(out, (b + 1) * BLOCK_ROWS), xm, mm, ym, ldy, accumulate);
    }
}

void rq_q2_matvec(rq_matvec_isa isa, const rq_q2_tensor *W, const float *x, int M, float *y, int ldy,
                  bool accumulate, int n_threads) {
    rows_fn fn = q2_rows_scalar;
#if RQ_MATVEC_X86
    /* the SIMD loops need groups that start on whole bytes (4 | group size);
       others straddle bytes and take the portable loop */
    if (W->group_size % 4 == 0) {
        if (isa == RQ_MATVEC_AVX512) fn = q2_rows_avx512;
        else if (isa == RQ_MATVEC_AVX2) fn = q2_rows_avx2;
    }
#endif
    run_rows(fn, W, 0, W->out, W->in, x, M, y, ldy, accumulate, n_threads);
}

void rq_f32_matvec(rq_matvec_isa isa, const float *w, int out, int in, const float *x, int M, float *y, int ldy,
                   bool accumulate, int n_threads) {
    rows_fn fn = f32_rows_scalar;
#if RQ_MATVEC_X86
    if (isa == RQ_MATVEC_AVX512) fn = f32_rows_avx512;
    else if (isa == RQ_MATVEC_AVX2) fn = f32_rows_avx2;
#endif
    run_rows(fn, w, (size_t)in, out, in, x, M, y, ldy, accumulate, n_threads);
}

void rq_cpu_linear_rows(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate) {
    const rq_matvec_isa isa = rq_matvec_isa_best();
    if (W->w) rq_f32_matvec(isa, W->w, W->out, W->in, in, N, out, W->out, accumulate, 0);
    else rq_q2_matvec(isa, W->q2, in, N, out, W->out, accumulate, 0);
}
