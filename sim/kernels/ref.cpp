// ref.cpp: the scalar reference kernel, the specification every SIMD kernel must match bit
// for bit. Readable first: decode one row of codes to t in {-1,0,1}, then a plain int32 dot
// product against each activation row.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../multiversion.h"
#include "kernels.h"

namespace bitnet {
namespace sim {

void pack_slot(const int8_t* t, int64_t n, int64_t k, float scale, TernarySlot& slot) {
    slot.n = n;
    slot.k = k;
    slot.row_bytes = slot_row_bytes(k);
    slot.scale = scale;
    // Padding codes are 1 (t = 0): every pad byte is 0b01010101.
    slot.packed.assign(static_cast<size_t>(n * slot.row_bytes), 0x55);
    const int64_t full = k / kGroup;   // groups without padding
    for (int64_t r = 0; r < n; ++r) {
        uint8_t* row = slot.packed.data() + r * slot.row_bytes;
        const int8_t* src = t + r * k;
        for (int64_t g = 0; g < full; ++g) {
            const int8_t* s = src + g * kGroup;
            uint8_t* dst = row + g * 16;
            for (int m = 0; m < 16; ++m)
                dst[m] = static_cast<uint8_t>((s[m] + 1) | ((s[m + 16] + 1) << 2) | ((s[m + 32] + 1) << 4) |
                                              ((s[m + 48] + 1) << 6));
        }
        for (int64_t c = full * kGroup; c < k; ++c) {   // the padded tail group
            const int64_t e = c % kGroup;
            uint8_t& byte = row[full * 16 + e % 16];
            const int shift = 2 * static_cast<int>(e / 16);
            const uint8_t code = static_cast<uint8_t>(src[c] + 1);
            byte = static_cast<uint8_t>((byte & ~(3u << shift)) | (code << shift));
        }
    }
}

namespace {

void ref_gemm(const TernarySlot& slot, const ActBatch& act, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    const int64_t K = slot.k;
    std::vector<int8_t> row(static_cast<size_t>(K));
    for (int64_t j = j0; j < j1; ++j) {
        for (int64_t i = 0; i < K; ++i) row[i] = slot.get(j, i);
        for (int64_t b = 0; b < act.B; ++b) {
            const int8_t* x = act.q + b * act.ldq;
            int32_t sum = 0;
            for (int64_t i = 0; i < K; ++i) sum += static_cast<int32_t>(x[i]) * row[i];
            acc[b * ldacc + j] = sum;
        }
    }
}

float fp16_bits_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {   // subnormal: normalise
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                --exp;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    static_assert(sizeof f == sizeof bits, "");
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
}

// The summation order is part of the contract (docs/NUMERICS.md "Output head") so that every
// kernel gives bit-identical logits and attention scores: 16 interleaved partial sums (lane l
// takes the elements i = l mod 16, in order; multiply and add rounded separately, no FMA),
// then a fixed tree: lanes l + 8, then l + 4, l + 2, l + 1. Rows of T (fp16 bits or fp32),
// each element made fp32 by to_f32, against nx fp32 vectors.
template <typename T, typename ToF32>
void ordered_dots(const T* rows, int64_t ld, int64_t n_rows, const float* xs, int64_t ldx, int64_t nx, int64_t n,
                  float* outs, int64_t ldo, ToF32 to_f32) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const T* e = rows + r * ld;
        for (int64_t w = 0; w < nx; ++w) {
            const float* x = xs + w * ldx;
            float acc[16] = {0};
            for (int64_t i = 0; i < n; ++i) {
                const float p = to_f32(e[i]) * x[i];
                acc[i % 16] = acc[i % 16] + p;
            }
            for (int s = 8; s >= 1; s /= 2)
                for (int l = 0; l < s; ++l) acc[l] = acc[l] + acc[l + s];
            outs[w * ldo + r] = acc[0];
        }
    }
}

void ref_dot_f16(const uint16_t* rows, int64_t ld, int64_t n_rows, const float* xs, int64_t ldx, int64_t nx, int64_t n,
                 float* outs, int64_t ldo) {
    ordered_dots(rows, ld, n_rows, xs, ldx, nx, n, outs, ldo, fp16_bits_to_float);
}

void ref_dot_f32(const float* rows, int64_t ld, int64_t n_rows, const float* xs, int64_t ldx, int64_t nx, int64_t n,
                 float* outs, int64_t ldo) {
    ordered_dots(rows, ld, n_rows, xs, ldx, nx, n, outs, ldo, [](float v) { return v; });
}

void ref_dot_i8(const int8_t* rows, int64_t ld, int64_t n_rows, const int8_t* x, int64_t ldx, int64_t nx, int64_t n,
                int32_t* out, int64_t ldo) {
    for (int64_t w = 0; w < nx; ++w)
        for (int64_t r = 0; r < n_rows; ++r) {
            int32_t sum = 0;
            for (int64_t i = 0; i < n; ++i) sum += static_cast<int32_t>(rows[r * ld + i]) * x[w * ldx + i];
            out[w * ldo + r] = sum;
        }
}

uint64_t ref_read_sum(const uint8_t* p, int64_t n) {
    uint64_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < n; i += 64) {
        uint64_t w[8];
        __builtin_memcpy(w, p + i, sizeof w);
        for (int k = 0; k < 8; ++k) s[k] += w[k];
    }
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

// Round half to even, as std::nearbyint under the default rounding mode (and torch.round), for
// |v| < 2^22 (and NaN, which stays NaN): adding and subtracting 1.5 * 2^23 leaves v rounded to
// an integer by the fp32 addition itself. Branch-free and vectorisable, where nearbyintf is a
// library call per element.
inline float round_half_even_small(float v) {
    constexpr float kMagic = 12582912.0f;   // 1.5 * 2^23
    return (v + kMagic) - kMagic;
}
}  // namespace

BITNET_HOST_CLONES float ref_quantize_i8(const float* x, int64_t n, int8_t* q) {
    // amax = max |x_i| over the non-NaN x_i (std::max(amax, NaN) skips NaN), as an integer
    // maximum of the bit patterns: for non-negative floats (|x| clears the sign; -0 -> +0) the
    // integer order is the float order, and NaNs (above 0x7F800000) count as 0 (a bit mask: as
    // a select, GCC keeps the loop scalar). Exact in any order, so the loop vectorises (a float
    // max reduction does not without -ffast-math).
    uint32_t mbits = 0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t b;
        std::memcpy(&b, x + i, 4);
        b &= 0x7FFFFFFFu;
        b &= 0u - static_cast<uint32_t>(b <= 0x7F800000u);
        mbits = std::max(mbits, b);
    }
    float amax;
    std::memcpy(&amax, &mbits, 4);
    const float s = 127.0f / std::max(amax, 1e-5f);
    // |x * s| <= 127 * (1 + 2^-23) here (or NaN), inside round_half_even_small's range.
    for (int64_t i = 0; i < n; ++i) {
        float r = round_half_even_small(x[i] * s);
        r = r > -128.0f ? r : -128.0f;   // NaN -> -128, as std::max(-128.0f, NaN)
        r = r < 127.0f ? r : 127.0f;
        q[i] = static_cast<int8_t>(static_cast<int32_t>(r));
    }
    return s;
}

const KernelTable& ref_kernels() {
    static const KernelTable table{"ref",        ref_gemm, ref_dot_f16, ref_dot_f32, ref_dot_i8, nullptr, nullptr,
                                   ref_read_sum, 1,        ref_quantize_i8};
    return table;
}

}  // namespace sim
}  // namespace bitnet
