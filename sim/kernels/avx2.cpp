// avx2.cpp: AVX2 kernels (compiled with -mavx2 -mfma -mf16c; called only after dispatch.cpp
// checked the CPU).
//
// Ternary GEMM/GEMV: VPMADDUBSW multiplies codes c = t + 1 (unsigned) by activations (signed)
// into int16 pair sums, which are accumulated in int16 as long as they provably fit and then
// widened with VPMADDWD against ones; acc = sum(c * q) - sum(q). GEMV and small batches expand
// each 16-byte group of the slot layout in registers (GEMV: Codes, one AND per 32 codes, lane 1
// scaled by 4; batches: Expand, natural codes); prefill expands blocks of rows into an L1
// buffer once (Expand) and reuses them for every activation row. The batch and prefill inner
// loops are GNU inline assembly (x86-64 GCC and Clang): written with intrinsics, GCC folded
// loads into the multiplies, copied registers or spilled accumulators, and ran 20-40% slower.
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

// Codes of elements 0..31 (lo) and 32..63 (hi) of one 16-byte group broadcast to both lanes,
// unscaled and in natural order: shifted by (0 | 2) or (4 | 6) bits per lane and masked.
struct Expand {
    __m256i sh_lo = _mm256_set_epi64x(2, 2, 0, 0);
    __m256i sh_hi = _mm256_set_epi64x(6, 6, 4, 4);
    __m256i mask3 = _mm256_set1_epi8(3);
    __m256i lo(__m256i v) const { return _mm256_and_si256(_mm256_srlv_epi64(v, sh_lo), mask3); }
    __m256i hi(__m256i v) const { return _mm256_and_si256(_mm256_srlv_epi64(v, sh_hi), mask3); }
};

// Codes of one 16-byte group, broadcast to both 128-bit lanes and masked with 0x03 in lane 0
// and 0x0C in lane 1 (one AND; the same after a 4-bit shift): lo holds the codes of elements
// 0..15 (lane 0) and 4x those of 16..31 (lane 1), hi those of 32..47 and 4x 48..63, so the
// activations pair with them in natural order. Lane 1's sums come out scaled by 4, exactly
// (every term is a multiple of 4), and are scaled back when the lanes are summed. An int32 lane
// gathers K / 16 terms of at most 4 * 2 * 128: below 2^30 for K up to the card's max_k (2^24).
struct Codes {
    __m256i lo, hi;
};

inline Codes expand(const uint8_t* p, __m256i mask) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask)};
}

inline __m256i lane_masks() { return _mm256_setr_m128i(_mm_set1_epi8(0x03), _mm_set1_epi8(0x0C)); }

// Lane 0's four int32 sums plus lane 1's divided by 4 (see Codes).
inline int32_t hsum_scaled(__m256i v) {
    const __m128i lo = _mm256_castsi256_si128(v);
    const __m128i hi = _mm_srai_epi32(_mm256_extracti128_si256(v, 1), 2);
    __m128i s = _mm_add_epi32(lo, hi);
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

// int16 partial sums: a VPMADDUBSW pair sum is at most 2 * 8 * 128 in magnitude (codes up to
// 2 * 4 in lane 1), two per group (lo and hi), so 8 groups sum to at most 32768 in magnitude
// (-32768 exactly when every code is 2 and every activation -128; +32512 at most): int16 holds
// them without wrapping. Every kFlushGroups groups they are widened (VPMADDWD against ones)
// into int32 sums.
constexpr int64_t kFlushGroups = 8;

// RB weight rows (row r at w + r * row_bytes) times TB activation rows (row t at q + t * ldq),
// all `groups` groups of the rows: s32 (RB * TB vectors of 8 int32, in memory: they are touched once per flush)
// += lane sums of c * q. Each row's codes are expanded once per group and used by all TB rows;
// one int16 accumulator per (r, t) pair. pf (may be null): RB rows further on (the GEMV: two
// tiles on), prefetched into L2 one cache line per 64 bytes of this call's progress through its
// own rows (the weight stream from memory: without it a thread read 4.2 GB/s of weights, with
// it 9.5). Two tiles on into L2 (T2) rather than the next into L1 (T0), as the AVX-512 GEMV and
// the heads: a decode step 1% faster on one thread, 3.5-5% on two (AVX2 kernels forced on Zen
// 4, 2B-4T, paired runs).
template <int RB, int TB>
inline void micro(const uint8_t* w, int64_t row_bytes, const int8_t* q, int64_t ldq, int64_t groups,
                  __m256i* s32, const uint8_t* pf, const uint8_t* pf_end) {
    const __m256i mask = lane_masks();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t c0 = 0; c0 < groups; c0 += kFlushGroups) {
        const int64_t c1 = groups - c0 < kFlushGroups ? groups : c0 + kFlushGroups;
        __m256i s16[RB][TB];
        for (int r = 0; r < RB; ++r)
            for (int t = 0; t < TB; ++t) s16[r][t] = _mm256_setzero_si256();
        for (int64_t g = c0; g < c1; ++g) {
            if (pf) {
                for (int r = 0; r < RB; r += 4) {
                    const uint8_t* line = pf + (g * RB + r) * 16;
                    if (line < pf_end) _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T2);
                }
            }
            if (TB == 1) {   // one row's codes live at a time
                const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + g * 64));
                const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + g * 64 + 32));
                for (int r = 0; r < RB; ++r) {
                    const Codes c = expand(w + r * row_bytes + g * 16, mask);
                    s16[r][0] = _mm256_add_epi16(s16[r][0], _mm256_add_epi16(_mm256_maddubs_epi16(c.lo, x0),
                                                                             _mm256_maddubs_epi16(c.hi, x1)));
                }
            } else {
                Codes c[RB];
                for (int r = 0; r < RB; ++r) c[r] = expand(w + r * row_bytes + g * 16, mask);
                for (int t = 0; t < TB; ++t) {
                    const int8_t* x = q + t * ldq + g * 64;
                    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
                    for (int r = 0; r < RB; ++r) s16[r][t] = _mm256_add_epi16(s16[r][t], _mm256_maddubs_epi16(c[r].lo, x0));
                    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
                    for (int r = 0; r < RB; ++r) s16[r][t] = _mm256_add_epi16(s16[r][t], _mm256_maddubs_epi16(c[r].hi, x1));
                }
            }
        }
        for (int r = 0; r < RB; ++r)
            for (int t = 0; t < TB; ++t) {
                __m256i* p = s32 + r * TB + t;
                _mm256_store_si256(p, _mm256_add_epi32(_mm256_load_si256(p), _mm256_madd_epi16(s16[r][t], ones)));
            }
    }
}

