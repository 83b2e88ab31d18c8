// card.cpp: the simulated card (see card.h): slots, command engine, cycle model.
#include "card.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <future>

#include "../cpp/bitnet_abi.h"
#include "../cpp/error.h"
#include "multiversion.h"

namespace bitnet {
namespace sim {

BoardProfile board_profile(const std::string& name) {
    BoardProfile p;
    if (name == "vibee-zcu104" || name == "default" || name.empty()) {
        // VIBEE's ZCU104 target: 200 MHz PL clock, 16 cores x 27 trits; PL DDR4 ~19.2 GB/s.
        p.name = "vibee-zcu104";
        p.clock_mhz = 200.0;
        p.lanes = 16;
        p.lane_width = 27;
        p.ddr_gbps = 19.2;
        p.dma_gbps = 4.0;
        p.weight_capacity = 2ull << 30;
    } else if (name == "vibee-vcu118") {
        // VIBEE's VCU118 target: 300 MHz, 32 cores x 27 trits; two DDR4 channels.
        p.name = "vibee-vcu118";
        p.clock_mhz = 300.0;
        p.lanes = 32;
        p.lane_width = 27;
        p.ddr_gbps = 38.4;
        p.dma_gbps = 8.0;
        p.weight_capacity = 4ull << 30;
    } else if (name == "kv260") {
        // A KV260-class edge card: 250 MHz, 8 lanes x 32, shared 4 GB DDR4 at ~10 GB/s usable.
        p.name = "kv260";
        p.clock_mhz = 250.0;
        p.lanes = 8;
        p.lane_width = 32;
        p.ddr_gbps = 10.0;
        p.dma_gbps = 2.0;
        p.weight_capacity = 1536ull << 20;
    } else {
        std::string names;
        for (const auto& n : board_profile_names()) names += (names.empty() ? "" : ", ") + n;
        throw Error(ErrorCode::INVALID, "unknown board profile '" + name + "'; choose one of: " + names);
    }
    return p;
}

std::vector<std::string> board_profile_names() { return {"vibee-zcu104", "vibee-vcu118", "kv260"}; }

void validate_profile(const BoardProfile& p) {
    auto bad = [&](const std::string& what) {
        throw Error(ErrorCode::INVALID, "board profile '" + p.name + "': " + what);
    };
    // Written as !(in range) so NaN fails too.
    if (!(p.clock_mhz > 0 && p.clock_mhz <= 10000)) bad("clock_mhz must be in (0, 10000], got " + std::to_string(p.clock_mhz));
    if (p.lanes < 1 || p.lanes > 65536) bad("lanes must be in [1, 65536], got " + std::to_string(p.lanes));
    if (p.lane_width < 1 || p.lane_width > 4096) bad("lane_width must be in [1, 4096], got " + std::to_string(p.lane_width));
    if (!(p.ddr_gbps > 0 && p.ddr_gbps <= 100000)) bad("ddr_gbps must be in (0, 100000], got " + std::to_string(p.ddr_gbps));
    if (!(p.dma_gbps > 0 && p.dma_gbps <= 100000)) bad("dma_gbps must be in (0, 100000], got " + std::to_string(p.dma_gbps));
    if (p.dma_setup_cycles > (1u << 30) || p.pipeline_cycles > (1u << 30)) bad("setup/pipeline cycles out of range");
    if (p.weight_capacity == 0) bad("weight_capacity must be > 0");
}

uint64_t dma_cycles_for(const BoardProfile& p, uint64_t bytes) {
    return p.dma_setup_cycles + static_cast<uint64_t>(std::ceil(static_cast<double>(bytes) / p.dma_bytes_per_cycle()));
}

uint64_t matmul_compute_cycles(const BoardProfile& p, int64_t B, int64_t N, int64_t K) {
    // The engine works on `lanes` output rows at a time, `lane_width` inputs per lane per
    // cycle, one activation row after another; the weights of the matrix stream once from
    // weight memory per command (they are reused across the B rows). The slower of the two
    // bounds the product, plus the pipeline fill.
    const uint64_t row_groups = static_cast<uint64_t>((N + p.lanes - 1) / p.lanes);
    const uint64_t k_steps = static_cast<uint64_t>((K + p.lane_width - 1) / p.lane_width);
    const uint64_t mac_cycles = row_groups * k_steps * static_cast<uint64_t>(B);
    const uint64_t bytes = static_cast<uint64_t>(N) * static_cast<uint64_t>(slot_row_bytes(K));
    const uint64_t stream_cycles = static_cast<uint64_t>(std::ceil(static_cast<double>(bytes) / p.ddr_bytes_per_cycle()));
    return std::max(mac_cycles, stream_cycles) + p.pipeline_cycles;
}

Counters matmul_command_cost(const BoardProfile& p, int64_t B, int64_t K, const std::vector<int64_t>& N) {
    // One DMA transfer brings the activations and their scales in (B*K + 4*B bytes); each
    // product streams its slot once from weight memory, computes, and sends its fp32 results
    // back in a transfer of its own (B*N*4 bytes).
    Counters c;
    const uint64_t in_bytes = static_cast<uint64_t>(B * K + 4 * B);
    c.dma_cycles = dma_cycles_for(p, in_bytes);
    c.dma_bytes = in_bytes;
    for (const int64_t n : N) {
        const uint64_t out_bytes = static_cast<uint64_t>(B * n * 4);
        c.compute_cycles += matmul_compute_cycles(p, B, n, K);
        c.dma_cycles += dma_cycles_for(p, out_bytes);
        c.dma_bytes += out_bytes;
        c.macs += static_cast<uint64_t>(B * n * K);
        c.weight_bytes_read += static_cast<uint64_t>(n) * static_cast<uint64_t>(slot_row_bytes(K));
    }
    c.total_cycles = c.dma_cycles + c.compute_cycles;
    c.commands = 1;
    c.matmuls = N.size();
    return c;
}

SimCard::SimCard(const BoardProfile& profile, ThreadPool* pool, const KernelTable* kernels)
    : profile_(profile), pool_(pool), kernels_(kernels ? kernels : &select_kernels()) {
    if (!pool_) throw Error(ErrorCode::INVALID, "SimCard needs a thread pool");
    validate_profile(profile_);
}

SimCard::~SimCard() {
    std::lock_guard<std::mutex> lock(engine_mutex_);   // waits for a running command
    stopping_ = true;
}

void SimCard::execute(const std::function<void()>& task) {
    // Every caller waits for its command, so the command runs on the caller's thread (with
    // the pool's workers): handing it to a separate thread cost two wake-ups per command,
    // ~120 per decoded token of a 2B model. The engine mutex serialises commands.
    std::lock_guard<std::mutex> lock(engine_mutex_);
    if (stopping_) throw Error(ErrorCode::CLOSED, "the card simulator is shutting down");
    task();
}

void SimCard::load_slot(int slot, const int8_t* t, int64_t n, int64_t k, float scale) {
    if (slot < 0) throw Error(ErrorCode::INVALID, "slot id must be >= 0, got " + std::to_string(slot));
    if (n <= 0 || k <= 0) throw Error(ErrorCode::INVALID, "weight matrix must be non-empty, got shape [" +
                                                          std::to_string(n) + ", " + std::to_string(k) + "]");
    if (n > (int64_t{1} << 31) || k > (int64_t{1} << 31)) throw Error(ErrorCode::INVALID, "weight matrix too large");
    if (!std::isfinite(scale) || scale < 0) {
        throw Error(ErrorCode::INVALID, "weight scale must be finite and >= 0, got " + std::to_string(scale));
    }
    for (int64_t i = 0; i < n * k; ++i) {
        if (t[i] < -1 || t[i] > 1) {
            throw Error(ErrorCode::INVALID, "weight codes must be -1, 0 or +1; element " + std::to_string(i) + " is " +
                                                std::to_string(t[i]));
        }
    }
    const uint64_t bytes = static_cast<uint64_t>(n) * static_cast<uint64_t>(slot_row_bytes(k));
    execute([&] {
        {
            std::lock_guard<std::mutex> lock(slots_mutex_);
            const auto it = slots_.find(slot);
            const uint64_t old = it == slots_.end() ? 0 : it->second.packed.size();
            if (used_bytes_ - old + bytes > profile_.weight_capacity) {
                throw Error(ErrorCode::NO_MEMORY,
                            "card weight memory full: slot " + std::to_string(slot) + " needs " + std::to_string(bytes) +
                                " bytes, " + std::to_string(profile_.weight_capacity - (used_bytes_ - old)) +
                                " of " + std::to_string(profile_.weight_capacity) + " are free");
            }
        }
        TernarySlot s;
        pack_slot(t, n, k, scale, s);
        {
            std::lock_guard<std::mutex> lock(slots_mutex_);
            auto it = slots_.find(slot);
            if (it != slots_.end()) used_bytes_ -= it->second.packed.size();
            used_bytes_ += s.packed.size();
            slots_[slot] = std::move(s);
        }
        const uint64_t dma = dma_cycles_for(profile_, bytes);
        std::lock_guard<std::mutex> lock(counters_mutex_);
        counters_.dma_cycles += dma;
        counters_.total_cycles += dma;
        counters_.dma_bytes += bytes;
    });
}

void SimCard::free_slot(int slot) {
    execute([&] {
        std::lock_guard<std::mutex> lock(slots_mutex_);
        auto it = slots_.find(slot);
        if (it == slots_.end()) return;
        used_bytes_ -= it->second.packed.size();
        slots_.erase(it);
    });
}

void SimCard::free_all() {
    execute([&] {
        std::lock_guard<std::mutex> lock(slots_mutex_);
        slots_.clear();
        used_bytes_ = 0;
    });
}

void SimCard::free_range(int lo, int hi) {
    execute([&] {
        std::lock_guard<std::mutex> lock(slots_mutex_);
        for (auto it = slots_.lower_bound(lo); it != slots_.end() && it->first < hi;) {
            used_bytes_ -= it->second.packed.size();
            it = slots_.erase(it);
        }
    });
}

bool SimCard::has_slot(int slot) const {
    std::lock_guard<std::mutex> lock(slots_mutex_);
    return slots_.count(slot) != 0;
}

SlotInfo SimCard::slot_info(int slot) const {
    std::lock_guard<std::mutex> lock(slots_mutex_);
    auto it = slots_.find(slot);
    if (it == slots_.end()) throw Error(ErrorCode::INVALID, "card slot " + std::to_string(slot) + " holds no weights");
    SlotInfo info;
    info.slot = slot;
    info.n = it->second.n;
    info.k = it->second.k;
    info.scale = it->second.scale;
    info.bytes = it->second.packed.size();
    return info;
}

uint64_t SimCard::weight_used() const {
    std::lock_guard<std::mutex> lock(slots_mutex_);
    return used_bytes_;
}

std::vector<int8_t> SimCard::read_slot(int slot) const {
    std::lock_guard<std::mutex> lock(slots_mutex_);
    auto it = slots_.find(slot);
    if (it == slots_.end()) throw Error(ErrorCode::INVALID, "card slot " + std::to_string(slot) + " holds no weights");
    const TernarySlot& s = it->second;
    std::vector<int8_t> out(static_cast<size_t>(s.n * s.k));
    for (int64_t r = 0; r < s.n; ++r)
        for (int64_t c = 0; c < s.k; ++c) out[static_cast<size_t>(r * s.k + c)] = s.get(r, c);
    return out;
}

void SimCard::run(const MatmulCommand& cmd) {
    if (!cmd.q || !cmd.sx) throw Error(ErrorCode::INVALID, "matmul command without activation buffers");
    if (cmd.B <= 0 || cmd.K <= 0) throw Error(ErrorCode::INVALID, "matmul command with an empty activation batch");
    if (cmd.ops.empty()) throw Error(ErrorCode::INVALID, "matmul command with no products");
    {
        std::lock_guard<std::mutex> lock(slots_mutex_);
        for (const MatmulOp& op : cmd.ops) {
            auto it = slots_.find(op.slot);
            if (it == slots_.end())
                throw Error(ErrorCode::INVALID, "matmul on card slot " + std::to_string(op.slot) + ", which holds no weights");
            if (it->second.k != cmd.K)
                throw Error(ErrorCode::INVALID, "matmul on card slot " + std::to_string(op.slot) + ": the slot has " +
                                                    std::to_string(it->second.k) + " inputs, the activations " +
                                                    std::to_string(cmd.K));
            if (!op.y) throw Error(ErrorCode::INVALID, "matmul product without an output buffer");
        }
    }
    execute([&] { run_command(cmd); });
}

uint32_t card_error_for(FaultKind kind) {
    switch (kind) {
        case FaultKind::ENGINE: return BITNET_ERR_ENGINE;
        case FaultKind::DMA: return BITNET_ERR_DMA;
        case FaultKind::FIFO_OVERFLOW: return BITNET_ERR_FIFO_OVERFLOW;
        case FaultKind::HW: return BITNET_ERR_HW;
        case FaultKind::NONE:
        case FaultKind::HANG: break;
    }
    return BITNET_ERR_OK;
}

const char* card_error_name(uint32_t code) {
    switch (code) {
        case BITNET_ERR_OK: return "OK";
        case BITNET_ERR_INVALID_PARAM: return "INVALID_PARAM";
        case BITNET_ERR_DMA: return "DMA";
        case BITNET_ERR_TIMEOUT: return "TIMEOUT";
        case BITNET_ERR_BUSY: return "BUSY";
        case BITNET_ERR_NO_MEMORY: return "NO_MEMORY";
        case BITNET_ERR_WEIGHT_MISMATCH: return "WEIGHT_MISMATCH";
        case BITNET_ERR_HW: return "HW";
        case BITNET_ERR_FIFO_OVERFLOW: return "FIFO_OVERFLOW";
        case BITNET_ERR_FIFO_UNDERFLOW: return "FIFO_UNDERFLOW";
        case BITNET_ERR_AXI: return "AXI";
        case BITNET_ERR_ABORTED: return "ABORTED";
        case BITNET_ERR_NO_SLOT: return "NO_SLOT";
        case BITNET_ERR_ENGINE: return "ENGINE";
    }
    return "UNKNOWN";
}

void SimCard::inject_fault(FaultKind kind, int count, int64_t after) {
    if (kind == FaultKind::HANG)
        throw Error(ErrorCode::INVALID, "the sim transport cannot simulate a hung card; use device=\"sim+ioctl\"");
    if (kind != FaultKind::NONE && card_error_for(kind) == BITNET_ERR_OK)
        throw Error(ErrorCode::INVALID, "unknown fault kind " + std::to_string(static_cast<uint32_t>(kind)));
    std::lock_guard<std::mutex> lock(fault_mutex_);
    const bool clear = kind == FaultKind::NONE || count <= 0;
    fault_kind_ = clear ? FaultKind::NONE : kind;
    fault_count_ = clear ? 0 : count;
    fault_after_ = clear ? 0 : std::max<int64_t>(after, 0);
}

namespace {
// One activation row landing in the engine's input buffer: copied, zero-padded to kpad, and
// summed in one multi-versioned pass (integer sums: exact in any order). The landing of a
// batch-8 command's rows (2B-4T shape): 4.55 -> 3.84 us.
BITNET_HOST_CLONES int32_t land_row(const int8_t* __restrict src, int64_t n, int64_t kpad, int8_t* __restrict dst) {
    int32_t sum = 0;
    for (int64_t i = 0; i < n; ++i) {
        dst[i] = src[i];
        sum += src[i];
    }
    for (int64_t i = n; i < kpad; ++i) dst[i] = 0;
    return sum;
}
}  // namespace

void SimCard::run_command(const MatmulCommand& cmd) {
    uint32_t fault = BITNET_ERR_OK;
    {
        std::lock_guard<std::mutex> lock(fault_mutex_);
        if (fault_count_ > 0) {
            if (fault_after_ > 0) {
                --fault_after_;
            } else {
                --fault_count_;
                fault = card_error_for(fault_kind_);
                if (fault_count_ == 0) fault_kind_ = FaultKind::NONE;
            }
        }
    }
    if (fault != BITNET_ERR_OK) {
        static const char* const what[] = {"", "", "a DMA transfer failed", "", "", "", "",
                                           "a hardware fault", "the command FIFO overflowed", "", "", "", "",
                                           "the matrix engine reported an internal fault"};
        throw Error(ErrorCode::HW_ERROR,
                    std::string("card fault: error ") + std::to_string(fault) + " (" + card_error_name(fault) + "): " +
                        what[fault] + " on a matmul command (injected)",
                    fault);
    }
    const int64_t B = cmd.B, K = cmd.K, kpad = slot_k_padded(K);
    // The activation DMA lands in the engine's input buffer: rows zero-padded to whole
    // 64-element groups, with their sums (the engine multiplies codes c = t + 1).
    // (The buffers only grow: resizing them per command zero-filled up to 0.4 MB each time.)
    // Rows start on cache lines (kpad is a multiple of 64 bytes), so the kernels' 64-byte
    // activation loads never straddle two lines (the vector's storage is only 16-byte aligned).
    // 2B-4T, two threads, Zen 4, paired runs: prefill of 128 tokens 2.4-3.2% faster; decode at
    // batches 1 and 8 within the noise.
    if (act_.size() < static_cast<size_t>(B * kpad + 64)) act_.resize(static_cast<size_t>(B * kpad + 64));
    int8_t* const act_rows = reinterpret_cast<int8_t*>((reinterpret_cast<uintptr_t>(act_.data()) + 63) & ~uintptr_t(63));
    qsum_.resize(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) qsum_[b] = land_row(cmd.q + b * K, K, kpad, act_rows + b * kpad);
    ActBatch act;
    act.q = act_rows;
    act.B = B;
    act.K = K;
    act.ldq = kpad;
    act.qsum = qsum_.data();
    if (kernels_->prepared_size) {
        const size_t need = kernels_->prepared_size(act);
        if (need > 0) {
            if (prepared_.size() < need + 64) prepared_.resize(need + 64);   // grows only (no zero-fill per command)
            uint8_t* aligned = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(prepared_.data()) + 63) & ~uintptr_t(63));
            kernels_->prepare_act(act, aligned);
            act.prepared = aligned;
        }
    }

