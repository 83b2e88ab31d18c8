// card.h: the simulated BitNet card.
//
// What it models (DESIGN.md section 2): a ternary matrix engine with its own weight memory
// (slots, each one packed ternary matrix + fp32 scale, bounded by the board's capacity) and a
// command processor. Commands are serialised by the engine (one at a time, the caller waits,
// as on the card), run on the caller's thread with the thread pool, and every command advances the cycle counters of the board's cycle model
// (docs/NUMERICS.md "Card arithmetic", docs/DEVICE_ABI.md "Cycle model").
//
// Engine arithmetic, per activation row b and output row j of a slot (the card contract):
//     acc[b][j] = sum_k q[b][k] * t[j][k]          int8 x ternary -> exact int32
//     y[b][j]   = ((float)acc[b][j] / s_x[b]) * beta    fp32, in this order
//
// Thread-safety: all public methods may be called from any thread; commands are serialised.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/kernels.h"
#include "thread_pool.h"

namespace bitnet {
namespace sim {

// Board parameters of the cycle model. Bandwidths are in GB/s (1e9 bytes per second).
struct BoardProfile {
    std::string name = "vibee-zcu104";
    double clock_mhz = 200.0;          // fabric clock
    int lanes = 16;                    // MAC lanes (output rows processed in parallel)
    int lane_width = 27;               // MACs per lane per cycle (trits per lane word)
    double ddr_gbps = 19.2;            // card DDR -> engine weight streaming bandwidth
    double dma_gbps = 4.0;             // host <-> card DMA bandwidth
    uint64_t dma_setup_cycles = 200;   // fixed cost of one DMA transfer
    uint64_t pipeline_cycles = 32;     // fill/drain of the MAC pipeline per matmul
    uint64_t weight_capacity = 4ull << 30;  // bytes of weight memory

    double ddr_bytes_per_cycle() const { return ddr_gbps * 1e3 / clock_mhz; }
    double dma_bytes_per_cycle() const { return dma_gbps * 1e3 / clock_mhz; }
};

// Named board profiles: "vibee-zcu104", "vibee-vcu118", "kv260". Throws Error(INVALID).
BoardProfile board_profile(const std::string& name);
std::vector<std::string> board_profile_names();
// Throws Error(INVALID) naming the first parameter out of its range (clock_mhz (0, 10000],
// lanes [1, 65536], lane_width [1, 4096], ddr_gbps and dma_gbps (0, 100000], capacity > 0).
void validate_profile(const BoardProfile& p);

struct Counters {
    uint64_t total_cycles = 0;
    uint64_t dma_cycles = 0;
    uint64_t compute_cycles = 0;
    uint64_t commands = 0;          // matmul commands executed
    uint64_t matmuls = 0;           // matrix products executed (a command may hold several)
    uint64_t macs = 0;              // multiply-accumulates performed
    uint64_t dma_bytes = 0;         // bytes moved host <-> card
    uint64_t weight_bytes_read = 0; // bytes streamed from weight memory
};

// Cycle model formulas (docs/DEVICE_ABI.md "Cycle model").
uint64_t dma_cycles_for(const BoardProfile& p, uint64_t bytes);
uint64_t matmul_compute_cycles(const BoardProfile& p, int64_t B, int64_t N, int64_t K);

// What one matmul command of B activation rows of K inputs, with products of N[i] output rows,
// adds to the counters (the card's whole accounting of a command).
Counters matmul_command_cost(const BoardProfile& p, int64_t B, int64_t K, const std::vector<int64_t>& N);

// One product inside a command: y[B, n_slot] (fp32) = engine(q, slot). acc, if not null,
// also receives the int32 accumulators [B, n_slot].
struct MatmulOp {
    int slot = -1;
    float* y = nullptr;
    int32_t* acc = nullptr;
};

// A command: several products sharing one activation batch q[B, K] (e.g. a layer's q/k/v).
struct MatmulCommand {
    const int8_t* q = nullptr;   // [B, K] int8
    const float* sx = nullptr;   // [B] activation scales s_x (q = round(x * s_x))
    int64_t B = 0;
    int64_t K = 0;
    std::vector<MatmulOp> ops;
};

// Faults a test can inject into the card (the kinds of INJECT_FAULT, docs/DEVICE_ABI.md
// section 5; the numbers are BITNET_FAULT_*). Each error kind latches its card error code:
// ENGINE 13, DMA 2, FIFO_OVERFLOW 8, HW 7. HANG is a command that never finishes; only the
// driver emulation models it (a direct SimCard command always ends).
enum class FaultKind : uint32_t { NONE = 0, ENGINE = 1, HANG = 2, DMA = 3, FIFO_OVERFLOW = 4, HW = 5 };

// The card error code (enum bitnet_card_error) a fault kind reports, and a code's name.
uint32_t card_error_for(FaultKind kind);
const char* card_error_name(uint32_t card_code);

struct SlotInfo {
    int slot = -1;
    int64_t n = 0;
    int64_t k = 0;
    float scale = 0.0f;
    uint64_t bytes = 0;
};

class SimCard {
public:
    // `pool` runs the engine's work (it models the card's parallel MAC lanes); it must
    // outlive the card. `kernels` null means select_kernels().
    SimCard(const BoardProfile& profile, ThreadPool* pool, const KernelTable* kernels = nullptr);
    ~SimCard();
    SimCard(const SimCard&) = delete;
    SimCard& operator=(const SimCard&) = delete;