// Rows [j, j + RB) times activation rows [b, b + TB), whole rows.
template <int RB, int TB>
void tile(const TernarySlot& s, const ActBatch& a, int64_t j, int64_t b, int32_t* acc, int64_t ldacc, bool prefetch) {
    __m256i s32[RB * TB];
    for (int i = 0; i < RB * TB; ++i) s32[i] = _mm256_setzero_si256();
    const uint8_t* w = s.packed.data() + j * s.row_bytes;
    const uint8_t* end = s.packed.data() + s.packed.size();
    micro<RB, TB>(w, s.row_bytes, a.q + b * a.ldq, a.ldq, s.row_bytes / 16, s32,
                  prefetch ? w + 2 * RB * s.row_bytes : nullptr, end);
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t) acc[(b + t) * ldacc + j + r] = hsum_scaled(s32[r * TB + t]) - a.qsum[b + t];
}

// Batches: codes already expanded to bytes (buffer rows of ld bytes, natural element order),
// RB weight rows x TB activation rows over `steps` steps of 32 elements; int16 accumulators
// (pair sums at most 2 * 2 * 128, so 64 steps stay within int16: kBufferedMaxSteps), widened
// into int32 sums after every run of 64 steps. Adds each pair's sum into acc (first: acc =
// sum - qsum).
constexpr int64_t kBufferedMaxSteps = 64;
constexpr int64_t kSmallBatch = 8;

// The buffered tiles' result for one (weight row, activation row) pair: the int32 lane sums
// added up; out = sum - qsum on the first k-chunk, out += sum after it.
inline void add_pair_sum(__m256i s32, int32_t qsum, bool first, int32_t& out) {
    const int32_t sum = hsum_epi32(s32);
    out = first ? sum - qsum : out + sum;
}

template <int RB, int TB>
void buffered_tile(const uint8_t* codes, int64_t ld, const int8_t* q, int64_t ldq, int64_t steps, const int32_t* qsum,
                   bool first, int32_t* acc, int64_t ldacc) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i s32[RB][TB];
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t) s32[r][t] = _mm256_setzero_si256();
    for (int64_t k0 = 0; k0 < steps; k0 += kBufferedMaxSteps) {
        const int64_t k1 = steps - k0 < kBufferedMaxSteps ? steps : k0 + kBufferedMaxSteps;
        __m256i s16[RB][TB];
        for (int r = 0; r < RB; ++r)
            for (int t = 0; t < TB; ++t) s16[r][t] = _mm256_setzero_si256();
        for (int64_t k = k0; k < k1; ++k) {
            __m256i c[RB];
            for (int r = 0; r < RB; ++r) c[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(codes + k * 32 + r * ld));
            for (int t = 0; t < TB; ++t) {
                const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k * 32 + t * ldq));
                for (int r = 0; r < RB; ++r) s16[r][t] = _mm256_add_epi16(_mm256_maddubs_epi16(c[r], x), s16[r][t]);
            }
        }
        for (int r = 0; r < RB; ++r)
            for (int t = 0; t < TB; ++t) s32[r][t] = _mm256_add_epi32(s32[r][t], _mm256_madd_epi16(s16[r][t], ones));
    }
    for (int r = 0; r < RB; ++r)
        for (int t = 0; t < TB; ++t) add_pair_sum(s32[r][t], qsum[t], first, acc[t * ldacc + r]);
}

