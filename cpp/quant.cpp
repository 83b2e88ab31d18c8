// quant.cpp: fp16/bf16 conversions, row dequantization of the GGUF types this package reads,
// and decoding of ternary weight tensors into the canonical (int8 codes, fp32 scale) form.
//
// This file is the scalar reference: portable C++ with no intrinsics (it is built for baseline
// x86-64 and for other CPUs), little-endian loads done byte by byte, and arithmetic written in
// the same order as ggml's reference dequantizers so that results are bit-identical to them
// (and to gguf-py's gguf.quants, which the tests compare against).
#include "quant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "log.h"

namespace bitnet {

// ---------------------------------------------------------------------------------------------
// Scalar conversions
// ---------------------------------------------------------------------------------------------

namespace {

inline uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

inline uint32_t load_u32(const uint8_t* p) {
    return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
           (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

inline float bits_to_float(uint32_t b) {
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
}

inline uint32_t float_to_bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, sizeof b);
    return b;
}

inline float load_f32(const uint8_t* p) { return bits_to_float(load_u32(p)); }

}  // namespace

float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) {
        // inf / nan; the payload moves to the top of the fp32 mantissa.
        return bits_to_float(sign | 0x7f800000u | (mant << 13));
    }
    if (exp == 0) {
        if (mant == 0) return bits_to_float(sign);
        // Subnormal: value = mant * 2^-24. Normalise so that bit 10 is the implicit one.
        int e = -1;
        do {
            mant <<= 1;
            ++e;
        } while ((mant & 0x400u) == 0);
        mant &= 0x3ffu;
        const uint32_t e32 = static_cast<uint32_t>(127 - 15 - e);
        return bits_to_float(sign | (e32 << 23) | (mant << 13));
    }
    return bits_to_float(sign | ((exp + (127 - 15)) << 23) | (mant << 13));
}

float bf16_to_fp32(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

uint16_t fp32_to_fp16(float f) {
    const uint32_t x = float_to_bits(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) {
        // NaN: stay a (quiet) NaN, keep the top of the payload.
        return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    }
    if (a >= 0x477ff000u) {
        // >= 65520 (half-way between 65504, the largest fp16, and 65536) rounds to inf.
        return static_cast<uint16_t>(sign | 0x7c00u);
    }
    if (a < 0x38800000u) {
        // Below 2^-14: an fp16 subnormal (unit 2^-24) or zero. 2^-25 exactly is a tie to 0.
        if (a <= 0x33000000u) return sign;
        const uint32_t e = a >> 23;                 // 102..112
        const uint32_t m = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;             // 14..24
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;   // may carry into the smallest normal
        return static_cast<uint16_t>(sign | r);
    }
    // Normal range: rebias the exponent, keep 10 mantissa bits, round half to even. A carry
    // out of the mantissa correctly bumps the exponent.
    uint32_t h = ((((a >> 23) - (127 - 15)) << 10) | ((a >> 13) & 0x3ffu));
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
}

// ---------------------------------------------------------------------------------------------
// Row dequantization (ggml reference order of operations)
// ---------------------------------------------------------------------------------------------

namespace {

// Q8_0: { f16 d; int8 qs[32]; }, value = d * q.
void dequant_q8_0(const uint8_t* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += 34, y += 32) {
        const float d = fp16_to_fp32(load_u16(x));
        for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(x[2 + j])) * d;
    }
}

// Q4_0: { f16 d; u8 qs[16]; }; element j < 16 is the low nibble of qs[j], element j + 16 the
// high nibble; value = (nibble - 8) * d.
void dequant_q4_0(const uint8_t* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += 18, y += 32) {
        const float d = fp16_to_fp32(load_u16(x));
        const uint8_t* qs = x + 2;
        for (int j = 0; j < 16; ++j) {
            y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
            y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
        }
    }
}