    const BoardProfile& profile() const { return profile_; }
    const char* kernel_name() const { return kernels_->name; }

    // Load t (n x k row-major codes in {-1,0,1}) with scale beta into `slot`, replacing what
    // was there. Throws Error(INVALID) for bad arguments, Error(NO_MEMORY) when the weight
    // memory cannot hold it (the slot's old content is kept in that case).
    void load_slot(int slot, const int8_t* t, int64_t n, int64_t k, float scale);
    void free_slot(int slot);
    void free_all();
    void free_range(int lo, int hi);   // every slot with lo <= id < hi
    bool has_slot(int slot) const;
    SlotInfo slot_info(int slot) const;   // throws Error(INVALID) for an empty slot
    uint64_t weight_used() const;

    // Run a command on the engine; blocks until it finished. Validates the command
    // first (slots exist and match K; buffers non-null); throws Error(INVALID) otherwise.
    void run(const MatmulCommand& cmd);

    Counters counters() const;
    void reset_counters();

    // Fault injection (tests of the host's error handling): after `after` more matmul commands
    // complete, the next `count` fail with Error(HW_ERROR, card_code = card_error_for(kind))
    // as a card reporting that fault would; nothing of a failed command is computed or
    // counted. kind NONE (or count 0) clears a pending fault. HANG: Error(INVALID).
    void inject_fault(FaultKind kind, int count, int64_t after = 0);

    // Read a slot's codes back (for tests and introspection): n*k int8.
    std::vector<int8_t> read_slot(int slot) const;

private:
    void execute(const std::function<void()>& task);   // run one command on the engine
    void run_command(const MatmulCommand& cmd);

    BoardProfile profile_;
    ThreadPool* pool_;
    const KernelTable* kernels_;
    std::vector<int8_t> act_;        // padded activations of the running command (inside a command only)
    std::vector<int32_t> qsum_;
    std::vector<uint8_t> prepared_;  // kernel-specific activation layout of the command
    std::vector<int32_t> acc_;
    // The running command's plan (kept between commands: allocating them took ~1 us a command).
    struct WorkPiece {
        size_t op;
        int64_t j0, j1;
    };
    std::vector<const TernarySlot*> cmd_slots_;
    std::vector<int64_t> cmd_offset_;        // where each product's accumulators start in acc_
    std::vector<WorkPiece> pieces_;
    std::vector<size_t> item_start_;         // item i is pieces_[item_start_[i], item_start_[i + 1])
    std::vector<int64_t> cmd_rows_;

    mutable std::mutex slots_mutex_;
    std::map<int, TernarySlot> slots_;
    uint64_t used_bytes_ = 0;

    mutable std::mutex counters_mutex_;
    Counters counters_;
    std::mutex fault_mutex_;
    FaultKind fault_kind_ = FaultKind::NONE;
    int64_t fault_after_ = 0;   // commands still to complete before the fault
    int64_t fault_count_ = 0;   // commands that fail then

    std::mutex engine_mutex_;   // one command at a time
    bool stopping_ = false;
};

}  // namespace sim
}  // namespace bitnet
