// avx512.cpp: AVX-512 VNNI kernels (compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512vnni; called only after dispatch.cpp checked the CPU).
//
// GEMM: codes c = t + 1 (0..2) are the unsigned operand of VPDPBUSD and activations the
// signed one, so acc = sum(c * q) - sum(q). A 16-byte group of the slot layout broadcast to
// the four 128-bit lanes holds, in lane L, the codes of elements 16L..16L+15 at bits 2L, 2L+1
// of each byte; one AND with 3 << 2L per lane leaves c << 2L, which meets the activations in
// their natural order (lane L's sums come out scaled by 4^L and are shifted back at the end).
// GEMV: 8 rows at a time straight from the slot. Batches (batched decode, prefill): blocks of
// rows against tiles of up to 8 activation rows, in k-chunks that keep both in L1, through
// tiles written in inline assembly.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdlib>
#include <new>

#include "kernels.h"

namespace bitnet {
namespace sim {

namespace {

// Masked micro-kernel for the GEMV (see the top: one AND and one VPDPBUSD per group and row).
// Lane L's sums are multiples of 4^L, so the arithmetic shift back is exact. Bound: |lane sum|
// <= 4 * 192 * 128 per group, so whole rows of G <= kMaskedMaxGroups groups keep int32 (longer
// rows go through the batch path, whose k-chunks are far shorter).
constexpr int64_t kMaskedMaxGroups = 16384;
// The most groups one asm_tile run may cover (the bound at sum8).
constexpr int64_t kMaxTileGroups = 4096;

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
    // The RB rows are contiguous: prefetch the block two tiles on, one cache line per 64 bytes
    // of this tile's progress, so the weight stream keeps flowing while this computes (none at
    // all decoded ~20% slower). Into L2 (T2), as the output head does: the next tile into L1
    // (T0) was 2-4% slower per decode step at batch 1 and ~5% at batch 2 (2B-4T, Zen 4, two
    // threads, paired runs in the engine; a kernel-only harness had shown no difference).
    const uint8_t* pf = w0 + 2 * RB * s.row_bytes;
    const uint8_t* pf_end = s.packed.data() + s.packed.size();
    for (int64_t g = 0; g < G; ++g) {
        for (int r = 0; r < RB; r += 4) {
            const uint8_t* line = pf + (g * RB + r) * 16;
            if (line < pf_end) _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T2);
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

// tile_masked's lane masks, for the tiles in inline assembly (here and asm_tile's).
alignas(64) const uint32_t kLaneMask[16] = {0x03030303u, 0x03030303u, 0x03030303u, 0x03030303u,
                                            0x0C0C0C0Cu, 0x0C0C0C0Cu, 0x0C0C0C0Cu, 0x0C0C0C0Cu,
                                            0x30303030u, 0x30303030u, 0x30303030u, 0x30303030u,
                                            0xC0C0C0C0u, 0xC0C0C0C0u, 0xC0C0C0C0u, 0xC0C0C0C0u};

// tile_masked<8, 1> (the GEMV's tile: 8 rows against one activation row) in GNU inline
// assembly, the same operations in the same order: GCC compiled the intrinsics with each of
// the 8 accumulators copied through a spare register on every group (16 extra zmm moves per 8
// VPDPBUSD). Rows j..j+7, G >= 1 groups; prefetches the 8 rows two tiles on (into L2, one
// cache line per 64 bytes of this tile's progress), or re-touches its own rows where that
// block would pass pf_end. A kernel harness (2B-4T layers, Zen 4): one thread 20.5 -> 22.7
// GB/s from memory, 25.4 -> 28.4 in L1. A 2B-4T decode step (paired runs): one thread 2.5-9%
// faster; two threads within +-3% (three runs: +2.9%, -3.5%, -0.7%).
void gemv_tile8(const TernarySlot& s, const ActBatch& a, int64_t j, int32_t* acc, const uint8_t* pf_end) {
    const int64_t rb = s.row_bytes;
    int64_t n = rb / 16;
    const uint8_t* w = s.packed.data() + j * rb;
    const uint8_t* pf = w + 16 * rb;
    if (pf + 8 * rb > pf_end) pf = w;
    const int8_t* q = a.q;
    alignas(64) __m512i sum[8];
    __asm__ volatile(
        "vmovdqa64 (%[mk]), %%zmm31\n\t"
        "vpxord %%zmm0, %%zmm0, %%zmm0\n\tvpxord %%zmm1, %%zmm1, %%zmm1\n\t"
        "vpxord %%zmm2, %%zmm2, %%zmm2\n\tvpxord %%zmm3, %%zmm3, %%zmm3\n\t"
        "vpxord %%zmm4, %%zmm4, %%zmm4\n\tvpxord %%zmm5, %%zmm5, %%zmm5\n\t"
        "vpxord %%zmm6, %%zmm6, %%zmm6\n\tvpxord %%zmm7, %%zmm7, %%zmm7\n\t"
        "lea (%[w],%[rb],4), %%r10\n\t"   // rows 4..7
        "lea (%[rb],%[rb],2), %%r11\n\t"  // 3 * row_bytes
        "1:\n\t"
        "prefetcht2 (%[pf])\n\tprefetcht2 64(%[pf])\n\t"
        "vmovdqu64 (%[q]), %%zmm30\n\t"
        "vbroadcasti32x4 (%[w]), %%zmm16\n\tvbroadcasti32x4 (%[w],%[rb]), %%zmm17\n\t"
        "vbroadcasti32x4 (%[w],%[rb],2), %%zmm18\n\tvbroadcasti32x4 (%[w],%%r11), %%zmm19\n\t"
        "vbroadcasti32x4 (%%r10), %%zmm20\n\tvbroadcasti32x4 (%%r10,%[rb]), %%zmm21\n\t"
        "vbroadcasti32x4 (%%r10,%[rb],2), %%zmm22\n\tvbroadcasti32x4 (%%r10,%%r11), %%zmm23\n\t"
        "vpandd %%zmm31, %%zmm16, %%zmm16\n\tvpdpbusd %%zmm30, %%zmm16, %%zmm0\n\t"
        "vpandd %%zmm31, %%zmm17, %%zmm17\n\tvpdpbusd %%zmm30, %%zmm17, %%zmm1\n\t"
        "vpandd %%zmm31, %%zmm18, %%zmm18\n\tvpdpbusd %%zmm30, %%zmm18, %%zmm2\n\t"
        "vpandd %%zmm31, %%zmm19, %%zmm19\n\tvpdpbusd %%zmm30, %%zmm19, %%zmm3\n\t"
        "vpandd %%zmm31, %%zmm20, %%zmm20\n\tvpdpbusd %%zmm30, %%zmm20, %%zmm4\n\t"
        "vpandd %%zmm31, %%zmm21, %%zmm21\n\tvpdpbusd %%zmm30, %%zmm21, %%zmm5\n\t"
        "vpandd %%zmm31, %%zmm22, %%zmm22\n\tvpdpbusd %%zmm30, %%zmm22, %%zmm6\n\t"
        "vpandd %%zmm31, %%zmm23, %%zmm23\n\tvpdpbusd %%zmm30, %%zmm23, %%zmm7\n\t"
        "add $16, %[w]\n\tadd $16, %%r10\n\tadd $64, %[q]\n\tadd $128, %[pf]\n\tdec %[n]\n\tjnz 1b\n\t"
        "vmovdqa64 %%zmm0, (%[s])\n\tvmovdqa64 %%zmm1, 64(%[s])\n\tvmovdqa64 %%zmm2, 128(%[s])\n\t"
        "vmovdqa64 %%zmm3, 192(%[s])\n\tvmovdqa64 %%zmm4, 256(%[s])\n\tvmovdqa64 %%zmm5, 320(%[s])\n\t"
        "vmovdqa64 %%zmm6, 384(%[s])\n\tvmovdqa64 %%zmm7, 448(%[s])\n\t"
        : [w] "+r"(w), [q] "+r"(q), [pf] "+r"(pf), [n] "+r"(n)
        : [rb] "r"(rb), [s] "r"(sum), [mk] "r"(kLaneMask)
        : "cc", "memory", "r10", "r11", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm16", "xmm17",
          "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm30", "xmm31");
    const __m512i unscale = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
    for (int r = 0; r < 8; ++r) acc[j + r] = _mm512_reduce_add_epi32(_mm512_srav_epi32(sum[r], unscale)) - a.qsum[0];
}

// Rows [j0, j1) against all TB activation rows: tiles of RB rows, then single rows.
template <int RB, int TB>
void masked_rows(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    int64_t j = j0;
    for (; j + RB <= j1; j += RB) tile_masked<RB, TB>(s, a, j, 0, acc, ldacc);
    for (; j < j1; ++j) tile_masked<1, TB>(s, a, j, 0, acc, ldacc);
}

// Batches in GNU inline assembly (GCC 12 compiled the same loop from intrinsics with every
// accumulator stored to the stack and copied back on each group: 180 against ~400 multiply-adds
// per ns). RB weight rows x TB activation rows over groups [0, n), n >= 1, of a k-chunk: per group, each
// row's 16 bytes are broadcast and masked (tile_masked's scaled lanes; one AND each, which the
// vector pipes VPDPBUSD leaves free take), then each activation row's 64 bytes meet the RB
// rows. Accumulator of (row r, activation row t): zmm(t * RB + r); row r's codes: zmm(RB * TB
// + r); activations: zmm30; mask: zmm31. The accumulators are stored to s (RB * TB vectors,
// 64-byte aligned) in the same order. Weight row r at w[r] + 16 g, activation row t at
// q[t] + 64 g: one index register o = 16 g for both (scale 4 for the activations); D below is
// a group's place (0-3) in the loop's unrolled steps of 4.
//
// Prefetching: each step of 4 groups prefetches RB cache lines at p, p + 64, ..., and moves p on
// by RB * 64 bytes: over a tile's run, p walks once, front to back, over as many bytes as the
// tile reads (a whole-row tile: exactly the RB rows two tiles on, which are contiguous). Zen 4's
// hardware prefetch did not keep up with a tile's RB interleaved row streams, but runs ahead on
// one ascending stream. One thread, 2B-4T layers from memory: batch 2, 65 ms with a prefetch
// loop in C before each tile, 53-56 ms with one prefetch per row and line of the next tile in
// this loop, 34 ms with the walk; batch 8, 104, 82 and 82 ms. (One tile ahead, a whole-row walk
// reaches a 3-row tile's last row too late: 87 ms at batch 8.)
#define BITNET_W(r, reg, D) \
    "vbroadcasti32x4 " #D "*16(%[w" #r "],%[o]), %%zmm" #reg "\n\tvpandd %%zmm31, %%zmm" #reg ", %%zmm" #reg "\n\t"
#define BITNET_Q(t, D) "vmovdqu64 " #D "*64(%[q" #t "],%[o],4), %%zmm30\n\t"
#define BITNET_DP(w, acc) "vpdpbusd %%zmm30, %%zmm" #w ", %%zmm" #acc "\n\t"
#define BITNET_PF(i) "prefetcht0 " #i "*64(%[p])\n\t"
#define BITNET_Z(acc) "vpxord %%zmm" #acc ", %%zmm" #acc ", %%zmm" #acc "\n\t"
#define BITNET_S(acc) "vmovdqa64 %%zmm" #acc ", " #acc "*64(%[o])\n\t"
#define BITNET_MASK "vmovdqu64 %[mask], %%zmm31\n\txor %k[o], %k[o]\n\t"
// Steps of 4 groups (each with PF, then p moves on) while at least 4 are left, then single
// groups, then o = s for the stores.
#define BITNET_LOOP(BODY, PF)                                                                     \
    "cmp %[end4], %[o]\n\tje 2f\n\t"                                                              \
    "1:\n\t" PF BODY(0) BODY(1) BODY(2) BODY(3)                                                   \
    "add %[ps], %[p]\n\tadd $64, %[o]\n\tcmp %[end4], %[o]\n\tjne 1b\n\t"                          \
    "2:\n\tcmp %[end], %[o]\n\tje 4f\n\t"                                                         \
    "3:\n\t" BODY(0) "add $16, %[o]\n\tcmp %[end], %[o]\n\tjne 3b\n\t"                           \
    "4:\n\tmov %[s], %[o]\n\t"
#define BITNET_CLOBBERS "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", \
    "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", \
    "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

// p is early-clobbered: it is written inside the loop, and GCC may otherwise give it the register
// of an input that holds the same value at entry (w[0], when there is nothing to prefetch).
#define BITNET_ASM_OPERANDS(...)                                                                          \
    : [o] "=&r"(o), [p] "+&r"(p)                                                                           \
    : __VA_ARGS__, [end] "m"(end), [end4] "m"(end4), [s] "m"(s), [ps] "i"(kStep),                     \
      [mask] "m"(*reinterpret_cast<const __m512i*>(kLaneMask))                                          \
    : BITNET_CLOBBERS

// The accumulators' zeroing and stores, for the counts the shapes below use.
#define BITNET_ZERO_1 BITNET_Z(0)
#define BITNET_ZERO_2 BITNET_ZERO_1 BITNET_Z(1)
#define BITNET_ZERO_4 BITNET_ZERO_2 BITNET_Z(2) BITNET_Z(3)
#define BITNET_ZERO_8 BITNET_ZERO_4 BITNET_Z(4) BITNET_Z(5) BITNET_Z(6) BITNET_Z(7)
#define BITNET_ZERO_16 \
    BITNET_ZERO_8 BITNET_Z(8) BITNET_Z(9) BITNET_Z(10) BITNET_Z(11) BITNET_Z(12) BITNET_Z(13) BITNET_Z(14) BITNET_Z(15)
#define BITNET_ZERO_24 \
    BITNET_ZERO_16 BITNET_Z(16) BITNET_Z(17) BITNET_Z(18) BITNET_Z(19) BITNET_Z(20) BITNET_Z(21) BITNET_Z(22) BITNET_Z(23)
#define BITNET_STORE_1 BITNET_S(0)
#define BITNET_STORE_2 BITNET_STORE_1 BITNET_S(1)
#define BITNET_STORE_4 BITNET_STORE_2 BITNET_S(2) BITNET_S(3)
#define BITNET_STORE_8 BITNET_STORE_4 BITNET_S(4) BITNET_S(5) BITNET_S(6) BITNET_S(7)
#define BITNET_STORE_16 \
    BITNET_STORE_8 BITNET_S(8) BITNET_S(9) BITNET_S(10) BITNET_S(11) BITNET_S(12) BITNET_S(13) BITNET_S(14) BITNET_S(15)
#define BITNET_STORE_24 \
    BITNET_STORE_16 BITNET_S(16) BITNET_S(17) BITNET_S(18) BITNET_S(19) BITNET_S(20) BITNET_S(21) BITNET_S(22) BITNET_S(23)

template <int RB, int TB>
void asm_tile(const uint8_t* const* w, const int8_t* const* q, int64_t n, int64_t p, __m512i* s);

// asm_tile<RB, TB>: NACC = RB * TB accumulators, BODY(D) the code for one group, PF the rows'
// prefetches, then the row and activation pointer operands.
#define BITNET_ASM_TILE(RB, TB, NACC, BODY, PF, ...)                                                        \
    template <>                                                                                             \
    void asm_tile<RB, TB>(const uint8_t* const* w, const int8_t* const* q, int64_t n, int64_t p, __m512i* s) {  \
        int64_t o;                                                                                          \
        const int64_t end = n * 16, end4 = n / 4 * 64;                                                      \
        constexpr int64_t kStep = RB * 64;                                                                  \
        __asm__ volatile(BITNET_MASK BITNET_ZERO_##NACC BITNET_LOOP(BODY, PF) BITNET_STORE_##NACC           \
                         BITNET_ASM_OPERANDS(__VA_ARGS__));                                                 \
    }

#define BITNET_BODY_3x8(D)                                                                               \
    BITNET_W(0, 24, D) BITNET_W(1, 25, D) BITNET_W(2, 26, D)                                             \
    BITNET_Q(0, D) BITNET_DP(24, 0) BITNET_DP(25, 1) BITNET_DP(26, 2)                                    \
    BITNET_Q(1, D) BITNET_DP(24, 3) BITNET_DP(25, 4) BITNET_DP(26, 5)                                    \
    BITNET_Q(2, D) BITNET_DP(24, 6) BITNET_DP(25, 7) BITNET_DP(26, 8)                                    \
    BITNET_Q(3, D) BITNET_DP(24, 9) BITNET_DP(25, 10) BITNET_DP(26, 11)                                  \
    BITNET_Q(4, D) BITNET_DP(24, 12) BITNET_DP(25, 13) BITNET_DP(26, 14)                                 \
    BITNET_Q(5, D) BITNET_DP(24, 15) BITNET_DP(25, 16) BITNET_DP(26, 17)                                 \
    BITNET_Q(6, D) BITNET_DP(24, 18) BITNET_DP(25, 19) BITNET_DP(26, 20)                                 \
    BITNET_Q(7, D) BITNET_DP(24, 21) BITNET_DP(25, 22) BITNET_DP(26, 23)
BITNET_ASM_TILE(3, 8, 24, BITNET_BODY_3x8, BITNET_PF(0) BITNET_PF(1) BITNET_PF(2),
                [w0] "r"(w[0]), [w1] "r"(w[1]), [w2] "r"(w[2]), [q0] "r"(q[0]),
                [q1] "r"(q[1]), [q2] "r"(q[2]), [q3] "r"(q[3]), [q4] "r"(q[4]),
                [q5] "r"(q[5]), [q6] "r"(q[6]), [q7] "r"(q[7]))

#define BITNET_BODY_6x4(D)                                                                                \
    BITNET_W(0, 24, D) BITNET_W(1, 25, D) BITNET_W(2, 26, D) BITNET_W(3, 27, D)                           \
    BITNET_W(4, 28, D) BITNET_W(5, 29, D)                                                                 \
    BITNET_Q(0, D) BITNET_DP(24, 0) BITNET_DP(25, 1) BITNET_DP(26, 2) BITNET_DP(27, 3) BITNET_DP(28, 4) BITNET_DP(29, 5) \
    BITNET_Q(1, D) BITNET_DP(24, 6) BITNET_DP(25, 7) BITNET_DP(26, 8) BITNET_DP(27, 9) BITNET_DP(28, 10) BITNET_DP(29, 11) \
    BITNET_Q(2, D) BITNET_DP(24, 12) BITNET_DP(25, 13) BITNET_DP(26, 14) BITNET_DP(27, 15) BITNET_DP(28, 16) BITNET_DP(29, 17) \
    BITNET_Q(3, D) BITNET_DP(24, 18) BITNET_DP(25, 19) BITNET_DP(26, 20) BITNET_DP(27, 21) BITNET_DP(28, 22) BITNET_DP(29, 23)
BITNET_ASM_TILE(6, 4, 24, BITNET_BODY_6x4,
                BITNET_PF(0) BITNET_PF(1) BITNET_PF(2) BITNET_PF(3) BITNET_PF(4) BITNET_PF(5),
                [w0] "r"(w[0]), [w1] "r"(w[1]), [w2] "r"(w[2]), [w3] "r"(w[3]),
                [w4] "r"(w[4]), [w5] "r"(w[5]), [q0] "r"(q[0]), [q1] "r"(q[1]),
                [q2] "r"(q[2]), [q3] "r"(q[3]))

#define BITNET_BODY_8x2(D)                                                                                \
    BITNET_W(0, 16, D) BITNET_W(1, 17, D) BITNET_W(2, 18, D) BITNET_W(3, 19, D)                           \
    BITNET_W(4, 20, D) BITNET_W(5, 21, D) BITNET_W(6, 22, D) BITNET_W(7, 23, D)                           \
    BITNET_Q(0, D) BITNET_DP(16, 0) BITNET_DP(17, 1) BITNET_DP(18, 2) BITNET_DP(19, 3) BITNET_DP(20, 4) BITNET_DP(21, 5) BITNET_DP(22, 6) BITNET_DP(23, 7) \
    BITNET_Q(1, D) BITNET_DP(16, 8) BITNET_DP(17, 9) BITNET_DP(18, 10) BITNET_DP(19, 11) BITNET_DP(20, 12) BITNET_DP(21, 13) BITNET_DP(22, 14) BITNET_DP(23, 15)
#define BITNET_PF_8 BITNET_PF(0) BITNET_PF(1) BITNET_PF(2) BITNET_PF(3) BITNET_PF(4) BITNET_PF(5) BITNET_PF(6) BITNET_PF(7)
BITNET_ASM_TILE(8, 2, 16, BITNET_BODY_8x2, BITNET_PF_8,
                [w0] "r"(w[0]), [w1] "r"(w[1]), [w2] "r"(w[2]), [w3] "r"(w[3]),
                [w4] "r"(w[4]), [w5] "r"(w[5]), [w6] "r"(w[6]), [w7] "r"(w[7]),
                [q0] "r"(q[0]), [q1] "r"(q[1]))

#define BITNET_BODY_8x1(D)                                                                                \
    BITNET_W(0, 8, D) BITNET_W(1, 9, D) BITNET_W(2, 10, D) BITNET_W(3, 11, D)                             \
    BITNET_W(4, 12, D) BITNET_W(5, 13, D) BITNET_W(6, 14, D) BITNET_W(7, 15, D)                           \
    BITNET_Q(0, D) BITNET_DP(8, 0) BITNET_DP(9, 1) BITNET_DP(10, 2) BITNET_DP(11, 3) BITNET_DP(12, 4) BITNET_DP(13, 5) BITNET_DP(14, 6) BITNET_DP(15, 7)
BITNET_ASM_TILE(8, 1, 8, BITNET_BODY_8x1, BITNET_PF_8,
                [w0] "r"(w[0]), [w1] "r"(w[1]), [w2] "r"(w[2]), [w3] "r"(w[3]),
                [w4] "r"(w[4]), [w5] "r"(w[5]), [w6] "r"(w[6]), [w7] "r"(w[7]),
                [q0] "r"(q[0]))

#define BITNET_BODY_1x8(D)                                                                                \
    BITNET_W(0, 8, D)                                                                                     \
    BITNET_Q(0, D) BITNET_DP(8, 0) BITNET_Q(1, D) BITNET_DP(8, 1) BITNET_Q(2, D) BITNET_DP(8, 2)          \
    BITNET_Q(3, D) BITNET_DP(8, 3) BITNET_Q(4, D) BITNET_DP(8, 4) BITNET_Q(5, D) BITNET_DP(8, 5)          \
    BITNET_Q(6, D) BITNET_DP(8, 6) BITNET_Q(7, D) BITNET_DP(8, 7)
BITNET_ASM_TILE(1, 8, 8, BITNET_BODY_1x8, BITNET_PF(0),
                [w0] "r"(w[0]), [q0] "r"(q[0]), [q1] "r"(q[1]), [q2] "r"(q[2]),
                [q3] "r"(q[3]), [q4] "r"(q[4]), [q5] "r"(q[5]), [q6] "r"(q[6]),
                [q7] "r"(q[7]))

#define BITNET_BODY_1x4(D) \
    BITNET_W(0, 4, D) BITNET_Q(0, D) BITNET_DP(4, 0) BITNET_Q(1, D) BITNET_DP(4, 1) BITNET_Q(2, D) BITNET_DP(4, 2) BITNET_Q(3, D) BITNET_DP(4, 3)
BITNET_ASM_TILE(1, 4, 4, BITNET_BODY_1x4, BITNET_PF(0),
                [w0] "r"(w[0]), [q0] "r"(q[0]), [q1] "r"(q[1]), [q2] "r"(q[2]),
                [q3] "r"(q[3]))

#define BITNET_BODY_1x2(D) BITNET_W(0, 2, D) BITNET_Q(0, D) BITNET_DP(2, 0) BITNET_Q(1, D) BITNET_DP(2, 1)
BITNET_ASM_TILE(1, 2, 2, BITNET_BODY_1x2, BITNET_PF(0), [w0] "r"(w[0]), [q0] "r"(q[0]), [q1] "r"(q[1]))

#define BITNET_BODY_1x1(D) BITNET_W(0, 1, D) BITNET_Q(0, D) BITNET_DP(1, 0)
BITNET_ASM_TILE(1, 1, 1, BITNET_BODY_1x1, BITNET_PF(0), [w0] "r"(w[0]), [q0] "r"(q[0]))

#undef BITNET_W
#undef BITNET_Q
#undef BITNET_DP
#undef BITNET_PF
#undef BITNET_PF_8
#undef BITNET_Z
#undef BITNET_S
#undef BITNET_LOOP
#undef BITNET_BODY_3x8
#undef BITNET_BODY_6x4
#undef BITNET_BODY_8x2
#undef BITNET_BODY_8x1
#undef BITNET_BODY_1x8
#undef BITNET_BODY_1x4
#undef BITNET_BODY_1x2
#undef BITNET_BODY_1x1
#undef BITNET_MASK
#undef BITNET_CLOBBERS
#undef BITNET_ASM_OPERANDS
#undef BITNET_ASM_TILE
#undef BITNET_ZERO_1
#undef BITNET_ZERO_2
#undef BITNET_ZERO_4
#undef BITNET_ZERO_8
#undef BITNET_ZERO_16
#undef BITNET_ZERO_24
#undef BITNET_STORE_1
#undef BITNET_STORE_2
#undef BITNET_STORE_4
#undef BITNET_STORE_8
#undef BITNET_STORE_16
#undef BITNET_STORE_24

// The sums of 8 accumulators of asm_tile (scaled lanes, see tile_masked), reduced together:
// 4-lane sums within each 128-bit lane by two rounds of unpack and add (every partial sum stays
// within one lane, so it is still a multiple of that lane's scale), then the shift back, then
// the four 128-bit lanes added. 26 vector instructions for 8 sums against about 80 one at a
// time, which cost ~15% of a k-chunk of 40 groups on the vector pipes the tile's VPDPBUSD
// need. Bound: a 128-bit lane's 4-lane sum over a k-chunk of G groups is at most
// 4 * G * 4 * 192 * 128 = 393216 G < 2^31 for G <= kMaxTileGroups (4096).
inline __m256i sum8(const __m512i* a, __m512i unscale) {
    const auto pair = [](__m512i x, __m512i y) {   // per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3]
        return _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y));
    };
    const auto quad = [](__m512i xy, __m512i zw) {   // per 128-bit lane: the 4-lane sums of x, y, z, w
        return _mm512_add_epi32(_mm512_unpacklo_epi64(xy, zw), _mm512_unpackhi_epi64(xy, zw));
    };
    const __m512i lo = _mm512_srav_epi32(quad(pair(a[0], a[1]), pair(a[2], a[3])), unscale);   // 128-bit lanes X0..X3
    const __m512i hi = _mm512_srav_epi32(quad(pair(a[4], a[5]), pair(a[6], a[7])), unscale);   // Y0..Y3
    const __m512i t = _mm512_add_epi32(_mm512_shuffle_i32x4(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)),    // X0 X2 Y0 Y2
                                       _mm512_shuffle_i32x4(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));   // + X1 X3 Y1 Y3
    const __m512i u = _mm512_add_epi32(_mm512_shuffle_i32x4(t, t, _MM_SHUFFLE(0, 0, 2, 0)),
                                       _mm512_shuffle_i32x4(t, t, _MM_SHUFFLE(0, 0, 3, 1)));
    return _mm512_castsi512_si256(u);   // the sums of a[0..3], then a[4..7]
}

// Batches: RB weight rows x TB activation rows over groups [g0, g1) of a k-chunk through
// asm_tile; the pair (row r, activation row t) adds its sum to acc[t * ldacc + r] (first
// chunk: acc = sum - qsum[t]). pf (may be null): the start of the rows to prefetch (two tiles
// on; see asm_tile), walked from byte g0 * 16 * RB.
template <int RB, int TB>
void chunk_tile(const uint8_t* w0, int64_t row_bytes, const int8_t* q0, int64_t ldq, int64_t g0, int64_t g1,
                const int32_t* qsum, bool first, int32_t* acc, int64_t ldacc, const uint8_t* pf) {
    const uint8_t* w[RB];
    const int8_t* q[TB];
    for (int r = 0; r < RB; ++r) w[r] = w0 + r * row_bytes + g0 * 16;
    for (int t = 0; t < TB; ++t) q[t] = q0 + t * ldq + g0 * 64;
    alignas(64) __m512i s[RB * TB];
    asm_tile<RB, TB>(w, q, g1 - g0, reinterpret_cast<int64_t>(pf ? pf + g0 * 16 * RB : w[0]), s);
    const __m512i unscale = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
    alignas(32) int32_t v[RB * TB];
    int i = 0;
    for (; i + 8 <= RB * TB; i += 8) _mm256_store_si256(reinterpret_cast<__m256i*>(v + i), sum8(s + i, unscale));
    for (; i < RB * TB; ++i) v[i] = _mm512_reduce_add_epi32(_mm512_srav_epi32(s[i], unscale));
    for (int t = 0; t < TB; ++t)
        for (int r = 0; r < RB; ++r) {
            int32_t& out = acc[t * ldacc + r];
            out = first ? v[t * RB + r] - qsum[t] : out + v[t * RB + r];
        }
}

// Every row of a block against TB activation rows: tiles of RB rows, then single rows.
// pf_end (null: no prefetching): the end of the rows this call may prefetch. Each tile
// prefetches the tile two on (in a whole-row chunk, the next block's first tiles at the end).
template <int RB, int TB>
void chunk_rows(const uint8_t* w, int64_t row_bytes, int64_t rows, const int8_t* q, int64_t ldq, int64_t g0, int64_t g1,
                const int32_t* qsum, bool first, int32_t* acc, int64_t ldacc, const uint8_t* pf_end) {
    int64_t r = 0;
    for (; r + RB <= rows; r += RB) {
        const uint8_t* next = w + (r + 2 * RB) * row_bytes;
        chunk_tile<RB, TB>(w + r * row_bytes, row_bytes, q, ldq, g0, g1, qsum, first, acc + r, ldacc,
                           pf_end && next + RB * row_bytes <= pf_end ? next : nullptr);
    }
    for (; r < rows; ++r)
        chunk_tile<1, TB>(w + r * row_bytes, row_bytes, q, ldq, g0, g1, qsum, first, acc + r, ldacc, nullptr);
}

// GEMV (and batches of 2-3): tiles of 8 (6) rows from the slot (memory-bound: one VPDPBUSD per
// 64 bytes of activations). Batches: blocks of kRowBlock rows, against tiles of 8 activation rows, then one
// of 4, 2 and 1 for the rest (the shapes of asm_tile). Up to 8 activation rows (batched decode)
// meet each weight once, so tiles run over whole rows (up to kMaxTileGroups groups): the weights
// stream past once, in the order the prefetch walks. More rows (prefill) go in k-chunks of equal
// length (at most kMaxChunk elements), so that a block's chunk of weights (48 rows x up to 640
// bytes) and a tile's chunk of activations (8 x up to 2.5 KiB) stay in L1 while every tile
// meets them; the first activation tile prefetches the weights. One thread, codes in cache,
// 6912 x 2560 (Zen 5): batch 8 115 -> 395 multiply-adds per ns, batch 128 163 -> 404, against
// the buffered kernel this replaced (codes expanded into an L1 buffer; intrinsics). Whole rows
// at batch 4-8 (Zen 4, two threads, 2B-4T layers from memory, against 2560-element chunks and
// a prefetch loop in C, same run): batch 4 45 -> 27 ms, batch 8 56 -> 45 (373 multiply-adds per
// ns, 80% of both cores' VPDPBUSD peak).
void avx512_gemm(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    if (a.B >= 1 && a.B <= 3 && s.row_bytes / 16 <= kMaskedMaxGroups) {
        // Batches of 1-3 are memory-bound like the GEMV: its tiles (all activation rows at
        // once, the next tile prefetched front to back) read closer to the machine's bandwidth
        // than the batch tiles, which take 2 and 3 rows as 8x2 and 8x2 + 8x1 passes (Zen 4, two
        // threads, 2B-4T layers, paired runs: batch 2 25-31 -> 18-22 ms, batch 3 34-40 -> 27-28;
        // batch 4 as 8x2 twice or 4x4 here was no faster than the 6x4 batch tile).
        if (a.B == 1) {
            const uint8_t* pf_end = s.packed.data() + s.packed.size();
            int64_t j = j0;
            if (s.row_bytes >= 16)   // (K = 0 has no groups for the tile's loop: single rows)
                for (; j + 8 <= j1; j += 8) gemv_tile8(s, a, j, acc, pf_end);
            for (; j < j1; ++j) tile_masked<1, 1>(s, a, j, 0, acc, ldacc);
        } else if (a.B == 2) masked_rows<8, 2>(s, a, acc, ldacc, j0, j1);
        else masked_rows<6, 3>(s, a, acc, ldacc, j0, j1);
        return;
    }
    constexpr int64_t kRowBlock = 48, kMaxChunk = 2560;   // 48: whole tiles of 3, 6 and 8 rows
    const int64_t groups = s.row_bytes / 16;
    if (groups == 0) {   // K = 0 (the card refuses it; the kernel still gives the empty sums)
        for (int64_t b = 0; b < a.B; ++b)
            for (int64_t j = j0; j < j1; ++j) acc[b * ldacc + j] = 0;
        return;
    }
    const int64_t max_groups = a.B <= 8 ? kMaxTileGroups : kMaxChunk / 64;
    const int64_t n_chunks = (groups + max_groups - 1) / max_groups;
    const int64_t chunk = (groups + n_chunks - 1) / n_chunks;   // groups per chunk
    const uint8_t* pf_end = s.packed.data() + j1 * s.row_bytes;
    for (int64_t jb = j0; jb < j1; jb += kRowBlock) {
        const int64_t rows = j1 - jb < kRowBlock ? j1 - jb : kRowBlock;
        const uint8_t* w = s.packed.data() + jb * s.row_bytes;
        for (int64_t g0 = 0; g0 < groups; g0 += chunk) {
            const int64_t g1 = groups - g0 < chunk ? groups : g0 + chunk;
            const bool first = g0 == 0;
            int64_t b = 0;
            for (; b < a.B;) {
                const int8_t* q = a.q + b * a.ldq;
                const int32_t* qsum = a.qsum + b;
                int32_t* out = acc + b * ldacc + jb;
                const uint8_t* pf = b == 0 ? pf_end : nullptr;
                const int64_t left = a.B - b;
                if (left >= 8) {
                    chunk_rows<3, 8>(w, s.row_bytes, rows, q, a.ldq, g0, g1, qsum, first, out, ldacc, pf);
                    b += 8;
                } else if (left >= 4) {
                    chunk_rows<6, 4>(w, s.row_bytes, rows, q, a.ldq, g0, g1, qsum, first, out, ldacc, pf);
                    b += 4;
                } else if (left >= 2) {
                    chunk_rows<8, 2>(w, s.row_bytes, rows, q, a.ldq, g0, g1, qsum, first, out, ldacc, pf);
                    b += 2;
                } else {
                    chunk_rows<8, 1>(w, s.row_bytes, rows, q, a.ldq, g0, g1, qsum, first, out, ldacc, pf);
                    b += 1;
                }
            }
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
        // The RB rows two tiles on (one block of memory) are prefetched front to back, RB cache
        // lines every 32 elements, so they are done when this tile is (a prefetch never faults
        // past the end), for a batch's first pass over the rows. (The GEMV, one vector, reads
        // one row at a time without prefetching instead: see avx512_dot_f16.) Prefetching the
        // same columns of each next row instead (RB interleaved streams) reached 73-80% of the
        // machine's read bandwidth (benchmarks/bandwidth.py's loop) on the 2B-4T head, two
        // threads, Zen 5; front to back 91-99%.
        // Into L2 (T2), not L1: the L1's few outstanding misses capped the stream (Zen 4, two
        // threads, paired runs: one tile ahead into L1, 42-46 ms for 8 vectors, 0.86-0.94 of
        // read_sum for one; two tiles ahead into L2, 31 ms and 0.96-1.0).
        if (kPrefetch && (i & 31) == 0)
            for (int r = 0; r < RB; ++r)
                _mm_prefetch(reinterpret_cast<const char*>(e + 2 * RB * ld + (i / 32 * RB + r) * 32), _MM_HINT_T2);
        __m512 ev[RB];
        for (int r = 0; r < RB; ++r)
            ev[r] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + r * ld + i)));
        for (int w = 0; w < XB; ++w) {
            __m512 xv = _mm512_loadu_ps(x + w * ldx + i);
            // One load per vector: GCC would fold it into each of the RB multiplies, and 3 rows
            // x 8 vectors then issued 24 loads for 24 multiply-add pairs (the head at batch 8
            // 1.5% slower, Zen 4).
            if (RB > 1) __asm__("" : "+v"(xv));
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

// All nx vectors for RB rows, in groups of XG (4 or 8) vectors, then 4, 2 and 1 for the rest
// (the rows stay in L1/L2 meanwhile). The first pass prefetches the next rows; later passes
// find these rows in cache.
template <int RB, int XG>
void dot_rows(const uint16_t* e, int64_t ld, const float* x, int64_t ldx, int64_t nx, int64_t n, float* out,
              int64_t ldo) {
    int64_t w = 0;
    if (nx >= XG) {
        dot_tile<RB, XG, true>(e, ld, x, ldx, n, out, ldo);
        w = XG;
    }
    for (; w + XG <= nx; w += XG) dot_tile<RB, XG, false>(e, ld, x + w * ldx, ldx, n, out + w * ldo, ldo);
    if (XG > 4 && w + 4 <= nx) dot_tile<RB, 4, false>(e, ld, x + w * ldx, ldx, n, out + w * ldo, ldo), w += 4;
    if (w + 2 <= nx) dot_tile<RB, 2, true>(e, ld, x + w * ldx, ldx, n, out + w * ldo, ldo), w += 2;
    if (w < nx) dot_tile<RB, 1, true>(e, ld, x + w * ldx, ldx, n, out + w * ldo, ldo);
}

void avx512_dot_f16(const uint16_t* rows, int64_t ld, int64_t n_rows, const float* x, int64_t ldx, int64_t nx,
                    int64_t n, float* out, int64_t ldo) {
    int64_t r = 0;
    if (nx == 1) {
        // One row at a time, no software prefetch: the rows are contiguous, so this reads one
        // ascending stream, which the hardware prefetcher follows like benchmarks/bandwidth.py's
        // loop. (Each lane's sum is still one add chain: 3 cycles per 32 bytes, ~39 GB/s a core
        // on Zen 4, above its ~30 GB/s from memory.) Against 4 rows side by side with the tile
        // two on prefetched into L2: a 2B-4T decode step 8.5% faster on one thread, 4-8% on two
        // (Zen 4, paired runs; a kernel harness: 20-24 -> 26-28 GB/s on one thread, as read_sum).
        for (; r < n_rows; ++r) dot_tile<1, 1, false>(rows + r * ld, ld, x, ldx, n, out + r, ldo);
        return;
    }
    if (nx >= 8) {
        // Tiles of 3 rows x 8 vectors (24 accumulators): each weight is converted once per 8
        // vectors instead of once per 4, and each vector's 64 bytes are loaded once per 3 rows.
        // The vectors (80 KB on 2B-4T) stream from L2 for every tile. Against 4 x 4 tiles, the
        // 2B-4T head for 8 vectors (Zen 4, two threads, paired runs): 36.7 -> 31.8 ms, the
        // decode step 6% faster; 2 x 8 tiles: 32.0 ms. (An earlier 2 x 8 tile had measured 1.5 G
        // multiply-add pairs/s per core against 4 x 4's 2.3 G on Zen 5, on a 2560 x 4096 block,
        // while GCC still folded each vector's load into every multiply: see dot_tile.)
        for (; r + 3 <= n_rows; r += 3) dot_rows<3, 8>(rows + r * ld, ld, x, ldx, nx, n, out + r, ldo);
        for (; r < n_rows; ++r) dot_rows<1, 8>(rows + r * ld, ld, x, ldx, nx, n, out + r, ldo);
        return;
    }
    // 4 x 4 tiles: four vectors of a 2560-wide model (40 KB) against four rows.
    for (; r + 4 <= n_rows; r += 4) dot_rows<4, 4>(rows + r * ld, ld, x, ldx, nx, n, out + r, ldo);
    for (; r < n_rows; ++r) dot_rows<1, 4>(rows + r * ld, ld, x, ldx, nx, n, out + r, ldo);
}

// The contract's 16-lane sums (reduce16) of 16 accumulators at once, in the same tree: each
// level adds the same pairs of lanes as reduce16 does, for four (then eight, then all sixteen)
// accumulators per instruction. 45 vector instructions for 16 sums against about 8 each: the
// sums of attention scores have only head_dim / 16 = 8 steps, so one at a time the tree cost
// as much as the products. Returns, in 128-bit lane j, the sums of a[4k + j] for k = 0..3.
__attribute__((always_inline)) inline __m512 reduce16x16(const __m512* a) {
    __m512 b[8], c[4], d[2];
    for (int p = 0; p < 8; ++p)   // l += l + 8: [a_2p lanes 0..7 | a_2p+1 lanes 0..7]
        b[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int q = 0; q < 4; ++q)   // l += l + 4: 128-bit lane j holds a_4q+j's lanes 0..3
        c[q] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * q], b[2 * q + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(b[2 * q], b[2 * q + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int t = 0; t < 2; ++t)   // l += l + 2
        d[t] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * t], c[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(c[2 * t], c[2 * t + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),   // lane 0 + lane 1
                         _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// RB rows against XB vectors (attention: a block of keys against the query heads that share
// them): one accumulator of the contract's 16 lanes per pair, RB * XB independent chains.
template <int RB, int XB>
__attribute__((always_inline)) inline void dot_f32_tile(const float* e, int64_t ld, const float* x, int64_t ldx, int64_t n, float* out, int64_t ldo) {
    __m512 acc[RB * XB];   // pair (r, w) at r * XB + w
    for (int i = 0; i < RB * XB; ++i) acc[i] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 ev[RB];
        for (int r = 0; r < RB; ++r) ev[r] = _mm512_loadu_ps(e + r * ld + i);
        for (int w = 0; w < XB; ++w) {
            __m512 xv = _mm512_loadu_ps(x + w * ldx + i);
            __asm__("" : "+v"(xv));   // one load per vector (GCC would fold it into every multiply)
            for (int r = 0; r < RB; ++r) acc[r * XB + w] = _mm512_add_ps(acc[r * XB + w], _mm512_mul_ps(ev[r], xv));
        }
    }
    if (i < n) {
        const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
        __m512 ev[RB];
        for (int r = 0; r < RB; ++r) ev[r] = _mm512_maskz_loadu_ps(m, e + r * ld + i);
        for (int w = 0; w < XB; ++w) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + w * ldx + i);
            for (int r = 0; r < RB; ++r)
                acc[r * XB + w] = _mm512_mask_add_ps(acc[r * XB + w], m, acc[r * XB + w], _mm512_mul_ps(ev[r], xv));
        }
    }
    if (RB == 4 && XB == 4) {   // 128-bit lane w: the sums of rows 0..3 with vector w
        const __m512 sums = reduce16x16(acc);
        _mm_storeu_ps(out, _mm512_castps512_ps128(sums));
        _mm_storeu_ps(out + ldo, _mm512_extractf32x4_ps(sums, 1));
        _mm_storeu_ps(out + 2 * ldo, _mm512_extractf32x4_ps(sums, 2));
        _mm_storeu_ps(out + 3 * ldo, _mm512_extractf32x4_ps(sums, 3));
        return;
    }
    for (int r = 0; r < RB; ++r)
        for (int w = 0; w < XB; ++w) out[w * ldo + r] = reduce16(acc[r * XB + w]);
}

// Attention scores: a block of keys (rows) against the query heads that share them (vectors):
// tiles of 4 keys x 4 heads reduced together; the other vectors one at a time against 4 keys.
void avx512_dot_f32(const float* rows, int64_t ld, int64_t n_rows, const float* xs, int64_t ldx, int64_t nx, int64_t n,
                    float* outs, int64_t ldo) {
    int64_t w = 0;
    for (; w + 4 <= nx; w += 4) {
        int64_t r = 0;
        for (; r + 4 <= n_rows; r += 4) dot_f32_tile<4, 4>(rows + r * ld, ld, xs + w * ldx, ldx, n, outs + w * ldo + r, ldo);
        for (; r < n_rows; ++r) dot_f32_tile<1, 4>(rows + r * ld, ld, xs + w * ldx, ldx, n, outs + w * ldo + r, ldo);
    }
    for (; w < nx; ++w) {
        int64_t r = 0;
        for (; r + 4 <= n_rows; r += 4) dot_f32_tile<4, 1>(rows + r * ld, ld, xs + w * ldx, ldx, n, outs + w * ldo + r, ldo);
        for (; r < n_rows; ++r) dot_f32_tile<1, 1>(rows + r * ld, ld, xs + w * ldx, ldx, n, outs + w * ldo + r, ldo);
    }
}

// rows (signed, |v| <= 127) x x (signed): VPDPBUSD needs an unsigned operand, so rows are
// biased by +128 and 128 * sum(x) is subtracted.
// RB rows against XB vectors: each biased row chunk is loaded once and used XB times.
template <int RB, int XB, bool kPrefetch = true>
void dot_i8_tile(const int8_t* e, int64_t ld, const int8_t* x, int64_t ldx, int64_t n, const int32_t* xsum128,
                 int32_t* out, int64_t ldo) {
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512i acc[RB][XB];
    for (int r = 0; r < RB; ++r)
        for (int w = 0; w < XB; ++w) acc[r][w] = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        // Prefetch the RB rows two tiles on front to back into L2, RB cache lines per 64 columns
        // (as dot_tile): one vector is memory-bound (2B-4T int8 head, two threads, Zen 5: 75-81%
        // of the machine's read bandwidth with the same columns of each next row, 94-101% this
        // way), and with 8 the hardware prefetcher alone fed 5.8 GB/s of rows from memory (9 with
        // this). Zen 4, paired runs: 8 vectors 15.4-16.1 -> 10.4-10.8 ms against the next tile
        // into L1; 1-2 vectors 0.85-0.95 of read_sum either way (they are now read one row at a
        // time without prefetching: see avx512_dot_i8).
        if (kPrefetch)
            for (int r = 0; r < RB; ++r)
                _mm_prefetch(reinterpret_cast<const char*>(e + 2 * RB * ld + (i / 64 * RB + r) * 64), _MM_HINT_T2);
        __m512i ev[RB];
        for (int r = 0; r < RB; ++r) ev[r] = _mm512_xor_si512(_mm512_loadu_si512(e + r * ld + i), bias);   // e + 128 as u8
        for (int w = 0; w < XB; ++w) {
            __m512i xv = _mm512_loadu_si512(x + w * ldx + i);
            __asm__("" : "+v"(xv));   // one load per vector: GCC folds it into every VPDPBUSD otherwise
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
template <int RB, int XB, bool kPrefetch = true>
void dot_i8_pass(const int8_t* rows, int64_t ld, int64_t n_rows, const int8_t* x, int64_t ldx, int64_t n, int32_t* out,
                 int64_t ldo) {
    int32_t xsum128[XB];
    for (int w = 0; w < XB; ++w) {
        int32_t s = 0;
        for (int64_t i = 0; i < n; ++i) s += x[w * ldx + i];
        xsum128[w] = 128 * s;
    }
    int64_t r = 0;
    for (; r + RB <= n_rows; r += RB) dot_i8_tile<RB, XB, kPrefetch>(rows + r * ld, ld, x, ldx, n, xsum128, out + r, ldo);
    for (; r < n_rows; ++r) dot_i8_tile<1, XB>(rows + r * ld, ld, x, ldx, n, xsum128, out + r, ldo);
}

// Rows are biased by +128 to make VPDPBUSD's unsigned operand, so 128 * sum(x) is subtracted.
// Vectors go 8 at a time (2 rows x 8 vectors = 16 accumulators), then 4, then 2, then 1
// (one or two vectors in all: one row at a time).
void avx512_dot_i8(const int8_t* rows, int64_t ld, int64_t n_rows, const int8_t* x, int64_t ldx, int64_t nx, int64_t n,
                   int32_t* out, int64_t ldo) {
    if (nx <= 2) {
        // One or two vectors (the fast head's scoring of one hidden state: its codes and their
        // residual's) are memory-bound: one row at a time, without software prefetch, is one
        // ascending stream for the hardware prefetcher (as avx512_dot_f16's GEMV). Against
        // 4 rows side by side with a prefetch two tiles on: a fast-head decode step 1-2% faster
        // on one thread, 3-6% on two (2B-4T, Zen 4, paired runs).
        if (nx == 2) dot_i8_pass<1, 2, false>(rows, ld, n_rows, x, ldx, n, out, ldo);
        else if (nx == 1) dot_i8_pass<1, 1, false>(rows, ld, n_rows, x, ldx, n, out, ldo);
        return;
    }
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

// ref_quantize_i8, 16 elements a step: the amax as an unsigned maximum of the |x| bit
// patterns (NaN lanes masked out), then x * s rounded by adding and subtracting 1.5 * 2^23,
// the reference's operations. The reference's clamp to [-128, 127] is done by the saturating
// packs instead: r is an integer in [-127, 127] (|x| <= amax, so |x * s| <= 127 (1 + 2^-23)^2)
// or NaN, whose truncation is INT32_MIN and saturates to -128, the reference's NaN code.
// 2560 elements hot in L1 (Zen 4): 0.26 us, against 0.93 us for GCC's AVX-512 clone of the
// reference, 0.32 us with the clamps (MAXPS / MINPS) and 0.41 us with VPMOVDB to memory
// instead of the packs.
float avx512_quantize_i8(const float* x, int64_t n, int8_t* q) {
    const auto lanes_from = [n](int64_t i) {   // the lanes of elements i.. that are < n
        return n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    };
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
    __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512i b0 = _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask);
        const __m512i b1 = _mm512_and_si512(_mm512_loadu_si512(x + i + 16), abs_mask);
        m0 = _mm512_mask_max_epu32(m0, _mm512_cmple_epu32_mask(b0, inf), m0, b0);
        m1 = _mm512_mask_max_epu32(m1, _mm512_cmple_epu32_mask(b1, inf), m1, b1);
    }
    for (; i < n; i += 16) {
        const __mmask16 k = lanes_from(i);
        const __m512i b = _mm512_and_si512(_mm512_maskz_loadu_epi32(k, x + i), abs_mask);   // lanes past n: 0
        m0 = _mm512_mask_max_epu32(m0, _mm512_cmple_epu32_mask(b, inf), m0, b);
    }
    const uint32_t mbits = _mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1));
    float amax;
    __builtin_memcpy(&amax, &mbits, 4);
    const float s = 127.0f / (amax < 1e-5f ? 1e-5f : amax);   // amax is never NaN
    const __m512 vs = _mm512_set1_ps(s), magic = _mm512_set1_ps(12582912.0f);
    const auto codes = [&](__m512 v) {
        return _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v, vs), magic), magic));
    };
    // 64 codes a step: two saturating packs and one dword permute put them in order.
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (i = 0; i + 64 <= n; i += 64) {
        const __m512i ab = _mm512_packs_epi32(codes(_mm512_loadu_ps(x + i)), codes(_mm512_loadu_ps(x + i + 16)));
        const __m512i cd = _mm512_packs_epi32(codes(_mm512_loadu_ps(x + i + 32)), codes(_mm512_loadu_ps(x + i + 48)));
        _mm512_storeu_si512(q + i, _mm512_permutexvar_epi32(order, _mm512_packs_epi16(ab, cd)));
    }
    for (; i < n; i += 16) {
        const __mmask16 k = lanes_from(i);
        _mm_mask_storeu_epi8(q + i, k, _mm512_cvtsepi32_epi8(codes(_mm512_maskz_loadu_ps(k, x + i))));   // saturating
    }
    return s;
}

}  // namespace

const KernelTable& avx512_kernels() {
    static const KernelTable table{"avx512",        avx512_gemm, avx512_dot_f16,  avx512_dot_f32, avx512_dot_i8,
                                   nullptr,         nullptr,     avx512_read_sum, 2,              avx512_quantize_i8};
    return table;
}

}  // namespace sim
}  // namespace bitnet
#endif
