// device.h: the host-side Device: one card (real or simulated) plus the loaded model, the
// generation jobs that run on it, and its status/performance registers.
//
// Ownership and threads: a Device owns its transport, model and engine. Generation runs in a
// Job on a worker thread owned by the Device; at most one job (or synchronous logits call)
// runs at a time, a second one gets Error(BUSY). All methods are thread-safe. close() aborts
// a running job and waits for it, and every later call raises Error(CLOSED).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model.h"
#include "runtime.h"
#include "transport.h"

namespace bitnet {

enum class DeviceState : int { IDLE = 0, LOADING_WEIGHTS = 1, RUNNING = 2, DMA_TRANSFER = 3, ERROR = 4 };
const char* device_state_name(DeviceState s);

struct DeviceStatus {
    DeviceState state = DeviceState::IDLE;
    int64_t current_layer = 0;
    int64_t tokens_processed = 0;
    int error_code = 0;   // the ErrorCode that latched ERROR (HW_ERROR for a card fault), else 0
    int card_error = 0;   // with a card fault: the card's own code (enum bitnet_card_error), else 0
};

struct DevicePerf {
    Counters counters;                 // the card's cycle counters (modeled on sim)
    double clock_mhz = 0;              // the board clock the counters count
    bool counters_modeled = true;      // counters from the cycle model (sim) or a card's clock
    uint64_t last_job_card_cycles = 0; // card cycles (total) spent during the last job
    uint64_t last_job_tokens = 0;      // tokens the last job generated
    uint64_t inference_count = 0;      // generation jobs finished (including aborted ones)
    uint64_t tokens_generated = 0;     // over all jobs
    uint64_t tokens_prefilled = 0;     // prompt tokens over all jobs
    double tokens_per_second = 0;      // generated tokens / host wall time of the last job
    double last_job_seconds = 0;       // host wall time of the last job
    uint64_t head_calls = 0;           // fast-head argmax evaluations (0 without fast head)
    uint64_t head_rescored = 0;        // rows the fast head re-scored at full precision
};

// One job generates for one or more sequences (a batch): every decode step runs one forward
// pass for all unfinished sequences, so each weight read serves the whole batch.
struct GenerateRequest {
    std::vector<std::vector<int32_t>> prompts;
    int64_t max_new_tokens = 1024;
    SamplingParams sampling;
    std::vector<int32_t> stop_tokens;
};

class Job {
public:
    explicit Job(size_t n_seq = 1) : tokens_(n_seq), token_times_(n_seq), reasons_(n_seq) {}
    size_t n_seq() const { return tokens_.size(); }
    // Waits up to timeout_ms (< 0: forever) for the job to finish; true if it has.
    bool wait(int64_t timeout_ms);
    // Waits until sequence `seq` has at least n tokens or the job finished; returns its count.
    size_t wait_for_tokens(size_t n, int64_t timeout_ms, size_t seq = 0);
    bool done() const;
    void abort() { abort_.store(true); }
    std::vector<int32_t> tokens(size_t seq = 0) const;
    std::vector<int32_t> tokens_from(size_t start, size_t seq = 0) const;
    // When each token of sequence `seq` was produced: seconds since the job was created
    // (steady clock, read by the worker as it publishes the token). Benchmarks time prefill
    // and decode steps with it without waking a waiting thread for every token.
    std::vector<double> token_times(size_t seq = 0) const;
    // Seconds from creation to finish; 0 while the job runs.
    double seconds() const;
    // Why the job (or one sequence of it) ended: "", "stop", "length", "aborted", "error".
    std::string stop_reason() const;
    std::string stop_reason(size_t seq) const;
    // Rethrows the error that ended the job, if any.
    void rethrow_if_failed() const;

private:
    friend class Device;
    void push(size_t seq, int32_t token);
    void end_seq(size_t seq, const std::string& reason);
    void finish(const std::string& reason, std::exception_ptr error);
    void check_seq(size_t seq) const;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
    std::vector<std::vector<int32_t>> tokens_;
    std::vector<std::vector<double>> token_times_;
    std::vector<std::string> reasons_;
    bool done_ = false;
    double seconds_ = 0.0;
    std::string reason_;
    std::exception_ptr error_;
    std::atomic<bool> abort_{false};
};

// Options of the "sim+ioctl" device's emulated driver; 0 keeps sim::DriverEmuConfig's default
// (VIBEE's 64/64/128 MB buffer). Small regions make the kernel transport split commands.
struct EmulatedDriverOptions {
    uint64_t input_size = 0;
    uint64_t output_size = 0;
    uint64_t weight_size = 0;
    uint32_t max_rows = 0;
    uint32_t max_ops = 0;
};

class Device {
public:
    // spec: "sim" (the simulator, called directly), "sim+ioctl" (the kernel transport over the
    // emulated driver of the simulator), or "/dev/bitnetN" (a card through its driver; the
    // profile then comes from the card and `profile` is not used).
    // n_threads <= 0: ThreadPool::default_threads() ($BITNET_NUM_THREADS, else the usable CPUs).
    Device(const std::string& spec, const sim::BoardProfile& profile, int n_threads = 0,
           const EmulatedDriverOptions& emu = EmulatedDriverOptions());
    int n_threads() const { return pool_->size(); }
    ~Device();
    Device(const Device&) = delete;
    Device& operator=(const Device&) = delete;

