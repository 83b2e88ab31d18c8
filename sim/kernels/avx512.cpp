// avx512.cpp: AVX-512 VNNI kernels (compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512vnni; called only after dispatch.cpp checked the CPU).
//
// GEMM: codes c = t + 1 (0..2) are the unsigned operand of VPDPBUSD and activations the
// signed one, so acc = sum(c * q) - sum(q). One 16-byte group of the slot layout expands to
// 64 codes in natural element order with a broadcast, a per-lane 64-bit shift (0, 2, 4, 6)
// and a mask. GEMV and small batches mask without shifting (tile_masked: one AND and one
// VPDPBUSD per group); batches of 8 or more first expand a block of rows into an
// L1-resident buffer and reuse it for every activation row.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdlib>
#include <new>

#include "kernels.h"

namespace bitnet {
namespace sim {

namespace {

inline __m512i expand_group(const uint8_t* p, __m512i shifts, __m512i mask3) {
    const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_and_si512(_mm512_srlv_epi64(b, shifts), mask3);
}

// Masked micro-kernel for GEMV and small batches. A 16-byte group broadcast to the four
// 128-bit lanes holds, in lane L, the codes of elements 16L..16L+15 at bits 2L, 2L+1 of each
// byte. Masking instead of shifting, byte & (3 << 2L) = c << 2L, leaves one AND (any vector
// port) and one VPDPBUSD per group: lane L's sums come out scaled by 4^L, exactly (every
// term is a multiple of 4^L), and are scaled back with an arithmetic shift before the final
// sum. Bound: |lane sum| <= 4 * 192 * 128 per group, so G <= kMaskedMaxGroups keeps int32.
constexpr int64_t kMaskedMaxGroups = 16384;

template <int RB, int TB>
void tile_masked(const TernarySlot& s, const ActBatch& a, int64_t j, int64_t b, int32_t* acc, int64_t ldacc) {
    const __m512i mask = _mm512_set_epi32(
        static_cast<int>(0xC0C0C0C0u), static_cast<int>(0xC0C0C0C0u), static_cast<int>(0xC0C0C0C0u),
        static_cast<int>(0xC0C0C0C0u), 0x30303030, 0x30303030, 0x30303030, 0x30303030, 0x0C0C0C0C, 0x0C0C0C0C,
        0x0C0C0C0C, 0x0C0C0C0C, 0x03030303, 0x03030303, 0x03030303, 0x03030303);
    const __m512i unscale = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
    const int64_t G = s.row_bytes / 16;
    __m512i sum[RB][TB];
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t) sum[r][t] = _mm512_setzero_si512();
    const uint8_t* w0 = s.packed.data() + j * s.row_bytes;
    // The RB rows are contiguous: prefetch the next tile's block, one cache line per 64 bytes
    // of this tile's progress, so the weight stream keeps flowing while this computes (one
    // tile ahead decodes ~3% faster than four on a 2B model; none at all, ~20% slower).
    const uint8_t* pf = w0 + RB * s.row_bytes;
    const uint8_t* pf_end = s.packed.data() + s.packed.size();
    for (int64_t g = 0; g < G; ++g) {
        for (int r = 0; r < RB; r += 4) {
            const uint8_t* line = pf + (g * RB + r) * 16;
            if (line < pf_end) _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
        }
        __m512i w[RB];
        for (int r = 0; r < RB; ++r)
            w[r] = _mm512_and_si512(
                _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + r * s.row_bytes + g * 16))),
                mask);
        for (int t = 0; t < TB; ++t) {
            const __m512i q = _mm512_loadu_si512(a.q + (b + t) * a.ldq + g * 64);
            for (int r = 0; r < RB; ++r) sum[r][t] = _mm512_dpbusd_epi32(sum[r][t], w[r], q);
        }
    }
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t)
            acc[(b + t) * ldacc + j + r] = _mm512_reduce_add_epi32(_mm512_srav_epi32(sum[r][t], unscale)) - a.qsum[b + t];
}

