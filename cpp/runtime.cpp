// runtime.cpp: the host side of the BitNet b1.58 forward pass and the samplers.
// docs/NUMERICS.md is the prose version of this file; keep them in step.
#include "runtime.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

// Host loops that run every layer (attention, norms) are
// multi-versioned (BITNET_HOST_CLONES, multiversion.h): bit-identical on every CPU.
#include "../sim/multiversion.h"

namespace bitnet {

BITNET_HOST_CLONES void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out) {
    // Squares (exact in double) summed in double in the order of docs/NUMERICS.md: 16 partial
    // sums, p[l] taking the i = l (mod 16) in increasing i, then p[l] += p[l + 8], += p[l + 4],
    // += p[l + 2], p[0] + p[1]. (Four partial sums were one dependency chain per lane pair:
    // 16 keep two 8-wide vector adds in flight.)
    double p[16];
    for (double& v : p) v = 0.0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; ++l) p[l] += static_cast<double>(x[i + l]) * x[i + l];
    for (int l = 0; i < n; ++i, ++l) p[l] += static_cast<double>(x[i]) * x[i];
    for (int l = 0; l < 8; ++l) p[l] += p[l + 8];
    for (int l = 0; l < 4; ++l) p[l] += p[l + 4];
    for (int l = 0; l < 2; ++l) p[l] += p[l + 2];
    const double ss = p[0] + p[1];
    const float mean = static_cast<float>(ss / static_cast<double>(n));
    const float r = 1.0f / std::sqrt(mean + eps);
    for (i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

// g[i] = act(g[i]) * u[i]. ReLU²'s `g > 0 ? g : 0` (NaN -> 0) is a bit mask, so the loop
// vectorises: as a branch it mispredicted on every other element (~1 ms per token, 2B model).
BITNET_HOST_CLONES void gated_activation(Activation act, float* __restrict g, const float* __restrict u, int64_t n) {
    if (act == Activation::RELU2) {
        for (int64_t i = 0; i < n; ++i) {
            // rl = g > 0 ? g : 0 as a bit mask (GCC keeps the float select as a branch).
            uint32_t bits;
            std::memcpy(&bits, &g[i], 4);
            bits &= 0u - static_cast<uint32_t>(g[i] > 0.0f);
            float rl;
            std::memcpy(&rl, &bits, 4);
            g[i] = (rl * rl) * u[i];
        }
    } else {
        for (int64_t i = 0; i < n; ++i) g[i] = (g[i] / (1.0f + std::exp(-g[i]))) * u[i];
    }
}

void KVCache::reserve(int64_t positions) {
    if (positions <= capacity) return;
    int64_t cap = std::max<int64_t>(capacity * 2, 64);
    cap = std::max(cap, positions);
    const int64_t keep = std::min(n_pos, capacity);
    std::vector<float, sim::SlotAllocator<float>> grown(static_cast<size_t>(n_layer * 2 * n_head_kv * cap * head_dim));
    // Each head's run moves to its new place.
    for (int64_t l = 0; l < n_layer && keep > 0; ++l)
        for (int64_t kv = 0; kv < 2; ++kv)
            for (int64_t h = 0; h < n_head_kv; ++h) {
                const float* from = data.data() + head_offset(l, kv, h, capacity);
                std::copy(from, from + keep * head_dim, grown.data() + head_offset(l, kv, h, cap));
            }
    data.swap(grown);
    capacity = cap;
}

void KVCache::store(int64_t layer, int64_t pos, const float* krow, const float* vrow) {
    for (int64_t h = 0; h < n_head_kv; ++h) {
        std::copy(krow + h * head_dim, krow + (h + 1) * head_dim, data.data() + head_offset(layer, 0, h, capacity) + pos * head_dim);
        std::copy(vrow + h * head_dim, vrow + (h + 1) * head_dim, data.data() + head_offset(layer, 1, h, capacity) + pos * head_dim);
    }
}

Engine::Engine(const Model& model, Transport& card, ThreadPool* pool)
    : model_(model), card_(card), pool_(pool), kernels_(&sim::select_kernels()) {
    const ModelConfig& c = model_.config();
    inv_freq_.resize(static_cast<size_t>(c.rope_dim / 2));
    for (int64_t i = 0; i < c.rope_dim / 2; ++i) {
        // As HF builds it: base ** (arange(0, dim, 2) / dim) in fp32, then its reciprocal.
        const float expo = static_cast<float>(2 * i) / static_cast<float>(c.rope_dim);
        inv_freq_[static_cast<size_t>(i)] = 1.0f / std::pow(c.rope_theta, expo);
    }
}

void Engine::rope_table(int64_t pos, float* cs) const {
    const ModelConfig& c = model_.config();
    const int64_t half = c.rope_dim / 2;
    const float p = static_cast<float>(pos) * c.rope_freq_scale;
    for (int64_t i = 0; i < half; ++i) {
        const float angle = p * inv_freq_[static_cast<size_t>(i)];
        cs[i] = std::cos(angle);
        cs[half + i] = std::sin(angle);
    }
}

namespace {
// One head's rotation: NEOX pairs element i with i + half (two contiguous halves: the loop
// vectorises); NORM pairs 2i with 2i + 1. a' = a cos + (-b) sin, b' = b cos + a sin.
BITNET_HOST_CLONES void rope_head(float* __restrict v, const float* __restrict cs, int64_t half, bool neox) {
    const float* sn = cs + half;
    if (neox) {
        float* __restrict lo = v;
        float* __restrict hi = v + half;
        for (int64_t i = 0; i < half; ++i) {
            const float a = lo[i], b = hi[i];
            lo[i] = a * cs[i] + (-b) * sn[i];
            hi[i] = b * cs[i] + a * sn[i];
        }
    } else {
        for (int64_t i = 0; i < half; ++i) {
            const float a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * cs[i] + (-b) * sn[i];
            v[2 * i + 1] = b * cs[i] + a * sn[i];
        }
    }
}
}  // namespace

void Engine::rope(float* q, int64_t n_q, float* k, int64_t n_k, const float* cs) const {
    const ModelConfig& c = model_.config();
    const int64_t half = c.rope_dim / 2;
    const bool neox = c.rope_style == RopeStyle::NEOX;
    for (int64_t h = 0; h < n_q; ++h) rope_head(q + h * c.head_dim, cs, half, neox);
    for (int64_t h = 0; h < n_k; ++h) rope_head(k + h * c.head_dim, cs, half, neox);
}

namespace {

// Vectors of 8 floats (one AVX2 register) and of 4 (one SSE or NEON register). GCC keeps a
// vector type wider than the target's registers in memory (16 floats in the AVX2 clone, or 8
// in the baseline SSE2 clone, went through the stack at every step), so each clone must use
// the width it has: wide_vectors() tells attend_group which (AVX2 CPUs run the AVX2 or
// AVX-512 clone; the baseline clone runs only on CPUs without AVX2).
typedef float F8x __attribute__((vector_size(32)));
typedef float F4x __attribute__((vector_size(16)));

inline bool wide_vectors() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const bool avx2 = __builtin_cpu_supports("avx2");
    return avx2;
#else
    return false;
#endif
}

// o_j[c] += p_j,t * v_t[c] for 2 * lanes(V) columns c, positions t in [t0, t1) in order, for NH
// heads at once (head j: its probabilities at sc + j * ldsc, its output at o + j * ldo): each
// V row chunk is loaded once for all NH heads. Element-wise the same multiply, then add, as a
// one-head scalar loop (the build has -ffp-contract=off), whatever V. Inlined into each clone
// of attend_group, so it is compiled for that clone's target.
template <int NH, typename V>
inline __attribute__((always_inline)) void pv_block(const float* sc, int64_t ldsc, const float* v, int64_t ldv,
                                                    int64_t t0, int64_t t1, float* o, int64_t ldo) {
    constexpr int64_t W = sizeof(V) / sizeof(float);
    V a[NH][2];
    for (int j = 0; j < NH; ++j)
        for (int k = 0; k < 2; ++k) std::memcpy(&a[j][k], o + j * ldo + W * k, sizeof(V));
    for (int64_t t = t0; t < t1; ++t) {
        V v0, v1;
        std::memcpy(&v0, v + t * ldv, sizeof(V));
        std::memcpy(&v1, v + t * ldv + W, sizeof(V));
        for (int j = 0; j < NH; ++j) {
            const float p = sc[j * ldsc + t];
            a[j][0] = a[j][0] + p * v0;
            a[j][1] = a[j][1] + p * v1;
        }
    }
    for (int j = 0; j < NH; ++j)
        for (int k = 0; k < 2; ++k) std::memcpy(o + j * ldo + W * k, &a[j][k], sizeof(V));
}

// pv_block over columns [0, hd / cols * cols) of NH heads, cols = 2 * lanes(V).
template <typename V>
inline __attribute__((always_inline)) void pv_columns(const float* sc, int64_t ldsc, int64_t nh, const float* v,
                                                      int64_t ldv, int64_t t0, int64_t t1, float* o, int64_t hd) {
    constexpr int64_t cols = 2 * sizeof(V) / sizeof(float);
    for (int64_t d0 = 0; d0 + cols <= hd; d0 += cols) {
        int64_t h = 0;
        for (; h + 4 <= nh; h += 4) pv_block<4, V>(sc + h * ldsc, ldsc, v + d0, ldv, t0, t1, o + h * hd + d0, hd);
        for (; h < nh; ++h) pv_block<1, V>(sc + h * ldsc, ldsc, v + d0, ldv, t0, t1, o + h * hd + d0, hd);
    }
}

// Reads rows [t0, t1) of one kv head's K or V (contiguous, ld floats each) front to back, one
// load per cache line, before a block of attention uses them. The cache is cold by then (each
// token's weight stream evicts it), and the blocks' own access patterns (4 keys side by side
// for the scores, 16-column passes over the rows for P.V) let the loads of a 16 KiB block
// arrive a few at a time; read in order first, the block comes in as one stream. A cold
// 2B-4T head of 160 positions, one thread (Zen 4): scores 9.6 -> 4.8 us, P.V 9.8 -> 4.6 us
// (prefetching the next block instead, into L1 or L2: 7.4 and 6.8 us for the scores).
inline void touch_rows(const float* base, int64_t ld, int64_t t0, int64_t t1) {
    const char* p = reinterpret_cast<const char*>(base + t0 * ld);
    const char* const end = reinterpret_cast<const char*>(base + t1 * ld);
    for (; p < end; p += 64) {
        const char c = *reinterpret_cast<const volatile char*>(p);
        (void)c;
    }
}

// One attention task: query heads [h0, h1) (of kv head kvh's group) of rows [r0, r1) of one
// sequence, at consecutive positions pos[r0] < ... < pos[r1 - 1], against that sequence's cache.
// For each (row, head): softmax(q . K^T * scale) V over positions [0, pos + 1). The cache's K
// and V rows are walked in blocks of kBlock positions, and every query of the task uses a block
// while it is in L1: each K and V row is read once per task instead of once per query head
// (GQA: 4 heads share a kv head on 2B-4T) and per row (prefill). Per (row, head) the operations
// and their order are those of docs/NUMERICS.md: each score is the kernels' ordered fp32 dot,
// softmax subtracts the maximum, exp, sum in position order, divide; o += p_t * v_t in position
// order (the running sums stay in O's rows between blocks, so blocking changes no bits).
// score: (r1 - r0) * (h1 - h0) rows of pos[r1 - 1] + 1 floats.
BITNET_HOST_CLONES void attend_group(const sim::KernelTable& kt, const float* Q, int64_t QD, const KVCache& cache,
                                     int64_t layer, int64_t kvh, int64_t h0, int64_t h1, int64_t hd,
                                     const int64_t* pos, int64_t r0, int64_t r1, float scale, float* score, float* O) {
    constexpr int64_t kBlock = 32;
    const int64_t nh = h1 - h0, ctx = pos[r1 - 1] + 1, ld = hd;
    auto scores_of = [&](int64_t r, int64_t h) { return score + ((r - r0) * nh + (h - h0)) * ctx; };
    const float* k0 = cache.k_head(layer, kvh);
    const float* v0 = cache.v_head(layer, kvh);
    // Scores, a block of K rows at a time.
    for (int64_t t0 = 0; t0 < ctx; t0 += kBlock) {
        touch_rows(k0, ld, t0, std::min(t0 + kBlock, ctx));
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t n = pos[r] + 1;
            if (t0 >= n) continue;
            const int64_t tn = std::min(kBlock, n - t0);
            kt.dot_f32(k0 + t0 * ld, ld, tn, Q + r * QD + h0 * hd, hd, nh, hd, scores_of(r, h0) + t0, ctx);
        }
    }
    // Softmax of each (row, head).
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t h = h0; h < h1; ++h) {
            float* sc = scores_of(r, h);
            const int64_t n = pos[r] + 1;
            float mx = -std::numeric_limits<float>::infinity();
            for (int64_t t = 0; t < n; ++t) {
                sc[t] = sc[t] * scale;
                mx = std::max(mx, sc[t]);
            }
            float sum = 0.0f;
            for (int64_t t = 0; t < n; ++t) {
                sc[t] = std::exp(sc[t] - mx);
                sum += sc[t];
            }
            for (int64_t t = 0; t < n; ++t) sc[t] = sc[t] / sum;
        }
    // o[d] = sum_t p_t v_t[d] in position order, a block of V rows at a time. Within a block,
    // 16 columns (8 without AVX2) of up to 4 heads are held in registers across the positions,
    // so each V row chunk is loaded once for the heads that share it.
    for (int64_t r = r0; r < r1; ++r) std::fill(O + r * QD + h0 * hd, O + r * QD + h1 * hd, 0.0f);
    const bool wide = wide_vectors();
    const int64_t cols = wide ? 16 : 8, hdv = hd / cols * cols;
    for (int64_t t0 = 0; t0 < ctx; t0 += kBlock) {
        touch_rows(v0, ld, t0, std::min(t0 + kBlock, ctx));
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t t1 = std::min(t0 + kBlock, pos[r] + 1);
            if (t1 <= t0) continue;
            if (wide)
                pv_columns<F8x>(scores_of(r, h0), ctx, nh, v0, ld, t0, t1, O + r * QD + h0 * hd, hd);
            else
                pv_columns<F4x>(scores_of(r, h0), ctx, nh, v0, ld, t0, t1, O + r * QD + h0 * hd, hd);
            for (int64_t h = h0; h < h1 && hdv < hd; ++h) {   // columns past the last multiple of cols
                const float* sc = scores_of(r, h);
                float* o = O + r * QD + h * hd;
                for (int64_t t = t0; t < t1; ++t) {
                    const float p = sc[t];
                    const float* vt = v0 + t * ld;
                    for (int64_t d = hdv; d < hd; ++d) o[d] = o[d] + p * vt[d];
                }
            }
        }
    }
}

}  // namespace

