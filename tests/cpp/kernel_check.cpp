// kernel_check: every kernel this CPU and build can run, bit for bit against the scalar
// reference, on random and edge-case shapes. Standalone (no Python), so it also runs on
// targets the wheel is not tested on, e.g. the NEON kernels of an AArch64 cross build under
// qemu (tests/cpp/run_kernel_check.sh). Exit status 0 = all equal.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../../sim/kernels/kernels.h"

using namespace bitnet::sim;

namespace {

int failures = 0;
long checks = 0;

void expect(bool ok, const std::string& what) {
    ++checks;
    if (!ok && failures++ < 20) std::fprintf(stderr, "MISMATCH %s\n", what.c_str());
}

void check_gemm(const KernelTable& k, std::mt19937_64& rng, int64_t N, int64_t K, int64_t B, int mode) {
    std::vector<int8_t> t(static_cast<size_t>(N * K));
    std::uniform_int_distribution<int> tri(-1, 1), q8(-128, 127), sparse(0, 9);
    // mode 3: every weight +1 and every activation -128, the largest partial sums (the AVX2
    // kernel's int16 accumulators reach exactly -32768: GEMV and small batches after 8 groups,
    // prefill's buffered tiles after each run of 64 steps of 32 elements: K = 2500 takes one
    // k-chunk of 80 steps (a run of 64, then 16), 2567 and 5300 equal chunks of 41 and 56 steps)
    for (auto& v : t) v = static_cast<int8_t>(mode == 3 ? 1 : mode == 2 ? (sparse(rng) == 0 ? tri(rng) : 0) : tri(rng));
    TernarySlot slot;
    pack_slot(t.data(), N, K, 1.0f, slot);
    const int64_t kpad = slot_k_padded(K);
    std::vector<int8_t> q(static_cast<size_t>(B * kpad), 0);
    std::vector<int32_t> qsum(static_cast<size_t>(B), 0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < K; ++i) {
            const int v = mode == 3 ? -128 : mode == 1 ? (i % 2 ? -128 : 127) : q8(rng);   // mode 1: extremes
            q[static_cast<size_t>(b * kpad + i)] = static_cast<int8_t>(v);
            qsum[static_cast<size_t>(b)] += v;
        }
    ActBatch act;
    act.q = q.data();
    act.B = B;
    act.K = K;
    act.ldq = kpad;
    act.qsum = qsum.data();
    std::vector<int32_t> ref(static_cast<size_t>(B * N), 0), got(static_cast<size_t>(B * N), 0);
    ref_kernels().gemm(slot, act, ref.data(), N, 0, N);
    std::vector<uint8_t> prep;
    ActBatch kact = act;
    if (k.prepared_size && k.prepared_size(act) > 0) {
        prep.resize(k.prepared_size(act) + 64);
        uint8_t* aligned = prep.data() + (64 - reinterpret_cast<uintptr_t>(prep.data()) % 64) % 64;
        k.prepare_act(act, aligned);
        kact.prepared = aligned;
    }
    // The whole range, then a sub-range (rows outside it must stay untouched).
    k.gemm(slot, kact, got.data(), N, 0, N);
    expect(got == ref, std::string(k.name) + " gemm N=" + std::to_string(N) + " K=" + std::to_string(K) +
                           " B=" + std::to_string(B) + " mode=" + std::to_string(mode));
    if (N > 2) {
        std::fill(got.begin(), got.end(), 0);
        const int64_t j0 = 1, j1 = N - 1;
        k.gemm(slot, kact, got.data(), N, j0, j1);
        bool ok = true;
        for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < N; ++j) {
                const int32_t want = (j >= j0 && j < j1) ? ref[static_cast<size_t>(b * N + j)] : 0;
                ok = ok && got[static_cast<size_t>(b * N + j)] == want;
            }
        expect(ok, std::string(k.name) + " gemm row range N=" + std::to_string(N) + " K=" + std::to_string(K));
    }
}