// Buffered micro-kernel: codes already expanded to bytes (rows of kpad bytes).
template <int RB, int TB>
void tile_buffered(const uint8_t* codes, int64_t kpad, const ActBatch& a, int64_t j, int64_t b, int32_t* acc,
                   int64_t ldacc) {
    const int64_t G = kpad / 64;
    __m512i sum[RB][TB];
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t) sum[r][t] = _mm512_setzero_si512();
    for (int64_t g = 0; g < G; ++g) {
        __m512i w[RB];
        for (int r = 0; r < RB; ++r) w[r] = _mm512_loadu_si512(codes + r * kpad + g * 64);
        for (int t = 0; t < TB; ++t) {
            const __m512i q = _mm512_loadu_si512(a.q + (b + t) * a.ldq + g * 64);
            for (int r = 0; r < RB; ++r) sum[r][t] = _mm512_dpbusd_epi32(sum[r][t], w[r], q);
        }
    }
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t) acc[(b + t) * ldacc + j + r] = _mm512_reduce_add_epi32(sum[r][t]) - a.qsum[b + t];
}

template <int RB>
void rows_buffered(const uint8_t* codes, int64_t kpad, const ActBatch& a, int64_t j, int32_t* acc, int64_t ldacc) {
    int64_t b = 0;
    for (; b + 6 <= a.B; b += 6) tile_buffered<RB, 6>(codes, kpad, a, j, b, acc, ldacc);
    for (; b + 2 <= a.B; b += 2) tile_buffered<RB, 2>(codes, kpad, a, j, b, acc, ldacc);
    for (; b < a.B; ++b) tile_buffered<RB, 1>(codes, kpad, a, j, b, acc, ldacc);
}

void avx512_gemm(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    if (a.B < 8 && s.row_bytes / 16 <= kMaskedMaxGroups) {
        // GEMV (decode) and small batches: 8 rows at a time keep more of the weight stream in flight.
        int64_t j = j0;
        if (a.B == 1) {
            for (; j + 8 <= j1; j += 8) tile_masked<8, 1>(s, a, j, 0, acc, ldacc);
            for (; j < j1; ++j) tile_masked<1, 1>(s, a, j, 0, acc, ldacc);
            return;
        }
        for (; j + 4 <= j1; j += 4) {
            int64_t b = 0;
            for (; b + 4 <= a.B; b += 4) tile_masked<4, 4>(s, a, j, b, acc, ldacc);
            for (; b < a.B; ++b) tile_masked<4, 1>(s, a, j, b, acc, ldacc);
        }
        for (; j < j1; ++j)
            for (int64_t b = 0; b < a.B; ++b) tile_masked<1, 1>(s, a, j, b, acc, ldacc);
        return;
    }
    // Batches of 8 or more (and rows too long for the masked kernel): expand 4 rows at a time
    // into a thread-local buffer, then sweep every activation row.
    // (A raw buffer: no standard-library templates are instantiated in this ISA file, so no
    // AVX-512 copy of one can be picked by the linker for code that runs elsewhere.)
    const int64_t kpad = s.row_bytes * 4;
    struct Buffer {
        uint8_t* p = nullptr;
        size_t n = 0;
        ~Buffer() { std::free(p); }
    };
    thread_local Buffer tbuf;
    if (tbuf.n < static_cast<size_t>(4 * kpad)) {
        std::free(tbuf.p);
        tbuf.n = static_cast<size_t>(4 * kpad);
        tbuf.p = static_cast<uint8_t*>(std::malloc(tbuf.n));
        if (!tbuf.p) {
            tbuf.n = 0;
            throw std::bad_alloc();
        }
    }
    struct {
        uint8_t* data() { return tbuf.p; }
    } buf;
    const __m512i shifts = _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0);
    const __m512i mask3 = _mm512_set1_epi8(3);
    int64_t j = j0;
    for (; j < j1; j += 4) {
        const int rows = static_cast<int>(j1 - j < 4 ? j1 - j : 4);
        for (int r = 0; r < rows; ++r) {
            const uint8_t* src = s.packed.data() + (j + r) * s.row_bytes;
            for (int64_t g = 0; g < kpad / 64; ++g)
                _mm512_storeu_si512(buf.data() + r * kpad + g * 64, expand_group(src + g * 16, shifts, mask3));
        }
        if (rows == 4) {
            rows_buffered<4>(buf.data(), kpad, a, j, acc, ldacc);
        } else {
            for (int r = 0; r < rows; ++r) rows_buffered<1>(buf.data() + r * kpad, kpad, a, j + r, acc, ldacc);
        }
    }
}