// Q6_K: { u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d; } over 256 elements, processed as
// two halves of 128. In half h, for l < 32: ql[l] low/high nibbles give elements l and l+64,
// ql[l+32] nibbles give l+32 and l+96; qh[l] bits 1:0, 3:2, 5:4, 7:6 are the top two bits of
// elements l, l+32, l+64, l+96. Each 16-element group g has scale scales[g];
// value = d * scale * (q6 - 32), evaluated as (d * scale) * q like ggml.
void dequant_q6_k(const uint8_t* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += 210, y += 256) {
        const float d = fp16_to_fp32(load_u16(x + 208));
        const uint8_t* ql = x;
        const uint8_t* qh = x + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
        float* yy = y;
        for (int half = 0; half < 2; ++half) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                yy[l] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
                yy[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
                yy[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
                yy[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
            }
            yy += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

// TQ2_0 element n of a block: byte 32*(n/128) + n%32, bits 2*((n%128)/32) (low bits first).
inline int tq2_code(const uint8_t* qs, int n) {
    return (qs[32 * (n / 128) + (n % 32)] >> (2 * ((n % 128) / 32))) & 3;
}

// TQ2_0: { u8 qs[64]; f16 d; }, value = (code - 1) * d. Code 3 (invalid for ternary data)
// decodes to 2*d here, as in ggml; decode_ternary rejects it.
void dequant_tq2_0(const uint8_t* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += 66, y += 256) {
        const float d = fp16_to_fp32(load_u16(x + 64));
        for (int n = 0; n < 256; ++n) y[n] = static_cast<float>(tq2_code(x, n) - 1) * d;
    }
}

// TQ1_0 trit k (0 = most significant) of a packed byte: the byte is a fixed-point fraction
// v/243 of the base-3 number v, so multiplying by 3^k (mod 256) shifts trit k to the top and
// (q * 3) >> 8 reads it.
inline int tq1_trit(uint8_t q, int k) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8_t shifted = static_cast<uint8_t>(q * pow3[k]);
    return (static_cast<uint16_t>(shifted) * 3) >> 8;
}

// Calls f(element, byte_index, trit_index) for the 256 elements of a TQ1_0 block:
// qs[0..31] hold elements m + 32k (k = 0..4), qs[32..47] hold 160 + m + 16k, and
// qh[0..3] (bytes 48..51) hold 240 + j + 4k for k = 0..3.
template <typename F>
inline void tq1_for_each(F&& f) {
    for (int k = 0; k < 5; ++k)
        for (int m = 0; m < 32; ++m) f(m + 32 * k, m, k);
    for (int k = 0; k < 5; ++k)
        for (int m = 0; m < 16; ++m) f(160 + m + 16 * k, 32 + m, k);
    for (int k = 0; k < 4; ++k)
        for (int j = 0; j < 4; ++j) f(240 + j + 4 * k, 48 + j, k);
}

// TQ1_0: { u8 qs[48]; u8 qh[4]; f16 d; }, value = (trit - 1) * d.
void dequant_tq1_0(const uint8_t* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += 54, y += 256) {
        const float d = fp16_to_fp32(load_u16(x + 52));
        tq1_for_each([&](int n, int byte, int k) {
            y[n] = static_cast<float>(tq1_trit(x[byte], k) - 1) * d;
        });
    }
}

}  // namespace

void dequantize_row(TensorType type, const uint8_t* src, float* dst, int64_t n) {
    if (n < 0) fail(ErrorCode::INVALID, "dequantize_row: negative element count");
    if (type == TensorType::I2_S) {
        fail(ErrorCode::INVALID, "dequantize_row: I2_S is packed over the whole tensor, not by row; "
                                 "use decode_ternary");
    }
    const int64_t block = tensor_type_block(type);
    if (n % block != 0) {
        fail(ErrorCode::INVALID, std::string("dequantize_row: ") + std::to_string(n) +
                                     " elements is not a multiple of the " + tensor_type_name(type) +
                                     " block size " + std::to_string(block));
    }
    const int64_t nb = n / block;
    switch (type) {
        case TensorType::F32:
            for (int64_t k = 0; k < n; ++k) dst[k] = load_f32(src + 4 * k);
            return;
        case TensorType::F16:
            for (int64_t k = 0; k < n; ++k) dst[k] = fp16_to_fp32(load_u16(src + 2 * k));
            return;
        case TensorType::BF16:
            for (int64_t k = 0; k < n; ++k) dst[k] = bf16_to_fp32(load_u16(src + 2 * k));
            return;
        case TensorType::Q8_0: dequant_q8_0(src, dst, nb); return;
        case TensorType::Q4_0: dequant_q4_0(src, dst, nb); return;
        case TensorType::Q6_K: dequant_q6_k(src, dst, nb); return;
        case TensorType::TQ1_0: dequant_tq1_0(src, dst, nb); return;
        case TensorType::TQ2_0: dequant_tq2_0(src, dst, nb); return;
        case TensorType::I2_S: break;
    }
    fail(ErrorCode::INVALID, "dequantize_row: unsupported type");
}

