// device.cpp: Device and Job (see device.h).
#include "device.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cerrno>
#include <cstring>
#include <thread>

#include "../sim/driver_emu.h"
#include "log.h"
#include "syscalls.h"

namespace bitnet {

const char* device_state_name(DeviceState s) {
    switch (s) {
        case DeviceState::IDLE: return "IDLE";
        case DeviceState::LOADING_WEIGHTS: return "LOADING_WEIGHTS";
        case DeviceState::RUNNING: return "RUNNING";
        case DeviceState::DMA_TRANSFER: return "DMA_TRANSFER";
        case DeviceState::ERROR: return "ERROR";
    }
    return "UNKNOWN";
}

// ------------------------------------------------------------------------------------ Job

void Job::check_seq(size_t seq) const {
    if (seq >= tokens_.size())
        throw Error(ErrorCode::INVALID, "sequence index " + std::to_string(seq) + " out of range: the job has " +
                                            std::to_string(tokens_.size()));
}

static double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Job::push(size_t seq, int32_t token) {
    const double t = since(start_);
    {
        std::lock_guard<std::mutex> lock(mu_);
        tokens_[seq].push_back(token);
        token_times_[seq].push_back(t);
    }
    cv_.notify_all();
}

void Job::end_seq(size_t seq, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu_);
    if (reasons_[seq].empty()) reasons_[seq] = reason;
}

void Job::finish(const std::string& reason, std::exception_ptr error) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        done_ = true;
        seconds_ = since(start_);
        reason_ = reason;
        error_ = error;
        for (auto& r : reasons_)
            if (r.empty()) r = reason;
    }
    cv_.notify_all();
}

bool Job::wait(int64_t timeout_ms) {
    std::unique_lock<std::mutex> lock(mu_);
    if (timeout_ms < 0) {
        cv_.wait(lock, [this] { return done_; });
        return true;
    }
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [this] { return done_; });
}

size_t Job::wait_for_tokens(size_t n, int64_t timeout_ms, size_t seq) {
    check_seq(seq);
    std::unique_lock<std::mutex> lock(mu_);
    auto ready = [&] { return done_ || tokens_[seq].size() >= n; };
    if (timeout_ms < 0) cv_.wait(lock, ready);
    else cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready);
    return tokens_[seq].size();
}

bool Job::done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
}

std::vector<int32_t> Job::tokens(size_t seq) const {
    check_seq(seq);
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_[seq];
}

std::vector<double> Job::token_times(size_t seq) const {
    check_seq(seq);
    std::lock_guard<std::mutex> lock(mu_);
    return token_times_[seq];
}

double Job::seconds() const {
    std::lock_guard<std::mutex> lock(mu_);
    return seconds_;
}

std::vector<int32_t> Job::tokens_from(size_t start, size_t seq) const {
    check_seq(seq);
    std::lock_guard<std::mutex> lock(mu_);
    const auto& t = tokens_[seq];
    if (start >= t.size()) return {};
    return std::vector<int32_t>(t.begin() + static_cast<std::ptrdiff_t>(start), t.end());
}

std::string Job::stop_reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
}

std::string Job::stop_reason(size_t seq) const {
    check_seq(seq);
    std::lock_guard<std::mutex> lock(mu_);
    return reasons_[seq];
}

void Job::rethrow_if_failed() const {
    std::exception_ptr e;
    {
        std::lock_guard<std::mutex> lock(mu_);
        e = error_;
    }
    if (e) std::rethrow_exception(e);
}

// --------------------------------------------------------------------------------- Device

Device::Device(const std::string& spec, const sim::BoardProfile& profile, int n_threads, const EmulatedDriverOptions& emu)
    : spec_(spec), kernels_(&sim::select_kernels()) {
    pool_ = std::make_unique<ThreadPool>(n_threads > 0 ? n_threads : ThreadPool::default_threads());
    if (spec == "sim") {
        transport_ = make_sim_transport(profile, pool_.get());
    } else if (spec == "sim+ioctl") {
        sim::DriverEmuConfig cfg;
        cfg.profile = profile;
        if (emu.input_size) cfg.input_size = emu.input_size;
        if (emu.output_size) cfg.output_size = emu.output_size;
        if (emu.weight_size) cfg.weight_size = emu.weight_size;
        if (emu.max_rows) cfg.max_rows = emu.max_rows;
        if (emu.max_ops) cfg.max_ops = emu.max_ops;
        auto driver = std::make_shared<sim::DriverEmu>(cfg, pool_.get());
        transport_ = make_kernel_transport(driver, cfg.node, spec);
    } else if (spec.rfind("/dev/", 0) == 0) {
        transport_ = make_kernel_transport(real_syscalls(), spec, spec);
    } else {
        throw Error(ErrorCode::INVALID, "unknown device '" + spec +
                                            "': use \"sim\", \"sim+ioctl\" or a card node such as \"/dev/bitnet0\"");
    }
}

