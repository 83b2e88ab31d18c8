// runtime.h: the BitNet b1.58 transformer on the host, with every BitLinear on the card.
//
// This is the readable reference forward pass of docs/NUMERICS.md: embedding, RMSNorm,
// per-token int8 activation quantisation, card matmuls, RoPE, GQA attention with a KV cache,
// sub-norms, gated FFN, output head; and the samplers.
//
// Thread-safety: an Engine may run one forward at a time (the Device guarantees it). A
// KVCache belongs to one sequence.
#pragma once

#include <atomic>
#include <cstdint>
#include <random>
#include <vector>

#include "model.h"
#include "transport.h"
#include "../sim/kernels/kernels.h"
#include "../sim/thread_pool.h"

namespace bitnet {

// Per-token absmax int8 quantisation (REFERENCE.md 1.1) is sim::KernelTable::quantize_i8
// (spec: sim::ref_quantize_i8).

// RMSNorm: out = w * (x * (1 / sqrt(mean(x^2) + eps))), mean accumulated in double.
void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out);

// The gated feed-forward's elementwise step: g[i] = act(g[i]) * u[i] (ReLU² or SiLU, in fp32).
void gated_activation(Activation act, float* g, const float* u, int64_t n);

// The key/value cache of one sequence: fp32, head-major per layer ([n_layer][K, V][n_head_kv]
// [capacity][head_dim] in one block): attention reads one kv head's rows for positions [0, n),
// which are then one contiguous run that the hardware prefetcher streams (position-major rows of
// all heads put each head's 512 bytes 2.5 KiB apart on 2B-4T). The block comes from the slot
// memory (2 MiB-aligned, advised for transparent huge pages): attention reads the cache cold
// (each token's weight stream evicts it), and on 4 KiB pages every page of a head's run starts
// a new stream. 2B-4T decode at 128-192 positions, two threads, Zen 4 (instrumented runs, two
// each): attention 5.0 ms of thread time per step; 3.1-3.5 with attend_group's touch_rows;
// 2.6-2.7 with touch_rows and huge pages (1.4-1.6 ms of the step's wall time, from 2.5-2.8).
struct KVCache {
    int64_t n_layer = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;
    int64_t capacity = 0;   // positions allocated
    int64_t n_pos = 0;      // positions filled
    std::vector<float, sim::SlotAllocator<float>> data;

    KVCache() = default;
    KVCache(const ModelConfig& c) : n_layer(c.n_layer), n_head_kv(c.n_head_kv), head_dim(c.head_dim) {}
    void reserve(int64_t positions);   // grows capacity (never shrinks), keeping the positions filled
    void clear() { n_pos = 0; }
    // Head kvh's rows of a layer: position p at + p * head_dim.
    const float* k_head(int64_t layer, int64_t kvh) const { return data.data() + head_offset(layer, 0, kvh, capacity); }
    const float* v_head(int64_t layer, int64_t kvh) const { return data.data() + head_offset(layer, 1, kvh, capacity); }
    // Stores one position's K and V rows (kv_dim floats each, heads one after another).
    void store(int64_t layer, int64_t pos, const float* krow, const float* vrow);

private:
    int64_t head_offset(int64_t layer, int64_t kv, int64_t kvh, int64_t cap) const {
        return ((layer * 2 + kv) * n_head_kv + kvh) * cap * head_dim;
    }
};

// Cooperative abort and progress reporting, polled between layers.
struct RunHooks {
    const std::atomic<bool>* abort = nullptr;
    std::atomic<int64_t>* current_layer = nullptr;
};

// One row of a forward pass: a token of some sequence at a position. Rows of the same
// sequence must appear in increasing, contiguous position order starting at cache->n_pos.
struct ForwardRow {
    KVCache* cache = nullptr;
    int32_t token = 0;
    int64_t pos = 0;
    bool want_logits = false;
};