uint16_t random_half(std::mt19937_64& rng) {
    // Any finite fp16 (subnormals and signed zeros included; exponent 31 = inf/NaN excluded).
    for (;;) {
        const uint16_t h = static_cast<uint16_t>(rng());
        if (((h >> 10) & 0x1f) != 0x1f) return h;
    }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void check_dots(const KernelTable& k, std::mt19937_64& rng, int64_t R, int64_t n, int64_t nx) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<uint16_t> h(static_cast<size_t>(R * n));
    for (auto& v : h) v = random_half(rng);
    std::vector<float> x(static_cast<size_t>(nx * n)), rows(static_cast<size_t>(R * n));
    for (auto& v : x) v = nd(rng);
    for (auto& v : rows) v = nd(rng);
    std::vector<float> ref(static_cast<size_t>(nx * R)), got(ref.size());
    ref_kernels().dot_f16(h.data(), n, R, x.data(), n, nx, n, ref.data(), R);
    k.dot_f16(h.data(), n, R, x.data(), n, nx, n, got.data(), R);
    expect(same_bits(ref, got), std::string(k.name) + " dot_f16 R=" + std::to_string(R) + " n=" + std::to_string(n) +
                                    " nx=" + std::to_string(nx));
    // dot_f32 with strides wider than n (attention: keys ld apart, query heads ldx apart,
    // scores ldo apart), the padding filled with NaN so that a read past n shows.
    const int64_t ldr = n + 3, ldx = n + 5, ldo = R + 2;
    std::vector<float> rows_w(static_cast<size_t>(R * ldr), std::nanf("")), x_w(static_cast<size_t>(nx * ldx), std::nanf(""));
    for (int64_t r = 0; r < R; ++r) std::copy(rows.begin() + r * n, rows.begin() + (r + 1) * n, rows_w.begin() + r * ldr);
    for (int64_t w = 0; w < nx; ++w) std::copy(x.begin() + w * n, x.begin() + (w + 1) * n, x_w.begin() + w * ldx);
    std::vector<float> r32(static_cast<size_t>(nx * ldo), -1.0f), g32(r32.size(), -1.0f);
    ref_kernels().dot_f32(rows_w.data(), ldr, R, x_w.data(), ldx, nx, n, r32.data(), ldo);
    k.dot_f32(rows_w.data(), ldr, R, x_w.data(), ldx, nx, n, g32.data(), ldo);
    expect(same_bits(r32, g32), std::string(k.name) + " dot_f32 R=" + std::to_string(R) + " n=" + std::to_string(n) +
                                    " nx=" + std::to_string(nx));
    std::uniform_int_distribution<int> e8(-127, 127);   // dot_i8's contract: both operands in [-127, 127]
    std::vector<int8_t> ri(static_cast<size_t>(R * n)), xi(static_cast<size_t>(nx * n));
    for (auto& v : ri) v = static_cast<int8_t>(e8(rng));
    for (auto& v : xi) v = static_cast<int8_t>(e8(rng));
    if (n >= 2) {   // extremes: a row of 127s against a vector of -127s (the largest magnitudes)
        std::fill(ri.begin(), ri.begin() + n, static_cast<int8_t>(127));
        std::fill(xi.begin(), xi.begin() + n, static_cast<int8_t>(-127));
    }
    std::vector<int32_t> ri32(static_cast<size_t>(nx * R)), gi32(ri32.size());
    ref_kernels().dot_i8(ri.data(), n, R, xi.data(), n, nx, n, ri32.data(), R);
    k.dot_i8(ri.data(), n, R, xi.data(), n, nx, n, gi32.data(), R);
    expect(ri32 == gi32, std::string(k.name) + " dot_i8 R=" + std::to_string(R) + " n=" + std::to_string(n) +
                             " nx=" + std::to_string(nx));
}

