/* Matrix-vector kernels for decode steps (cpu_matvec.h): q2 codes expanded in
 * registers, fp32 rows streamed once; portable C, AVX2 and AVX-512 variants
 * chosen at run time. */
#include "cpu_matvec.h"

#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define RQ_MATVEC_X86 1
#include <cpuid.h>
#include <immintrin.h>
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Activation rows one pass over the weight serves (4 accumulators each). */
#define ROW_M 4
/* Groups whose 4-entry tables a row builds at once: 1 KiB on the stack, a
 * multiple of 16 (the AVX-512 table builder's step). */
#define LUT_GROUPS 64
/* Output rows per scheduling block, and the smallest weight (out x in) worth
 * a parallel region: below ~512k weights (~0.1 ms on one core) waking the other
 * threads (passive OpenMP waiting) costs about what splitting saves, so a small
 * model's k/v/q/o projections stay on one thread and a decode step has fewer
 * fork/joins. */
#define BLOCK_ROWS 16
#define PARALLEL_MIN_WEIGHTS (1 << 19)

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* ---- which variant -------------------------------------------------------------- */

static int detect_best(void) {
#if RQ_MATVEC_X86
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the wide registers */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return RQ_MATVEC_AVX512;
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

/* Codes of the row this far ahead are prefetched as a row starts: the hardware
 * prefetcher alone left the SIMD loops waiting on code bytes. */
#define PREFETCH_ROWS_AHEAD 4
static ALWAYS_INLINE void prefetch_bytes(const void *p, size_t n) {
    for (size_t off = 0; off < n; off += 64) __builtin_prefetch((const char *)p + off, 0, 3);
}
static ALWAYS_INLINE void prefetch_codes(const rq_q2_tensor *t, int row) {
    row += PREFETCH_ROWS_AHEAD;
    if (row < t->out) prefetch_bytes(t->codes + (size_t)row * (size_t)t->row_bytes, (size_t)t->row_bytes);
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

/* ---- AVX2 + FMA --------------------------------------------------------------------- */
#if RQ_MATVEC_X86

/* luts_scalar, 8 groups per step: the same multiply and add in every lane */
TARGET_AVX2 static ALWAYS_INLINE void luts_avx2(const float *levels, const uint16_t *s, const uint16_t *m, int n,
                                                float *lut) {
    const __m256 lv = _mm256_broadcast_ps((const __m128 *)(const void *)levels);
    const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    for (int g = 0; g < n; g += 8) {
        const int cnt = min_int(8, n - g);
        if (cnt < 8) { /* the row's last few groups: no read past them */
            luts_scalar(levels, s + g, m + g, cnt, lut + 4 * g);
            break;
        }
        const __m256 s8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(s + g)));
        const __m256 m8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(m + g)));
        for (int p = 0; 2 * p < cnt; p++) { /* groups g + 2p, g + 2p + 1 */
            const __m256i idx = _mm256_add_epi32(spread, _mm256_set1_epi32(2 * p));
            const __m256 l = _mm256_add_ps(_mm256_mul_ps(_mm256_permutevar8x32_ps(s8, idx), lv),
                                           _mm256_permutevar8x32_ps(m8, idx));
            _mm256_storeu_ps(lut + 4 * (g + 2 * p), l);
        }
    }
}

/* ---- AVX-512 --------------------------------------------------------------------------- */

/* luts_scalar, 16 groups per step */
TARGET_AVX512 static ALWAYS_INLINE void luts_avx512(const float *levels, const uint16_t *s, const uint16_t *m, int n,
                                                    float *lut) {
    const __m512 lv = _mm512_broadcast_f32x4(_mm_loadu_ps(levels));
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int g = 0; g < n; g += 16) {
        const int cnt = min_int(16, n - g);
        /* a masked load: no read past the row's last group (and no store-to-load stall of a copy) */
        const __mmask16 k = (__mmask16)((1u << cnt) - 1u);
        const __m512 s16 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, s + g));
        const __m512 m16 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, m + g));
        for (int q = 0; 4 * q < cnt; q++) { /* groups g + 4q .. g + 4q + 3 */
            const __m512i idx = _mm512_add_epi32(spread, _mm512_set1_epi32(4 * q));
            const __m512 l = _mm512_add_ps(_mm512_mul_ps(_mm512_permutexvar_ps(idx, s16), lv),
                                           _mm512_permutexvar_ps(idx, m16));
            _mm512_storeu_ps(lut + 4 * (g + 4 * q), l);
        }
    }
}