    std::vector<const TernarySlot*>& slots = cmd_slots_;
    std::vector<int64_t>& offset = cmd_offset_;
    slots.clear();
    offset.clear();
    int64_t total = 0;
    {
        std::lock_guard<std::mutex> lock(slots_mutex_);
        for (const MatmulOp& op : cmd.ops) {
            slots.push_back(&slots_.at(op.slot));   // slots only change inside a command
            offset.push_back(total);
            total += B * slots.back()->n;
        }
    }
    if (acc_.size() < static_cast<size_t>(total)) acc_.resize(static_cast<size_t>(total));
    // Work items. The products' rows are laid end to end and cut into items of decreasing size
    // (guided scheduling): each item takes 1/threads of the rows still unassigned, at least
    // kMinItemRows, so the first items are long weight streams and the last ones short, and a
    // thread that runs ahead picks up small items instead of leaving the other with a whole
    // equal share at the end. An item that crosses from one product into the next is several
    // pieces (product, block of rows), cut at multiples of 8 rows (the GEMV's tile; items of
    // batches are multiples of 32, the AMX kernel's row block). Against equal items (2 per
    // thread for decode, ~4 per thread of at most 512 rows for batches), 2B-4T shape, 2 threads:
    // the gap between the threads' finishing times per command 15 -> 5 us at batch 1 and 23 ->
    // 10-15 us at batch 8, and batch 8's ternary products 38 -> 34-35 ms per step.
    std::vector<WorkPiece>& pieces = pieces_;
    std::vector<size_t>& item_start = item_start_;
    pieces.clear();
    item_start.assign(1, 0);
    int64_t total_rows = 0;
    for (const TernarySlot* sl : slots) total_rows += sl->n;
    const int64_t threads = std::max(1, pool_->size());
    constexpr int64_t kMinItemRows = 64;
    const int64_t quantum = B < 8 ? 8 : 32;
    int64_t remaining = total_rows;
    auto item_rows = [&] {
        const int64_t share = (remaining + threads - 1) / threads;
        return (std::max(kMinItemRows, share) + quantum - 1) / quantum * quantum;
    };
    int64_t left = item_rows();
    for (size_t o = 0; o < slots.size(); ++o) {
        const int64_t n = slots[o]->n;
        for (int64_t j = 0; j < n;) {
            int64_t take = std::min(left, n - j);
            if (take < n - j) take = std::min(n - j, std::max<int64_t>(8, take / 8 * 8));   // cut at a tile
            pieces.push_back({o, j, j + take});
            j += take;
            left -= take;
            remaining -= take;
            if (left <= 0) {
                item_start.push_back(pieces.size());
                left = item_rows();
            }
        }
    }
    if (item_start.back() != pieces.size()) item_start.push_back(pieces.size());
    const int64_t n_items = static_cast<int64_t>(item_start.size()) - 1;
    pool_->parallel_for(n_items, 1, [&](int64_t begin, int64_t end) {
        for (size_t p = item_start[static_cast<size_t>(begin)]; p < item_start[static_cast<size_t>(end)]; ++p) {
            const WorkPiece& it = pieces[p];
            const TernarySlot& slot = *slots[it.op];
            int32_t* acc = acc_.data() + offset[it.op];
            kernels_->gemm(slot, act, acc, slot.n, it.j0, it.j1);
            // The engine's output stage: y = (acc / s_x) * beta in fp32.
            float* y = cmd.ops[it.op].y;
            const float beta = slot.scale;
            for (int64_t b = 0; b < B; ++b) {
                const float sx = cmd.sx[b];
                for (int64_t j = it.j0; j < it.j1; ++j)
                    y[b * slot.n + j] = (static_cast<float>(acc[b * slot.n + j]) / sx) * beta;
            }
        }
    });

    std::vector<int64_t>& ns = cmd_rows_;
    ns.clear();
    for (size_t o = 0; o < slots.size(); ++o) {
        const int64_t N = slots[o]->n;
        if (cmd.ops[o].acc) std::copy(acc_.data() + offset[o], acc_.data() + offset[o] + B * N, cmd.ops[o].acc);
        ns.push_back(N);
    }
    const Counters cost = matmul_command_cost(profile_, B, K, ns);
    std::lock_guard<std::mutex> lock(counters_mutex_);
    counters_.dma_cycles += cost.dma_cycles;
    counters_.compute_cycles += cost.compute_cycles;
    counters_.total_cycles += cost.total_cycles;
    counters_.commands += cost.commands;
    counters_.matmuls += cost.matmuls;
    counters_.macs += cost.macs;
    counters_.dma_bytes += cost.dma_bytes;
    counters_.weight_bytes_read += cost.weight_bytes_read;
}

Counters SimCard::counters() const {
    std::lock_guard<std::mutex> lock(counters_mutex_);
    return counters_;
}

void SimCard::reset_counters() {
    std::lock_guard<std::mutex> lock(counters_mutex_);
    counters_ = Counters{};
}

}  // namespace sim
}  // namespace bitnet
