// neon.cpp: AArch64 Advanced SIMD kernels (NEON is part of the base ISA, so no run-time check;
// the signed dot-product instructions are used when the build targets them, e.g.
// -march=armv8.2-a+dotprod, and widening multiplies otherwise). Bit-exact against ref.cpp:
// the integer parts are exact sums, and the float dots keep the contract's 16-lane order
// (lanes l = i mod 16 as four 4-lane vectors, separate multiply and add, tree l+8, l+4, l+2, l+1).
#if defined(__aarch64__)
#include <arm_neon.h>

#include "kernels.h"

namespace bitnet {
namespace sim {
namespace {

// The 64 codes of one 16-byte group as four vectors: elements 0-15, 16-31, 32-47, 48-63.
inline void expand_group(const uint8_t* p, int8x16_t c[4]) {
    const uint8x16_t b = vld1q_u8(p), m = vdupq_n_u8(3);
    c[0] = vreinterpretq_s8_u8(vandq_u8(b, m));
    c[1] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(b, 2), m));
    c[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(b, 4), m));
    c[3] = vreinterpretq_s8_u8(vshrq_n_u8(b, 6));
}

inline int32x4_t mac16(int32x4_t acc, int8x16_t c, int8x16_t q) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, c, q);
#else
    // c in {0,1,2} times q in [-128,127] fits int16; pairs then widen into int32.
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(c), vget_low_s8(q)));
    return vpadalq_s16(acc, vmull_high_s8(c, q));
#endif
}

// TB activation rows against one weight row: acc = sum(c * q) - sum(q).
template <int TB>
void row_tile(const TernarySlot& s, const ActBatch& a, int64_t j, int64_t b, int32_t* acc, int64_t ldacc) {
    const uint8_t* w = s.packed.data() + j * s.row_bytes;
    const int64_t groups = s.row_bytes / 16;
    int32x4_t sum[TB];
    for (int t = 0; t < TB; ++t) sum[t] = vdupq_n_s32(0);
    for (int64_t g = 0; g < groups; ++g) {
        int8x16_t c[4];
        expand_group(w + g * 16, c);
        for (int t = 0; t < TB; ++t) {
            const int8_t* q = a.q + (b + t) * a.ldq + g * 64;
            for (int part = 0; part < 4; ++part) sum[t] = mac16(sum[t], c[part], vld1q_s8(q + 16 * part));
        }
    }
    for (int t = 0; t < TB; ++t) acc[(b + t) * ldacc + j] = vaddvq_s32(sum[t]) - a.qsum[b + t];
}

void neon_gemm(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
        int64_t b = 0;
        for (; b + 4 <= a.B; b += 4) row_tile<4>(s, a, j, b, acc, ldacc);
        for (; b < a.B; ++b) row_tile<1>(s, a, j, b, acc, ldacc);
    }
}

// The contract's reduction of 16 lanes held as four vectors (lanes 0-3, 4-7, 8-11, 12-15).
inline float reduce16(const float32x4_t v[4]) {
    const float32x4_t s = vaddq_f32(vaddq_f32(v[0], v[2]), vaddq_f32(v[1], v[3]));   // l+8, then l+4
    const float32x2_t u = vadd_f32(vget_low_f32(s), vget_high_f32(s));               // l+2
    return vget_lane_f32(u, 0) + vget_lane_f32(u, 1);                                // l+1
}

// The last count (< 16) elements after the full blocks: element k goes to lane k.
inline void tail16(float32x4_t v[4], const float* e, const float* x, int64_t count) {
    float lane[16];
    for (int k = 0; k < 4; ++k) vst1q_f32(lane + 4 * k, v[k]);
    for (int64_t k = 0; k < count; ++k) {
        const float p = e[k] * x[k];
        lane[k] = lane[k] + p;
    }
    for (int k = 0; k < 4; ++k) v[k] = vld1q_f32(lane + 4 * k);
}