// Output-head dot products in the contract's order: 16 lanes (lane l = elements l mod 16),
// separate multiply and add, then the tree l+8, l+4, l+2, l+1. Each lane's sum is one
// dependency chain, so RB rows run side by side to keep the adders busy.
inline float reduce16(__m512 acc) {
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

// RB rows against XB vectors: each fp16 row segment is converted once and used XB times.
template <int RB, int XB, bool kPrefetch = (XB == 1)>
void dot_tile(const uint16_t* e, int64_t ld, const float* x, int64_t ldx, int64_t n, float* out, int64_t ldo) {
    __m512 acc[RB][XB];
    for (int r = 0; r < RB; ++r)
        for (int w = 0; w < XB; ++w) acc[r][w] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        // The same columns of the next RB rows are prefetched, one cache line per row every 32
        // elements (a prefetch never faults past the end): the GEMV (one vector) is memory-bound,
        // and a batch's first pass over the rows needs them too (the hardware prefetcher alone
        // fed 5 GB/s of rows from memory to 4 x 4 tiles that run at 9 from cache).
        if (kPrefetch && (i & 31) == 0)
            for (int r = 0; r < RB; ++r) _mm_prefetch(reinterpret_cast<const char*>(e + (RB + r) * ld + i), _MM_HINT_T0);
        __m512 ev[RB];
        for (int r = 0; r < RB; ++r)
            ev[r] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + r * ld + i)));
        for (int w = 0; w < XB; ++w) {
            const __m512 xv = _mm512_loadu_ps(x + w * ldx + i);
            for (int r = 0; r < RB; ++r) acc[r][w] = _mm512_add_ps(acc[r][w], _mm512_mul_ps(ev[r], xv));
        }
    }
    if (i < n) {
        const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
        __m512 ev[RB];
        for (int r = 0; r < RB; ++r) ev[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, e + r * ld + i));
        for (int w = 0; w < XB; ++w) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + w * ldx + i);
            for (int r = 0; r < RB; ++r) acc[r][w] = _mm512_mask_add_ps(acc[r][w], m, acc[r][w], _mm512_mul_ps(ev[r], xv));
        }
    }
    for (int r = 0; r < RB; ++r)
        for (int w = 0; w < XB; ++w) out[w * ldo + r] = reduce16(acc[r][w]);
}

// All nx vectors for RB rows, in groups of up to 4 vectors (the rows stay in L1/L2 meanwhile).
// Four vectors of a 2560-wide model (40 KB) stay in L1 across the rows; eight (80 KB) streamed
// from L2 for every row pair and ran 1.5x slower (4 rows x 4 vectors: 2.3 G multiply-add
// pairs/s per core, 2 x 8: 1.5 G, measured on a 2560 x 4096 block with 8 vectors).
template <int RB>
void dot_rows(const uint16_t* e, int64_t ld, const float* x, int64_t ldx, int64_t nx, int64_t n, float* out,
              int64_t ldo) {
    // The first pass prefetches the next rows; later passes find these rows in cache.
    int64_t w = 0;
    if (nx >= 4) {
        dot_tile<RB, 4, true>(e, ld, x, ldx, n, out, ldo);
        w = 4;
    }
    for (; w + 4 <= nx; w += 4) dot_tile<RB, 4, false>(e, ld, x + w * ldx, ldx, n, out + w * ldo, ldo);
    if (w + 2 <= nx) dot_tile<RB, 2, true>(e, ld, x + w * ldx, ldx, n, out + w * ldo, ldo), w += 2;
    if (w < nx) dot_tile<RB, 1, true>(e, ld, x + w * ldx, ldx, n, out + w * ldo, ldo);
}