// The prefill tiles written in GNU inline assembly: 2 weight rows x TB activation rows (TB = 6
// fills the 16 ymm registers: 12 int16 accumulators, 2 code rows, one activation row, one
// product; TB = 4 leaves 4 unused). Per step of 32 elements: 2 + TB loads, 2 TB VPMADDUBSW,
// 2 TB VPADDW and 3 loop instructions. GCC compiles the same loop from intrinsics
// (buffered_tile<2, TB>) with the activation loads folded into every multiply and a register
// copy per accumulator; on Zen 3 (one thread, codes and activations in L1, best of 40 runs)
// that reaches 106-118 multiply-adds per ns, these loops 138 (2 x 4) and 145 (2 x 6);
// VPMADDUBSW alone peaks at 160 there. Any `steps` >= 1: the loop runs in runs of at most
// kBufferedMaxSteps, after each of which the int16 sums are widened and added to s32 (the
// flush costs 3 instructions per accumulator, against a call of the tile per 64 steps before:
// a k-chunk need no longer end at 2048 elements). The int32 sums of the pair (row r,
// activation row t) go to s32[r * TB + t] (8 lanes, 32-byte aligned, zeroed by the caller).
static_assert(kBufferedMaxSteps * 32 == 2048, "BITNET_RUN_HEAD's run length");
alignas(32) const int16_t kOnes16[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

#define BITNET_ZERO(a) "vpxor %%xmm" #a ", %%xmm" #a ", %%xmm" #a "\n\t"
#define BITNET_MT(c, a) "vpmaddubsw %%ymm14, %%ymm" #c ", %%ymm15\n\tvpaddw %%ymm15, %%ymm" #a ", %%ymm" #a "\n\t"
#define BITNET_ROW(qp, a, b) "vmovdqu (%[" qp "],%[off]), %%ymm14\n\t" BITNET_MT(0, a) BITNET_MT(1, b)
// int16 sums widened (VPMADDWD against ones) and added to their int32 sums in s32.
#define BITNET_FLUSH(a, at)                                                                          \
    "vpmaddwd %[ones], %%ymm" #a ", %%ymm" #a "\n\tvpaddd " #at "(%[s]), %%ymm" #a ", %%ymm" #a "\n\t" \
    "vmovdqa %%ymm" #a ", " #at "(%[s])\n\t"
// Runs of at most kBufferedMaxSteps steps (2048 bytes): ie = min(off + 2048, end).
#define BITNET_RUN_HEAD "lea 2048(%[off]), %[ie]\n\tcmp %[end], %[ie]\n\tcmova %[end], %[ie]\n\t"
#define BITNET_LOOP_HEAD "1:\n\tvmovdqa (%[c0],%[off]), %%ymm0\n\tvmovdqa (%[c1],%[off]), %%ymm1\n\t"
#define BITNET_LOOP_TAIL "add $32, %[off]\n\tcmp %[ie], %[off]\n\tjne 1b\n\t"
#define BITNET_RUN_TAIL "cmp %[end], %[off]\n\tjne 0b\n\t"
#define BITNET_CLOBBERS "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", \
                        "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

// s32: 2 * TB vectors of 8 int32, zeroed by the caller.
inline void asm_tile_2x6(const uint8_t* codes, int64_t ld, const int8_t* q, int64_t ldq, int64_t steps,
                         int32_t (*s32)[8]) {
    int64_t off = 0, ie;
    const int64_t end = steps * 32;
    __asm__ volatile(
        "0:\n\t"
        BITNET_ZERO(2) BITNET_ZERO(3) BITNET_ZERO(4) BITNET_ZERO(5) BITNET_ZERO(6) BITNET_ZERO(7)
        BITNET_ZERO(8) BITNET_ZERO(9) BITNET_ZERO(10) BITNET_ZERO(11) BITNET_ZERO(12) BITNET_ZERO(13)
        BITNET_RUN_HEAD
        BITNET_LOOP_HEAD
        BITNET_ROW("q0", 2, 3) BITNET_ROW("q1", 4, 5) BITNET_ROW("q2", 6, 7)
        BITNET_ROW("q3", 8, 9) BITNET_ROW("q4", 10, 11) BITNET_ROW("q5", 12, 13)
        BITNET_LOOP_TAIL
        BITNET_FLUSH(2, 0) BITNET_FLUSH(4, 32) BITNET_FLUSH(6, 64) BITNET_FLUSH(8, 96) BITNET_FLUSH(10, 128)
        BITNET_FLUSH(12, 160) BITNET_FLUSH(3, 192) BITNET_FLUSH(5, 224) BITNET_FLUSH(7, 256) BITNET_FLUSH(9, 288)
        BITNET_FLUSH(11, 320) BITNET_FLUSH(13, 352)
        BITNET_RUN_TAIL
        : [off] "+r"(off), [ie] "=&r"(ie)
        : [c0] "r"(codes), [c1] "r"(codes + ld), [q0] "r"(q), [q1] "r"(q + ldq), [q2] "r"(q + 2 * ldq),
          [q3] "r"(q + 3 * ldq), [q4] "r"(q + 4 * ldq), [q5] "r"(q + 5 * ldq), [end] "r"(end), [s] "r"(s32),
          [ones] "m"(*reinterpret_cast<const __m256i*>(kOnes16))
        : BITNET_CLOBBERS);
}

inline void asm_tile_2x4(const uint8_t* codes, int64_t ld, const int8_t* q, int64_t ldq, int64_t steps,
                         int32_t (*s32)[8]) {
    int64_t off = 0, ie;
    const int64_t end = steps * 32;
    __asm__ volatile(
        "0:\n\t"
        BITNET_ZERO(2) BITNET_ZERO(3) BITNET_ZERO(4) BITNET_ZERO(5) BITNET_ZERO(6) BITNET_ZERO(7)
        BITNET_ZERO(8) BITNET_ZERO(9)
        BITNET_RUN_HEAD
        BITNET_LOOP_HEAD
        BITNET_ROW("q0", 2, 3) BITNET_ROW("q1", 4, 5) BITNET_ROW("q2", 6, 7) BITNET_ROW("q3", 8, 9)
        BITNET_LOOP_TAIL
        BITNET_FLUSH(2, 0) BITNET_FLUSH(4, 32) BITNET_FLUSH(6, 64) BITNET_FLUSH(8, 96)
        BITNET_FLUSH(3, 128) BITNET_FLUSH(5, 160) BITNET_FLUSH(7, 192) BITNET_FLUSH(9, 224)
        BITNET_RUN_TAIL
        : [off] "+r"(off), [ie] "=&r"(ie)
        : [c0] "r"(codes), [c1] "r"(codes + ld), [q0] "r"(q), [q1] "r"(q + ldq), [q2] "r"(q + 2 * ldq),
          [q3] "r"(q + 3 * ldq), [end] "r"(end), [s] "r"(s32), [ones] "m"(*reinterpret_cast<const __m256i*>(kOnes16))
        : BITNET_CLOBBERS);
}
#undef BITNET_ZERO
#undef BITNET_MT
#undef BITNET_ROW
#undef BITNET_FLUSH
#undef BITNET_RUN_HEAD
#undef BITNET_LOOP_HEAD
#undef BITNET_LOOP_TAIL
#undef BITNET_RUN_TAIL
#undef BITNET_CLOBBERS

// Batched decode in assembly: 2 weight rows x 4 activation rows straight from the slot layout
// (no buffer: with a few activation rows, expanding the codes into memory costs about as much
// as using them). Per 16-byte group: each row's codes are expanded in registers (Expand:
// natural order, two VPSRLVQ + two ANDs), then each activation half (8 loads) meets both rows:
// 16 VPMADDUBSW into 8 int16 accumulators. A pair sum is at most 2 * 2 * 128 = 512 in
// magnitude and each accumulator takes two per group, so 32 groups (kSmallFlush) stay within
// int16 (-32768 exactly when every code is 2 and every activation -128). `groups` in
// [1, kSmallFlush]; the sums of (row r, activation row t) go to s16[r * 4 + t]. The GCC
// version of this tile spilled its accumulators.
constexpr int64_t kSmallFlush = 32;

inline void asm_small_2x4(const uint8_t* w0, const uint8_t* w1, const int8_t* q, int64_t ldq, int64_t groups,
                          int16_t (*s16)[16]) {
    alignas(32) static const uint64_t shifts[8] = {0, 0, 2, 2, 4, 4, 6, 6};   // lo: (0 | 2), hi: (4 | 6)
    int64_t off = 0;
    const int64_t end = groups * 16;
#define BITNET_ZERO(a) "vpxor %%xmm" #a ", %%xmm" #a ", %%xmm" #a "\n\t"
#define BITNET_EXPAND(w, lo, hi)                                                                     \
    "vbroadcasti128 (%[" w "],%[off]), %%ymm13\n\t"                                                   \
    "vpsrlvq %%ymm14, %%ymm13, %%ymm" #lo "\n\tvpand %%ymm15, %%ymm" #lo ", %%ymm" #lo "\n\t"        \
    "vpsrlvq 32(%[sh]), %%ymm13, %%ymm" #hi "\n\tvpand %%ymm15, %%ymm" #hi ", %%ymm" #hi "\n\t"
#define BITNET_MT(c, a) "vpmaddubsw %%ymm12, %%ymm" #c ", %%ymm13\n\tvpaddw %%ymm13, %%ymm" #a ", %%ymm" #a "\n\t"
#define BITNET_ACT(qp, a, b)                                                         \
    "vmovdqu (%[" qp "],%[off],4), %%ymm12\n\t" BITNET_MT(8, a) BITNET_MT(10, b)      \
    "vmovdqu 32(%[" qp "],%[off],4), %%ymm12\n\t" BITNET_MT(9, a) BITNET_MT(11, b)
#define BITNET_STORE(a, at) "vmovdqa %%ymm" #a ", " #at "(%[s])\n\t"
    __asm__ volatile(
        BITNET_ZERO(0) BITNET_ZERO(1) BITNET_ZERO(2) BITNET_ZERO(3)
        BITNET_ZERO(4) BITNET_ZERO(5) BITNET_ZERO(6) BITNET_ZERO(7)
        "vmovdqa (%[sh]), %%ymm14\n\t"
        "vpcmpeqb %%ymm15, %%ymm15, %%ymm15\n\tvpsrlw $14, %%ymm15, %%ymm15\n\t"   // 0x0003 words
        "vpacksswb %%ymm15, %%ymm15, %%ymm15\n\t"                                  // 0x03 bytes
        "1:\n\t"
        BITNET_EXPAND("w0", 8, 9) BITNET_EXPAND("w1", 10, 11)
        BITNET_ACT("q0", 0, 4) BITNET_ACT("q1", 1, 5) BITNET_ACT("q2", 2, 6) BITNET_ACT("q3", 3, 7)
        "add $16, %[off]\n\t"
        "cmp %[end], %[off]\n\t"
        "jne 1b\n\t"
        BITNET_STORE(0, 0) BITNET_STORE(1, 32) BITNET_STORE(2, 64) BITNET_STORE(3, 96)
        BITNET_STORE(4, 128) BITNET_STORE(5, 160) BITNET_STORE(6, 192) BITNET_STORE(7, 224)
        : [off] "+r"(off)
        : [w0] "r"(w0), [w1] "r"(w1), [q0] "r"(q), [q1] "r"(q + ldq), [q2] "r"(q + 2 * ldq), [q3] "r"(q + 3 * ldq),
          [end] "r"(end), [sh] "r"(shifts), [s] "r"(s16)
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
#undef BITNET_ZERO
#undef BITNET_EXPAND
#undef BITNET_MT
#undef BITNET_ACT
#undef BITNET_STORE
}

// Rows j, j + 1 x activation rows [b, b + 4), whole rows, through asm_small_2x4 in runs of
// kSmallFlush groups, widened into int32 sums between runs. pf (may be null): rows to prefetch
// (two rows, each row_bytes long) while this tile runs.
void small_tile_2x4(const TernarySlot& s, const ActBatch& a, int64_t j, int64_t b, int32_t* acc, int64_t ldacc,
                    const uint8_t* pf) {
    const int64_t rb = s.row_bytes, groups = rb / 16;
    if (pf)
        for (int64_t i = 0; i < 2 * rb; i += 64) _mm_prefetch(reinterpret_cast<const char*>(pf + i), _MM_HINT_T2);
    const uint8_t* w = s.packed.data() + j * rb;
    const int8_t* q = a.q + b * a.ldq;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i s32[8];
    for (int i = 0; i < 8; ++i) s32[i] = _mm256_setzero_si256();
    alignas(32) int16_t s16[8][16];
    for (int64_t g0 = 0; g0 < groups; g0 += kSmallFlush) {
        const int64_t n = groups - g0 < kSmallFlush ? groups - g0 : kSmallFlush;
        asm_small_2x4(w + g0 * 16, w + rb + g0 * 16, q + g0 * 64, a.ldq, n, s16);
        for (int i = 0; i < 8; ++i)
            s32[i] = _mm256_add_epi32(s32[i], _mm256_madd_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(s16[i])), ones));
    }
    for (int r = 0; r < 2; ++r)
        for (int t = 0; t < 4; ++t) acc[(b + t) * ldacc + j + r] = hsum_epi32(s32[r * 4 + t]) - a.qsum[b + t];
}

