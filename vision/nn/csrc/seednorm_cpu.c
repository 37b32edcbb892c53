/*
 * SeeDNorm forward and backward for the CPU, one pass over each row.
 *
 * Built at first use by vision/nn/native.py with the machine's C compiler (-O3 -march=native
 * -fopenmp) and called through ctypes; the OpenMP runtime is the one torch already loaded.
 * The math is SEEDNORM.md sections 1, 2 and 6, with float32 statistics.
 *
 * Layout: x is (N, D) row-major, D = H * d. weight, alpha, beta and bias are float32 vectors of
 * length D (weight NULL means a gain of 1, bias NULL no shift). rinv is (N,), t is (N, H). keep
 * is an optional (N, D) byte mask of the dropout on the dynamic term, and
 * keep_scale = 1 / (1 - p). Every inner loop is branch-free so that it vectorizes.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16_t;

static inline float bf16_to_float(bf16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline bf16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)0x7fc0; /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                             /* round to nearest even */
    return (bf16_t)(u >> 16);
}

/* exp(y) for y <= 0: y = n ln2 + r with |r| <= ln2 / 2, Taylor series of degree 7 in r (relative
 * error < 1e-8), then scaled by 2^n through the exponent bits. */
static inline float exp_nonpositive(float y) {
    y = y < -87.0f ? -87.0f : y;
    const float n = nearbyintf(y * 1.44269504088896341f);
    const float r = (y - n * 0.693145751953125f) - n * 1.42860682030941723e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh with float32 accuracy and no library call, so a loop over it vectorizes: an odd Taylor
 * polynomial near 0 (where (1 - e) / (1 + e) would cancel), the exponential form elsewhere. */
static inline float tanh_f32(float x) {
    const float ax = fabsf(x);
    const float x2 = x * x;
    const float small = x * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f))));
    const float e = exp_nonpositive(-2.0f * ax);
    const float large = copysignf((1.0f - e) / (1.0f + e), x);
    return ax < 0.125f ? small : large;
}

/* Below this many elements a second thread costs more than it saves. */
#define MIN_PARALLEL_ELEMENTS 16384

#define DEFINE_IO(SUFFIX, T, TO_FLOAT, FROM_FLOAT)                                              \
    static inline void load_##SUFFIX(const T *src, float *dst, long n) {                      \
        _Pragma("omp simd") for (long i = 0; i < n; ++i) dst[i] = TO_FLOAT(src[i]);           \
    }                                                                                         \
    static inline void store_##SUFFIX(const float *src, T *dst, long n) {                     \
        _Pragma("omp simd") for (long i = 0; i < n; ++i) dst[i] = FROM_FLOAT(src[i]);         \
    }

#define IDENTITY(v) (v)
#define TO_HALF(v) ((_Float16)(v))
#define FROM_HALF(v) ((float)(v))
DEFINE_IO(f32, float, IDENTITY, IDENTITY)
DEFINE_IO(bf16, bf16_t, bf16_to_float, float_to_bf16)
DEFINE_IO(f16, _Float16, FROM_HALF, TO_HALF)

/* Per-row dropout factor of the dynamic term (keep_scale or 0) and alpha times it. */
static inline void dropout_row(const uint8_t *keep, const float *a, float keep_scale, long D,
                               float *factor, float *am) {
#pragma omp simd
    for (long i = 0; i < D; ++i) {
        factor[i] = keep[i] ? keep_scale : 0.0f;
        am[i] = a[i] * factor[i];
    }
}

/* The row kernels take has_weight / has_bias / has_dropout as compile-time constants (see the
 * dispatchers below), so every variant's inner loops load and update only what it needs. */
#define ROW_INLINE static inline __attribute__((always_inline))

ROW_INLINE void forward_row(const float *x, const float *w, const float *am, const float *b,
                            const float *bias, long D, long H, float eps, float scale, float *s,
                            float *y, float *rinv_out, float *t_out, const int has_weight,
                            const int has_bias, const long d) {
    float ss = 0.0f;
    for (long h = 0; h < H; ++h) {
        float dot = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : dot, sq)
        for (long j = 0; j < d; ++j) {
            const float xi = x[h * d + j];
            dot += xi * b[h * d + j];
            sq += xi * xi;
        }
        s[h] = dot * scale;
        ss += sq;
    }
    const float r = 1.0f / sqrtf(ss / (float)D + eps);
    *rinv_out = r;
#pragma omp simd
    for (long h = 0; h < H; ++h) t_out[h] = tanh_f32(s[h]);
    for (long h = 0; h < H; ++h) {
        const float th = t_out[h];
        const long o = h * d;
#pragma omp simd
        for (long j = 0; j < d; ++j) {
            const float gain = (has_weight ? w[o + j] : 1.0f) + am[o + j] * th;
            y[o + j] = gain * x[o + j] * r + (has_bias ? bias[o + j] : 0.0f);
        }
    }
}