// ---------------------------------------------------------------------------------------------
// Absmean ternarisation
// ---------------------------------------------------------------------------------------------

// beta is the fp32 mean of |W| (PyTorch computes it in fp32 with a tree reduction; a double
// accumulator cast once to float gives the correctly rounded mean, which matches PyTorch
// except, rarely, in the last bit), clamped below at 1e-5. t = clamp(rint(W / beta), -1, 1)
// with an fp32 division and round-half-to-even (nearbyint under the default rounding mode,
// like torch.round).
void ternarise_absmean(const float* w, int64_t n, int8_t* t, float* beta) {
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) {
        if (!std::isfinite(w[k])) {
            fail(ErrorCode::INVALID, "ternarise_absmean: non-finite weight at index " + std::to_string(k));
        }
        sum += std::fabs(static_cast<double>(w[k]));
    }
    float mean = n > 0 ? static_cast<float>(sum / static_cast<double>(n)) : 0.0f;
    const float b = mean < 1e-5f ? 1e-5f : mean;
    for (int64_t k = 0; k < n; ++k) {
        const float q = std::nearbyint(w[k] / b);
        t[k] = static_cast<int8_t>(q > 1.0f ? 1 : (q < -1.0f ? -1 : static_cast<int>(q)));
    }
    *beta = b;
}

// ---------------------------------------------------------------------------------------------
// Ternary decoding
// ---------------------------------------------------------------------------------------------

namespace {

[[noreturn]] void bad(const GGUFTensor& tensor, const std::string& msg) {
    fail(ErrorCode::FILE, "tensor " + quote_name(tensor.name) + ": " + msg);
}

std::string fmt_float(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
}

std::string block_where(const GGUFTensor& tensor, int64_t block) {
    const int64_t per_row = tensor.ne[0] / 256;
    const int64_t row = block / per_row;
    const int64_t col = (block % per_row) * 256;
    return "block " + std::to_string(block) + " (row " + std::to_string(row) + ", cols " +
           std::to_string(col) + ".." + std::to_string(col + 255) + ")";
}

// The per-block scales of TQ1_0/TQ2_0 must all be the one per-tensor beta of BitNet b1.58.
// Blocks with d == 0 or with all codes zero carry no information and do not vote.
class ScaleVote {
public:
    explicit ScaleVote(const GGUFTensor& tensor) : tensor_(tensor) {}

    // Checks block `block` with fp16 scale bits `d`. Returns false if its codes must be zeroed
    // (d == 0).
    bool check_scale_bits(int64_t block, uint16_t d) const {
        if ((d & 0x7c00u) == 0x7c00u) {
            bad(tensor_, block_where(tensor_, block) + " has a non-finite scale (fp16 bits 0x" + hex16(d) + ")");
        }
        if ((d & 0x7fffu) == 0) return false;
        if (d & 0x8000u) {
            bad(tensor_, block_where(tensor_, block) + " has a negative scale " +
                             fmt_float(fp16_to_fp32(d)));
        }
        return true;
    }

    void vote(int64_t block, uint16_t d) {
        if (!have_) {
            have_ = true;
            first_block_ = block;
            d_ = d;
            return;
        }
        if (d != d_) {
            bad(tensor_, block_where(tensor_, first_block_) + " has scale " + fmt_float(fp16_to_fp32(d_)) +
                             " but " + block_where(tensor_, block) + " has scale " +
                             fmt_float(fp16_to_fp32(d)) +
                             ": not a BitNet b1.58 per-tensor ternary matrix (the block scales must all "
                             "be the same beta)");
        }
    }