// asm_tile_2xTB plus the widening and the store (as buffered_tile).
template <int TB>
void buffered_tile_asm(const uint8_t* codes, int64_t ld, const int8_t* q, int64_t ldq, int64_t steps,
                       const int32_t* qsum, bool first, int32_t* acc, int64_t ldacc) {
    static_assert(TB == 4 || TB == 6, "asm tiles: 2 x 4 and 2 x 6");
    alignas(32) int32_t s32[2 * TB][8];
    for (int i = 0; i < 2 * TB; ++i) _mm256_store_si256(reinterpret_cast<__m256i*>(s32[i]), _mm256_setzero_si256());
    if (TB == 6)
        asm_tile_2x6(codes, ld, q, ldq, steps, s32);
    else
        asm_tile_2x4(codes, ld, q, ldq, steps, s32);
    // Four pair sums at a time, reduced together by three VPHADDD and one cross-lane add into
    // [(t, 0), (t, 1), (t + 1, 0), (t + 1, 1)], so the results of activation rows t and t + 1 go
    // out as two 8-byte stores.
    const auto wide = [&](int i) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(s32[i])); };
    for (int t = 0; t < TB; t += 2) {
        const __m256i ab = _mm256_hadd_epi32(wide(t), wide(TB + t));
        const __m256i cd = _mm256_hadd_epi32(wide(t + 1), wide(TB + t + 1));
        const __m256i abcd = _mm256_hadd_epi32(ab, cd);
        __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
        int32_t* o0 = acc + t * ldacc;
        int32_t* o1 = acc + (t + 1) * ldacc;
        if (first) {
            sum = _mm_sub_epi32(sum, _mm_setr_epi32(qsum[t], qsum[t], qsum[t + 1], qsum[t + 1]));
        } else {
            const __m128i prev = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(o0)),
                                                    _mm_loadl_epi64(reinterpret_cast<const __m128i*>(o1)));
            sum = _mm_add_epi32(sum, prev);
        }
        _mm_storel_epi64(reinterpret_cast<__m128i*>(o0), sum);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(o1), _mm_unpackhi_epi64(sum, sum));
    }
}