/* dx of one row, and its parameter gradients added to acc = [dweight | dalpha | dbeta | dbias].
 * k is scratch of length H. */
ROW_INLINE void backward_row(const float *g, const float *x, float r, const float *t,
                             const float *w, const float *am, const float *factor, const float *b,
                             long D, long H, float scale, float *k, float *dx, float *acc,
                             const int has_weight, const int has_bias, const int has_dropout,
                             const long d) {
    float *dw = acc, *da = acc + D, *db = acc + 2 * D, *dbias = acc + 3 * D;
    float dot = 0.0f;
    for (long h = 0; h < H; ++h) {
        const long o = h * d;
        const float th = t[h];
        float c = 0.0f, dh = 0.0f;
#pragma omp simd reduction(+ : c, dh)
        for (long j = 0; j < d; ++j) {
            const float gx = g[o + j] * x[o + j];
            c += gx * am[o + j];
            dh += gx * ((has_weight ? w[o + j] : 1.0f) + am[o + j] * th);
        }
        k[h] = (1.0f - th * th) * c * r * scale; /* dL/d(dot(x, beta)) of head h */
        dot += dh;
    }
    const float coef = dot * r * r / (float)D;
    for (long h = 0; h < H; ++h) {
        const long o = h * d;
        const float th = t[h], kh = k[h];
#pragma omp simd
        for (long j = 0; j < d; ++j) {
            const float gi = g[o + j], xi = x[o + j];
            const float gn = gi * xi * r;
            const float gain = (has_weight ? w[o + j] : 1.0f) + am[o + j] * th;
            dx[o + j] = (gi * gain - xi * coef) * r + kh * b[o + j];
            if (has_weight) dw[o + j] += gn;
            da[o + j] += has_dropout ? gn * th * factor[o + j] : gn * th;
            db[o + j] += kh * xi;
            if (has_bias) dbias[o + j] += gi;
        }
    }
}

/* Head widths of the usual configurations (ViT-Ti/S/B/L and DiT with 16 heads, and 8-head
 * variants) get a copy with d fixed at compile time, so their short per-head loops unroll. */
#define FOR_HEAD_WIDTH(CALL, d)                                            \
    switch (d) {                                                           \
        case 12: CALL(12); break;                                          \
        case 16: CALL(16); break;                                          \
        case 24: CALL(24); break;                                          \
        case 32: CALL(32); break;                                          \
        case 48: CALL(48); break;                                          \
        case 64: CALL(64); break;                                          \
        case 72: CALL(72); break;                                          \
        case 96: CALL(96); break;                                          \
        default: CALL(d); break;                                           \
    }

static void forward_dispatch(const float *x, const float *w, const float *am, const float *b,
                             const float *bias, long D, long H, float eps, float scale, float *s,
                             float *y, float *rinv, float *t) {
    const long d = D / H;
#define FORWARD(HW, HB, DD) forward_row(x, w, am, b, bias, D, H, eps, scale, s, y, rinv, t, HW, HB, DD)
#define F11(DD) FORWARD(1, 1, DD)
#define F10(DD) FORWARD(1, 0, DD)
#define F01(DD) FORWARD(0, 1, DD)
#define F00(DD) FORWARD(0, 0, DD)
    if (w) {
        if (bias) { FOR_HEAD_WIDTH(F11, d) } else { FOR_HEAD_WIDTH(F10, d) }
    } else {
        if (bias) { FOR_HEAD_WIDTH(F01, d) } else { FOR_HEAD_WIDTH(F00, d) }
    }
#undef FORWARD
}

static void backward_dispatch(const float *g, const float *x, float r, const float *t,
                              const float *w, const float *am, const float *factor,
                              const float *b, long D, long H, float scale, float *k, float *dx,
                              float *acc, int has_bias, int has_dropout) {
    const long d = D / H;
#define BACKWARD(HW, HB, HD, DD) \
    backward_row(g, x, r, t, w, am, factor, b, D, H, scale, k, dx, acc, HW, HB, HD, DD)
#define B110(DD) BACKWARD(1, 1, 0, DD)
#define B100(DD) BACKWARD(1, 0, 0, DD)
#define B010(DD) BACKWARD(0, 1, 0, DD)
#define B000(DD) BACKWARD(0, 0, 0, DD)
    if (has_dropout) {
        /* dropout is a training-time option: one generic copy per weight/bias combination */
        if (w) {
            if (has_bias) BACKWARD(1, 1, 1, d); else BACKWARD(1, 0, 1, d);
        } else {
            if (has_bias) BACKWARD(0, 1, 1, d); else BACKWARD(0, 0, 1, d);
        }
    } else if (w) {
        if (has_bias) { FOR_HEAD_WIDTH(B110, d) } else { FOR_HEAD_WIDTH(B100, d) }
    } else {
        if (has_bias) { FOR_HEAD_WIDTH(B010, d) } else { FOR_HEAD_WIDTH(B000, d) }
    }
#undef BACKWARD
}