Device::~Device() {
    try {
        close();
    } catch (...) {
    }
}

void Device::join_worker() {
    std::lock_guard<std::mutex> wlock(worker_mu_);
    if (worker_.joinable() && worker_.get_id() != std::this_thread::get_id()) worker_.join();
}

void Device::close() {
    if (closed_.exchange(true)) return;
    {
        // Under worker_mu_, so that a submit() racing with close() has either started its job
        // (aborted and joined here) or sees closed_ and starts none.
        std::lock_guard<std::mutex> wlock(worker_mu_);
        std::shared_ptr<Job> job;
        {
            std::lock_guard<std::mutex> lock(mu_);
            job = job_;
        }
        if (job) job->abort();
        const bool on_worker = worker_.joinable() && worker_.get_id() == std::this_thread::get_id();
        if (worker_.joinable() && !on_worker) worker_.join();
        // A synchronous call (load_model, logits, matmul) still running on another thread
        // holds the card: wait for it before the transport goes away.
        if (!on_worker)
            while (running_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::lock_guard<std::mutex> lock(mu_);
    engine_.reset();
    model_.reset();
    transport_.reset();
}

void Device::check_open() const {
    if (closed_.load()) throw Error(ErrorCode::CLOSED, "the device is closed; create a new BitNet() to continue");
}

void Device::check_model() const {
    // A load in progress (another thread) has no model yet: that is a busy device.
    if (!model_ && running_.load())
        throw Error(ErrorCode::BUSY, "the device is busy loading a model; wait for load_weights() to return");
    if (!model_) throw Error(ErrorCode::STATE, "no model is loaded; call load_weights(path) first");
}

bool Device::try_acquire() {
    bool expected = false;
    return running_.compare_exchange_strong(expected, true);
}

void Device::acquire() {
    if (!try_acquire())
        throw Error(ErrorCode::BUSY, "the device is busy with another job; wait() for it or abort() it first");
    // close() sets closed_ and then waits for running_ to drop: a call that got here after
    // close() began must not use the card (both atomics are sequentially consistent, so either
    // close() sees running_ and waits, or this sees closed_).
    if (closed_.load()) {
        running_.store(false);
        check_open();
    }
}

void Device::release() { running_.store(false); }

void Device::check_not_error() const {
    if (state_.load() == static_cast<int>(DeviceState::ERROR))
        throw Error(ErrorCode::STATE, "the device is in the ERROR state (code " + std::to_string(error_code_.load()) +
                                          "); call reset() first");
}

void Device::fault_or_idle(const Error& e) {
    // A rejected argument leaves the card as it was; anything the card itself reports
    // (engine fault, DMA or driver error) latches ERROR until reset().
    if (e.code() == ErrorCode::INVALID || e.code() == ErrorCode::ABORTED) {
        state_.store(static_cast<int>(DeviceState::IDLE));
    } else {
        error_code_.store(static_cast<int>(e.code()));
        card_error_.store(static_cast<int>(e.card_code()));
        state_.store(static_cast<int>(DeviceState::ERROR));
    }
}

// The guard of a synchronous card call. Constructed: the device is busy (another call gets
// BUSY) and in the call's state. Destroyed, however the call ends: the device is released and
// IDLE, unless fault() latched ERROR on the way out.
class Device::CardCall {
public:
    CardCall(Device& d, DeviceState state) : d_(d) {
        d_.acquire();   // throws BUSY before anything is held
        d_.state_.store(static_cast<int>(state));
    }
    ~CardCall() {
        if (!faulted_) d_.state_.store(static_cast<int>(DeviceState::IDLE));
        d_.release();
    }
    CardCall(const CardCall&) = delete;
    CardCall& operator=(const CardCall&) = delete;
    // The call failed with e: a card fault latches ERROR, an argument error or abort does not.
    void fault(const Error& e) {
        d_.fault_or_idle(e);
        faulted_ = d_.state_.load() == static_cast<int>(DeviceState::ERROR);
    }

private:
    Device& d_;
    bool faulted_ = false;
};

template <typename F>
auto Device::card_call(DeviceState state, bool latch_faults, F&& body) -> decltype(body()) {
    CardCall call(*this, state);
    try {
        return body();
    } catch (const Error& e) {
        if (latch_faults) call.fault(e);
        throw;
    }
}

bool Device::has_model() const {
    std::lock_guard<std::mutex> lock(mu_);
    return model_ != nullptr;
}

std::shared_ptr<const Model> Device::model() const {
    std::lock_guard<std::mutex> lock(mu_);
    return model_;
}

void Device::load_model(const std::string& path, bool fast_head) {
    check_open();
    acquire();
    join_worker();
    state_.store(static_cast<int>(DeviceState::LOADING_WEIGHTS));
    try {
        {
            std::lock_guard<std::mutex> lock(mu_);
            engine_.reset();
            model_.reset();
        }
        transport_->free_range(0, kUserSlotBase);
        auto model = std::make_shared<Model>(path, *transport_, 0);
        auto engine = std::make_unique<Engine>(*model, *transport_, pool_.get());
        if (fast_head) {
            engine->enable_fast_head();
            // Resident memory: the int8 copy replaces the full-precision head in memory.
            model->release_output_copy();
        }
        std::lock_guard<std::mutex> lock(mu_);
        model_ = std::move(model);
        engine_ = std::move(engine);
    } catch (...) {
        try {
            transport_->free_range(0, kUserSlotBase);
        } catch (...) {
        }
        state_.store(static_cast<int>(DeviceState::IDLE));
        release();
        throw;
    }
    state_.store(static_cast<int>(DeviceState::IDLE));
    error_code_.store(0);
    card_error_.store(0);
    release();
}

void Device::validate_tokens(const std::vector<int32_t>& tokens, const char* what) const {
    const ModelConfig& c = model_->config();
    if (tokens.empty()) throw Error(ErrorCode::INVALID, std::string(what) + " is empty; pass at least one token id");
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= c.n_vocab)
            throw Error(ErrorCode::INVALID, std::string(what) + "[" + std::to_string(i) + "] = " +
                                                std::to_string(tokens[i]) + " is not a token id of this model (0.." +
                                                std::to_string(c.n_vocab - 1) + ")");
    }
    if (static_cast<int64_t>(tokens.size()) > c.n_ctx)
        throw Error(ErrorCode::INVALID, std::string(what) + " has " + std::to_string(tokens.size()) +
                                            " tokens, more than the model's max_seq_len " + std::to_string(c.n_ctx));
}