/* 8 (AVX2) or 16 (AVX-512) weights from 16 or 32 bits of codes: every lane
 * gets the word shifted to its own code, and the in-lane permute reads the 2
 * low bits of its index */
#define Q2_W8(table, shifts, cb) \
    _mm256_permutevar_ps(table, _mm256_srlv_epi32(_mm256_set1_epi32((int)rq_rd_u16(cb)), shifts))
#define Q2_W16(table, shifts, cb) \
    _mm512_permutevar_ps(table, _mm512_srlv_epi32(_mm512_set1_epi32((int)rq_rd_u32(cb)), shifts))
#define TABLE_AVX2(lut4) _mm256_broadcast_ps((const __m128 *)(const void *)(lut4))
#define TABLE_AVX512(lut4) _mm512_broadcast_f32x4(_mm_load_ps(lut4))

/* (a + b) + (c + d), then its lanes summed in a fixed order */
TARGET_AVX2 static ALWAYS_INLINE float hsum4_avx2(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 v = _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
TARGET_AVX512 static ALWAYS_INLINE float hsum4_avx512(__m512 a, __m512 b, __m512 c, __m512 d) {
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
}

/* One row of a q2 tensor dotted with M activation rows (4 | group size), COLS
 * weights per vector: LUTS builds the row's group tables (q2.h's formula),
 * TABLE broadcasts one, WEIGHTS expands COLS codes (COLS / 4 bytes) through it.
 * A ragged last group's last columns are summed one by one. */
#define Q2_ROW(name, attr, VEC, VECI, COLS, SHIFTS, ZERO, FMA, LOADX, HSUM4, LUTS, TABLE, WEIGHTS)              \
    attr static ALWAYS_INLINE void name(const rq_q2_tensor *t, int row, const float *x, const int M, float *sum) { \
        const int in = t->in, gs = t->group_size;                                                              \
        const uint8_t *codes = t->codes + (size_t)row * (size_t)t->row_bytes;                                  \
        const uint16_t *s = t->scales + (size_t)row * (size_t)t->n_groups;                                     \
        const uint16_t *m = t->offsets + (size_t)row * (size_t)t->n_groups;                                    \
        const VECI shifts = SHIFTS;                                                                            \
        VEC acc[ROW_M][4];                                                                                     \
        float tail[ROW_M] = {0};                                                                               \
        for (int mi = 0; mi < M; mi++)                                                                         \
            for (int k = 0; k < 4; k++) acc[mi][k] = ZERO();                                                   \
        float lut[4 * LUT_GROUPS] __attribute__((aligned(64)));                                                \
        prefetch_codes(t, row);                                                                                \
        for (int g0 = 0; g0 < t->n_groups; g0 += LUT_GROUPS) {                                                 \
            const int gn = min_int(LUT_GROUPS, t->n_groups - g0);                                              \
            LUTS(t->codebook, s + g0, m + g0, gn, lut);                                                        \
            for (int gi = 0; gi < gn; gi++) {                                                                  \
                const int c0 = (g0 + gi) * gs, len = min_int(gs, in - c0);                                     \
                const VEC table = TABLE(lut + 4 * gi);                                                         \
                const uint8_t *cb = codes + (c0 >> 2);                                                         \
                const float *xg = x + c0;                                                                      \
                int j = 0;                                                                                     \
                for (; j + 4 * COLS <= len; j += 4 * COLS) {                                                   \
                    const uint8_t *cj = cb + j / 4;                                                            \
                    const VEC w0 = WEIGHTS(table, shifts, cj), w1 = WEIGHTS(table, shifts, cj + COLS / 4);     \
                    const VEC w2 = WEIGHTS(table, shifts, cj + COLS / 2);                                      \
                    const VEC w3 = WEIGHTS(table, shifts, cj + 3 * COLS / 4);                                  \
                    _Pragma("GCC unroll 4") for (int mi = 0; mi < M; mi++) {                                   \
                        const float *xr = xg + (size_t)mi * in + j;                                            \
                        acc[mi][0] = FMA(w0, LOADX(xr), acc[mi][0]);                                           \
                        acc[mi][1] = FMA(w1, LOADX(xr + COLS), acc[mi][1]);                                    \
                        acc[mi][2] = FMA(w2, LOADX(xr + 2 * COLS), acc[mi][2]);                                \
                        acc[mi][3] = FMA(w3, LOADX(xr + 3 * COLS), acc[mi][3]);                                \
                    }                                                                                          \
                }                                                                                              \
                for (; j + COLS <= len; j += COLS) {                                                           \
                    const VEC w = WEIGHTS(table, shifts, cb + j / 4);                                          \
                    _Pragma("GCC unroll 4") for (int mi = 0; mi < M; mi++) acc[mi][0] =                        \
                        FMA(w, LOADX(xg + (size_t)mi * in + j), acc[mi][0]);                                   \
                }                                                                                              \
                for (; j < len; j++) {                                                                         \
                    const float w = lut[4 * gi + code_at(cb, j)];                                              \
                    for (int mi = 0; mi < M; mi++) tail[mi] += w * xg[(size_t)mi * in + j];                    \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        _Pragma("GCC unroll 4") for (int mi = 0; mi < M; mi++) sum[mi] =                                       \
            HSUM4(acc[mi][0], acc[mi][1], acc[mi][2], acc[mi][3]) + tail[mi];                                  \
    }

Q2_ROW(q2_row_avx2, TARGET_AVX2, __m256, __m256i, 8, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), _mm256_setzero_ps,
       _mm256_fmadd_ps, _mm256_loadu_ps, hsum4_avx2, luts_avx2, TABLE_AVX2, Q2_W8)
Q2_ROW(q2_row_avx512, TARGET_AVX512, __m512, __m512i, 16,
       _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), _mm512_setzero_ps,
       _mm512_fmadd_ps, _mm512_loadu_ps, hsum4_avx512, luts_avx512, TABLE_AVX512, Q2_W16)

#endif /* RQ_MATVEC_X86 */

/* ---- dense rows: fp32 and its exact compact forms ------------------------------------------ */

/* One row of a dense matrix dotted with M activation rows. PREP declares what
 * the weight expressions read (row r of W); VECW(c) is the vector of weights
 * at column c, ONEW(c) one weight, both exactly the fp32 matrix's values. */
#define DENSE_ROW(name, attr, VEC, WIDTH, ZERO, FMA, LOADX, HSUM, PREP, VECW, ONEW)                          \
    attr static ALWAYS_INLINE void name(const rq_dense_matrix *W, int r, const float *x, const int M,           \
                                        float *sum) {                                                           \
        const int in = W->in;                                                                                   \
        PREP;                                                                                                   \
        VEC acc[ROW_M][4];                                                                                      \
        float tail[ROW_M] = {0};                                                                                \
        for (int mi = 0; mi < M; mi++)                                                                          \
            for (int k = 0; k < 4; k++) acc[mi][k] = ZERO();                                                    \
        int c = 0;                                                                                              \
        for (; c + 4 * WIDTH <= in; c += 4 * WIDTH) {                                                           \
            const VEC w0 = VECW(c), w1 = VECW(c + WIDTH), w2 = VECW(c + 2 * WIDTH), w3 = VECW(c + 3 * WIDTH);   \
            _Pragma("GCC unroll 4") for (int mi = 0; mi < M; mi++) {                                            \
                const float *xr = x + (size_t)mi * in + c;                                                      \
                acc[mi][0] = FMA(w0, LOADX(xr), acc[mi][0]);                                                    \
                acc[mi][1] = FMA(w1, LOADX(xr + WIDTH), acc[mi][1]);                                            \
                acc[mi][2] = FMA(w2, LOADX(xr + 2 * WIDTH), acc[mi][2]);                                        \
                acc[mi][3] = FMA(w3, LOADX(xr + 3 * WIDTH), acc[mi][3]);                                        \
            }                                                                                                   \
        }                                                                                                       \
        for (; c + WIDTH <= in; c += WIDTH) {                                                                   \
            const VEC wv = VECW(c);                                                                             \
            _Pragma("GCC unroll 4") for (int mi = 0; mi < M; mi++) acc[mi][0] =                                 \
                FMA(wv, LOADX(x + (size_t)mi * in + c), acc[mi][0]);                                            \
        }                                                                                                       \
        for (; c < in; c++)                                                                                     \
            for (int mi = 0; mi < M; mi++) tail[mi] += ONEW(c) * x[(size_t)mi * in + c];                        \
        _Pragma("GCC unroll 4") for (int mi = 0; mi < M; mi++) sum[mi] =                                        \
            HSUM(acc[mi][0], acc[mi][1], acc[mi][2], acc[mi][3]) + tail[mi];                                    \
    }

/* expands the *_ARGS lists into DENSE_ROW's parameters */
#define DENSE_ROW_EXPAND(...) DENSE_ROW(__VA_ARGS__)

/* The four kinds' row kernels of one variant: f32_row_<sfx>, i8_row_<sfx>, ... */
#define DENSE_KINDS(sfx, SFX, attr, ARGS)                                              \
    DENSE_ROW_EXPAND(f32_row_##sfx, attr, ARGS, PREP_F32, VEC_F32_##SFX, ONE_F32)     \
    DENSE_ROW_EXPAND(i8_row_##sfx, attr, ARGS, PREP_I8, VEC_I8_##SFX, ONE_I8)         \
    DENSE_ROW_EXPAND(bf16_row_##sfx, attr, ARGS, PREP_H16, VEC_BF16_##SFX, ONE_BF16)  \
    DENSE_ROW_EXPAND(f16_row_##sfx, attr, ARGS, PREP_H16, VEC_F16_##SFX, ONE_F16)

/* What each kind's rows read: the fp32 row, int8 codes with one exact fp32
 * scale per block of 32 (w = d * q, a product that is exact by construction),
 * or 16-bit floats (bf16: the high half of the fp32 bits). */
#define PREFETCH_DENSE(row_ptr, row_bytes) \
    if (r + PREFETCH_ROWS_AHEAD < W->out) prefetch_bytes((row_ptr) + PREFETCH_ROWS_AHEAD * (size_t)in, row_bytes)
#define PREP_F32                                                   \
    const float *wr = (const float *)W->w + (size_t)r * (size_t)in; \
    PREFETCH_DENSE(wr, sizeof(float) * (size_t)in)
#define PREP_I8                                                       \
    const int8_t *qr = (const int8_t *)W->w + (size_t)r * (size_t)in; \
    const float *dr = W->d + (size_t)r * (size_t)(in / RQ_DENSE_I8_BLOCK); \
    PREFETCH_DENSE(qr, (size_t)in)
#define PREP_H16                                                         \
    const uint16_t *hr = (const uint16_t *)W->w + (size_t)r * (size_t)in; \
    PREFETCH_DENSE(hr, 2 * (size_t)in)
#define ONE_F32(c) wr[c]
#define ONE_I8(c) (dr[(c) / RQ_DENSE_I8_BLOCK] * (float)qr[c])
#define ONE_BF16(c) rq_bf16_to_f32(hr[c])
#define ONE_F16(c) rq_f16_to_f32(hr[c])

/* portable C: 4 lanes of plain floats */
typedef struct f4 {
    float v[4];
} f4;
static ALWAYS_INLINE f4 f4_zero(void) { return (f4){{0, 0, 0, 0}}; }
static ALWAYS_INLINE f4 f4_fma(f4 w, f4 x, f4 a) {
    for (int k = 0; k < 4; k++) a.v[k] += w.v[k] * x.v[k];
    return a;
}
static ALWAYS_INLINE f4 f4_load(const float *p) { return (f4){{p[0], p[1], p[2], p[3]}}; }
static ALWAYS_INLINE float f4_hsum(f4 a, f4 b, f4 c, f4 d) {
    float s[4];
    for (int k = 0; k < 4; k++) s[k] = (a.v[k] + b.v[k]) + (c.v[k] + d.v[k]);
    return (s[0] + s[1]) + (s[2] + s[3]);
}
#define F4_OF(ONE, c) ((f4){{ONE(c), ONE((c) + 1), ONE((c) + 2), ONE((c) + 3)}})
#define VEC_F32_SCALAR(c) F4_OF(ONE_F32, c)
#define VEC_I8_SCALAR(c) F4_OF(ONE_I8, c)
#define VEC_BF16_SCALAR(c) F4_OF(ONE_BF16, c)
#define VEC_F16_SCALAR(c) F4_OF(ONE_F16, c)
#define SCALAR_ARGS f4, 4, f4_zero, f4_fma, f4_load, f4_hsum
DENSE_KINDS(scalar, SCALAR, , SCALAR_ARGS)

#if RQ_MATVEC_X86
#define VEC_F32_AVX2(c) _mm256_loadu_ps(wr + (c))
#define VEC_I8_AVX2(c)                                                                                  \
    _mm256_mul_ps(_mm256_set1_ps(dr[(c) / RQ_DENSE_I8_BLOCK]),                                          \
                  _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(qr + (c))))))
#define VEC_BF16_AVX2(c)                                                                                \
    _mm256_castsi256_ps(_mm256_slli_epi32(                                                              \
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(hr + (c)))), 16))
#define VEC_F16_AVX2(c) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(hr + (c))))
#define AVX2_ARGS __m256, 8, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_loadu_ps, hsum4_avx2
DENSE_KINDS(avx2, AVX2, TARGET_AVX2, AVX2_ARGS)

#define VEC_F32_AVX512(c) _mm512_loadu_ps(wr + (c))
#define VEC_I8_AVX512(c)                                                                                \
    _mm512_mul_ps(_mm512_set1_ps(dr[(c) / RQ_DENSE_I8_BLOCK]),                                          \
                  _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(qr + (c))))))
