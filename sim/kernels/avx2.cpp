// avx2.cpp: AVX2 kernels (compiled with -mavx2 -mfma -mf16c; called only after dispatch.cpp
// checked the CPU).
//
// GEMM: a 16-byte group of the slot layout is broadcast to both 128-bit lanes and shifted by
// (0 | 2) and (4 | 6) bits per lane, giving codes c = t + 1 of elements 0..31 and 32..63 in
// natural order. VPMADDUBSW (unsigned codes x signed activations; pair sums are at most
// 2*2*128 in magnitude, so no saturation) then VPMADDWD against ones gives int32 partial
// sums; acc = sum(c * q) - sum(q).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

namespace bitnet {
namespace sim {
namespace {

inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

template <int RB, int TB>
void tile(const TernarySlot& s, const ActBatch& a, int64_t j, int64_t b, int32_t* acc, int64_t ldacc) {
    const __m256i sh_lo = _mm256_set_epi64x(2, 2, 0, 0);
    const __m256i sh_hi = _mm256_set_epi64x(6, 6, 4, 4);
    const __m256i mask3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t G = s.row_bytes / 16;
    __m256i sum[RB][TB];
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t) sum[r][t] = _mm256_setzero_si256();
    const uint8_t* w0 = s.packed.data() + j * s.row_bytes;
    for (int64_t g = 0; g < G; ++g) {
        __m256i wl[RB], wh[RB];
        for (int r = 0; r < RB; ++r) {
            const __m256i v = _mm256_broadcastsi128_si256(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + r * s.row_bytes + g * 16)));
            wl[r] = _mm256_and_si256(_mm256_srlv_epi64(v, sh_lo), mask3);
            wh[r] = _mm256_and_si256(_mm256_srlv_epi64(v, sh_hi), mask3);
        }
        for (int t = 0; t < TB; ++t) {
            const int8_t* q = a.q + (b + t) * a.ldq + g * 64;
            const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
            const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32));
            for (int r = 0; r < RB; ++r) {
                const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(wl[r], ql), _mm256_maddubs_epi16(wh[r], qh));
                sum[r][t] = _mm256_add_epi32(sum[r][t], _mm256_madd_epi16(p, ones));
            }
        }
    }
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t) acc[(b + t) * ldacc + j + r] = hsum_epi32(sum[r][t]) - a.qsum[b + t];
}

template <int RB>
void rows(const TernarySlot& s, const ActBatch& a, int64_t j, int32_t* acc, int64_t ldacc) {
    int64_t b = 0;
    for (; b + 3 <= a.B; b += 3) tile<RB, 3>(s, a, j, b, acc, ldacc);
    for (; b < a.B; ++b) tile<RB, 1>(s, a, j, b, acc, ldacc);
}

void avx2_gemm(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) rows<4>(s, a, j, acc, ldacc);
    for (; j < j1; ++j) rows<1>(s, a, j, acc, ldacc);
}

// One fp16 row against XB vectors: the 16 lanes of the contract's order are two ymm halves.
template <int XB>
void dot_f16_tile(const uint16_t* e, const float* x, int64_t ldx, int64_t n, float* out, int64_t ldo) {
    __m256 a0[XB], a1[XB];   // lanes 0..7 and 8..15 of each vector's sum
    for (int w = 0; w < XB; ++w) a0[w] = a1[w] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 e0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(e + i)));
        const __m256 e1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(e + i + 8)));
        for (int w = 0; w < XB; ++w) {
            a0[w] = _mm256_add_ps(a0[w], _mm256_mul_ps(e0, _mm256_loadu_ps(x + w * ldx + i)));
            a1[w] = _mm256_add_ps(a1[w], _mm256_mul_ps(e1, _mm256_loadu_ps(x + w * ldx + i + 8)));
        }
    }
    for (int w = 0; w < XB; ++w) {
        const float* xw = x + w * ldx;
        alignas(32) float lane[16];
        _mm256_store_ps(lane, a0[w]);
        _mm256_store_ps(lane + 8, a1[w]);
        for (int64_t k = i; k < n; ++k) {
            const float p = _cvtsh_ss(e[k]) * xw[k];
            lane[k % 16] = lane[k % 16] + p;
        }
        const __m256 s8 = _mm256_add_ps(_mm256_load_ps(lane), _mm256_load_ps(lane + 8));
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        out[w * ldo] = _mm_cvtss_f32(s1);
    }
}