std::shared_ptr<Job> Device::submit(const GenerateRequest& req) {
    check_open();
    {
        std::lock_guard<std::mutex> lock(mu_);
        check_model();
        if (req.prompts.empty()) throw Error(ErrorCode::INVALID, "the batch holds no sequences");
        for (size_t i = 0; i < req.prompts.size(); ++i)
            validate_tokens(req.prompts[i], req.prompts.size() == 1 ? "input_tokens"
                                                                    : ("input_batch[" + std::to_string(i) + "]").c_str());
    }
    if (req.max_new_tokens < 0)
        throw Error(ErrorCode::INVALID, "max_output must be >= 0, got " + std::to_string(req.max_new_tokens));
    validate_sampling(req.sampling);
    check_not_error();
    auto job = std::make_shared<Job>(req.prompts.size());   // before acquire(): a bad_alloc leaves the device free
    acquire();
    // worker_mu_ is held from joining the previous job's thread until the new one is stored in
    // worker_: the new job can run to its end and release() the device before the assignment
    // below completes, and the next submit() (or load_model(), logits()) must then wait for
    // the assignment rather than see the old, joined worker_, skip the join and assign to a
    // joinable std::thread (std::terminate).
    std::lock_guard<std::mutex> wlock(worker_mu_);
    if (worker_.joinable()) worker_.join();
    if (closed_.load()) {   // close() ran meanwhile (it joins under worker_mu_): start nothing
        release();
        check_open();
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        job_ = job;
    }
    state_.store(static_cast<int>(DeviceState::RUNNING));
    current_layer_.store(0);
    tokens_processed_.store(0);
    try {
        worker_ = std::thread([this, job, req] { run_job(job, req); });
    } catch (const std::exception& e) {
        state_.store(static_cast<int>(DeviceState::IDLE));
        release();
        throw Error(ErrorCode::NO_MEMORY, std::string("could not start the job thread: ") + e.what());
    }
    return job;
}

