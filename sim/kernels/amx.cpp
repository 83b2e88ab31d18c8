// amx.cpp: AMX-INT8 GEMM for prefill and batches (compiled with -mamx-tile -mamx-int8 -mgfni and
// the AVX-512 flags; entered only after dispatch.cpp checked the CPU and Linux granted the tile
// state). Batches of fewer than 8 rows, GEMV and the float helpers use the AVX-512 kernels
// (from 8 rows on, a half-empty 16-token tile still beats AVX-512). The fast head's int8
// scoring (dot_i8) takes tiles from 3 vectors on (amx_dot_i8, at the end; kAmxDotMinVectors).
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

// out[j] lane i = in[i] lane j (a 16 x 16 transpose of dwords): pairs of rows interleaved, then
// quads (after the second round, v[4g + c]'s 128-bit lane L holds column 4L + c of rows
// 4g..4g+3), then whole 128-bit lanes exchanged.
inline void transpose16(const __m512i in[16], __m512i out[16]) {
    __m512i t[16], v[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(in[2 * i], in[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(in[2 * i], in[2 * i + 1]);
    }
    for (int g = 0; g < 4; ++g) {
        v[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g + 0], t[4 * g + 2]);
        v[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g + 0], t[4 * g + 2]);
        v[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        v[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    for (int c = 0; c < 4; ++c) {
        // Lanes (0, 2) and (1, 3) of row groups (0, 1) and (2, 3), then the four groups' lanes
        // for one column: columns c, c + 8 from the even lanes, c + 4, c + 12 from the odd ones.
        const __m512i e01 = _mm512_shuffle_i32x4(v[c], v[4 + c], 0x88), o01 = _mm512_shuffle_i32x4(v[c], v[4 + c], 0xDD);
        const __m512i e23 = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0x88), o23 = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0xDD);
        out[c] = _mm512_shuffle_i32x4(e01, e23, 0x88);
        out[c + 4] = _mm512_shuffle_i32x4(o01, o23, 0x88);
        out[c + 8] = _mm512_shuffle_i32x4(e01, e23, 0xDD);
        out[c + 12] = _mm512_shuffle_i32x4(o01, o23, 0xDD);
    }
}

// Re-arranges up to 16 vectors of bytes (vector w at x + w * ldx, nx of them) into VNNI-order B
// tiles, one per k-step of 64: row kk of step s holds, for each vector w, its 4 bytes at
// 64 s + 4 kk (vectors past nx: 0). 16 loads, a dword transpose and 16 stores per step.
inline void vnni_tiles(const int8_t* x, int64_t ldx, int64_t nx, int64_t steps, uint8_t* dst, int64_t dst_stride) {
    for (int64_t s = 0; s < steps; ++s) {
        __m512i in[16], out[16];
        for (int64_t w = 0; w < 16; ++w) in[w] = w < nx ? _mm512_loadu_si512(x + w * ldx + s * 64) : _mm512_setzero_si512();
        transpose16(in, out);
        for (int kk = 0; kk < 16; ++kk) _mm512_store_si512(dst + s * dst_stride + kk * 64, out[kk]);
    }
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
    for (int64_t tb = 0; tb * 16 < a.B; ++tb)
        vnni_tiles(a.q + tb * 16 * a.ldq, a.ldq, a.B - tb * 16, steps, buf + act_tile_offset(tb, 0, steps), 1024);
}

// One 16-byte group of codes (byte i holds elements 16L + i at bits 2L, 2L + 1) broadcast to
// the four 128-bit lanes, and lane L's field taken out of every byte by one GF(2) affine
// transform (GF2P8AFFINEQB: output bit j is the parity of the input byte masked with row
// 7 - j of the lane's 8x8 bit matrix): rows 7 and 6 pick bits 2L and 2L + 1, the other rows
// are 0. One instruction where a variable shift and a mask took two: 5-9% faster per thread
// (batch 8, 6912 x 2560 slots, from memory and from L3).
inline __m512i field_matrices() {
    auto m = [](int L) {
        return static_cast<long long>((uint64_t{1} << (2 * L)) << 56 | (uint64_t{2} << (2 * L)) << 48);
    };
    return _mm512_set_epi64(m(3), m(3), m(2), m(2), m(1), m(1), m(0), m(0));
}

inline __m512i expand_group(const uint8_t* p, __m512i fields) {
    const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_gf2p8affine_epi64_epi8(b, fields, 0);
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

// 4 KiB of scratch, 64-byte aligned, per thread: the four C tiles stored to memory.
int32_t* c_tile_scratch() {
    thread_local Buffer buf;
    return reinterpret_cast<int32_t*>(buf.get(4 * 16 * 16 * sizeof(int32_t)));
}

// Transposes a stored 16 x 16 C tile (out[r][n]: weight row r, token n) into the accumulator
// layout (acc[n][j + r]) and subtracts sum(q): four rounds of in-register shuffles, then one
// masked store of up to 16 rows per token (a scalar loop here took a quarter of the batch-8 time).
inline void store_tile_transposed(const int32_t* out, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j,
                                  int64_t rows, int64_t nbase) {
    __m512i r[16], col[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(out + i * 16);
    transpose16(r, col);
    const __mmask16 m = static_cast<__mmask16>(rows >= 16 ? 0xFFFF : (1u << rows) - 1);
    const int64_t ntok = a.B - nbase < 16 ? a.B - nbase : 16;
    for (int64_t n = 0; n < ntok; ++n)
        _mm512_mask_storeu_epi32(acc + (nbase + n) * ldacc + j, m, _mm512_sub_epi32(col[n], _mm512_set1_epi32(a.qsum[nbase + n])));
}

// Stores the C tiles (0, 1 for token block tb0; 2, 3 for tb0 + 1 if two) and writes each
// accumulator out as acc = sum(c * q) - sum(q); rows is how many of the 32 weight rows starting
// at j are real. out: 4 KiB of scratch, 64-byte aligned.
void write_tiles(const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j, int64_t rows, int64_t tb0, bool two,
                 int32_t* out) {
    _tile_stored(0, out, 64);
    _tile_stored(1, out + 256, 64);
    if (two) {
        _tile_stored(2, out + 512, 64);
        _tile_stored(3, out + 768, 64);
    }
    for (int c = 0; c < (two ? 4 : 2); ++c) {
        const int64_t rbase = (c & 1) * 16;
        if (rbase >= rows) continue;
        store_tile_transposed(out + c * 256, a, acc, ldacc, j + rbase, rows - rbase, (tb0 + (c >> 1)) * 16);
    }
}

// Small batches' chunks of codes (gemm_small_batch): kChunk k-steps of 32 rows, in two buffers,
// the second offset by 2 KiB more than the first's size so that the two do not alias modulo 4 KiB.
constexpr int64_t kChunk = 4, kChunkBuf = 32 * kChunk * 64 + 2048;

// dot_i8 takes the tile path from this many vectors (fewer: AVX-512 VNNI). One thread over the
// 2B-4T head's 128256 x 2560 int8 rows from memory: 4 vectors 30.1 -> 26.8 ms, 8 vectors 29.9 ->
// 29.5 (two processes at once, 8 vectors: 10.5 -> 11.7 GB/s each; in cache 20.9 -> 39.4);
// 3 vectors 44.9 -> 27.1 (1 vector: 22.4 on AVX-512; re-measured with AVX-512's 2-vector pass:
// 40.3 against 31.9). 2 vectors stay on AVX-512, which scores them in one pass: 27.1 against
// 29.7 ms here (two processes at once: 25.5 against 28.7-30.4).
constexpr int64_t kAmxDotMinVectors = 3;

// Expands k-steps [st0, st0 + n) of rows [r0, r1) of the 32-row block at weight row j into a
// chunk buffer (32 rows of kChunk * 64 bytes; rows past `rows`, the end of a partial block, get
// code 1, t = 0). Each row also prefetches one line of the next block, which is contiguous: a
// linear sweep of 32 lines per chunk, into L2 (L1 hints measured ~4% slower; two blocks ahead,
// the same).
inline void expand_rows(const TernarySlot& s, int64_t j, int64_t rows, int64_t st0, int64_t n, uint8_t* codes,
                        int64_t r0, int64_t r1) {
    constexpr int64_t kLd = kChunk * 64;
    const __m512i fields = field_matrices();
    const uint8_t* src = s.packed.data() + j * s.row_bytes + st0 * 16;
    const uint8_t* pf = s.packed.data() + (j + 32) * s.row_bytes + (st0 / kChunk) * 32 * 64;
    const int64_t real = r1 < rows ? r1 : rows;
    int64_t r = r0;
    for (; r < real; ++r) {
        const uint8_t* p = src + r * s.row_bytes;
        _mm_prefetch(reinterpret_cast<const char*>(pf + r * 64), _MM_HINT_T1);
        for (int64_t g = 0; g < n; ++g) _mm512_store_si512(codes + r * kLd + g * 64, expand_group(p + g * 16, fields));
    }
    for (; r < r1; ++r)
        for (int64_t g = 0; g < n; ++g) _mm512_store_si512(codes + r * kLd + g * 64, _mm512_set1_epi8(1));
}

// Small batches (up to 32 activation rows: every token block's accumulators fit in the four C
// tiles): decode is memory-bound, so the weights are expanded a cache line at a time (4 k-steps
// of 32 rows, 8 KiB, stays in L1) right before the tiles consume them. Two chunk buffers
// alternate: while the tiles consume one chunk, step by step, the next chunk is expanded into
// the other buffer, 8 rows after each step (a tile load of bytes stored just before waits for
// the stores to drain). With the vector transpose in write_tiles, one thread's batch-8 pass over
// 6912 x 2560 slots from memory went from 6.2 to 8.1 GB/s of weights. The tile unit and the
// expansion's stores still take turns rather than overlap (measured: the time of a step is the
// sum of the two), so the expansion's cost is what remains.
void gemm_small_batch(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1,
                      uint8_t* codes2, int32_t* out) {
    constexpr int64_t kLd = kChunk * 64, kSlice = 32 / kChunk;
    const int64_t kpad = s.row_bytes * 4, steps = kpad / 64, tblocks = (a.B + 15) / 16;
    const int64_t chunks = (steps + kChunk - 1) / kChunk, blocks = (j1 - j0 + 31) / 32;
    const bool two = tblocks == 2;
    const uint8_t* act = static_cast<const uint8_t*>(a.prepared);
    auto block_rows = [&](int64_t blk) { return j1 - (j0 + 32 * blk) < 32 ? j1 - (j0 + 32 * blk) : 32; };
    auto chunk_steps = [&](int64_t c) { return steps - c * kChunk < kChunk ? steps - c * kChunk : kChunk; };
    // Flat sequence of (block, chunk) items; item f lives in buffer f % 2.
    const int64_t items = blocks * chunks;
    expand_rows(s, j0, block_rows(0), 0, chunk_steps(0), codes2, 0, 32);
    for (int64_t f = 0; f < items; ++f) {
        const int64_t blk = f / chunks, c = f % chunks, st0 = c * kChunk, n = chunk_steps(c);
        const uint8_t* codes = codes2 + (f & 1) * kChunkBuf;
        const bool next = f + 1 < items;
        const int64_t nb = (f + 1) / chunks, nc = (f + 1) % chunks;
        const int64_t nj = j0 + 32 * nb, nrows = next ? block_rows(nb) : 0, nst0 = nc * kChunk, nn = chunk_steps(nc);
        uint8_t* ncodes = codes2 + ((f + 1) & 1) * kChunkBuf;
        if (c == 0) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        }
        for (int64_t g = 0; g < kChunk; ++g) {
            if (g < n) {
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
            if (next) expand_rows(s, nj, nrows, nst0, nn, ncodes, g * kSlice, (g + 1) * kSlice);
        }
        if (c == chunks - 1) write_tiles(a, acc, ldacc, j0 + 32 * blk, block_rows(blk), 0, two, out);
    }
}

void amx_gemm(const TernarySlot& s, const ActBatch& a, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1) {
    if (a.B < 8 || !a.prepared || s.row_bytes == 0) {   // (K = 0: the AVX-512 kernel's empty sums)
        avx512_kernels().gemm(s, a, acc, ldacc, j0, j1);
        return;
    }
    const int64_t kpad = s.row_bytes * 4, steps = kpad / 64, tblocks = (a.B + 15) / 16;
    const uint8_t* act = static_cast<const uint8_t*>(a.prepared);
    thread_local Buffer codes_buf;
    int32_t* out = c_tile_scratch();
    if (tblocks <= 2) {
        configure_tiles();
        gemm_small_batch(s, a, acc, ldacc, j0, j1, codes_buf.get(2 * kChunkBuf), out);
        _tile_release();
        return;
    }
    uint8_t* codes = codes_buf.get(static_cast<size_t>(32 * kpad));
    const __m512i fields = field_matrices();
    configure_tiles();
    for (int64_t j = j0; j < j1; j += 32) {
        const int64_t rows = j1 - j < 32 ? j1 - j : 32;
        // Expand the codes of up to 32 rows (missing rows: code 1, i.e. t = 0).
        for (int64_t r = 0; r < 32; ++r) {
            uint8_t* dst = codes + r * kpad;
            if (r < rows) {
                const uint8_t* src = s.packed.data() + (j + r) * s.row_bytes;
                for (int64_t g = 0; g < steps; ++g)
                    _mm512_storeu_si512(dst + g * 64, expand_group(src + g * 16, fields));
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

// The fast head's int8 scoring (dot_i8) for 4 to 16 vectors: TDPBSSD (signed x signed) takes
// tiles of 16 rows x 64 columns straight from the row matrix (the compact head is already int8,
// so nothing is expanded), against the vectors re-arranged once per call into VNNI-order B tiles
// (row kk of k-step s: for each vector w, its 4 values at 64 s + 4 kk; vectors past nx are 0).
// NG groups of 16 rows (NG C tiles) share each B tile. Integer sums: exact in any order.
// (Software prefetch, of the next groups as a linear sweep or of the same rows a few steps
// ahead, measured 0-25% slower than the hardware prefetchers alone; a k-split over 4 C tiles
// for one group, 9% slower.)
template <int NG>
void dot_i8_groups(const int8_t* rows, int64_t ld, const uint8_t* bt, int64_t steps, int64_t nx, int32_t* out,
                   int64_t ldo, int32_t* c) {
    if (NG > 0) _tile_zero(0);
    if (NG > 1) _tile_zero(1);
    if (NG > 2) _tile_zero(2);
    if (NG > 3) _tile_zero(3);
    for (int64_t s = 0; s < steps; ++s) {
        _tile_loadd(6, bt + s * 1024, 64);
        const int8_t* a = rows + s * 64;
        if (NG > 0) { _tile_loadd(4, a, ld); _tile_dpbssd(0, 4, 6); }
        if (NG > 1) { _tile_loadd(5, a + 16 * ld, ld); _tile_dpbssd(1, 5, 6); }
        if (NG > 2) { _tile_loadd(4, a + 32 * ld, ld); _tile_dpbssd(2, 4, 6); }
        if (NG > 3) { _tile_loadd(5, a + 48 * ld, ld); _tile_dpbssd(3, 5, 6); }
    }
    if (NG > 0) _tile_stored(0, c, 64);
    if (NG > 1) _tile_stored(1, c + 256, 64);
    if (NG > 2) _tile_stored(2, c + 512, 64);
    if (NG > 3) _tile_stored(3, c + 768, 64);
    for (int64_t w = 0; w < nx; ++w)
        for (int g = 0; g < NG; ++g)
            for (int r = 0; r < 16; ++r) out[w * ldo + g * 16 + r] = c[g * 256 + r * 16 + w];
}

void amx_dot_i8(const int8_t* rows, int64_t ld, int64_t n_rows, const int8_t* x, int64_t ldx, int64_t nx, int64_t n,
                int32_t* out, int64_t ldo) {
    const KernelTable& b = avx512_kernels();
    const int64_t steps = n / 64, groups = n_rows / 16;
    if (nx < kAmxDotMinVectors || nx > 16 || steps == 0 || groups == 0) {
        b.dot_i8(rows, ld, n_rows, x, ldx, nx, n, out, ldo);
        return;
    }
    thread_local Buffer bt_buf, tail_buf;
    uint8_t* bt = bt_buf.get(static_cast<size_t>(steps * 1024));
    vnni_tiles(x, ldx, nx, steps, bt, 1024);
    int32_t* c = c_tile_scratch();
    configure_tiles();
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) dot_i8_groups<4>(rows + g * 16 * ld, ld, bt, steps, nx, out + g * 16, ldo, c);
    switch (groups - g) {
        case 3: dot_i8_groups<3>(rows + g * 16 * ld, ld, bt, steps, nx, out + g * 16, ldo, c); break;
        case 2: dot_i8_groups<2>(rows + g * 16 * ld, ld, bt, steps, nx, out + g * 16, ldo, c); break;
        case 1: dot_i8_groups<1>(rows + g * 16 * ld, ld, bt, steps, nx, out + g * 16, ldo, c); break;
        default: break;
    }
    _tile_release();
    const int64_t whole = groups * 16, done = steps * 64;
    if (done < n) {   // the last n % 64 columns of the whole groups' rows
        int32_t* t = reinterpret_cast<int32_t*>(tail_buf.get(static_cast<size_t>(nx * whole) * sizeof(int32_t)));
        b.dot_i8(rows + done, ld, whole, x + done, ldx, nx, n - done, t, whole);
        for (int64_t w = 0; w < nx; ++w)
            for (int64_t r = 0; r < whole; ++r) out[w * ldo + r] += t[w * whole + r];
    }
    if (whole < n_rows) b.dot_i8(rows + whole * ld, ld, n_rows - whole, x, ldx, nx, n, out + whole, ldo);
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
    static const KernelTable table{"amx",           amx_gemm,        b.dot_f16, b.dot_f32, amx_dot_i8, amx_prepared_size,
                                   amx_prepare_act, b.read_sum, 16,        b.quantize_i8};
    return table;
}

}  // namespace sim
}  // namespace bitnet
#endif