void avx2_dot_f16(const uint16_t* rows_, int64_t ld, int64_t n_rows, const float* x, int64_t ldx, int64_t nx,
                  int64_t n, float* out, int64_t ldo) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint16_t* e = rows_ + r * ld;
        int64_t w = 0;
        for (; w + 4 <= nx; w += 4) dot_f16_tile<4>(e, x + w * ldx, ldx, n, out + w * ldo + r, ldo);
        if (w + 2 <= nx) dot_f16_tile<2>(e, x + w * ldx, ldx, n, out + w * ldo + r, ldo), w += 2;
        if (w < nx) dot_f16_tile<1>(e, x + w * ldx, ldx, n, out + w * ldo + r, ldo);
    }
}

void avx2_dot_f32(const float* rows_, int64_t ld, int64_t n_rows, const float* x, int64_t n, float* out) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const float* e = rows_ + r * ld;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();   // lanes 0..7 and 8..15
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(e + i), _mm256_loadu_ps(x + i)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_loadu_ps(e + i + 8), _mm256_loadu_ps(x + i + 8)));
        }
        alignas(32) float lane[16];
        _mm256_store_ps(lane, a0);
        _mm256_store_ps(lane + 8, a1);
        for (; i < n; ++i) {
            const float p = e[i] * x[i];
            lane[i % 16] = lane[i % 16] + p;
        }
        const __m256 s8 = _mm256_add_ps(_mm256_load_ps(lane), _mm256_load_ps(lane + 8));
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        out[r] = _mm_cvtss_f32(s1);
    }
}

// |rows| x sign(x, rows) with VPMADDUBSW: both magnitudes <= 127, so a pair sum is at most
// 2 * 127 * 127 < 32767 and never saturates.
// One row against XB vectors: |row| is computed once per 32 bytes and shared.
template <int XB>
void dot_i8_row(const int8_t* e, const int8_t* x, int64_t ldx, int64_t n, int32_t* out, int64_t ldo) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[XB];
    for (int w = 0; w < XB; ++w) acc[w] = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256i ev = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + i));
        const __m256i ea = _mm256_abs_epi8(ev);
        for (int w = 0; w < XB; ++w) {
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + w * ldx + i));
            const __m256i p = _mm256_maddubs_epi16(ea, _mm256_sign_epi8(xv, ev));
            acc[w] = _mm256_add_epi32(acc[w], _mm256_madd_epi16(p, ones));
        }
    }
    for (int w = 0; w < XB; ++w) {
        int32_t sum = hsum_epi32(acc[w]);
        for (int64_t t = i; t < n; ++t) sum += static_cast<int32_t>(e[t]) * x[w * ldx + t];
        out[w * ldo] = sum;
    }
}

void avx2_dot_i8(const int8_t* rows_, int64_t ld, int64_t n_rows, const int8_t* x, int64_t ldx, int64_t nx, int64_t n,
                 int32_t* out, int64_t ldo) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const int8_t* e = rows_ + r * ld;
        int64_t w = 0;
        for (; w + 4 <= nx; w += 4) dot_i8_row<4>(e, x + w * ldx, ldx, n, out + w * ldo + r, ldo);
        for (; w < nx; ++w) dot_i8_row<1>(e, x + w * ldx, ldx, n, out + w * ldo + r, ldo);
    }
}

uint64_t avx2_read_sum(const uint8_t* p, int64_t n) {
    __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
    for (int64_t i = 0; i < n; i += 64) {
        a = _mm256_add_epi64(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    }
    alignas(32) uint64_t s[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(s), _mm256_add_epi64(a, b));
    return s[0] + s[1] + s[2] + s[3];
}

}  // namespace

const KernelTable& avx2_kernels() {
    static const KernelTable table{"avx2", avx2_gemm, avx2_dot_f16, avx2_dot_f32, avx2_dot_i8, nullptr, nullptr, avx2_read_sum};
    return table;
}

}  // namespace sim
}  // namespace bitnet
#endif