    float scale() const { return have_ ? fp16_to_fp32(d_) : 0.0f; }

private:
    static std::string hex16(uint16_t v) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "%04x", static_cast<unsigned>(v));
        return buf;
    }
    const GGUFTensor& tensor_;
    bool have_ = false;
    int64_t first_block_ = 0;
    uint16_t d_ = 0;
};

void decode_tq2_0(const GGUFTensor& tensor, TernaryMatrix& m) {
    ScaleVote vote(tensor);
    const int64_t nb = tensor.n_elements / 256;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* x = tensor.data + b * 66;
        int8_t* t = m.t.data() + b * 256;
        bool any = false;
        for (int n = 0; n < 256; ++n) {
            const int code = tq2_code(x, n);
            if (code == 3) {
                bad(tensor, block_where(tensor, b) + " element " + std::to_string(n) +
                                " has the invalid TQ2_0 code 3 (only 0, 1, 2 encode -1, 0, +1)");
            }
            t[n] = static_cast<int8_t>(code - 1);
            any = any || code != 1;
        }
        const uint16_t d = load_u16(x + 64);
        if (!vote.check_scale_bits(b, d)) {
            std::memset(t, 0, 256);
        } else if (any) {
            vote.vote(b, d);
        }
    }
    m.scale = vote.scale();
}

void decode_tq1_0(const GGUFTensor& tensor, TernaryMatrix& m) {
    ScaleVote vote(tensor);
    const int64_t nb = tensor.n_elements / 256;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* x = tensor.data + b * 54;
        int8_t* t = m.t.data() + b * 256;
        // Every packed byte must be the canonical encoding ceil(v * 256 / 243) of the base-3
        // number v its trits spell (for qh, the fifth trit must be 0). The reference quantizer
        // only writes such bytes; any other byte means the file was not written by a TQ1_0
        // quantizer and its codes cannot be trusted.
        for (int byte = 0; byte < 52; ++byte) {
            const uint8_t q = x[byte];
            int v = 0;
            for (int k = 0; k < 5; ++k) v = v * 3 + tq1_trit(q, k);
            const bool qh = byte >= 48;
            if ((v * 256 + 242) / 243 != q || (qh && v % 3 != 0)) {
                char hex[8];
                std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned>(q));
                bad(tensor, block_where(tensor, b) + " byte " + std::to_string(byte) + " (" + hex +
                                ") is not a valid TQ1_0 base-3 packing");
            }
        }
        bool any = false;
        tq1_for_each([&](int n, int byte, int k) {
            const int trit = tq1_trit(x[byte], k);
            t[n] = static_cast<int8_t>(trit - 1);
            any = any || trit != 1;
        });
        const uint16_t d = load_u16(x + 52);
        if (!vote.check_scale_bits(b, d)) {
            std::memset(t, 0, 256);
        } else if (any) {
            vote.vote(b, d);
        }
    }
    m.scale = vote.scale();
}

// I2_S (bitnet.cpp, REFERENCE.md 2.6): the flattened tensor in 128-element blocks of 32 bytes;
// byte j of block b holds elements 128b + j, +32, +64, +96 in bits 7:6, 5:4, 3:2, 1:0 (high
// bits first). Code 0 -> -1, 1 -> 0, 2 -> +1, 3 is invalid. The f32 scale follows at byte n/4.
void decode_i2_s(const GGUFTensor& tensor, TernaryMatrix& m) {
    const int64_t n = tensor.n_elements;
    const int64_t nb = n / 128;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* x = tensor.data + b * 32;
        int8_t* t = m.t.data() + b * 128;
        for (int j = 0; j < 32; ++j) {
            for (int g = 0; g < 4; ++g) {
                const int code = (x[j] >> (6 - 2 * g)) & 3;
                if (code == 3) {
                    const int64_t e = b * 128 + g * 32 + j;
                    bad(tensor, "element " + std::to_string(e) + " (row " + std::to_string(e / tensor.ne[0]) +
                                    ", col " + std::to_string(e % tensor.ne[0]) +
                                    ") has the invalid I2_S code 3 (only 0, 1, 2 encode -1, 0, +1)");
                }
                t[g * 32 + j] = static_cast<int8_t>(code - 1);
            }
        }
    }
    const float s = load_f32(tensor.data + n / 4);
    if (!std::isfinite(s) || s < 0.0f) {
        bad(tensor, "the I2_S scale (f32 at byte " + std::to_string(n / 4) + " of the tensor data) is " +
                        fmt_float(s) + "; it must be finite and >= 0");
    }
    m.scale = s;
}