void Device::run_job(std::shared_ptr<Job> job, GenerateRequest req) {
    const auto t0 = std::chrono::steady_clock::now();
    uint64_t cycles0 = 0;
    try {
        cycles0 = transport_->counters().total_cycles;
    } catch (...) {
    }
    std::string reason = "length";
    std::exception_ptr error;
    int64_t generated = 0;
    uint64_t prefilled = 0;
    try {
        std::shared_ptr<Model> model;
        Engine* engine;
        {
            std::lock_guard<std::mutex> lock(mu_);
            model = model_;
            engine = engine_.get();
        }
        const ModelConfig& c = model->config();
        const size_t S = req.prompts.size();
        RunHooks hooks{&job->abort_, &current_layer_};
        // One sampler per sequence, seeded seed + index: sequence i of a batch samples exactly
        // what a single job with seed + i would.
        std::vector<Sampler> samplers;
        std::vector<KVCache> caches;
        std::vector<int64_t> budget(S);   // new tokens each sequence may still produce
        std::vector<int32_t> last(S);
        std::vector<bool> active(S, false);
        for (size_t i = 0; i < S; ++i) {
            SamplingParams sp = req.sampling;
            sp.seed = req.sampling.seed + i;
            samplers.emplace_back(sp);
            caches.emplace_back(c);
            const int64_t P = static_cast<int64_t>(req.prompts[i].size());
            budget[i] = std::min(req.max_new_tokens, c.n_ctx - P);
            caches[i].reserve(P + std::max<int64_t>(budget[i], 0));
            active[i] = budget[i] > 0;
            if (!active[i]) job->end_seq(i, "length");
        }
        // Prefill every active sequence, in forward passes of at most 256 rows (bounded
        // activation memory); logits only for each prompt's last token.
        std::vector<float> logits;
        std::vector<ForwardRow> rows;
        std::vector<size_t> row_seq;       // which sequence each logits row belongs to
        std::vector<std::vector<float>> seq_logits(S);
        // Greedy with the fast head: the forward pass returns the exact argmax directly.
        const bool argmax_only = req.sampling.temperature <= 0.0f && engine->fast_head();
        std::vector<int32_t> seq_argmax(S, 0), argmax;
        auto run_rows = [&]() {
            if (argmax_only) {
                engine->forward_argmax(rows, argmax, hooks);
                for (size_t w = 0; w < row_seq.size(); ++w) seq_argmax[row_seq[w]] = argmax[w];
            } else {
                engine->forward(rows, logits, hooks);
                for (size_t w = 0; w < row_seq.size(); ++w) {
                    const float* src = logits.data() + w * c.n_vocab;
                    seq_logits[row_seq[w]].assign(src, src + c.n_vocab);
                }
            }
        };
        auto flush = [&]() {
            if (rows.empty()) return;
            run_rows();
            tokens_processed_.fetch_add(static_cast<int64_t>(rows.size()));
            prefilled += rows.size();
            rows.clear();
            row_seq.clear();
        };
        for (size_t i = 0; i < S; ++i) {
            if (!active[i]) continue;
            const auto& p = req.prompts[i];
            const int64_t P = static_cast<int64_t>(p.size());
            for (int64_t t = 0; t < P; ++t) {
                rows.push_back({&caches[i], p[t], t, t == P - 1});
                if (t == P - 1) row_seq.push_back(i);
                if (rows.size() >= 256) flush();
            }
        }
        flush();
        prefilled = 0;
        for (const auto& p : req.prompts) prefilled += p.size();

        // Decode: sample for every active sequence, then one forward pass for all of them.
        for (;;) {
            bool any = false;
            for (size_t i = 0; i < S; ++i) {
                if (!active[i]) continue;
                const int32_t tok = argmax_only ? seq_argmax[i] : samplers[i].sample(seq_logits[i].data(), c.n_vocab);
                job->push(i, tok);
                ++generated;
                tokens_processed_.fetch_add(1);
                last[i] = tok;
                --budget[i];
                if (std::find(req.stop_tokens.begin(), req.stop_tokens.end(), tok) != req.stop_tokens.end()) {
                    active[i] = false;
                    job->end_seq(i, "stop");
                } else if (budget[i] <= 0) {
                    active[i] = false;
                    job->end_seq(i, "length");
                }
                any = any || active[i];
            }
            if (!any) break;
            if (job->abort_.load()) throw Error(ErrorCode::ABORTED, "aborted");
            rows.clear();
            row_seq.clear();
            for (size_t i = 0; i < S; ++i) {
                if (!active[i]) continue;
                rows.push_back({&caches[i], last[i], caches[i].n_pos, true});
                row_seq.push_back(i);
            }
            run_rows();
        }
        reason = S == 1 ? job->stop_reason(0) : "length";
        if (reason.empty()) reason = "length";
        state_.store(static_cast<int>(DeviceState::IDLE));
    } catch (const Error& e) {
        if (e.code() == ErrorCode::ABORTED) {
            reason = "aborted";
            state_.store(static_cast<int>(DeviceState::IDLE));
        } else {
            reason = "error";
            error = std::current_exception();
            error_code_.store(static_cast<int>(e.code()));
            card_error_.store(static_cast<int>(e.card_code()));
            state_.store(static_cast<int>(DeviceState::ERROR));
            log_message(LogLevel::ERROR, std::string("job failed: ") + e.what());
        }
    } catch (const std::bad_alloc&) {
        reason = "error";
        error = std::make_exception_ptr(Error(ErrorCode::NO_MEMORY, "out of host memory during generation"));
        error_code_.store(static_cast<int>(ErrorCode::NO_MEMORY));
        state_.store(static_cast<int>(DeviceState::ERROR));
    } catch (const std::exception& e) {
        reason = "error";
        error = std::make_exception_ptr(Error(ErrorCode::HW_ERROR, std::string("job failed: ") + e.what()));
        error_code_.store(static_cast<int>(ErrorCode::HW_ERROR));
        state_.store(static_cast<int>(DeviceState::ERROR));
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    uint64_t cycles1 = cycles0;
    try {
        cycles1 = transport_->counters().total_cycles;
    } catch (...) {
    }
    {
        std::lock_guard<std::mutex> lock(perf_mu_);
        perf_.last_job_card_cycles = cycles1 >= cycles0 ? cycles1 - cycles0 : 0;
        perf_.last_job_tokens = static_cast<uint64_t>(generated);
        perf_.inference_count += 1;
        perf_.tokens_generated += static_cast<uint64_t>(generated);
        perf_.tokens_prefilled += prefilled;
        perf_.last_job_seconds = secs;
        perf_.tokens_per_second = secs > 0 ? static_cast<double>(generated) / secs : 0.0;
    }
    release();
    job->finish(reason, error);
}

std::vector<float> Device::logits(const std::vector<int32_t>& tokens) {
    check_open();
    {
        std::lock_guard<std::mutex> lock(mu_);
        check_model();
        validate_tokens(tokens, "input_tokens");
    }
    check_not_error();
    return card_call(DeviceState::RUNNING, true, [&] {
        join_worker();
        std::shared_ptr<Model> model;
        Engine* engine;
        {
            std::lock_guard<std::mutex> lock(mu_);
            model = model_;
            engine = engine_.get();
        }
        KVCache cache(model->config());
        cache.reserve(static_cast<int64_t>(tokens.size()));
        RunHooks hooks{nullptr, &current_layer_};
        const int64_t T = static_cast<int64_t>(tokens.size());
        const int64_t V = model->config().n_vocab;
        std::vector<float> out(static_cast<size_t>(T * V));
        const int64_t chunk = 256;
        std::vector<float> part;
        for (int64_t s = 0; s < T; s += chunk) {
            const int64_t e = std::min(T, s + chunk);
            std::vector<ForwardRow> rows;
            for (int64_t i = s; i < e; ++i) rows.push_back({&cache, tokens[i], i, true});
            engine->forward(rows, part, hooks);
            std::copy(part.begin(), part.end(), out.begin() + s * V);
        }
        return out;
    });
}

void Device::load_user_weights(int layer_id, const int8_t* t, int64_t n, int64_t k, float scale) {
    check_open();
    if (layer_id < 0 || layer_id >= kUserSlotBase)
        throw Error(ErrorCode::INVALID, "layer_id must be in [0, " + std::to_string(kUserSlotBase) + "), got " +
                                            std::to_string(layer_id));
    // A failed load (bad codes, card memory full) leaves the card as it was: never ERROR.
    card_call(DeviceState::LOADING_WEIGHTS, false, [&] { transport_->load_slot(kUserSlotBase + layer_id, t, n, k, scale); });
}

std::vector<float> Device::matmul(int layer_id, const float* x, int64_t B, int64_t k, std::vector<int32_t>* acc) {
    check_open();
    if (layer_id < 0 || layer_id >= kUserSlotBase || !transport_->has_slot(kUserSlotBase + layer_id))
        throw Error(ErrorCode::INVALID, "no weights loaded for layer_id " + std::to_string(layer_id) +
                                            "; call load_weights_from_array(weights, layer_id) first");
    const SlotInfo info = transport_->slot_info(kUserSlotBase + layer_id);
    if (k != info.k)
        throw Error(ErrorCode::INVALID, "x has " + std::to_string(k) + " features but layer " + std::to_string(layer_id) +
                                            " expects " + std::to_string(info.k));
    if (B <= 0) throw Error(ErrorCode::INVALID, "x has no rows");
    check_not_error();
    for (int64_t i = 0; i < B * k; ++i)
        if (!std::isfinite(x[i])) throw Error(ErrorCode::INVALID, "x holds a non-finite value at flat index " + std::to_string(i));
    return card_call(DeviceState::RUNNING, true, [&] {
        std::vector<float> y(static_cast<size_t>(B * info.n));
        std::vector<int8_t> q(static_cast<size_t>(B * k));
        std::vector<float> sx(static_cast<size_t>(B));
        for (int64_t b = 0; b < B; ++b) sx[b] = kernels_->quantize_i8(x + b * k, k, q.data() + b * k);
        MatmulCommand cmd;
        cmd.q = q.data();
        cmd.sx = sx.data();
        cmd.B = B;
        cmd.K = k;
        MatmulOp op;
        op.slot = kUserSlotBase + layer_id;
        op.y = y.data();
        if (acc) {
            acc->resize(static_cast<size_t>(B * info.n));
            op.acc = acc->data();
        }
        cmd.ops.push_back(op);
        transport_->run(cmd);
        return y;
    });
}

DeviceStatus Device::status() const {
    check_open();
    DeviceStatus s;
    s.state = static_cast<DeviceState>(state_.load());
    s.current_layer = current_layer_.load();
    s.tokens_processed = tokens_processed_.load();
    s.error_code = error_code_.load();
    s.card_error = card_error_.load();
    return s;
}

DevicePerf Device::perf() const {
    check_open();
    DevicePerf p;
    {
        std::lock_guard<std::mutex> lock(perf_mu_);
        p = perf_;
    }
    p.counters = transport_->counters();
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (engine_) {
            p.head_calls = engine_->head_stats().calls;
            p.head_rescored = engine_->head_stats().rescored;
        }
    }
    p.clock_mhz = transport_->profile().clock_mhz;
    p.counters_modeled = transport_->counters_modeled();
    return p;
}

void Device::abort() {
    check_open();
    std::shared_ptr<Job> job;
    {
        std::lock_guard<std::mutex> lock(mu_);
        job = job_;
    }
    if (job) job->abort();
}

void Device::reset() {
    check_open();
    abort();
    std::shared_ptr<Job> job;
    {
        std::lock_guard<std::mutex> lock(mu_);
        job = job_;
    }
    if (job) job->wait(-1);
    // Clear the state only while holding the device, so a job or call that starts meanwhile
    // (and sets its own state) is never overwritten with IDLE.
    if (try_acquire()) {
        state_.store(static_cast<int>(DeviceState::IDLE));
        error_code_.store(0);
        card_error_.store(0);
        current_layer_.store(0);
        release();
    }
}

}  // namespace bitnet