void Engine::card_matmul(const int8_t* q, const float* sx, int64_t B, int64_t K,
                         std::initializer_list<std::pair<int, float*>> products) {
    MatmulCommand cmd;
    cmd.q = q;
    cmd.sx = sx;
    cmd.B = B;
    cmd.K = K;
    for (const auto& p : products) {
        MatmulOp op;
        op.slot = p.first;
        op.y = p.second;
        cmd.ops.push_back(op);
    }
    card_.run(cmd);
}

void Engine::forward(const std::vector<ForwardRow>& rows, std::vector<float>& logits, const RunHooks& hooks) {
    const ModelConfig& c = model_.config();
    std::vector<float> h;
    forward_hidden(rows, h, hooks);
    const int64_t W = static_cast<int64_t>(h.size()) / c.n_embd;
    logits.assign(static_cast<size_t>(W * c.n_vocab), 0.0f);
    if (W > 0) output_head(h.data(), W, logits.data());
}

void Engine::forward_hidden(const std::vector<ForwardRow>& rows, std::vector<float>& hidden, const RunHooks& hooks) {
    const ModelConfig& c = model_.config();
    const int64_t R = static_cast<int64_t>(rows.size());
    hidden.clear();
    if (R == 0) return;
    const int64_t D = c.n_embd, QD = c.q_dim(), KVD = c.kv_dim(), F = c.n_ff;
    const int64_t maxdim = std::max({D, QD, F});

    // Remember where each cache started so an abort leaves it untouched.
    std::vector<std::pair<KVCache*, int64_t>> starts;
    for (const ForwardRow& r : rows) {
        bool seen = false;
        for (auto& s : starts) seen = seen || s.first == r.cache;
        if (!seen) starts.emplace_back(r.cache, r.cache->n_pos);
        r.cache->reserve(r.pos + 1);
    }

    std::vector<float> x(static_cast<size_t>(R * D));            // residual stream [R, D]
    std::vector<int8_t> q8(static_cast<size_t>(R * maxdim));     // quantised activations
    std::vector<float> sx(static_cast<size_t>(R));               // their scales
    std::vector<float> Q(static_cast<size_t>(R * QD)), K(static_cast<size_t>(R * KVD)), V(static_cast<size_t>(R * KVD));
    std::vector<float> O(static_cast<size_t>(R * QD));
    std::vector<float> Y(static_cast<size_t>(R * D));
    std::vector<float> G(static_cast<size_t>(R * F)), U(static_cast<size_t>(R * F));

    for (int64_t r = 0; r < R; ++r) model_.embedding().row(rows[r].token, x.data() + r * D);
    // Each row's RoPE cos/sin pairs, computed once for all layers.
    const int64_t rope_n = c.rope_dim;   // even (checked at load)
    std::vector<float> rope_cs(static_cast<size_t>(R * rope_n));
    for (int64_t r = 0; r < R; ++r) rope_table(rows[r].pos, rope_cs.data() + r * rope_n);

    // Attention tasks (the same for every layer): runs of rows of one sequence at consecutive
    // positions, cut into blocks of up to 8 rows, times the kv heads; a task takes all the query
    // heads of its kv head, so it reads that head's K and V once. (Splitting every group of query
    // heads into more tasks balanced a one-sequence decode step better but read K and V once per
    // split: at 2000 positions, 90-93 ms per token against 84-85 unsplit.) When there are few
    // tasks and they do not divide evenly among the threads (one sequence: 5 kv heads on 2
    // threads), only the last few groups are halved, so that every thread gets the same work.
    struct AttnTask {
        int64_t r0, r1, kvh, h0, h1;
    };
    std::vector<int64_t> row_pos(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) row_pos[static_cast<size_t>(r)] = rows[static_cast<size_t>(r)].pos;
    std::vector<AttnTask> attn_tasks;
    {
        constexpr int64_t kRowBlock = 8;
        const int64_t group = c.n_head / c.n_head_kv;
        for (int64_t r = 0; r < R;) {
            int64_t e = r + 1;
            while (e < R && e - r < kRowBlock && rows[static_cast<size_t>(e)].cache == rows[static_cast<size_t>(r)].cache &&
                   rows[static_cast<size_t>(e)].pos == rows[static_cast<size_t>(e - 1)].pos + 1)
                ++e;
            for (int64_t kvh = 0; kvh < c.n_head_kv; ++kvh) attn_tasks.push_back({r, e, kvh, kvh * group, (kvh + 1) * group});
            r = e;
        }
        const int64_t threads = std::max(1, pool_->size()), units = static_cast<int64_t>(attn_tasks.size());
        if (group > 1 && units < 4 * threads && units % threads != 0) {
            // Halve the last (threads - units % threads) tasks; halves go last, after the whole ones.
            const int64_t k = std::min(units, threads - units % threads);
            std::vector<AttnTask> halves;
            for (int64_t i = units - k; i < units; ++i) {
                AttnTask t = attn_tasks[static_cast<size_t>(i)];
                const int64_t mid = t.h0 + group / 2;
                halves.push_back({t.r0, t.r1, t.kvh, t.h0, mid});
                halves.push_back({t.r0, t.r1, t.kvh, mid, t.h1});
            }
            attn_tasks.resize(static_cast<size_t>(units - k));
            attn_tasks.insert(attn_tasks.end(), halves.begin(), halves.end());
        }
    }

    // Normalise [R, n] rows of `in` with weight w (or copy if w is empty), then quantise. Two
    // element-wise steps that used to be passes of their own are folded into each row's task
    // (the rows are cold by then, evicted by the card's weight stream; each pass read them
    // from memory again): `add` is added into `in` first (the residual stream, in place), and
    // with `up` the row normed is the gated activation act(in) * up (in itself is left as is).
    auto norm_quant = [&](float* in, const std::vector<float>* w, int64_t n, const float* add = nullptr,
                          const float* up = nullptr) {
        // One row per task: a decode batch's rows are normalised in parallel. The normed row
        // goes to a per-thread scratch row, which stays in L1/L2 until it is quantised (a
        // [R, n] buffer was written to memory that the card's weight stream had evicted).
        pool_->parallel_for(R, 1, [&](int64_t r0, int64_t r1) {
            thread_local std::vector<float> normed;
            if (normed.size() < static_cast<size_t>(n)) normed.resize(static_cast<size_t>(n));
            for (int64_t r = r0; r < r1; ++r) {
                float* src = in + r * n;
                float* dst = normed.data();
                if (add)
                    for (int64_t i = 0; i < n; ++i) src[i] += add[r * n + i];
                if (up) {
                    std::copy(src, src + n, dst);
                    gated_activation(c.act, dst, up + r * n, n);
                    src = dst;
                }
                if (w) rmsnorm(src, w->data(), n, c.rms_eps, dst);
                else if (src != dst) std::copy(src, src + n, dst);
                sx[r] = kernels_->quantize_i8(dst, n, q8.data() + r * n);
            }
        });
    };

    // The RMSNorm weights (~60 KB a layer on 2B-4T) are evicted by each token's weight stream,
    // and the norms stalled on reading them cold. Each is prefetched (into L2) just before the
    // card command that precedes its norm, so it arrives while the command streams.
    auto prefetch_weights = [](const std::vector<float>& w) {
        const char* p = reinterpret_cast<const char*>(w.data());
        for (size_t b = 0; b < w.size() * sizeof(float); b += 64) __builtin_prefetch(p + b, 0, 2);
    };
    for (int64_t l = 0; l < c.n_layer; ++l) {
        if (hooks.abort && hooks.abort->load(std::memory_order_relaxed)) {
            for (auto& s : starts) s.first->n_pos = s.second;
            throw Error(ErrorCode::ABORTED, "aborted");
        }
        if (hooks.current_layer) hooks.current_layer->store(l, std::memory_order_relaxed);
        const LayerWeights& L = model_.layers()[static_cast<size_t>(l)];

        // --- attention --- (the previous layer's feed-forward output is added to x here)
        norm_quant(x.data(), &L.attn_norm, D, l > 0 ? Y.data() : nullptr);
        prefetch_weights(L.attn_sub_norm);
        card_matmul(q8.data(), sx.data(), R, D, {{L.slot[PROJ_Q], Q.data()}, {L.slot[PROJ_K], K.data()}, {L.slot[PROJ_V], V.data()}});
        // Rows in parallel (rows of one sequence write different cache positions).
        pool_->parallel_for(R, 1, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                rope(Q.data() + r * QD, c.n_head, K.data() + r * KVD, c.n_head_kv, rope_cs.data() + r * rope_n);
                rows[r].cache->store(l, rows[r].pos, K.data() + r * KVD, V.data() + r * KVD);
            }
        });
        // Attention: tasks of (rows of one sequence, kv head, its query heads), in parallel.
        {
            const int64_t hd = c.head_dim;
            const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
            pool_->parallel_for(static_cast<int64_t>(attn_tasks.size()), 1, [&](int64_t begin, int64_t end) {
                thread_local std::vector<float> score;
                for (int64_t i = begin; i < end; ++i) {
                    const AttnTask& t = attn_tasks[static_cast<size_t>(i)];
                    const int64_t nq = (t.r1 - t.r0) * (t.h1 - t.h0);
                    score.resize(static_cast<size_t>(nq * (row_pos[static_cast<size_t>(t.r1 - 1)] + 1)));
                    attend_group(*kernels_, Q.data(), QD, *rows[static_cast<size_t>(t.r0)].cache, l, t.kvh, t.h0, t.h1, hd,
                                 row_pos.data(), t.r0, t.r1, scale, score.data(), O.data());
                }
            });
        }
        norm_quant(O.data(), c.sub_norms ? &L.attn_sub_norm : nullptr, QD);
        prefetch_weights(L.ffn_norm);
        card_matmul(q8.data(), sx.data(), R, QD, {{L.slot[PROJ_O], Y.data()}});

        // --- feed-forward --- (the attention output is added to x first)
        norm_quant(x.data(), &L.ffn_norm, D, Y.data());
        prefetch_weights(L.ffn_sub_norm);
        card_matmul(q8.data(), sx.data(), R, D, {{L.slot[PROJ_GATE], G.data()}, {L.slot[PROJ_UP], U.data()}});
        norm_quant(G.data(), c.sub_norms ? &L.ffn_sub_norm : nullptr, F, nullptr, U.data());
        prefetch_weights(l + 1 < c.n_layer ? model_.layers()[static_cast<size_t>(l + 1)].attn_norm : model_.output_norm());
        card_matmul(q8.data(), sx.data(), R, F, {{L.slot[PROJ_DOWN], Y.data()}});
    }
    for (int64_t i = 0; i < R * D; ++i) x[i] += Y[i];   // the last layer's feed-forward output
    for (const ForwardRow& r : rows) r.cache->n_pos = std::max(r.cache->n_pos, r.pos + 1);

    // --- output head: final norm, then logits = h . E_v for every vocabulary row v ---
    std::vector<int64_t> want;
    for (int64_t r = 0; r < R; ++r)
        if (rows[r].want_logits) want.push_back(r);
    const int64_t W = static_cast<int64_t>(want.size());
    hidden.resize(static_cast<size_t>(W * D));
    for (int64_t w = 0; w < W; ++w)
        rmsnorm(x.data() + want[w] * D, model_.output_norm().data(), D, c.rms_eps, hidden.data() + w * D);
}