// quantize_i8: the same scale (bit for bit) and codes as the reference, on rows of every length
// around the vector widths, with NaN, infinities, -0, subnormals, exact halves (x * s = k + 0.5:
// round half to even) and rows whose amax is NaN-only, zero or infinite.
void check_quantize(const KernelTable& k, std::mt19937_64& rng) {
    const float nan = std::nanf(""), inf = HUGE_VALF;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> pick(0, 15);
    for (int64_t n : {0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 2560, 2561, 6912})
        for (int mode = 0; mode < 8; ++mode) {
            std::vector<float> x(static_cast<size_t>(n));
            for (float& v : x) {
                v = normal(rng) * (mode == 1 ? 1e-30f : mode == 2 ? 1e30f : 3.0f);
                if (mode == 3) {   // specials sprinkled in
                    const int c = pick(rng);
                    v = c == 0 ? nan : c == 1 ? -nan : c == 2 ? -0.0f : c == 3 ? 1e-40f : c == 4 ? -1e-41f : v;
                }
            }
            if (mode == 4 && n > 0) x[static_cast<size_t>(n) / 2] = inf;      // amax = inf: s = 0, inf * 0 = NaN
            if (mode == 5) for (float& v : x) v = nan;                            // amax over no values: 0
            if (mode == 6) for (float& v : x) v = 0.0f;
            if (mode == 7 && n > 0) {   // amax 127: s = 1 exactly, so x = k + 0.5 hits the halfway cases
                for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 254) - 127) + 0.5f;
                x[0] = 127.0f;
            }
            std::vector<int8_t> qr(static_cast<size_t>(n) + 1, 99), qk(static_cast<size_t>(n) + 1, 99);
            const float sr = ref_kernels().quantize_i8(x.data(), n, qr.data());
            const float sk = k.quantize_i8(x.data(), n, qk.data());
            expect(std::memcmp(&sr, &sk, 4) == 0 && qr == qk,   // qr[n] = 99: nothing written past n
                   std::string(k.name) + " quantize_i8 n=" + std::to_string(n) + " mode " + std::to_string(mode));
            if (mode == 7 && n > 0) {   // s = 1: the reference itself rounds each half to even
                bool halves_even = sr == 1.0f;
                for (int64_t i = 0; i < n; ++i) halves_even = halves_even && qr[static_cast<size_t>(i)] == static_cast<int8_t>(std::nearbyint(x[static_cast<size_t>(i)]));
                expect(halves_even, "ref quantize_i8 rounds halves to even, n=" + std::to_string(n));
            }
        }
}

// Slot memory (slot_memory.cpp): blocks of many sizes, allocated and freed in random order
// across chunk boundaries, are 64-byte aligned, never overlap (each keeps its own pattern),
// and a freed block's neighbours keep their contents.
void check_slot_memory(std::mt19937_64& rng) {
    struct Block {
        uint8_t* p;
        size_t n;
        uint8_t tag;
    };
    std::vector<Block> live;
    auto verify = [&](const Block& b) {
        bool ok = reinterpret_cast<uintptr_t>(b.p) % 64 == 0;
        for (size_t i = 0; i < b.n && ok; i += 4093) ok = b.p[i] == static_cast<uint8_t>(b.tag + i);
        if (b.n) ok = ok && b.p[b.n - 1] == static_cast<uint8_t>(b.tag + b.n - 1);
        expect(ok, "slot memory block of " + std::to_string(b.n) + " bytes");
    };
    const size_t sizes[] = {0, 1, 63, 64, 65, 4096, 409600, 1638400, 2097152, 4423680, 33554433, 40000000};
    for (int round = 0; round < 300; ++round) {
        if (live.empty() || rng() % 3 != 0) {
            const size_t n = sizes[rng() % (sizeof sizes / sizeof sizes[0])];
            Block b{static_cast<uint8_t*>(slot_memory_allocate(n)), n, static_cast<uint8_t>(rng())};
            for (size_t i = 0; i < n; i += 4093) b.p[i] = static_cast<uint8_t>(b.tag + i);
            if (n) b.p[n - 1] = static_cast<uint8_t>(b.tag + n - 1);
            live.push_back(b);
        } else {
            const size_t i = rng() % live.size();
            verify(live[i]);
            slot_memory_free(live[i].p, live[i].n);
            live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
        }
        if (live.size() > 24) {   // keep the footprint bounded
            verify(live.front());
            slot_memory_free(live.front().p, live.front().n);
            live.erase(live.begin());
        }
    }
    for (const Block& b : live) {
        verify(b);
        slot_memory_free(b.p, b.n);
    }
    // A slot's vector uses it through SlotAllocator.
    TernarySlot s;
    std::vector<int8_t> t(static_cast<size_t>(3 * 130));
    for (auto& v : t) v = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
    pack_slot(t.data(), 3, 130, 1.0f, s);
    bool same = true;
    for (int64_t r = 0; r < 3; ++r)
        for (int64_t c = 0; c < 130; ++c) same = same && s.get(r, c) == t[static_cast<size_t>(r * 130 + c)];
    expect(same, "pack_slot into slot memory round-trips");
}

}  // namespace