#define VEC_BF16_AVX512(c)                                                                              \
    _mm512_castsi512_ps(_mm512_slli_epi32(                                                              \
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(hr + (c)))), 16))
#define VEC_F16_AVX512(c) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(hr + (c))))
#define AVX512_ARGS __m512, 16, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_loadu_ps, hsum4_avx512
DENSE_KINDS(avx512, AVX512, TARGET_AVX512, AVX512_ARGS)
#endif /* RQ_MATVEC_X86 */

/* ---- rows [r0, r1) of one variant, M = 1..4 activation rows ---------------------------- */

/* The body of every rows function: the row kernel with M a constant, so its
 * accumulator arrays live in registers. W: a q2 tensor or an rq_dense_matrix. */
#define DEFINE_ROWS(name, attr, row_call)                                                                        \
    attr static ALWAYS_INLINE void name##_m(const void *W, int r0, int r1, const float *x, const int M, float *y, \
                                            int ldy, bool accumulate) {                                         \
        for (int r = r0; r < r1; r++) {                                                                         \
            float sum[ROW_M];                                                                                   \
            row_call(W, r, x, M, sum);                                                                          \
            for (int mi = 0; mi < M; mi++) {                                                                    \
                float *o = y + (size_t)mi * (size_t)ldy + r;                                                    \
                *o = accumulate ? *o + sum[mi] : sum[mi];                                                       \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
    attr static void name(const void *W, int r0, int r1, const float *x, int M, float *y, int ldy,              \
                          bool accumulate) {                                                                    \
        switch (M) {                                                                                            \
        case 1: name##_m(W, r0, r1, x, 1, y, ldy, accumulate); break;                                           \
        case 2: name##_m(W, r0, r1, x, 2, y, ldy, accumulate); break;                                           \
        case 3: name##_m(W, r0, r1, x, 3, y, ldy, accumulate); break;                                           \
        default: name##_m(W, r0, r1, x, 4, y, ldy, accumulate); break;                                          \
        }                                                                                                       \
    }

DEFINE_ROWS(q2_rows_scalar, , q2_row_scalar)
DEFINE_ROWS(f32_rows_scalar, , f32_row_scalar)
DEFINE_ROWS(i8_rows_scalar, , i8_row_scalar)
DEFINE_ROWS(bf16_rows_scalar, , bf16_row_scalar)
DEFINE_ROWS(f16_rows_scalar, , f16_row_scalar)
#if RQ_MATVEC_X86
DEFINE_ROWS(q2_rows_avx2, TARGET_AVX2, q2_row_avx2)
DEFINE_ROWS(f32_rows_avx2, TARGET_AVX2, f32_row_avx2)
DEFINE_ROWS(i8_rows_avx2, TARGET_AVX2, i8_row_avx2)
DEFINE_ROWS(bf16_rows_avx2, TARGET_AVX2, bf16_row_avx2)
DEFINE_ROWS(f16_rows_avx2, TARGET_AVX2, f16_row_avx2)
DEFINE_ROWS(q2_rows_avx512, TARGET_AVX512, q2_row_avx512)
DEFINE_ROWS(f32_rows_avx512, TARGET_AVX512, f32_row_avx512)
DEFINE_ROWS(i8_rows_avx512, TARGET_AVX512, i8_row_avx512)
DEFINE_ROWS(bf16_rows_avx512, TARGET_AVX512, bf16_row_avx512)
DEFINE_ROWS(f16_rows_avx512, TARGET_AVX512, f16_row_avx512)
#endif

typedef void (*rows_fn)(const void *W, int r0, int r1, const float *x, int M, float *y, int ldy, bool accumulate);

/* All out rows, ROW_M activation rows at a time, over threads when the weight is large. */
static void run_rows(rows_fn fn, const void *W, int out, int in, const float *x, int M, float *y, int ldy,
                     bool accumulate, int n_threads) {
    const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    const bool parallel = nt > 1 && (long long)out * in >= PARALLEL_MIN_WEIGHTS && out >= 2 * BLOCK_ROWS;
    const int n_blocks = (out + BLOCK_ROWS - 1) / BLOCK_ROWS;
    for (int m0 = 0; m0 < M; m0 += ROW_M) {
        const int mm = min_int(ROW_M, M - m0);
        const float *xm = x + (size_t)m0 * (size_t)in;
        float *ym = y + (size_t)m0 * (size_t)ldy;
        if (!parallel) {
            fn(W, 0, out, xm, mm, ym, ldy, accumulate);
            continue;
        }
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int b = 0; b < n_blocks; b++)
            fn(W, b * BLOCK_ROWS, min_int(out, (b + 1) * BLOCK_ROWS), xm, mm, ym, ldy, accumulate);
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
    run_rows(fn, W, W->out, W->in, x, M, y, ldy, accumulate, n_threads);
}

void rq_dense_matvec(rq_matvec_isa isa, const rq_dense_matrix *W, const float *x, int M, float *y, int ldy,
                     bool accumulate, int n_threads) {
    static const rows_fn fns[RQ_MATVEC_N_ISA][4] = {
        {f32_rows_scalar, i8_rows_scalar, bf16_rows_scalar, f16_rows_scalar},
#if RQ_MATVEC_X86
        {f32_rows_avx2, i8_rows_avx2, bf16_rows_avx2, f16_rows_avx2},
        {f32_rows_avx512, i8_rows_avx512, bf16_rows_avx512, f16_rows_avx512},
#else
        {f32_rows_scalar, i8_rows_scalar, bf16_rows_scalar, f16_rows_scalar},
        {f32_rows_scalar, i8_rows_scalar, bf16_rows_scalar, f16_rows_scalar},
#endif
    };
    run_rows(fns[isa][W->kind], W, W->out, W->in, x, M, y, ldy, accumulate, n_threads);
}

void rq_f32_matvec(rq_matvec_isa isa, const float *w, int out, int in, const float *x, int M, float *y, int ldy,
                   bool accumulate, int n_threads) {
    const rq_dense_matrix W = {.kind = RQ_DENSE_F32, .out = out, .in = in, .w = w};
    rq_dense_matvec(isa, &W, x, M, y, ldy, accumulate, n_threads);
}

const char *rq_dense_kind_name(rq_dense_kind kind) {
    switch (kind) {
    case RQ_DENSE_I8: return "int8 blocks of 32 + fp32 scale";
    case RQ_DENSE_BF16: return "bf16";
    case RQ_DENSE_F16: return "fp16";
    default: return "fp32";
    }
}

/* ---- exact compact copies ------------------------------------------------------------------ */

/* Row r as int8 blocks: each block of 32 must be d * q exactly (bit for bit) for
 * d = max|w| / 127 and integers |q| <= 127, as a Q8_0 source dequantized in
 * fp32 gives (its d is fp16, so d * q is exact). */
static bool row_to_i8(const float *w, int in, int8_t *q, float *d) {
    for (int b = 0; b < in / RQ_DENSE_I8_BLOCK; b++) {
        const float *wb = w + (size_t)b * RQ_DENSE_I8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < RQ_DENSE_I8_BLOCK; i++) amax = fabsf(wb[i]) > amax ? fabsf(wb[i]) : amax;
        const float scale = amax / 127.0f;
        d[b] = scale;
        for (int i = 0; i < RQ_DENSE_I8_BLOCK; i++) {
            const float qf = scale > 0.0f ? nearbyintf(wb[i] / scale) : 0.0f;
            if (!(fabsf(qf) <= 127.0f)) return false; /* also NaN / Inf */
            q[b * RQ_DENSE_I8_BLOCK + i] = (int8_t)qf;
            if (rq_bits_from_f32(scale * qf) != rq_bits_from_f32(wb[i])) return false; /* -0.0, inexact */
        }
    }
    return true;
}

static bool row_to_bf16(const float *w, int in, uint16_t *h) {
    for (int i = 0; i < in; i++) {
        const uint32_t u = rq_bits_from_f32(w[i]);
        if (u & 0xffffu) return false;
        h[i] = (uint16_t)(u >> 16);
    }
    return true;
}

static bool row_to_f16(const float *w, int in, uint16_t *h) {
    for (int i = 0; i < in; i++) {
        h[i] = rq_f32_to_f16(w[i]);
        if (rq_bits_from_f32(rq_f16_to_f32(h[i])) != rq_bits_from_f32(w[i])) return false;
    }
    return true;
}

rq_status rq_dense_compact(const float *w, int out, int in, rq_dense_matrix *cm, rq_err *err) {
    *cm = (rq_dense_matrix){.kind = RQ_DENSE_F32, .out = out, .in = in, .w = w};
    const size_t n = (size_t)out * (size_t)in;
    /* the most compact exact form first: int8 blocks (1.125 bytes a weight), then 16-bit floats */
    for (int kind = RQ_DENSE_I8; kind <= RQ_DENSE_F16; kind++) {
        if (kind == RQ_DENSE_I8 && in % RQ_DENSE_I8_BLOCK) continue;
        const size_t data_bytes = kind == RQ_DENSE_I8 ? n : 2 * n;
        const size_t scale_bytes = kind == RQ_DENSE_I8 ? sizeof(float) * (n / RQ_DENSE_I8_BLOCK) : 0;
        unsigned char *mem = rq_alloc_aligned(data_bytes + scale_bytes + 64, err);
        if (!mem) return err ? err->code : RQ_ERR_NOMEM;
        float *d = (float *)(void *)(mem + ((data_bytes + 63) & ~(size_t)63));
        int fails = 0;
#pragma omp parallel for schedule(static) reduction(+ : fails)
        for (int r = 0; r < out; r++) {
            if (fails) continue; /* one failure decides: skip the rest (cheaply) */
            const float *wr = w + (size_t)r * (size_t)in;
            bool ok = kind == RQ_DENSE_I8 ? row_to_i8(wr, in, (int8_t *)mem + (size_t)r * in,
                                                      d + (size_t)r * (size_t)(in / RQ_DENSE_I8_BLOCK))
                      : kind == RQ_DENSE_BF16 ? row_to_bf16(wr, in, (uint16_t *)(void *)mem + (size_t)r * in)
                                              : row_to_f16(wr, in, (uint16_t *)(void *)mem + (size_t)r * in);
            fails += !ok;
        }
        if (!fails) {
            *cm = (rq_dense_matrix){.kind = (rq_dense_kind)kind, .out = out, .in = in, .w = mem,
                                    .d = kind == RQ_DENSE_I8 ? d : NULL, .owned = mem};
            return RQ_OK;
        }
        free(mem);
    }
    return RQ_OK;
}

size_t rq_dense_bytes(const rq_dense_matrix *cm) {
    const size_t n = (size_t)cm->out * (size_t)cm->in;
    switch (cm->kind) {
    case RQ_DENSE_I8: return n + sizeof(float) * (n / RQ_DENSE_I8_BLOCK);
    case RQ_DENSE_BF16:
    case RQ_DENSE_F16: return 2 * n;
    default: return cm->owned ? 4 * n : 0;
    }
}

void rq_dense_free(rq_dense_matrix *cm) {
    if (!cm) return;
    free(cm->owned);
    *cm = (rq_dense_matrix){0};
}

/* ---- the backend op and its cache of compact copies -------------------------------------------- */

/* Bound models (key, weight spans) and the compact copies made of their fp32
 * matrices: a copy lives while its model stays bound (the binding contract:
 * bound host arrays are not rewritten except through rebind). */
#define MAX_BOUND 8
typedef struct bound_model {
    const void *key;
    int count;
    rq_weight_span *spans;
    size_t n_spans;
} bound_model;
typedef struct compact_entry {
    const void *key; /* the model whose span holds w */
    const float *w;
    rq_dense_matrix m; /* kind F32 (pointing at w) when no exact compact form exists */
    size_t bytes;      /* what the copy holds */
} compact_entry;
struct rq_decode_cache {
    bound_model models[MAX_BOUND];
    compact_entry *entries;
    int n_entries, cap_entries;
    size_t bytes;
};

static void drop_entries(rq_decode_cache *c, const void *key) {
    int k = 0;
    for (int i = 0; i < c->n_entries; i++) {
        if (c->entries[i].key == key) {
            c->bytes -= c->entries[i].bytes;
            rq_dense_free(&c->entries[i].m);
        } else {
            c->entries[k++] = c->entries[i];
        }
    }
    c->n_entries = k;
}

void rq_decode_cache_bind(rq_decode_cache **cp, const void *key, const rq_weight_span *spans, size_t n) {
    if (!*cp) *cp = calloc(1, sizeof **cp);
    rq_decode_cache *c = *cp;
    if (!c) return; /* no cache: the kernels read the fp32 weights */
    bound_model *free_slot = NULL;
    for (int i = 0; i < MAX_BOUND; i++) {
        if (c->models[i].key == key && c->models[i].count > 0) {
            c->models[i].count++;
            return;
        }
        if (!free_slot && c->models[i].count == 0) free_slot = &c->models[i];
    }
    if (!free_slot) return; /* untracked: its matrices are never cached */
    rq_weight_span *copy = malloc(sizeof *copy * (n ? n : 1));
    if (!copy) return;
    if (n) memcpy(copy, spans, sizeof *copy * n);
    *free_slot = (bound_model){.key = key, .count = 1, .spans = copy, .n_spans = n};
}

void rq_decode_cache_unbind(rq_decode_cache *c, const void *key, bool rebind) {
    if (!c) return;
    for (int i = 0; i < MAX_BOUND; i++) {
        bound_model *b = &c->models[i];
        if (b->key != key || b->count == 0) continue;
        drop_entries(c, key); /* rewritten (rebind) or about to be freed (last unbind) */
        if (!rebind && --b->count == 0) {
            free(b->spans);
            *b = (bound_model){0};
        }
        return;
    }
}

void rq_decode_cache_free(rq_decode_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->n_entries; i++) rq_dense_free(&c->entries[i].m);
    for (int i = 0; i < MAX_BOUND; i++) free(c->models[i].spans);
    free(c->entries);
    free(c);
}

/* The model bound to the cache whose weight span is exactly w[bytes], or NULL. */
static const void *owner_of(const rq_decode_cache *c, const float *w, size_t bytes) {
    for (int i = 0; i < MAX_BOUND; i++)
        for (size_t s = 0; c->models[i].count > 0 && s < c->models[i].n_spans; s++)
            if (c->models[i].spans[s].host == (const void *)w && c->models[i].spans[s].bytes == bytes)
                return c->models[i].key;
    return NULL;
}

/* The matrix the kernels read for fp32 weight W: its compact copy, made on first
 * use when W is large, a bound model holds exactly it and the copies stay
 * within RQ_DECODE_CACHE_BUDGET; else W itself. */
static rq_dense_matrix dense_for(rq_decode_cache *c, const rq_linear *W) {
    const rq_dense_matrix plain = {.kind = RQ_DENSE_F32, .out = W->out, .in = W->in, .w = W->w};
    const size_t bytes = sizeof(float) * (size_t)W->out * (size_t)W->in;
    if (!c || bytes < RQ_DENSE_COMPACT_MIN_BYTES) return plain;
    for (int i = 0; i < c->n_entries; i++)
        if (c->entries[i].w == W->w && c->entries[i].m.out == W->out && c->entries[i].m.in == W->in)
            return c->entries[i].m;
    /* the largest copy (16-bit) must fit the budget */
    const void *key = owner_of(c, W->w, bytes);
    if (!key || c->bytes + bytes / 2 > RQ_DECODE_CACHE_BUDGET) return plain;
    if (c->n_entries == c->cap_entries) {
        int cap = c->cap_entries ? 2 * c->cap_entries : 8;
        compact_entry *ne = realloc(c->entries, sizeof *ne * (size_t)cap);
        if (!ne) return plain;
        c->entries = ne;
        c->cap_entries = cap;
    }
    compact_entry *e = &c->entries[c->n_entries];
    if (rq_dense_compact(W->w, W->out, W->in, &e->m, NULL) != RQ_OK) return plain; /* out of memory: fp32 */
    e->key = key;
    e->w = W->w;
    e->bytes = rq_dense_bytes(&e->m);
    c->bytes += e->bytes;
    c->n_entries++; /* also when no compact form exists: the check is not repeated */
    return e->m;
}

void rq_cpu_linear_rows(rq_backend *be, float *out, const float *in, const rq_linear *W, int N, bool accumulate) {
    const rq_matvec_isa isa = rq_matvec_isa_best();
    if (W->w) {
        const rq_dense_matrix m = dense_for(rq_cpu_decode_cache(be), W);
        rq_dense_matvec(isa, &m, in, N, out, W->out, accumulate, 0);
    } else {
        rq_q2_matvec(isa, W->q2, in, N, out, W->out, accumulate, 0);
    }
}