void Engine::exact_logit_rows(const float* h, const int64_t* ids, int64_t n, float* out) const {
    // The exact logit of each listed row, computed exactly as output_head() computes it.
    const HostMatrix& head = model_.output();
    const int64_t D = head.cols;
    std::vector<float> erow(static_cast<size_t>(D));
    std::vector<uint8_t> scratch(head.file ? head.row_bytes : 0);
    for (int64_t i = 0; i < n; ++i) {
        if (head.tensor->type == TensorType::F16) {
            // Candidates are scattered rows: fetch the next one while this one is scored (rows
            // in memory; with the fast head's copy given back, rows are read from the file).
            if (i + 1 < n && !head.file)
                for (size_t b = 0; b < head.row_bytes; b += 64)
                    __builtin_prefetch(head.data + static_cast<size_t>(ids[i + 1]) * head.row_bytes + b);
            kernels_->dot_f16(reinterpret_cast<const uint16_t*>(head.row_data(ids[i], scratch.data())), D, 1, h, D, 1, D,
                              out + i, 1);
        } else {
            head.row(ids[i], erow.data());
            kernels_->dot_f32(erow.data(), D, 1, h, D, 1, D, out + i, 1);
        }
    }
}

namespace {
// Relative rounding slack of an fp32 dot of length D summed in 16 lanes (depth D/16 + 4),
// doubled for safety; u = 2^-24.
double fp32_dot_slack(int64_t D) { return 2.0 * (static_cast<double>(D) / 16.0 + 8.0) * std::ldexp(1.0, -24); }

// The fast head's bounds for nv compact rows against one hidden state (forward_argmax explains
// the terms): hi[i] = a_i + b_i rounded up to a float; returns max_i (a_i - b_i). The maximum
// is exact, so 8 partial maxima (NaNs skipped, as std::max skips them) give the same value in
// any order, and the loop vectorises.
BITNET_HOST_CLONES double head_bounds(const int32_t* id, const int32_t* idr, const float* scale, const double* c_h,
                                      const double* c_d, int64_t nv, double inv, double inv_r, double hn, double dn,
                                      float* hi) {
    double m[8];
    for (double& v : m) v = -std::numeric_limits<double>::infinity();
    int64_t i = 0;
    auto one = [&](int64_t k) {
        const double a = static_cast<double>(scale[k]) * (inv * id[k] + inv_r * idr[k]);
        const double b = (c_h[k] * hn + c_d[k] * dn) * (1.0 + 1e-6) + 1e-30;
        const double u = a + b;
        hi[k] = static_cast<float>(u + std::fabs(u) * 0x1p-22 + 1e-37);
        return a - b;
    };
    for (; i + 8 <= nv; i += 8)
        for (int l = 0; l < 8; ++l) {
            const double d = one(i + l);
            m[l] = d > m[l] ? d : m[l];
        }
    for (; i < nv; ++i) {
        const double d = one(i);
        m[0] = d > m[0] ? d : m[0];
    }
    double lb = m[0];
    for (int l = 1; l < 8; ++l) lb = m[l] > lb ? m[l] : lb;
    return lb;
}
}  // namespace