// One tile of TB activation rows against every weight row of the buffer (pairs, then a last
// single row): the tile's chunk of activations (TB x up to 2.5 KiB) stays in L1 with the codes.
template <int TB>
void buffered_block(const uint8_t* codes, int64_t ld, int64_t rows, const int8_t* q, int64_t ldq, int64_t steps,
                    const int32_t* qsum, bool first, int32_t* acc, int64_t ldacc) {
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) {
        if (TB == 4 || TB == 6)
            buffered_tile_asm<TB == 6 ? 6 : 4>(codes + r * ld, ld, q, ldq, steps, qsum, first, acc + r, ldacc);
        else
            buffered_tile<2, TB>(codes + r * ld, ld, q, ldq, steps, qsum, first, acc + r, ldacc);
    }
    if (r < rows) buffered_tile<1, TB>(codes + r * ld, ld, q, ldq, steps, qsum, first, acc + r, ldacc);
}

// GEMV (one activation row): 8 weight rows per tile keep the weight stream wide, with the next
// tile's rows prefetched (one thread over 30 slots of 6912 x 2560 from memory: 4.2 -> 9.5 GB/s
// of weights against the 4-row tile that shifted codes with VPSRLVQ and widened every group
// with VPMADDWD; two threads 6.4 -> 16.0). Small batches (up to kSmallBatch rows, batched
// decode): pairs of weight rows against tiles of 4 activation rows (asm_small_2x4), the
// remaining activation rows and a last odd weight row one row at a time (tile<1, TB>, codes
// expanded once per tile). Batch 8, 6912 x 2560 slots: in cache, one thread, 94 -> 113
// multiply-adds/ns against the one-row tiles alone. Larger batches (prefill): a block of
// kRowBlock weight rows is expanded, one k-chunk at a time, into a buffer of up to 20 KiB that
// stays in L1, and each tile of 6 (or 4) activation rows (its chunk also in L1) sweeps it in
// tiles of 2 weight rows (asm_tile_2x6, asm_tile_2x4). The k-chunks are equal parts of at most
// kMaxChunk elements (K = 2560: one chunk of 80 steps; 6912: three of 72), so that every
// tile call runs long: against chunks of 2048 (2048 + 512 for K = 2560), batch 128 over 30
// slots from memory, two threads, 145 -> 167 multiply-adds/ns (6912 x 2560) and 154 -> 180
// (2560 x 6912). Batch 128, one thread, one 6912 x 2560 slot in cache: 111 multiply-adds per
// ns with chunks of 2048 (66 with the intrinsic 2 x 4 tile).
void avx2_gemm(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    if (a.B == 1) {
        int64_t j = j0;
        for (; j + 8 <= j1; j += 8) tile<8, 1>(s, a, j, 0, acc, ldacc, true);
        for (; j < j1; ++j) tile<1, 1>(s, a, j, 0, acc, ldacc, false);
        return;
    }
    if (a.B <= kSmallBatch) {
        int64_t j = j0;
        if (a.B >= 4)   // pairs of rows against tiles of 4 activation rows; the rest one row at a time
            for (; j + 2 <= j1; j += 2) {
                const uint8_t* pf = j + 4 <= j1 ? s.packed.data() + (j + 2) * s.row_bytes : nullptr;
                int64_t b = 0;
                for (; b + 4 <= a.B; b += 4) small_tile_2x4(s, a, j, b, acc, ldacc, b == 0 ? pf : nullptr);
                for (int64_t r = j; r < j + 2; ++r)
                    switch (a.B - b) {
                        case 3: tile<1, 3>(s, a, r, b, acc, ldacc, false); break;
                        case 2: tile<1, 2>(s, a, r, b, acc, ldacc, false); break;
                        case 1: tile<1, 1>(s, a, r, b, acc, ldacc, false); break;
                        default: break;
                    }
            }
        for (; j < j1; ++j) {
            int64_t b = 0;
            for (; b + 4 <= a.B; b += 4) tile<1, 4>(s, a, j, b, acc, ldacc, b == 0);
            switch (a.B - b) {
                case 3: tile<1, 3>(s, a, j, b, acc, ldacc, b == 0); break;
                case 2: tile<1, 2>(s, a, j, b, acc, ldacc, b == 0); break;
                case 1: tile<1, 1>(s, a, j, b, acc, ldacc, b == 0); break;
                default: break;
            }
        }
        return;
    }
    constexpr int64_t kRowBlock = 8, kMaxChunk = 2560;
    alignas(32) uint8_t codes[kRowBlock * kMaxChunk];
    const Expand ex;
    const int64_t kpad = s.row_bytes * 4;
    if (kpad == 0) {   // K = 0 (the card refuses it; the kernel still gives the empty sums)
        for (int64_t b = 0; b < a.B; ++b)
            for (int64_t j = j0; j < j1; ++j) acc[b * ldacc + j] = 0;
        return;
    }
    const int64_t n_chunks = (kpad + kMaxChunk - 1) / kMaxChunk;
    const int64_t chunk = (kpad / 64 + n_chunks - 1) / n_chunks * 64;   // equal parts, whole groups
    for (int64_t jb = j0; jb < j1; jb += kRowBlock) {
        const int64_t rows = j1 - jb < kRowBlock ? j1 - jb : kRowBlock;
        // The same chunk of the next block's rows is prefetched while this one is expanded:
        // the weights come from memory, and with few activation rows (batched decode) the
        // expansion otherwise waits on every load. All of this file's batch prefetches go
        // into L2 (T2), as the GEMV's: against L1 (T0), a batch-4 or batch-8 decode step 10-11%
        // faster on one and two threads (AVX2 kernels forced on Zen 4, 2B-4T, paired runs).
        const bool prefetch_next = jb + 2 * kRowBlock <= j1;
        const int64_t next = kRowBlock * s.row_bytes;
        for (int64_t k0 = 0; k0 < kpad; k0 += chunk) {
            const int64_t len = kpad - k0 < chunk ? kpad - k0 : chunk;
            for (int64_t r = 0; r < rows; ++r) {
                const uint8_t* src = s.packed.data() + (jb + r) * s.row_bytes + k0 / 4;
                for (int64_t g = 0; g < len / 64; ++g) {
                    if (prefetch_next && (g & 3) == 0)
                        _mm_prefetch(reinterpret_cast<const char*>(src + next + g * 16), _MM_HINT_T2);
                    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + g * 16)));
                    _mm256_store_si256(reinterpret_cast<__m256i*>(codes + r * chunk + g * 64), ex.lo(v));
                    _mm256_store_si256(reinterpret_cast<__m256i*>(codes + r * chunk + g * 64 + 32), ex.hi(v));
                }
            }
            const bool first = k0 == 0;
            const int64_t steps = len / 32;
            int64_t b = 0;
            for (; b + 6 <= a.B && a.B - b != 8; b += 6)   // 8 rows left: two tiles of 4
                buffered_block<6>(codes, chunk, rows, a.q + b * a.ldq + k0, a.ldq, steps, a.qsum + b, first, acc + b * ldacc + jb, ldacc);
            for (; b + 4 <= a.B; b += 4)
                buffered_block<4>(codes, chunk, rows, a.q + b * a.ldq + k0, a.ldq, steps, a.qsum + b, first, acc + b * ldacc + jb, ldacc);
            const int8_t* q = a.q + b * a.ldq + k0;
            int32_t* out = acc + b * ldacc + jb;
            switch (a.B - b) {
                case 3: buffered_block<3>(codes, chunk, rows, q, a.ldq, steps, a.qsum + b, first, out, ldacc); break;
                case 2: buffered_block<2>(codes, chunk, rows, q, a.ldq, steps, a.qsum + b, first, out, ldacc); break;
                case 1: buffered_block<1>(codes, chunk, rows, q, a.ldq, steps, a.qsum + b, first, out, ldacc); break;
                default: break;
            }
        }
    }
}