void avx512_dot_f16(const uint16_t* rows, int64_t ld, int64_t n_rows, const float* x, int64_t ldx, int64_t nx,
                    int64_t n, float* out, int64_t ldo) {
    int64_t r = 0;
    if (nx == 1) {
        for (; r + 4 <= n_rows; r += 4) dot_tile<4, 1>(rows + r * ld, ld, x, ldx, n, out + r, ldo);
    } else {
        for (; r + 4 <= n_rows; r += 4) dot_rows<4>(rows + r * ld, ld, x, ldx, nx, n, out + r, ldo);
    }
    for (; r < n_rows; ++r) dot_rows<1>(rows + r * ld, ld, x, ldx, nx, n, out + r, ldo);
}

template <int RB>
void dot_rows_f32(const float* e, int64_t ld, const float* x, int64_t n, float* out) {
    __m512 acc[RB];
    for (int r = 0; r < RB; ++r) acc[r] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 xv = _mm512_loadu_ps(x + i);
        for (int r = 0; r < RB; ++r) acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_loadu_ps(e + r * ld + i), xv));
    }
    if (i < n) {
        const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
        for (int r = 0; r < RB; ++r)
            acc[r] = _mm512_mask_add_ps(acc[r], m, acc[r], _mm512_mul_ps(_mm512_maskz_loadu_ps(m, e + r * ld + i), xv));
    }
    for (int r = 0; r < RB; ++r) out[r] = reduce16(acc[r]);
}

// One vector at a time: the rows (a block of attention keys) stay in L1 across the vectors.
void avx512_dot_f32(const float* rows, int64_t ld, int64_t n_rows, const float* xs, int64_t ldx, int64_t nx, int64_t n,
                    float* outs, int64_t ldo) {
    for (int64_t w = 0; w < nx; ++w) {
        const float* x = xs + w * ldx;
        float* out = outs + w * ldo;
        int64_t r = 0;
        for (; r + 4 <= n_rows; r += 4) dot_rows_f32<4>(rows + r * ld, ld, x, n, out + r);
        for (; r < n_rows; ++r) dot_rows_f32<1>(rows + r * ld, ld, x, n, out + r);
    }
}

// rows (signed, |v| <= 127) x x (signed): VPDPBUSD needs an unsigned operand, so rows are
// biased by +128 and 128 * sum(x) is subtracted.
// RB rows against XB vectors: each biased row chunk is loaded once and used XB times.
template <int RB, int XB>
void dot_i8_tile(const int8_t* e, int64_t ld, const int8_t* x, int64_t ldx, int64_t n, const int32_t* xsum128,
                 int32_t* out, int64_t ldo) {
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512i acc[RB][XB];
    for (int r = 0; r < RB; ++r)
        for (int w = 0; w < XB; ++w) acc[r][w] = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        // Prefetch the same columns of the next RB rows: one vector is memory-bound, and with 8
        // the hardware prefetcher alone fed 5.8 GB/s of rows from memory (9 with this).
        for (int r = 0; r < RB; ++r) _mm_prefetch(reinterpret_cast<const char*>(e + (RB + r) * ld + i), _MM_HINT_T0);
        __m512i ev[RB];
        for (int r = 0; r < RB; ++r) ev[r] = _mm512_xor_si512(_mm512_loadu_si512(e + r * ld + i), bias);   // e + 128 as u8
        for (int w = 0; w < XB; ++w) {
            const __m512i xv = _mm512_loadu_si512(x + w * ldx + i);
            for (int r = 0; r < RB; ++r) acc[r][w] = _mm512_dpbusd_epi32(acc[r][w], ev[r], xv);
        }
    }
    if (i < n) {
        const __mmask64 m = (__mmask64(1) << (n - i)) - 1;   // n - i < 64 here
        __m512i ev[RB];
        for (int r = 0; r < RB; ++r) ev[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, e + r * ld + i), bias);
        for (int w = 0; w < XB; ++w) {
            const __m512i xv = _mm512_maskz_loadu_epi8(m, x + w * ldx + i);
            for (int r = 0; r < RB; ++r) acc[r][w] = _mm512_dpbusd_epi32(acc[r][w], ev[r], xv);
        }
    }
    for (int w = 0; w < XB; ++w)
        for (int r = 0; r < RB; ++r) out[w * ldo + r] = _mm512_reduce_add_epi32(acc[r][w]) - xsum128[w];
}