    const std::string& spec() const { return spec_; }
    void close();
    bool closed() const { return closed_.load(); }

    // Loads a model file onto the card, replacing any previous model. The device is
    // LOADING_WEIGHTS meanwhile. On failure the previous model is gone and the card empty.
    // fast_head: also build the fast output head (int8 copy + error bounds) used by greedy
    // decoding; results stay exactly those of the exact head.
    void load_model(const std::string& path, bool fast_head = false);
    bool has_model() const;
    std::shared_ptr<const Model> model() const;

    // Starts a generation job (validated here, synchronously). Throws BUSY if one runs.
    std::shared_ptr<Job> submit(const GenerateRequest& req);
    // Logits at every position of one forward pass from an empty cache: [T, n_vocab].
    std::vector<float> logits(const std::vector<int32_t>& tokens);

    // User weight slots (the card as a bare matrix engine, outside any model): slot ids are
    // user_slot_base() + layer_id. load_user_weights replaces the slot's matrix.
    static constexpr int kUserSlotBase = 1 << 24;
    void load_user_weights(int layer_id, const int8_t* t, int64_t n, int64_t k, float scale);
    // y[B, n] = card(quant(x[B, k]); slot): the BitLinear of docs/NUMERICS.md.
    std::vector<float> matmul(int layer_id, const float* x, int64_t B, int64_t k, std::vector<int32_t>* acc);

    DeviceStatus status() const;
    DevicePerf perf() const;
    bool busy() const { return running_.load(); }
    void abort();   // aborts the running job, if any; it finishes within one layer
    void reset();   // ERROR -> IDLE (waits for a running job to be aborted first)

    Transport& transport() { return *transport_; }
    const Transport& transport() const { return *transport_; }

private:
    void check_open() const;
    void check_model() const;
    void validate_tokens(const std::vector<int32_t>& tokens, const char* what) const;
    bool try_acquire();        // marks the device busy; false if it already was
    void acquire();            // marks the device busy or throws BUSY (or CLOSED after close())
    void release();
    void fault_or_idle(const Error& e);
    void check_not_error() const;   // state after an error of a synchronous card call
    // A synchronous card call (logits, matmul, loading a user slot): holds the device busy and
    // in `state` while `body` runs, then releases it, IDLE, or ERROR when the card faulted and
    // `latch_faults` (see CardCall in device.cpp).
    class CardCall;
    template <typename F>
    auto card_call(DeviceState state, bool latch_faults, F&& body) -> decltype(body());
    void join_worker();   // joins the last job's thread (under worker_mu_)
    void run_job(std::shared_ptr<Job> job, GenerateRequest req);

    std::string spec_;
    std::unique_ptr<ThreadPool> pool_;
    std::unique_ptr<Transport> transport_;
    mutable std::mutex mu_;
    std::shared_ptr<Model> model_;
    std::unique_ptr<Engine> engine_;
    // The host's kernels (activation quantisation of matmul()), taken once as Engine does.
    const sim::KernelTable* kernels_ = nullptr;
    std::shared_ptr<Job> job_;
    // The thread of the last job. worker_mu_ guards it: submit() starts the thread and only
    // then assigns worker_, but the job may finish and release() the device before that
    // assignment completes, so the next acquire()r must not look at worker_ unlocked. Held
    // while joining; the worker itself never takes it.
    std::mutex worker_mu_;
    std::thread worker_;

    std::atomic<bool> closed_{false};
    std::atomic<bool> running_{false};
    std::atomic<int> state_{static_cast<int>(DeviceState::IDLE)};
    std::atomic<int64_t> current_layer_{0};
    std::atomic<int64_t> tokens_processed_{0};
    std::atomic<int> error_code_{0};
    std::atomic<int> card_error_{0};

    mutable std::mutex perf_mu_;
    DevicePerf perf_;
};

}  // namespace bitnet