// The contract's final sum of 16 lane partial sums (docs/NUMERICS.md; lane: 32-byte aligned):
// s[l] += s[l+8], s[l] += s[l+4], s[l] += s[l+2], then s[0] + s[1].
inline float sum_lanes(const float lane[16]) {
    const __m256 s8 = _mm256_add_ps(_mm256_load_ps(lane), _mm256_load_ps(lane + 8));
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

inline float to_f32(uint16_t h) { return _cvtsh_ss(h); }
inline float to_f32(float v) { return v; }

// The scalar tail of one dot product (fp16 or fp32 rows), elements [from, n) added to their
// lanes in order, then the 16 lanes summed (lane: 32-byte aligned).
template <typename T>
inline float finish_lanes(float lane[16], const T* e, const float* x, int64_t from, int64_t n) {
    for (int64_t k = from; k < n; ++k) {
        const float p = to_f32(e[k]) * x[k];
        lane[k % 16] = lane[k % 16] + p;
    }
    return sum_lanes(lane);
}

// RB fp16 rows (row r at e + r * ld) against XB vectors: the 16 lanes of the contract's order
// are two ymm halves per (row, vector) pair; several rows side by side keep the FP adders busy
// (each lane's sum is one dependency chain). kPrefetch: the same columns of the next RB rows
// are prefetched, one cache line per row every 32 elements (a prefetch never faults).
template <int RB, int XB, bool kPrefetch>
void dot_f16_block(const uint16_t* e, int64_t ld, const float* x, int64_t ldx, int64_t n, float* out, int64_t ldo) {
    __m256 a0[RB][XB], a1[RB][XB];   // lanes 0..7 and 8..15 of each sum
    for (int r = 0; r < RB; ++r)
        for (int w = 0; w < XB; ++w) a0[r][w] = a1[r][w] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        if (kPrefetch && (i & 31) == 0)
            for (int r = 0; r < RB; ++r)   // two tiles on, into L2 (see avx512.cpp's dot_tile; here,
                                           // Zen 4, one vector: 0.84 -> 0.93 of read_sum)
                _mm_prefetch(reinterpret_cast<const char*>(e + 2 * RB * ld + (i / 32 * RB + r) * 32), _MM_HINT_T2);
        for (int r = 0; r < RB; ++r) {
            const __m256 e0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(e + r * ld + i)));
            const __m256 e1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(e + r * ld + i + 8)));
            for (int w = 0; w < XB; ++w) {
                a0[r][w] = _mm256_add_ps(a0[r][w], _mm256_mul_ps(e0, _mm256_loadu_ps(x + w * ldx + i)));
                a1[r][w] = _mm256_add_ps(a1[r][w], _mm256_mul_ps(e1, _mm256_loadu_ps(x + w * ldx + i + 8)));
            }
        }
    }
    for (int r = 0; r < RB; ++r)
        for (int w = 0; w < XB; ++w) {
            const uint16_t* er = e + r * ld;
            const float* xw = x + w * ldx;
            alignas(32) float lane[16];
            _mm256_store_ps(lane, a0[r][w]);
            _mm256_store_ps(lane + 8, a1[r][w]);
            out[w * ldo + r] = finish_lanes(lane, er, xw, i, n);
        }
}

