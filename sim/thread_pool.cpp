// thread_pool.cpp: see thread_pool.h.
#include "thread_pool.h"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <string>

#include "../cpp/error.h"

namespace bitnet {

int ThreadPool::default_threads() {
    if (const char* env = std::getenv("BITNET_NUM_THREADS")) {
        char* end = nullptr;
        const long v = std::strtol(env, &end, 10);
        if (end == env || *end != '\0' || v < 1 || v > 1024)
            throw Error(ErrorCode::INVALID, std::string("BITNET_NUM_THREADS='") + env +
                                                "' is not a thread count in 1..1024; unset it or fix it");
        return static_cast<int>(v);
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
    if (n_threads < 1 || n_threads > 1024)
        throw Error(ErrorCode::INVALID, "n_threads must be in 1..1024, got " + std::to_string(n_threads));
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stopping_ = true;
    }
    start_cv_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks() {
    for (;;) {
        const int64_t begin = next_.fetch_add(grain_);
        if (begin >= n_) return;
        const int64_t end = std::min(n_, begin + grain_);
        try {
            (*fn_)(begin, end);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mu_);
            if (!error_) error_ = std::current_exception();
            next_.store(n_);   // skip the remaining chunks
        }
    }
}

void ThreadPool::worker_loop() {
    uint64_t seen = 0;
    for (;;) {
        // Spin briefly before sleeping: calls come in quick succession during a forward pass
        // and a futex wake-up costs more than the work of a small matmul.
        for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin) cpu_relax();
        {
            std::unique_lock<std::mutex> lock(mu_);
            start_cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
            if (stopping_) return;
            seen = generation_.load();
        }
        run_chunks();
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (busy_workers_.fetch_sub(1) == 1) done_cv_.notify_one();
        }
    }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (workers_.empty() || n <= grain) {
        for (int64_t b = 0; b < n; b += grain) fn(b, std::min(n, b + grain));
        return;
    }
    std::lock_guard<std::mutex> call(call_mutex_);
    {
        std::lock_guard<std::mutex> lock(mu_);
        fn_ = &fn;
        n_ = n;
        grain_ = grain;
        next_.store(0);
        error_ = nullptr;
        busy_workers_ = static_cast<int>(workers_.size());
        generation_.fetch_add(1, std::memory_order_release);
    }
    start_cv_.notify_all();
    run_chunks();
    // The workers are finishing their last chunks: spin briefly rather than sleep, since being
    // woken again costs far more than the wait (tens of microseconds under a hypervisor).
    for (int spin = 0; spin < 4000 && busy_workers_.load(std::memory_order_acquire) != 0; ++spin) cpu_relax();
    {
        std::unique_lock<std::mutex> lock(mu_);
        done_cv_.wait(lock, [&] { return busy_workers_.load() == 0; });
        fn_ = nullptr;
    }
    if (error_) std::rethrow_exception(error_);
}

void ThreadPool::parallel_for_guided(int64_t n, int64_t min_grain, int64_t quantum,
                                     const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    if (quantum < 1) quantum = 1;
    min_grain = std::max(min_grain, quantum);
    if (workers_.empty() || n <= min_grain) {
        fn(0, n);
        return;
    }
    const int64_t parts = 2 * static_cast<int64_t>(n_threads_);
    std::vector<int64_t> cut{0};
    for (int64_t left = n; left > 0;) {
        const int64_t share = std::max(min_grain, (left + parts - 1) / parts);
        const int64_t take = std::min(left, (share + quantum - 1) / quantum * quantum);
        cut.push_back(cut.back() + take);
        left -= take;
    }
    parallel_for(static_cast<int64_t>(cut.size()) - 1, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) fn(cut[static_cast<size_t>(i)], cut[static_cast<size_t>(i + 1)]);
    });
}

}  // namespace bitnet
