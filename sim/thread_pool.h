// thread_pool.h: a persistent pool of worker threads (created once, reused by every call).
//
// parallel_for(n, fn) runs fn(begin, end) over [0, n) cut into chunks; the calling thread
// works too, and the call returns when every chunk is done. Calls are serialised (one
// parallel_for at a time per pool); a pool of size 1 runs everything on the caller.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bitnet {

// One polite spin-wait step (PAUSE on x86, YIELD on ARM).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Runs fn(begin, end) on chunks of [0, n) of at most `grain` items (>= 1), spread over
    // the pool. The first exception thrown by fn is rethrown on the caller after all chunks
    // have finished or been skipped.
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

    // The same over chunks of decreasing size (guided scheduling): each chunk is 1/(2 * size())
    // of the items still unassigned, rounded up to a multiple of `quantum` and at least
    // `min_grain` (the last one may be shorter). Long streams first, then short chunks, so
    // the threads finish together without a start-up cost per small chunk (a memory-bound
    // kernel's prefetch restarts at every chunk). Chunk starts are multiples of `quantum`.
    void parallel_for_guided(int64_t n, int64_t min_grain, int64_t quantum,
                             const std::function<void(int64_t, int64_t)>& fn);

    // Default thread count: $BITNET_NUM_THREADS, else usable_cpus().
    static int default_threads();
    // CPUs this process can use: its affinity mask (taskset, cpusets), capped by its cgroup's
    // CPU quota rounded up (docker --cpus, Kubernetes CPU limits); the online CPUs elsewhere.
    static int usable_cpus();
    // The CPU quota (in CPUs) of the cgroup named in `proc_cgroup` (a /proc/<pid>/cgroup file),
    // the smallest along its path to the root, read under `root` (where cgroupfs is mounted);
    // 0 if there is none or it cannot be read. Linux only (0 elsewhere).
    static double cgroup_cpu_limit(const std::string& proc_cgroup, const std::string& root);

private:
    void worker_loop();
    void run_chunks();
    // Step `spin` of a spin-wait: PAUSE for the first kPauseSpins steps (the next call or the
    // last chunk usually comes within microseconds), then a yield to the OS (~0.7 us when no
    // other thread wants the CPU), from the start when the pool has more threads than CPUs.
    // Yielding is what keeps two processes that share the CPUs fast: spinning on PAUSE, a
    // waiting thread kept the CPU from the other process's threads for its whole time slice.
    void relax(int spin) const {
        if (oversubscribed_ || spin >= kPauseSpins) std::this_thread::yield();
        else cpu_relax();
    }
    static constexpr int kPauseSpins = 200;   // ~5 us of PAUSE (26 ns each on Zen 4)

    int n_threads_;
    bool oversubscribed_ = false;
    std::vector<std::thread> workers_;
    std::mutex call_mutex_;   // one parallel_for at a time

    std::mutex mu_;
    std::condition_variable start_cv_, done_cv_;
    std::atomic<uint64_t> generation_{0};
    bool stopping_ = false;
    std::atomic<int> busy_workers_{0};

    // The current call.
    const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
    int64_t n_ = 0, grain_ = 1;
    std::atomic<int64_t> next_{0};
    std::exception_ptr error_;
    std::mutex error_mu_;
};

}  // namespace bitnet