// RB rows (row r at e + r * ld) against XB vectors over elements [i0, i1) (multiples of 16),
// continuing the 16 lane sums of the pair (r, w) kept in acc[r * ldacc + w * 16 ...] (the same
// order as one pass: each lane adds its products in increasing k). The vectors are
// interleaved (see avx2_dot_f16): elements i..i+7 of vector w at xp + i * nv + w * 8. Lanes
// 0..7 and 8..15 are two passes over the chunk, so that a pass holds RB * XB accumulators (8
// for 2 x 4) and each converted row half meets XB vectors: per 16 elements and pass, RB
// conversions and XB loads for RB * XB multiplies and adds.
template <int RB, int XB>
void dot_f16_chunk(const uint16_t* e, int64_t ld, const float* xp, int64_t nv, int64_t i0, int64_t i1, float* acc,
                   int64_t ldacc) {
    for (int h = 0; h < 16; h += 8) {
        __m256 s[RB][XB];
        for (int r = 0; r < RB; ++r)
            for (int w = 0; w < XB; ++w) s[r][w] = _mm256_load_ps(acc + r * ldacc + w * 16 + h);
        const float* xi = xp + (i0 + h) * nv;
        for (int64_t i = i0 + h; i < i1; i += 16, xi += 16 * nv) {
            __m256 ev[RB];
            for (int r = 0; r < RB; ++r)
                ev[r] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(e + r * ld + i)));
            for (int w = 0; w < XB; ++w) {
                const __m256 xv = _mm256_load_ps(xi + w * 8);
                for (int r = 0; r < RB; ++r) s[r][w] = _mm256_add_ps(s[r][w], _mm256_mul_ps(ev[r], xv));
            }
        }
        for (int r = 0; r < RB; ++r)
            for (int w = 0; w < XB; ++w) _mm256_store_ps(acc + r * ldacc + w * 16 + h, s[r][w]);
    }
}

// Rows [r, r + RB) of a block against its nv vectors (tiles of 4, then 2, then 1).
template <int RB>
void dot_f16_rows(const uint16_t* e, int64_t ld, const float* xp, int64_t nv, int64_t i0, int64_t i1, float* acc) {
    const int64_t ldacc = nv * 16;
    int64_t w = 0;
    for (; w + 4 <= nv; w += 4) dot_f16_chunk<RB, 4>(e, ld, xp + w * 8, nv, i0, i1, acc + w * 16, ldacc);
    if (w + 2 <= nv) dot_f16_chunk<RB, 2>(e, ld, xp + w * 8, nv, i0, i1, acc + w * 16, ldacc), w += 2;
    if (w < nv) dot_f16_chunk<RB, 1>(e, ld, xp + w * 8, nv, i0, i1, acc + w * 16, ldacc);
}

// One vector (the exact head at batch 1, memory-bound): 4 rows at a time with the next 4
// prefetched (2B-4T head from huge pages, 2 threads: 14.0-15.6 -> 17.2-18.6 GB/s; the same in
// 4-row blocks for the int8 head measured no faster). Several vectors (batched decode): the
// vectors are first copied into per-thread scratch, interleaved in groups of 8 elements per
// vector (xp[(i / 8 * nv + w) * 8 + i % 8] within a block of nv <= kVecs vectors), so that the
// loads of one step are consecutive. Read in place, the vectors lie D floats apart (10 KiB
// for 2B-4T), every second one at the same address modulo 4 KiB, and the L1 serves those loads
// at about half speed (a synthetic loop: 14 against 28 multiply-adds/ns at a 4 KiB stride).
// Blocks of kRows rows x up to kVecs vectors then go through the rows in k-chunks of kChunk
// elements, so that the chunk of every vector (16 KiB) stays in L1 while pairs of rows meet
// tiles of 4 vectors (dot_f16_chunk: lanes 0..7, then 8..15, 8 accumulators); the 16 lane
// sums of every (row, vector) pair wait in a 4 KiB buffer between chunks; each row's chunk is
// prefetched kAhead rows ahead (without it the first tile stalls on the row's loads). 8
// vectors over the 2B-4T head, one thread, Zen 3, alternating runs: 184-214 -> 134-146 ms
// against one row x 4 vectors with the vectors in place (in cache: 21 -> 27 multiply-adds/ns).
void avx2_dot_f16(const uint16_t* rows_, int64_t ld, int64_t n_rows, const float* x, int64_t ldx, int64_t nx,
                  int64_t n, float* out, int64_t ldo) {
    if (nx == 1) {
        // One row at a time, no software prefetch: one ascending stream, which the hardware
        // prefetcher follows (see avx512.cpp's avx512_dot_f16). Against 4 rows side by side with
        // a prefetch two tiles on: a 2B-4T decode step 11-12% faster on one and two threads
        // (AVX2 kernels forced on Zen 4, paired runs).
        for (int64_t r = 0; r < n_rows; ++r) dot_f16_block<1, 1, false>(rows_ + r * ld, ld, x, ldx, n, out + r, ldo);
        return;
    }
    constexpr int64_t kRows = 8, kVecs = 8, kChunk = 512, kAhead = 2;
    alignas(32) float acc[kRows * kVecs * 16];
    const int64_t n16 = n / 16 * 16;
    // Block w0 / kVecs of the vectors at xp + w0 * n16.
    float* xp = static_cast<float*>(kernel_scratch(static_cast<size_t>(nx * n16) * sizeof(float) + 64));
    for (int64_t w0 = 0; w0 < nx; w0 += kVecs) {
        const int64_t nv = nx - w0 < kVecs ? nx - w0 : kVecs;
        for (int64_t g = 0; g < n16; g += 8)
            for (int64_t w = 0; w < nv; ++w)
                _mm256_store_ps(xp + w0 * n16 + g * nv + w * 8, _mm256_loadu_ps(x + (w0 + w) * ldx + g));
    }
    for (int64_t r0 = 0; r0 < n_rows; r0 += kRows) {
        const int64_t rows = n_rows - r0 < kRows ? n_rows - r0 : kRows;
        for (int64_t w0 = 0; w0 < nx; w0 += kVecs) {
            const int64_t nv = nx - w0 < kVecs ? nx - w0 : kVecs;
            for (int64_t i = 0; i < rows * nv * 16; ++i) acc[i] = 0.0f;
            for (int64_t i0 = 0; i0 < n16; i0 += kChunk) {
                const int64_t i1 = n16 - i0 < kChunk ? n16 : i0 + kChunk;
                for (int64_t r = 0; r < rows; r += 2) {
                    for (int64_t k = r0 + r + kAhead; k < r0 + r + kAhead + 2 && k < n_rows; ++k)
                        for (int64_t i = i0; i < i1; i += 32)
                            _mm_prefetch(reinterpret_cast<const char*>(rows_ + k * ld + i), _MM_HINT_T2);
                    const uint16_t* e = rows_ + (r0 + r) * ld;
                    if (r + 2 <= rows)
                        dot_f16_rows<2>(e, ld, xp + w0 * n16, nv, i0, i1, acc + r * nv * 16);
                    else
                        dot_f16_rows<1>(e, ld, xp + w0 * n16, nv, i0, i1, acc + r * nv * 16);
                }
            }
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t w = 0; w < nv; ++w) {
                    const uint16_t* er = rows_ + (r0 + r) * ld;
                    const float* xw = x + (w0 + w) * ldx;
                    out[(w0 + w) * ldo + r0 + r] = finish_lanes(acc + (r * nv + w) * 16, er, xw, n16, n);
                }
        }
    }
}