void Engine::enable_fast_head() {
    if (fast_head()) return;
    const HostMatrix& head = model_.output();
    const int64_t V = head.rows, D = head.cols;
    const double gamma = fp32_dot_slack(D);
    CompactHead ch;
    ch.rows = V;
    ch.cols = D;
    ch.q.resize(static_cast<size_t>(V * D));
    ch.scale.resize(static_cast<size_t>(V));
    ch.c_h.resize(static_cast<size_t>(V));
    ch.c_d.resize(static_cast<size_t>(V));
    pool_->parallel_for(V, 256, [&](int64_t v0, int64_t v1) {
        std::vector<float> e(static_cast<size_t>(D));
        for (int64_t v = v0; v < v1; ++v) {
            head.row(v, e.data());
            float amax = 0.0f;
            for (float x : e) amax = std::max(amax, std::fabs(x));
            const float s = amax > 0 ? amax / 127.0f : 1.0f;
            int8_t* q = ch.q.data() + v * D;
            double err = 0, qn = 0, en = 0;
            for (int64_t i = 0; i < D; ++i) {
                const float r = std::nearbyint(e[i] / s);
                q[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, r)));
                const double d = static_cast<double>(e[i]) - static_cast<double>(s) * q[i];
                err += d * d;
                qn += static_cast<double>(q[i]) * q[i];
                en += static_cast<double>(e[i]) * e[i];
            }
            ch.scale[v] = s;
            ch.c_h[v] = std::sqrt(err) + gamma * std::sqrt(en);
            ch.c_d[v] = static_cast<double>(s) * std::sqrt(qn);
        }
    });
    compact_ = std::move(ch);
}