// --bench: one thread, decode-shaped work on 256 MB of weights (far beyond the caches): the
// GEMV's weight streaming rate next to a plain read of as many bytes with the same loads.
int bench(int64_t N, int64_t K, int64_t B = 1, int threads = 1) {
    std::vector<int8_t> t(static_cast<size_t>(N * K));
    std::mt19937_64 rng(1);
    for (auto& v : t) v = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
    TernarySlot slot;
    pack_slot(t.data(), N, K, 1.0f, slot);
    std::vector<int8_t>().swap(t);
    std::vector<int8_t> q(static_cast<size_t>(K * B));
    for (auto& v : q) v = static_cast<int8_t>(rng());
    std::vector<int32_t> qsum(static_cast<size_t>(B), 0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < K; ++i) qsum[static_cast<size_t>(b)] += q[static_cast<size_t>(b * K + i)];
    ActBatch act;
    act.q = q.data();
    act.B = B;
    act.K = K;
    act.ldq = K;
    act.qsum = qsum.data();
    std::vector<int32_t> acc(static_cast<size_t>(N * B));
    const double bytes = static_cast<double>(slot.packed.size());
    for (const std::string& name : available_kernels()) {
        const KernelTable& k = kernels_by_name(name);
        std::vector<uint8_t> prep;
        act.prepared = nullptr;
        if (k.prepared_size && k.prepared_size(act) > 0) {
            prep.resize(k.prepared_size(act) + 64);
            uint8_t* aligned = prep.data() + (64 - reinterpret_cast<uintptr_t>(prep.data()) % 64) % 64;
            k.prepare_act(act, aligned);
            act.prepared = aligned;
        }
        double best_gemv = 1e9, best_read = 1e9;
        uint64_t sink = 0;
        for (int r = 0; r < 4; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            if (threads == 1) {
                k.gemm(slot, act, acc.data(), N, 0, N);
            } else {   // row blocks of 256 handed out in turn, as the card's pool does
                std::vector<std::thread> pool;
                for (int th = 0; th < threads; ++th)
                    pool.emplace_back([&, th] {
                        for (int64_t j = th * 256; j < N; j += threads * 256) k.gemm(slot, act, acc.data(), N, j, std::min(N, j + 256));
                    });
                for (auto& th : pool) th.join();
            }
            auto t1 = std::chrono::steady_clock::now();
            {   // the same bytes read with the same loads and thread count
                const uint8_t* base = slot.packed.data() - reinterpret_cast<uintptr_t>(slot.packed.data()) % 64 + 64;
                const int64_t len = (static_cast<int64_t>(slot.packed.size()) - 128) / threads / 64 * 64;
                std::vector<uint64_t> part(static_cast<size_t>(threads));
                std::vector<std::thread> pool;
                for (int th = 0; th < threads; ++th)
                    pool.emplace_back([&, th] { part[static_cast<size_t>(th)] = k.read_sum(base + th * len, len); });
                for (auto& th : pool) th.join();
                for (uint64_t v : part) sink += v;
            }
            auto t2 = std::chrono::steady_clock::now();
            if (r > 0) {
                best_gemv = std::min(best_gemv, std::chrono::duration<double>(t1 - t0).count());
                best_read = std::min(best_read, std::chrono::duration<double>(t2 - t1).count());
            }
        }
        std::printf("%dT %-7s B=%-2lld %6.1f GB/s of weights, read %6.1f GB/s (%3.0f%%)   [%llu]\n", threads, name.c_str(), static_cast<long long>(B),
                    bytes / best_gemv / 1e9, bytes / best_read / 1e9, 100.0 * best_read / best_gemv,
                    static_cast<unsigned long long>(sink % 10));
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "--bench") {
        std::printf("weights far beyond the caches (256 MB):\n");
        bench(131072, 8192);
        bench(131072, 8192, 1, 2);
        bench(32768, 8192, 8);
        std::printf("weights in L2 (1 MB): the kernels' compute rate\n");
        bench(2048, 2048, 8);
        return bench(2048, 2048);
    }
    std::mt19937_64 rng(20261128);
    check_slot_memory(rng);
    std::printf("slot memory checked\n");
    const std::vector<std::string> names = available_kernels();
    for (const std::string& name : names) {
        if (name == "ref") continue;
        const KernelTable& k = kernels_by_name(name);
        for (int64_t K : {1, 17, 63, 64, 65, 128, 321, 640, 2500, 2567, 5300})
            for (int64_t B : {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33, 64})
                for (int mode = 0; mode < 4; ++mode) check_gemm(k, rng, (K % 7) + 33, K, B, mode);
        // More rows than one block of the batch kernels (AVX-512: 48), not a multiple of a tile.
        for (int64_t K : {640, 2567})
            for (int64_t B : {1, 2, 6, 8, 13}) check_gemm(k, rng, 149, K, B, 0);
        // Very long rows take the kernels' fallback paths (e.g. AVX-512's masked GEMV is bounded).
        for (int64_t B : {1, 3, 9}) check_gemm(k, rng, 3, 16385 * 64 + 5, B, 1);
        // AVX-512 batches of up to 8 run whole rows of up to 4096 groups per tile, then split:
        // the largest sums at that length and one group more.
        for (int64_t K : {4096 * 64, 4097 * 64})
            for (int64_t B : {2, 8}) check_gemm(k, rng, 9, K, B, 3);
        for (int64_t n : {1, 7, 15, 16, 17, 64, 100, 128, 2560, 2561})
            for (int64_t nx : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 17, 24})
                for (int64_t R : {1, 2, 3, 9, 16, 17, 33, 64, 69}) check_dots(k, rng, R, n, nx);   // AMX dot_i8: 16-row groups
        check_quantize(k, rng);
        {   // read_sum: the same checksum as the reference, for any length that is a multiple of 64
            std::vector<uint8_t> raw(64 * 1000 + 64);
            uint8_t* p = raw.data() + (64 - reinterpret_cast<uintptr_t>(raw.data()) % 64) % 64;
            for (size_t i = 0; i < 64 * 1000; ++i) p[i] = static_cast<uint8_t>(rng());
            for (int64_t n : {64, 128, 192, 64 * 999, 64 * 1000})
                expect(k.read_sum(p, n) == ref_kernels().read_sum(p, n), std::string(name) + " read_sum n=" + std::to_string(n));
        }
        std::printf("kernel %s checked\n", name.c_str());
    }
    std::printf("%ld checks over kernels:", checks);
    for (const auto& n : names) std::printf(" %s", n.c_str());
    std::printf("; %d mismatches\n", failures);
    return failures == 0 ? 0 : 1;
}