void neon_dot_f16(const uint16_t* rows, int64_t ld, int64_t n_rows, const float* xs, int64_t ldx, int64_t nx,
                  int64_t n, float* out, int64_t ldo) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint16_t* e = rows + r * ld;
        for (int64_t w = 0; w < nx; ++w) {
            const float* x = xs + w * ldx;
            float32x4_t v[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
            int64_t i = 0;
            for (; i + 16 <= n; i += 16) {
                const float16x8_t h0 = vreinterpretq_f16_u16(vld1q_u16(e + i));
                const float16x8_t h1 = vreinterpretq_f16_u16(vld1q_u16(e + i + 8));
                const float32x4_t f[4] = {vcvt_f32_f16(vget_low_f16(h0)), vcvt_high_f32_f16(h0),
                                          vcvt_f32_f16(vget_low_f16(h1)), vcvt_high_f32_f16(h1)};
                for (int k = 0; k < 4; ++k) v[k] = vaddq_f32(v[k], vmulq_f32(f[k], vld1q_f32(x + i + 4 * k)));
            }
            if (i < n) {
                float conv[16];
                uint16_t h[16] = {0};
                for (int64_t k = i; k < n; ++k) h[k - i] = e[k];
                for (int k = 0; k < 4; ++k)
                    vst1q_f32(conv + 4 * k, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + 4 * k))));
                tail16(v, conv, x + i, n - i);
            }
            out[w * ldo + r] = reduce16(v);
        }
    }
}

void neon_dot_f32(const float* rows, int64_t ld, int64_t n_rows, const float* xs, int64_t ldx, int64_t nx, int64_t n,
                  float* out, int64_t ldo) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const float* e = rows + r * ld;
        for (int64_t w = 0; w < nx; ++w) {   // the row stays in L1 across the vectors
            const float* x = xs + w * ldx;
            float32x4_t v[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
            int64_t i = 0;
            for (; i + 16 <= n; i += 16)
                for (int k = 0; k < 4; ++k)
                    v[k] = vaddq_f32(v[k], vmulq_f32(vld1q_f32(e + i + 4 * k), vld1q_f32(x + i + 4 * k)));
            if (i < n) tail16(v, e + i, x + i, n - i);
            out[w * ldo + r] = reduce16(v);
        }
    }
}

void neon_dot_i8(const int8_t* rows, int64_t ld, int64_t n_rows, const int8_t* xs, int64_t ldx, int64_t nx, int64_t n,
                 int32_t* out, int64_t ldo) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const int8_t* e = rows + r * ld;
        for (int64_t w = 0; w < nx; ++w) {   // the row stays in L1 across the vectors
            const int8_t* x = xs + w * ldx;
            int32x4_t acc = vdupq_n_s32(0);
            int64_t i = 0;
            for (; i + 16 <= n; i += 16) {
                const int8x16_t a = vld1q_s8(e + i), b = vld1q_s8(x + i);
                acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
                acc = vpadalq_s16(acc, vmull_high_s8(a, b));
            }
            int32_t sum = vaddvq_s32(acc);
            for (; i < n; ++i) sum += static_cast<int32_t>(e[i]) * x[i];
            out[w * ldo + r] = sum;
        }
    }
}

uint64_t neon_read_sum(const uint8_t* p, int64_t n) {
    uint64x2_t a = vdupq_n_u64(0), b = vdupq_n_u64(0), c = vdupq_n_u64(0), d = vdupq_n_u64(0);
    for (int64_t i = 0; i < n; i += 64) {
        a = vaddq_u64(a, vld1q_u64(reinterpret_cast<const uint64_t*>(p + i)));
        b = vaddq_u64(b, vld1q_u64(reinterpret_cast<const uint64_t*>(p + i + 16)));
        c = vaddq_u64(c, vld1q_u64(reinterpret_cast<const uint64_t*>(p + i + 32)));
        d = vaddq_u64(d, vld1q_u64(reinterpret_cast<const uint64_t*>(p + i + 48)));
    }
    return vaddvq_u64(vaddq_u64(vaddq_u64(a, b), vaddq_u64(c, d)));
}

}  // namespace

const KernelTable& neon_kernels() {
    static const KernelTable table{"neon",        neon_gemm, neon_dot_f16, neon_dot_f32, neon_dot_i8, nullptr, nullptr,
                                   neon_read_sum, 1,         ref_quantize_i8};
    return table;
}

}  // namespace sim
}  // namespace bitnet
#endif
