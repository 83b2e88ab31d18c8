// thread_pool.cpp: see thread_pool.h.
#include "thread_pool.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>

#if defined(__linux__)
#include <sched.h>
#endif

#include "../cpp/error.h"

namespace bitnet {

namespace {

#if defined(__linux__)
// The first line of a small file, or "" if it cannot be read.
std::string first_line(const std::string& path) {
    std::ifstream f(path);
    std::string line;
    if (f) std::getline(f, line);
    return line;
}
#endif

}  // namespace

// The CPU bandwidth limit in CPUs (quota / period), the smallest along the path from the
// cgroup up to the root. cgroup v2 keeps it in cpu.max ("max 100000" or "200000 100000"), v1
// in cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. A container started with `--cpus=2`
// on a 64-CPU host sees all 64 in its affinity mask and is throttled to 2 CPUs' worth of time
// per period.
double ThreadPool::cgroup_cpu_limit(const std::string& proc_cgroup, const std::string& root) {
#if defined(__linux__)
    std::ifstream f(proc_cgroup);
    std::string line, v2_path, v1_path;
    while (std::getline(f, line)) {
        const size_t a = line.find(':'), b = line.find(':', a == std::string::npos ? a : a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
        if (line.compare(0, a, "0") == 0 && controllers.empty()) v2_path = path;
        std::stringstream list(controllers);
        for (std::string c; std::getline(list, c, ',');)
            if (c == "cpu") v1_path = path;
    }
    double limit = 0.0;
    const auto take = [&limit](double quota, double period) {
        if (quota > 0 && period > 0 && (limit == 0.0 || quota / period < limit)) limit = quota / period;
    };
    const auto walk = [](std::string path, const auto& visit) {   // path, its parents, then "/"
        if (path.empty() || path[0] != '/') return;
        for (;;) {
            visit(path == "/" ? std::string() : path);
            if (path == "/") return;
            const size_t cut = path.find_last_of('/');
            path = cut == 0 ? "/" : path.substr(0, cut);
        }
    };
    if (!v2_path.empty())
        walk(v2_path, [&](const std::string& p) {
            std::stringstream in(first_line(root + p + "/cpu.max"));
            std::string quota;
            double period = 0;
            if (in >> quota >> period && quota != "max") take(std::atof(quota.c_str()), period);
        });
    if (!v1_path.empty())
        for (const char* mount : {"/cpu", "/cpu,cpuacct"})
            walk(v1_path, [&](const std::string& p) {
                const std::string q = first_line(root + mount + p + "/cpu.cfs_quota_us");
                const std::string per = first_line(root + mount + p + "/cpu.cfs_period_us");
                if (!q.empty() && !per.empty()) take(std::atof(q.c_str()), std::atof(per.c_str()));
            });
    return limit;
#else
    (void)proc_cgroup;
    (void)root;
    return 0.0;
#endif
}

int ThreadPool::usable_cpus() {
    const unsigned hw = std::thread::hardware_concurrency();
    int n = hw == 0 ? 1 : static_cast<int>(hw);
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) n = CPU_COUNT(&set);
    const double limit = cgroup_cpu_limit("/proc/self/cgroup", "/sys/fs/cgroup");
    if (limit > 0) n = std::min(n, std::max(1, static_cast<int>(std::ceil(limit - 1e-9))));
#endif
    return n;
}

int ThreadPool::default_threads() {
    if (const char* env = std::getenv("BITNET_NUM_THREADS")) {
        char* end = nullptr;
        const long v = std::strtol(env, &end, 10);
        if (end == env || *end != '\0' || v < 1 || v > 1024)
            throw Error(ErrorCode::INVALID, std::string("BITNET_NUM_THREADS='") + env +
                                                "' is not a thread count in 1..1024; unset it or fix it");
        return static_cast<int>(v);
    }
    return usable_cpus();
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
    if (n_threads < 1 || n_threads > 1024)
        throw Error(ErrorCode::INVALID, "n_threads must be in 1..1024, got " + std::to_string(n_threads));
    oversubscribed_ = n_threads > usable_cpus();
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
        // Spin briefly (about 2.6 ms) before sleeping: calls come in quick succession during a
        // forward pass and a futex wake-up costs more than the work of a small matmul. The
        // spin yields after its first microseconds (relax()). Decode of a 700M-shaped model on
        // 2 CPUs (Zen 4), against 20000 PAUSEs (0.5 ms): 3 threads 46 -> 9.7 ms a token, 4
        // threads 74 -> 9.4; two processes of 2 threads each 50 -> 14-24 ms (1000 steps, 0.5
        // ms: 19-20); one process of 2 threads 8-10 ms either way (paired runs, 2B-4T shape
        // too: within 1%).
        for (int spin = 0; spin < 4000 && generation_.load(std::memory_order_acquire) == seen; ++spin) relax(spin);
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
    // woken again costs far more than the wait (tens of microseconds under a hypervisor); about
    // 0.1 ms, PAUSE then yields (relax()).
    for (int spin = 0; spin < 350 && busy_workers_.load(std::memory_order_acquire) != 0; ++spin) relax(spin);
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
