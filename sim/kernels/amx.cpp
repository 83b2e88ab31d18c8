// amx.cpp: AMX-INT8 GEMM for prefill and batches (compiled with -mamx-tile -mamx-int8 and the
// AVX-512 flags; entered only after dispatch.cpp checked the CPU and Linux granted the tile
// state). Batches of fewer than 8 rows, GEMV and the float helpers use the AVX-512 kernels
// (from 8 rows on, a half-empty 16-token tile still beats AVX-512).
//
// TDPBUSD multiplies a tile A of unsigned bytes (16 rows x 64 bytes: 16 weight rows, 64
// codes c = t + 1 each) by a tile B of signed bytes in "VNNI" order (16 rows x 64 bytes: row
// kk holds, for 16 activation rows n, the 4 values q[n][4kk .. 4kk+3]) into a 16 x 16 int32
// tile. acc = sum(c * q) - sum(q), as in the other kernels. prepare_act re-arranges each
// command's activations into B tiles once; gemm expands 32 weight rows of codes into a buffer
// and sweeps all activation rows in blocks of 32 (2 x 2 accumulator tiles).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels.h"

namespace bitnet {
namespace sim {
namespace {

constexpr long kArchReqXcompPerm = 0x1023;
constexpr long kXfeatureXtiledata = 18;

struct TileConfig {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

void configure_tiles() {
    // tmm0..3: C (16 x 16 int32), tmm4..5: A (16 x 64 u8), tmm6..7: B (16 x 64 s8).
    TileConfig cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; ++t) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

// Activation tile layout: for token block tb (16 tokens) and k-step s (64 inputs): 1024
// bytes, row kk (0..15) = for n in 0..15: q[16 tb + n][64 s + 4 kk .. + 3].
inline size_t act_tile_offset(int64_t tb, int64_t s, int64_t steps) { return static_cast<size_t>((tb * steps + s) * 1024); }

size_t amx_prepared_size(const ActBatch& a) {
    if (a.B < 8) return 0;
    const int64_t kpad = slot_k_padded(a.K), steps = kpad / 64, blocks = (a.B + 15) / 16;
    return static_cast<size_t>(blocks * steps * 1024);
}

void amx_prepare_act(const ActBatch& a, uint8_t* buf) {
    const int64_t kpad = slot_k_padded(a.K), steps = kpad / 64;
    std::memset(buf, 0, amx_prepared_size(a));
    for (int64_t n = 0; n < a.B; ++n) {
        const int64_t tb = n / 16, col = (n % 16) * 4;
        const int8_t* q = a.q + n * a.ldq;
        for (int64_t s = 0; s < steps; ++s) {
            uint8_t* tile = buf + act_tile_offset(tb, s, steps);
            for (int64_t kk = 0; kk < 16; ++kk) std::memcpy(tile + kk * 64 + col, q + s * 64 + kk * 4, 4);
        }
    }
}

inline __m512i expand_group(const uint8_t* p, __m512i shifts, __m512i mask3) {
    const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_and_si512(_mm512_srlv_epi64(b, shifts), mask3);
}

struct Buffer {
    uint8_t* p = nullptr;
    size_t n = 0;
    ~Buffer() { std::free(p); }
    uint8_t* get(size_t want) {
        if (n < want) {
            std::free(p);
            p = static_cast<uint8_t*>(std::aligned_alloc(64, (want + 63) / 64 * 64));
            n = p ? want : 0;
            if (!p) throw std::bad_alloc();
        }
        return p;
    }
};

// Stores the C tiles (0, 1 for token block tb0; 2, 3 for tb0 + 1 if two) and writes each
// accumulator out as acc = sum(c * q) - sum(q). out[c][r][n]: C tile c = (row half, token
// block), row r, token n; rows is how many of the 32 weight rows starting at j are real.
void write_tiles(const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j, int64_t rows, int64_t tb0, bool two,
                 int32_t* out) {
    _tile_stored(0, out, 64);
    _tile_stored(1, out + 256, 64);
    if (two) {
        _tile_stored(2, out + 512, 64);
        _tile_stored(3, out + 768, 64);
    }
    for (int c = 0; c < (two ? 4 : 2); ++c) {
        const int64_t rbase = (c & 1) * 16, nbase = (tb0 + (c >> 1)) * 16;
        for (int64_t r = 0; r < 16 && rbase + r < rows; ++r)
            for (int64_t n = 0; n < 16 && nbase + n < a.B; ++n)
                acc[(nbase + n) * ldacc + j + rbase + r] = out[c * 256 + r * 16 + n] - a.qsum[nbase + n];
    }
}

// Small batches (up to 32 activation rows: every token block's accumulators fit in the four C
// tiles): decode is memory-bound, so the weights are expanded a cache line at a time (4 k-steps
// of 32 rows, 8 KiB, stays in L1) right before the tiles consume them, with the next line of
// every row prefetched meanwhile.
void gemm_small_batch(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1,
                      uint8_t* codes, int32_t* out) {
    constexpr int64_t kChunk = 4, kLd = kChunk * 64;
    const int64_t kpad = s.row_bytes * 4, steps = kpad / 64, tblocks = (a.B + 15) / 16;
    const bool two = tblocks == 2;
    const uint8_t* act = static_cast<const uint8_t*>(a.prepared);
    const __m512i shifts = _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0);
    const __m512i mask3 = _mm512_set1_epi8(3);
    for (int64_t j = j0; j < j1; j += 32) {
        const int64_t rows = j1 - j < 32 ? j1 - j : 32;
        const uint8_t* src = s.packed.data() + j * s.row_bytes;
        // Missing rows of a partial block: code 1 (t = 0) everywhere, written once.
        for (int64_t r = rows; r < 32; ++r) std::memset(codes + r * kLd, 1, static_cast<size_t>(kLd));
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t st0 = 0; st0 < steps; st0 += kChunk) {
            const int64_t n = steps - st0 < kChunk ? steps - st0 : kChunk;
            for (int64_t r = 0; r < rows; ++r) {
                const uint8_t* p = src + r * s.row_bytes + st0 * 16;
                _mm_prefetch(reinterpret_cast<const char*>(p + kChunk * 16 * 2), _MM_HINT_T0);
                for (int64_t g = 0; g < n; ++g)
                    _mm512_store_si512(codes + r * kLd + g * 64, expand_group(p + g * 16, shifts, mask3));
            }
            for (int64_t g = 0; g < n; ++g) {
                _tile_loadd(4, codes + g * 64, kLd);
                _tile_loadd(5, codes + 16 * kLd + g * 64, kLd);
                _tile_loadd(6, act + act_tile_offset(0, st0 + g, steps), 64);
                _tile_dpbusd(0, 4, 6);
                _tile_dpbusd(1, 5, 6);
                if (two) {
                    _tile_loadd(7, act + act_tile_offset(1, st0 + g, steps), 64);
                    _tile_dpbusd(2, 4, 7);
                    _tile_dpbusd(3, 5, 7);
                }
            }
        }
        write_tiles(a, acc, ldacc, j, rows, 0, two, out);
    }
}

void amx_gemm(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    if (a.B < 8 || !a.prepared) {
        avx512_kernels().gemm(s, a, acc, ldacc, j0, j1);
        return;
    }
    const int64_t kpad = s.row_bytes * 4, steps = kpad / 64, tblocks = (a.B + 15) / 16;
    const uint8_t* act = static_cast<const uint8_t*>(a.prepared);
    thread_local Buffer codes_buf, out_buf;
    int32_t* out = reinterpret_cast<int32_t*>(out_buf.get(4 * 16 * 16 * sizeof(int32_t)));
    if (tblocks <= 2) {
        configure_tiles();
        gemm_small_batch(s, a, acc, ldacc, j0, j1, codes_buf.get(32 * 4 * 64), out);
        _tile_release();
        return;
    }
    uint8_t* codes = codes_buf.get(static_cast<size_t>(32 * kpad));
    const __m512i shifts = _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0);
    const __m512i mask3 = _mm512_set1_epi8(3);
    configure_tiles();
    for (int64_t j = j0; j < j1; j += 32) {
        const int64_t rows = j1 - j < 32 ? j1 - j : 32;
        // Expand the codes of up to 32 rows (missing rows: code 1, i.e. t = 0).
        for (int64_t r = 0; r < 32; ++r) {
            uint8_t* dst = codes + r * kpad;
            if (r < rows) {
                const uint8_t* src = s.packed.data() + (j + r) * s.row_bytes;
                for (int64_t g = 0; g < steps; ++g)
                    _mm512_storeu_si512(dst + g * 64, expand_group(src + g * 16, shifts, mask3));
            } else {
                std::memset(dst, 1, static_cast<size_t>(kpad));
            }
        }
        for (int64_t tb = 0; tb < tblocks; tb += 2) {
            const bool two = tb + 1 < tblocks;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t st = 0; st < steps; ++st) {
                _tile_loadd(4, codes + st * 64, kpad);
                _tile_loadd(5, codes + 16 * kpad + st * 64, kpad);
                _tile_loadd(6, act + act_tile_offset(tb, st, steps), 64);
                _tile_dpbusd(0, 4, 6);
                _tile_dpbusd(1, 5, 6);
                if (two) {
                    _tile_loadd(7, act + act_tile_offset(tb + 1, st, steps), 64);
                    _tile_dpbusd(2, 4, 7);
                    _tile_dpbusd(3, 5, 7);
                }
            }
            write_tiles(a, acc, ldacc, j, rows, tb, two, out);
        }
    }
    _tile_release();
}

}  // namespace

bool amx_available() {
    static const bool ok = [] {
        if (!cpu_has_amx_int8()) return false;
        // Linux hands out the 8 KiB tile state only on request.
        return ::syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    }();
    return ok;
}

const KernelTable& amx_kernels() {
    const KernelTable& b = avx512_kernels();
    static const KernelTable table{"amx", amx_gemm, b.dot_f16, b.dot_f32, b.dot_i8, amx_prepared_size, amx_prepare_act, b.read_sum};
    return table;
}

}  // namespace sim
}  // namespace bitnet
#endif