// All rows against XB vectors starting at x, RB rows at a time.
template <int RB, int XB>
void dot_i8_pass(const int8_t* rows, int64_t ld, int64_t n_rows, const int8_t* x, int64_t ldx, int64_t n, int32_t* out,
                 int64_t ldo) {
    int32_t xsum128[XB];
    for (int w = 0; w < XB; ++w) {
        int32_t s = 0;
        for (int64_t i = 0; i < n; ++i) s += x[w * ldx + i];
        xsum128[w] = 128 * s;
    }
    int64_t r = 0;
    for (; r + RB <= n_rows; r += RB) dot_i8_tile<RB, XB>(rows + r * ld, ld, x, ldx, n, xsum128, out + r, ldo);
    for (; r < n_rows; ++r) dot_i8_tile<1, XB>(rows + r * ld, ld, x, ldx, n, xsum128, out + r, ldo);
}

// Rows are biased by +128 to make VPDPBUSD's unsigned operand, so 128 * sum(x) is subtracted.
// Vectors go 8 at a time (2 rows x 8 vectors = 16 accumulators), then 4, then 2, then 1.
void avx512_dot_i8(const int8_t* rows, int64_t ld, int64_t n_rows, const int8_t* x, int64_t ldx, int64_t nx, int64_t n,
                   int32_t* out, int64_t ldo) {
    int64_t w = 0;
    for (; w + 8 <= nx; w += 8) dot_i8_pass<2, 8>(rows, ld, n_rows, x + w * ldx, ldx, n, out + w * ldo, ldo);
    for (; w + 4 <= nx; w += 4) dot_i8_pass<2, 4>(rows, ld, n_rows, x + w * ldx, ldx, n, out + w * ldo, ldo);
    for (; w + 2 <= nx; w += 2) dot_i8_pass<4, 2>(rows, ld, n_rows, x + w * ldx, ldx, n, out + w * ldo, ldo);
    for (; w < nx; ++w) dot_i8_pass<4, 1>(rows, ld, n_rows, x + w * ldx, ldx, n, out + w * ldo, ldo);
}

uint64_t avx512_read_sum(const uint8_t* p, int64_t n) {
    __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 128 <= n; i += 128) {
        a = _mm512_add_epi64(a, _mm512_load_si512(p + i));
        b = _mm512_add_epi64(b, _mm512_load_si512(p + i + 64));
    }
    if (i < n) a = _mm512_add_epi64(a, _mm512_load_si512(p + i));
    return static_cast<uint64_t>(_mm512_reduce_add_epi64(_mm512_add_epi64(a, b)));
}

}  // namespace

const KernelTable& avx512_kernels() {
    static const KernelTable table{"avx512",      avx512_gemm, avx512_dot_f16,  avx512_dot_f32, avx512_dot_i8,
                                   nullptr,       nullptr,     avx512_read_sum, 2};
    return table;
}

}  // namespace sim
}  // namespace bitnet
#endif