void Engine::forward_argmax(const std::vector<ForwardRow>& rows, std::vector<int32_t>& tokens, const RunHooks& hooks) {
    if (!fast_head()) throw Error(ErrorCode::STATE, "the fast head is not enabled");
    std::vector<float> hidden;
    forward_hidden(rows, hidden, hooks);
    const int64_t V = compact_.rows, D = compact_.cols;
    const int64_t W = static_cast<int64_t>(hidden.size()) / D;
    tokens.assign(static_cast<size_t>(W), 0);
    // Rows of a batch go through the int8 copy together, up to kGroup at a time: each chunk of
    // kChunk compact rows is read from memory once and scored against every row of the group
    // in one dot_i8 call (chunks of 1024 rows: a kernel's per-call set-up, e.g. the AMX
    // kernel's re-arranged vectors, is paid 125 times per step on 2B-4T rather than 2000).
    constexpr int64_t kGroup = 8, kChunk = 1024;
    // Per row w of a group: vector w holds h8, and, when the kernel scores the extra vectors
    // for free, vector nw + w the residual's r8.
    std::vector<int8_t> h8(static_cast<size_t>(2 * kGroup * D));
    std::vector<double> res(static_cast<size_t>(D));
    std::vector<double> inv_sh(kGroup), inv_sr(kGroup), hnorm(kGroup), dnorm(kGroup), best_lo(kGroup);
    std::mutex best_mutex;
    for (int64_t w0 = 0; w0 < W; w0 += kGroup) {
        const int64_t nw = std::min(kGroup, W - w0);
        // (A lone hidden state too: AVX-512 scores 2 vectors in one pass over the rows, +7% on
        // the scoring pass, ~0.9 ms per token on 2B-4T with 2 threads, against re-scoring 571 ->
        // 31 rows read back from the file, 3.2 ms per token measured on this host.)
        const bool residual = 2 * nw <= kernels_->dot_i8_free_vectors;
        for (int64_t w = 0; w < nw; ++w) {
            const float* h = hidden.data() + (w0 + w) * D;
            // h ~= h8 / s_h + r8 / s_r: int8 codes of h, then (if residual) of what they leave
            // (in double), and the norm of what is left after both (without: r8 = 0, 1/s_r = 0).
            int8_t* c8 = h8.data() + w * D;
            int8_t* r8 = h8.data() + (nw + w) * D;
            float amax = 0.0f;
            for (int64_t i = 0; i < D; ++i) amax = std::max(amax, std::fabs(h[i]));
            const float sh = 127.0f / std::max(amax, 1e-30f);
            const double ish = 1.0 / static_cast<double>(sh);
            double hn = 0, ramax = 0;
            for (int64_t i = 0; i < D; ++i) {
                const float r = std::nearbyint(h[i] * sh);
                c8[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, r)));
                res[static_cast<size_t>(i)] = static_cast<double>(h[i]) - c8[i] * ish;
                ramax = std::max(ramax, std::fabs(res[static_cast<size_t>(i)]));
                hn += static_cast<double>(h[i]) * h[i];
            }
            // s_r = 127 / max|res| (0 when h8 is exact or h is not finite: r8 = 0).
            const double sr = residual && ramax > 0 && std::isfinite(ramax) ? 127.0 / ramax : 0.0;
            const double isr = sr > 0 ? 1.0 / sr : 0.0;
            double dn = 0;
            for (int64_t i = 0; i < D; ++i) {
                const double rv = res[static_cast<size_t>(i)];
                const double rq = sr > 0 ? std::nearbyint(rv * sr) : 0.0;
                r8[i] = static_cast<int8_t>(std::min(127.0, std::max(-127.0, rq)));
                const double d = rv - r8[i] * isr;
                dn += d * d;
            }
            inv_sh[w] = ish;
            inv_sr[w] = isr;
            hnorm[w] = std::sqrt(hn);
            dnorm[w] = std::sqrt(dn);
            best_lo[w] = -std::numeric_limits<double>::infinity();
        }
        // Score every row: a_v = s_v (q_v . h8 / s_h + q_v . r8 / s_r), with |z_v - a_v| <= bound_v
        // where z_v is the exact head's fp32 logit:
        //   |E_v.h - s_v q_v.h|                     <= err_v * |h|
        //   |s_v q_v.(h - h8/s_h - r8/s_r)|         <= s_v |q_v| * |h - h8/s_h - r8/s_r|
        //   fp32 rounding of z_v                    <= gamma |E_v| |h|
        //   rounding of a_v and of the norms (in double)  negligible; covered by the factor below.
        // (With the residual's codes the middle term is ~127 times smaller than with h8 alone: on
        // the random 2B-4T model the bound's width halves and the re-scored rows drop 566 -> 31.)
        // hi_v = a_v + bound_v is stored as a float rounded up (can only add candidates):
        // float(u + |u| 2^-22 + 1e-37) >= u for every double u in float range.
        // Candidates are collected while scoring, so the bounds never go to memory: after a
        // chunk's bounds, the group's best lower bounds so far are raised with the chunk's, and
        // the chunk's rows whose upper bound reaches them are kept with that bound. The best
        // lower bound only grows, so every row whose upper bound reaches its final value was
        // kept; filtering the kept rows by the final value gives the same rows as a pass over
        // all of them. (The vocabulary-wide array of upper bounds, 4 MiB at a batch of 8, and
        // its second pass cost 0.7 ms per step plus its page faults.)
        const int64_t chunks = (V + kChunk - 1) / kChunk;
        struct Kept {
            int64_t v;
            float hi;
        };
        std::vector<std::vector<Kept>> kept(static_cast<size_t>(chunks * nw));   // [chunk][w], each in row order
        pool_->parallel_for(V, kChunk, [&](int64_t v0, int64_t v1) {
            thread_local std::vector<int32_t> idot_buf;
            thread_local std::vector<float> hi_buf;
            idot_buf.resize(static_cast<size_t>(2 * kGroup * kChunk));
            hi_buf.resize(static_cast<size_t>(kGroup * kChunk));
            int32_t* idot = idot_buf.data();
            float* hi = hi_buf.data();
            const int64_t nv = v1 - v0;
            kernels_->dot_i8(compact_.q.data() + v0 * D, D, nv, h8.data(), D, residual ? 2 * nw : nw, D, idot, kChunk);
            const float* scale = compact_.scale.data() + v0;
            const double* c_h = compact_.c_h.data() + v0;
            const double* c_d = compact_.c_d.data() + v0;
            double local_best[kGroup], floor[kGroup];
            for (int64_t w = 0; w < nw; ++w)
                local_best[w] = head_bounds(idot + w * kChunk, idot + ((residual ? nw : 0) + w) * kChunk, scale, c_h,
                                            c_d, nv, inv_sh[w], inv_sr[w], hnorm[w], dnorm[w], hi + w * kChunk);
            {
                std::lock_guard<std::mutex> lock(best_mutex);
                for (int64_t w = 0; w < nw; ++w) floor[w] = best_lo[w] = std::max(best_lo[w], local_best[w]);
            }
            const int64_t chunk = v0 / kChunk;
            for (int64_t w = 0; w < nw; ++w) {
                std::vector<Kept>& k = kept[static_cast<size_t>(chunk * nw + w)];
                const float* hw = hi + w * kChunk;
                for (int64_t i = 0; i < nv; ++i)
                    if (static_cast<double>(hw[i]) >= floor[w]) k.push_back({v0 + i, hw[i]});
            }
        });
        std::vector<int64_t> cand, first(static_cast<size_t>(nw + 1), 0);   // row w's are [first[w], first[w+1])
        for (int64_t w = 0; w < nw; ++w) {
            for (int64_t ch = 0; ch < chunks; ++ch)
                for (const Kept& k : kept[static_cast<size_t>(ch * nw + w)])
                    if (static_cast<double>(k.hi) >= best_lo[w]) cand.push_back(k.v);
            first[static_cast<size_t>(w + 1)] = static_cast<int64_t>(cand.size());
        }
        // Every candidate's exact logit, computed as output_head() computes it, in parallel.
        std::vector<float> z(cand.size());
        pool_->parallel_for(static_cast<int64_t>(cand.size()), 32, [&](int64_t i0, int64_t i1) {
            for (int64_t w = 0; w < nw && i0 < i1; ++w) {
                const int64_t e = std::min(i1, first[static_cast<size_t>(w + 1)]);
                if (e > i0) exact_logit_rows(hidden.data() + (w0 + w) * D, cand.data() + i0, e - i0, z.data() + i0);
                i0 = std::max(i0, e);
            }
        });
        for (int64_t w = 0; w < nw; ++w) {
            const int64_t b0 = first[static_cast<size_t>(w)], b1 = first[static_cast<size_t>(w + 1)];
            int64_t best = b0;
            for (int64_t i = b0 + 1; i < b1; ++i)
                if (z[static_cast<size_t>(i)] > z[static_cast<size_t>(best)]) best = i;   // index order: first maximum wins
            // (No candidate only if the hidden state is not finite: token 0, as the exact greedy
            // choice over all-NaN logits.)
            tokens[static_cast<size_t>(w0 + w)] = b1 > b0 ? static_cast<int32_t>(cand[static_cast<size_t>(best)]) : 0;
            head_stats_.calls += 1;
            head_stats_.rescored += static_cast<uint64_t>(b1 - b0);
        }
    }
}