/* float32 rows are used in place; other dtypes are converted to float32 scratch and back. */
#define DEFINE_KERNELS(SUFFIX, T, DIRECT)                                                        \
    void seednorm_forward_##SUFFIX(const T *x, const float *w, const float *a, const float *b,   \
                                   const float *bias, const uint8_t *keep, float keep_scale,     \
                                   long N, long D, long H, float eps, float scale, T *y,         \
                                   float *rinv, float *t, int threads) {                         \
        _Pragma("omp parallel num_threads(threads) if (N * D >= MIN_PARALLEL_ELEMENTS)") {               \
            float *buf = (float *)malloc((4 * D + H) * sizeof(float));                           \
            float *factor = buf, *am = buf + D, *s = buf + 4 * D;                                \
            _Pragma("omp for schedule(static)") for (long n = 0; n < N; ++n) {                   \
                const float *xf = DIRECT ? (const float *)(x + n * D) : buf + 2 * D;             \
                float *yf = DIRECT ? (float *)(y + n * D) : buf + 3 * D;                         \
                if (!DIRECT) load_##SUFFIX(x + n * D, (float *)xf, D);                           \
                if (keep) dropout_row(keep + n * D, a, keep_scale, D, factor, am);               \
                forward_dispatch(xf, w, keep ? am : a, b, bias, D, H, eps, scale, s, yf,         \
                                 rinv + n, t + n * H);                                           \
                if (!DIRECT) store_##SUFFIX(yf, y + n * D, D);                                   \
            }                                                                                    \
            free(buf);                                                                           \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* partial: threads x 4 x D floats for per-thread parameter gradients [dweight | dalpha |    \
       dbeta | dbias]; their sum over threads is left in the first 4 x D entries. */            \
    void seednorm_backward_##SUFFIX(const T *g, const T *x, const float *rinv, const float *t,   \
                                    const float *w, const float *a, const float *b,              \
                                    const uint8_t *keep, float keep_scale, long N, long D,       \
                                    long H, float scale, int has_bias, T *dx, float *partial,    \
                                    int threads) {                                               \
        int used = 1;                                                                            \
        _Pragma("omp parallel num_threads(threads) if (N * D >= MIN_PARALLEL_ELEMENTS)") {               \
            _Pragma("omp single") used = omp_get_num_threads();                                  \
            float *buf = (float *)malloc((5 * D + H) * sizeof(float));                           \
            float *factor = buf, *am = buf + D, *k = buf + 5 * D;                                \
            float *acc = partial + (long)omp_get_thread_num() * 4 * D;                           \
            memset(acc, 0, 4 * D * sizeof(float));                                               \
            _Pragma("omp for schedule(static)") for (long n = 0; n < N; ++n) {                   \
                const float *gf = DIRECT ? (const float *)(g + n * D) : buf + 2 * D;             \
                const float *xf = DIRECT ? (const float *)(x + n * D) : buf + 3 * D;             \
                float *dxf = DIRECT ? (float *)(dx + n * D) : buf + 4 * D;                       \
                if (!DIRECT) {                                                                   \
                    load_##SUFFIX(g + n * D, (float *)gf, D);                                    \
                    load_##SUFFIX(x + n * D, (float *)xf, D);                                    \
                }                                                                                \
                if (keep) dropout_row(keep + n * D, a, keep_scale, D, factor, am);               \
                backward_dispatch(gf, xf, rinv[n], t + n * H, w, keep ? am : a, factor, b, D, H, \
                                  scale, k, dxf, acc, has_bias, keep != NULL);                   \
                if (!DIRECT) store_##SUFFIX(dxf, dx + n * D, D);                                 \
            }                                                                                    \
            free(buf);                                                                           \
        }                                                                                        \
        for (int i = 1; i < used; ++i) {                                                         \
            const float *src = partial + (long)i * 4 * D;                                        \
            for (long j = 0; j < 4 * D; ++j) partial[j] += src[j];                               \
        }                                                                                        \
    }

DEFINE_KERNELS(f32, float, 1)
DEFINE_KERNELS(bf16, bf16_t, 0)
DEFINE_KERNELS(f16, _Float16, 0)