// RB rows against XB vectors in the contract's order: lanes 0..7, then 8..15, are two passes
// over the rows, each with RB * XB independent accumulators (one row and one vector alone
// would be a chain of dependent adds: one add every 3-4 cycles).
template <int RB, int XB>
void dot_f32_tile(const float* e, int64_t ld, const float* x, int64_t ldx, int64_t n, float* out, int64_t ldo) {
    const int64_t n16 = n / 16 * 16;
    alignas(32) float lane[RB * XB][16];
    for (int h = 0; h < 16; h += 8) {
        __m256 s[RB][XB];
        for (int r = 0; r < RB; ++r)
            for (int w = 0; w < XB; ++w) s[r][w] = _mm256_setzero_ps();
        for (int64_t i = h; i < n16; i += 16) {
            __m256 ev[RB];
            for (int r = 0; r < RB; ++r) ev[r] = _mm256_loadu_ps(e + r * ld + i);
            for (int w = 0; w < XB; ++w) {
                const __m256 xv = _mm256_loadu_ps(x + w * ldx + i);
                for (int r = 0; r < RB; ++r) s[r][w] = _mm256_add_ps(s[r][w], _mm256_mul_ps(ev[r], xv));
            }
        }
        for (int r = 0; r < RB; ++r)
            for (int w = 0; w < XB; ++w) _mm256_store_ps(lane[r * XB + w] + h, s[r][w]);
    }
    for (int r = 0; r < RB; ++r)
        for (int w = 0; w < XB; ++w) out[w * ldo + r] = finish_lanes(lane[r * XB + w], e + r * ld, x + w * ldx, n16, n);
}

template <int RB, int XB>
void dot_f32_rows(const float* rows, int64_t ld, int64_t n_rows, const float* x, int64_t ldx, int64_t n, float* out,
                  int64_t ldo) {
    int64_t r = 0;
    for (; r + RB <= n_rows; r += RB) dot_f32_tile<RB, XB>(rows + r * ld, ld, x, ldx, n, out + r, ldo);
    for (; r < n_rows; ++r) dot_f32_tile<1, XB>(rows + r * ld, ld, x, ldx, n, out + r, ldo);
}

// Attention scores: a block of keys (rows) against the query heads that share them (vectors).
// Tiles of 2 rows x 4 vectors, then 4 x 2, then 8 x 1: 8 accumulators per pass.
void avx2_dot_f32(const float* rows, int64_t ld, int64_t n_rows, const float* x, int64_t ldx, int64_t nx, int64_t n,
                  float* out, int64_t ldo) {
    int64_t w = 0;
    for (; w + 4 <= nx; w += 4) dot_f32_rows<2, 4>(rows, ld, n_rows, x + w * ldx, ldx, n, out + w * ldo, ldo);
    if (w + 2 <= nx) dot_f32_rows<4, 2>(rows, ld, n_rows, x + w * ldx, ldx, n, out + w * ldo, ldo), w += 2;
    if (w < nx) dot_f32_rows<8, 1>(rows, ld, n_rows, x + w * ldx, ldx, n, out + w * ldo, ldo);
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

// ref_quantize_i8, 8 elements a vector (see avx512_quantize_i8: the saturating packs are the
// clamp); 32 at a time, then the reference's scalar steps for the tail.
inline float round_half_even_small(float v) { return (v + 12582912.0f) - 12582912.0f; }

float avx2_quantize_i8(const float* x, int64_t n, int8_t* q) {
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i b0 = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask);
        __m256i b1 = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)), abs_mask);
        b0 = _mm256_andnot_si256(_mm256_cmpgt_epi32(b0, inf), b0);   // NaN -> 0 (b < 2^31: a signed compare)
        b1 = _mm256_andnot_si256(_mm256_cmpgt_epi32(b1, inf), b1);
        m0 = _mm256_max_epu32(m0, b0);
        m1 = _mm256_max_epu32(m1, b1);
    }
    alignas(32) uint32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_max_epu32(m0, m1));
    uint32_t mbits = 0;
    for (int l = 0; l < 8; ++l) mbits = lanes[l] > mbits ? lanes[l] : mbits;
    for (; i < n; ++i) {
        uint32_t b;
        __builtin_memcpy(&b, x + i, 4);
        b &= 0x7FFFFFFFu;
        b = b <= 0x7F800000u ? b : 0u;
        mbits = b > mbits ? b : mbits;
    }
    float amax;
    __builtin_memcpy(&amax, &mbits, 4);
    const float s = 127.0f / (amax < 1e-5f ? 1e-5f : amax);   // amax is never NaN
    const __m256 vs = _mm256_set1_ps(s), magic = _mm256_set1_ps(12582912.0f);
    const auto codes = [&](const float* p) {   // NaN -> INT32_MIN, which the packs saturate to -128
        return _mm256_cvttps_epi32(_mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(p), vs), magic), magic));
    };
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (i = 0; i + 32 <= n; i += 32) {
        const __m256i ab = _mm256_packs_epi32(codes(x + i), codes(x + i + 8));
        const __m256i cd = _mm256_packs_epi32(codes(x + i + 16), codes(x + i + 24));
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), bytes);
    }
    for (; i < n; ++i) {
        float r = round_half_even_small(x[i] * s);
        r = r > -128.0f ? r : -128.0f;
        r = r < 127.0f ? r : 127.0f;
        q[i] = static_cast<int8_t>(static_cast<int32_t>(r));
    }
    return s;
}

}  // namespace

const KernelTable& avx2_kernels() {
    static const KernelTable table{"avx2",        avx2_gemm, avx2_dot_f16, avx2_dot_f32, avx2_dot_i8, nullptr, nullptr,
                                   avx2_read_sum, 1,         avx2_quantize_i8};
    return table;
}

}  // namespace sim
}  // namespace bitnet
#endif
