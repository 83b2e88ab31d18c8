// avx512_gfni.cpp: the AVX-512 GEMV (decode) with GFNI (compiled with -mgfni on top of the
// AVX-512 flags; called by avx512.cpp only when the CPU has GFNI).
//
// One VGF2P8AFFINEQB per 64 codes replaces the shift and mask: the per-lane 8x8 bit matrix
// moves bits (2L, 2L+1) of every byte of 128-bit lane L to bits (0, 1), so a broadcast 16-byte
// group becomes its 64 codes c = t + 1 in natural order in two instructions. The decode loop
// is instruction-bound per byte of weights, so this raises the bytes per second each thread
// can stream.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

namespace bitnet {
namespace sim {

namespace {

constexpr uint64_t select_bits(int s) {
    // Output bit k of each byte is the parity of (matrix byte 7-k) & input: byte 7 picks bit
    // s for bit 0, byte 6 picks bit s+1 for bit 1, the other output bits are 0.
    return (uint64_t{1} << s << 56) | (uint64_t{1} << (s + 1) << 48);
}

template <int RB>
void tile(const TernarySlot& s, const ActBatch& a, int64_t j, int32_t* acc) {
    const __m512i sel = _mm512_set_epi64(static_cast<long long>(select_bits(6)), static_cast<long long>(select_bits(6)),
                                         static_cast<long long>(select_bits(4)), static_cast<long long>(select_bits(4)),
                                         static_cast<long long>(select_bits(2)), static_cast<long long>(select_bits(2)),
                                         static_cast<long long>(select_bits(0)), static_cast<long long>(select_bits(0)));
    const int64_t G = s.row_bytes / 16;
    __m512i sum[RB];
    for (int r = 0; r < RB; ++r) sum[r] = _mm512_setzero_si512();
    const uint8_t* w0 = s.packed.data() + j * s.row_bytes;
    const uint8_t* pf = w0 + 4 * RB * s.row_bytes;
    const uint8_t* pf_end = s.packed.data() + s.packed.size();
    for (int64_t g = 0; g < G; ++g) {
        for (int r = 0; r < RB; ++r) {
            const uint8_t* line = pf + (g * RB + r) * 16;
            if (line < pf_end) _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
        }
        const __m512i q = _mm512_loadu_si512(a.q + g * 64);
        for (int r = 0; r < RB; ++r) {
            const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + r * s.row_bytes + g * 16)));
            sum[r] = _mm512_dpbusd_epi32(sum[r], _mm512_gf2p8affine_epi64_epi8(b, sel, 0), q);
        }
    }
    for (int r = 0; r < RB; ++r) acc[j + r] = _mm512_reduce_add_epi32(sum[r]) - a.qsum[0];
}

}  // namespace

// acc[j] for j in [j0, j1), one activation row (a.B == 1).
void avx512_gfni_gemv(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t j0, int64_t j1) {
    int64_t j = j0;
    for (; j + 8 <= j1; j += 8) tile<8>(s, a, j, acc);
    for (; j < j1; ++j) tile<1>(s, a, j, acc);
}

}  // namespace sim
}  // namespace bitnet
#endif