// The opt-in fast output head (docs/NUMERICS.md "Fast head"): an int8 copy of the head with
// per-row error bounds; greedy decoding scores every row with it and re-scores at full
// precision only the rows that could still be the maximum, so the chosen token is exactly the
// exact head's argmax.
struct CompactHead {
    int64_t rows = 0, cols = 0;
    std::vector<int8_t, sim::SlotAllocator<int8_t>> q;   // [rows, cols], |q| <= 127; huge pages (read every step)
    std::vector<float> scale;      // s_v: E_v ~= s_v * q_v
    // The two per-row factors of the error bound (forward_argmax):
    //     bound_v = c_h[v] * |h| + c_d[v] * |h - h8 / s_h|
    std::vector<double> c_h;       // ||E_v - s_v q_v||_2 + gamma ||E_v||_2
    std::vector<double> c_d;       // s_v ||q_v||_2
};

struct HeadStats {
    uint64_t calls = 0;            // fast-head argmax evaluations
    uint64_t rescored = 0;         // rows re-scored at full precision, over all calls
};

class Engine {
public:
    Engine(const Model& model, Transport& card, ThreadPool* pool);

    // Builds the fast head (idempotent). Costs one pass over the head and rows*cols bytes.
    void enable_fast_head();
    bool fast_head() const { return !compact_.q.empty(); }
    HeadStats head_stats() const { return head_stats_; }

    // Like forward(), but returns the exact greedy token of every want_logits row (the
    // index of the first maximum of the exact logits) using the fast head, without
    // computing all logits. Requires enable_fast_head().
    void forward_argmax(const std::vector<ForwardRow>& rows, std::vector<int32_t>& tokens, const RunHooks& hooks);

    // Runs the rows through the model. Writes logits of the rows with want_logits, in row
    // order, into `logits` ([n_want, n_vocab]). Updates each cache's n_pos. Throws
    // Error(ABORTED) if hooks.abort becomes true (the caches are then left as before).
    void forward(const std::vector<ForwardRow>& rows, std::vector<float>& logits, const RunHooks& hooks);

    const Model& model() const { return model_; }

private:
    // Runs the layers and leaves the final-normed hidden states of the want_logits rows in h.
    void forward_hidden(const std::vector<ForwardRow>& rows, std::vector<float>& h, const RunHooks& hooks);
    // RoPE in two parts: cs[i], cs[rope_dim / 2 + i] = cos, sin of position pos's angle for
    // pair i (computed once per row and forward pass, used by every layer).
    void rope_table(int64_t pos, float* cs) const;
    // Rotates the n_q query heads at q and n_k key heads at k with one position's table.
    void rope(float* q, int64_t n_q, float* k, int64_t n_k, const float* cs) const;
    void card_matmul(const int8_t* q, const float* sx, int64_t B, int64_t K,
                     std::initializer_list<std::pair<int, float*>> products);

    void output_head(const float* h, int64_t W, float* logits);

    const Model& model_;
    Transport& card_;
    ThreadPool* pool_;
    const sim::KernelTable* kernels_;   // host-side float kernels (output head)
    void exact_logit_rows(const float* h, const int64_t* ids, int64_t n, float* out) const;
    CompactHead compact_;
    HeadStats head_stats_;
    std::vector<float> inv_freq_;   // [rope_dim / 2]
};

struct SamplingParams {
    float temperature = 0.0f;   // <= 0: greedy
    int64_t top_k = 0;          // 0: off
    float top_p = 1.0f;         // 1: off
    uint64_t seed = 0;
};

// Greedy / temperature / top-k / top-p sampler with a portable, seeded generator
// (std::mt19937_64, uniform from its top 53 bits), so a seed gives the same tokens everywhere.
class Sampler {
public:
    explicit Sampler(const SamplingParams& p);
    int32_t sample(const float* logits, int64_t n_vocab);

private:
    SamplingParams p_;
    std::mt19937_64 rng_;
    std::vector<std::pair<float, int32_t>> cand_;
};

// Validates sampling parameters; throws Error(INVALID) naming the bad one.
void validate_sampling(const SamplingParams& p);

}  // namespace bitnet