void decode_float(const GGUFTensor& tensor, TernaryMatrix& m) {
    const int64_t n = tensor.n_elements;
    std::vector<float> w(static_cast<size_t>(n));
    dequantize_row(tensor.type, tensor.data, w.data(), n);
    float a = 0.0f;
    for (int64_t k = 0; k < n; ++k) {
        if (!std::isfinite(w[k])) {
            bad(tensor, "element " + std::to_string(k) + " (row " + std::to_string(k / tensor.ne[0]) + ", col " +
                            std::to_string(k % tensor.ne[0]) + ") is " + fmt_float(w[k]) +
                            "; weights must be finite");
        }
        a = std::max(a, std::fabs(w[k]));
    }
    if (a == 0.0f) {
        m.scale = 0.0f;   // all zero: codes already 0
        return;
    }
    // Already ternary (t * a, as written by converters that store the effective weight)?
    bool ternary = true;
    for (int64_t k = 0; k < n && ternary; ++k) {
        const float v = w[k];
        if (v == 0.0f) {
            m.t[k] = 0;
        } else if (v == a) {
            m.t[k] = 1;
        } else if (v == -a) {
            m.t[k] = -1;
        } else {
            ternary = false;
        }
    }
    if (ternary) {
        m.scale = a;
        return;
    }
    float beta = 0.0f;
    ternarise_absmean(w.data(), n, m.t.data(), &beta);
    m.scale = beta;
    m.ternarised = true;
    log_message(LogLevel::INFO, "tensor " + quote_name(tensor.name) + " (" + tensor_type_name(tensor.type) + ", [" +
                                    std::to_string(m.rows) + ", " + std::to_string(m.cols) +
                                    "]) holds full-precision weights; ternarised with absmean, beta = " +
                                    fmt_float(beta));
}

}  // namespace

TernaryMatrix decode_ternary(const GGUFTensor& tensor) {
    if (tensor.n_dims < 2 || tensor.ne[2] != 1 || tensor.ne[3] != 1) {
        bad(tensor, "a ternary weight must be a 2-D matrix, but the tensor has " + std::to_string(tensor.n_dims) +
                        " dimension(s)" + (tensor.n_dims > 2 ? " of which more than two are > 1" : ""));
    }
    switch (tensor.type) {
        case TensorType::TQ1_0: case TensorType::TQ2_0: case TensorType::I2_S:
        case TensorType::F32: case TensorType::F16: case TensorType::BF16:
            break;
        default:
            bad(tensor, std::string("type ") + tensor_type_name(tensor.type) +
                            " cannot hold a BitNet ternary matrix (expected TQ1_0, TQ2_0, I2_S, F32, F16 or BF16)");
    }
    if (!tensor.data) bad(tensor, "has no data");
    // Re-check what the reader guarantees, since a GGUFTensor may also be built by hand.
    const size_t need = tensor_nbytes(tensor.type, tensor.ne[0], tensor.n_elements, "tensor " + quote_name(tensor.name));
    if (tensor.nbytes < need) bad(tensor, "holds fewer bytes than its shape and type need");

    TernaryMatrix m;
    m.cols = tensor.ne[0];
    m.rows = tensor.ne[1];
    m.t.assign(static_cast<size_t>(tensor.n_elements), 0);
    switch (tensor.type) {
        case TensorType::TQ1_0: decode_tq1_0(tensor, m); break;
        case TensorType::TQ2_0: decode_tq2_0(tensor, m); break;
        case TensorType::I2_S: decode_i2_s(tensor, m); break;
        default: decode_float(tensor, m); break;
    }
    // Canonical form: a zero scale has all-zero codes and all-zero codes have a zero scale.
    bool any = false;
    for (int8_t v : m.t) {
        if (v != 0) {
            any = true;
            break;
        }
    }
    if (!any || m.scale == 0.0f) {
        m.scale = 0.0f;
        if (any) std::fill(m.t.begin(), m.t.end(), 0);
    }
    return m;
}

}  // namespace bitnet