void Engine::output_head(const float* h, int64_t W, float* logits) {
    const ModelConfig& c = model_.config();
    const HostMatrix& out = model_.output();
    const int64_t D = c.n_embd, V = c.n_vocab;
    const bool f16 = out.tensor->type == TensorType::F16;
    if (f16) {
        // F16 rows straight from the file (the common case: 2B-4T's tied embedding). Every row
        // is read once for all W hidden states. Guided chunks (multiples of the kernels' 4-row
        // tiles), against fixed 256-row chunks, whose every start is a cold stream (2B-4T, Zen
        // 4, two threads, paired runs): a decode step 1-2.5% faster at batches 1 and 8 with the
        // 4-row GEMV; with the one-row GEMV, within the noise (+-1% at batch 1, -3% at 8).
        const uint16_t* rows = reinterpret_cast<const uint16_t*>(out.data);
        pool_->parallel_for_guided(V, 256, 8, [&](int64_t v0, int64_t v1) {
            kernels_->dot_f16(rows + v0 * D, D, v1 - v0, h, D, W, D, logits + v0, V);
        });
        return;
    }
    // Other types: dequantize the row, then the same ordered 16-lane sum (dot_f32, as
    // exact_logit_rows does).
    pool_->parallel_for(V, 256, [&](int64_t v0, int64_t v1) {
        std::vector<float> erow(static_cast<size_t>(D));
        for (int64_t v = v0; v < v1; ++v) {
            out.row(v, erow.data());
            kernels_->dot_f32(erow.data(), D, 1, h, D, W, D, logits + v, V);
        }
    });
}

void validate_sampling(const SamplingParams& p) {
    if (!std::isfinite(p.temperature) || p.temperature < 0.0f)
        throw Error(ErrorCode::INVALID, "temperature must be a finite number >= 0 (0 = greedy), got " + std::to_string(p.temperature));
    if (p.top_k < 0) throw Error(ErrorCode::INVALID, "top_k must be >= 0 (0 = off), got " + std::to_string(p.top_k));
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
        throw Error(ErrorCode::INVALID, "top_p must be in (0, 1], got " + std::to_string(p.top_p));
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { validate_sampling(p); }

int32_t Sampler::sample(const float* logits, int64_t n) {
    // Greedy: the first index of the maximum (torch.argmax's choice).
    if (p_.temperature <= 0.0f) {
        int64_t best = 0;
        for (int64_t i = 1; i < n; ++i)
            if (logits[i] > logits[best]) best = i;
        return static_cast<int32_t>(best);
    }
    cand_.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) cand_[i] = {logits[i] / p_.temperature, static_cast<int32_t>(i)};
    auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    int64_t m = n;
    if (p_.top_k > 0 && p_.top_k < n) {
        std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
        m = p_.top_k;
    } else {
        std::sort(cand_.begin(), cand_.end(), by_logit);
    }
    // Softmax over the kept candidates (sorted, so cand_[0] holds the maximum).
    const float mx = cand_[0].first;
    double total = 0.0;
    std::vector<double> prob(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) {
        prob[i] = std::exp(static_cast<double>(cand_[i].first - mx));
        total += prob[i];
    }
    // Top-p: the smallest prefix whose probability reaches top_p.
    if (p_.top_p < 1.0f) {
        double cum = 0.0;
        int64_t keep = m;
        for (int64_t i = 0; i < m; ++i) {
            cum += prob[i] / total;
            if (cum >= p_.top_p) {
                keep = i + 1;
                break;
            }
        }
        m = keep;
        total = 0.0;
        for (int64_t i = 0; i < m; ++i) total += prob[i];
    }
    const double u = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0) * total;
    double cum = 0.0;
    for (int64_t i = 0; i < m; ++i) {
        cum += prob[i];
        if (u < cum) return cand_[i].second;
    }
    return cand_[m - 1].second;
}

}  // namespace bitnet
