// slot_memory.cpp: the simulated card's weight memory, as host memory that streams well.
//
// Decode reads every weight slot once per token, eight rows at a time (tile_masked<8, 1>),
// so the GEMV touches a new 4 KiB page every few hundred bytes of each row stream. On 4 KiB
// pages the ternary pass of a 2B-4T-shaped model took 27.0 ms per token, on transparent huge
// pages 23.2 (A/B, 2 threads). The output head and the fast head's int8 copy live here too.
// Slots are small (0.4-4.4 MB on 2B-4T, 210 of them), so giving each its own 2 MiB-rounded
// block would waste ~12% of the model; instead slots are carved one after another out of
// 64 MiB chunks that are 2 MiB aligned and advised MADV_HUGEPAGE before they are first touched.
//
// Freeing: a chunk is unmapped when its last slot is freed; a hole in a live chunk is given
// back to the OS (MADV_DONTNEED on its whole pages) but not reused, which is enough for the
// card's use (a model's slots are loaded together and freed together; replacing one slot
// leaves one hole). Blocks larger than half a chunk get a mapping of their own.
// Without mmap (not Linux/macOS), and under AddressSanitizer, the blocks come from aligned_alloc.
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include "kernels.h"

// AddressSanitizer checks bounds only on its own heap: sanitizer builds take aligned_alloc.
#if defined(__SANITIZE_ADDRESS__)
#define BITNET_SLOT_NO_MMAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BITNET_SLOT_NO_MMAP 1
#endif
#endif

#if (defined(__linux__) || defined(__APPLE__)) && !defined(BITNET_SLOT_NO_MMAP)
#include <sys/mman.h>
#include <unistd.h>
#define BITNET_SLOT_MMAP 1
#endif

namespace bitnet {
namespace sim {

namespace {

constexpr std::size_t kHuge = std::size_t(2) << 20;     // transparent huge page size (x86-64, arm64 4K granule)
constexpr std::size_t kChunk = std::size_t(64) << 20;   // carved into slots
constexpr std::size_t kAlign = 64;                      // slot start alignment (a cache line)

std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

#if defined(BITNET_SLOT_MMAP)

struct Chunk {
    uint8_t* base = nullptr;
    std::size_t size = 0;   // mapped bytes (a multiple of kHuge)
    std::size_t used = 0;   // bump pointer
    std::size_t live = 0;   // bytes of blocks not yet freed
};

// A 2 MiB-aligned anonymous mapping of `size` bytes (a multiple of kHuge), huge pages advised.
uint8_t* map_aligned(std::size_t size) {
    const std::size_t span = size + kHuge;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = round_up(start, kHuge);
    if (aligned > start) munmap(raw, aligned - start);
    const uintptr_t end = start + span, keep_end = aligned + size;
    if (end > keep_end) munmap(reinterpret_cast<void*>(keep_end), end - keep_end);
#if defined(MADV_HUGEPAGE)
    (void)madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);   // a hint: may be refused
#endif
    return reinterpret_cast<uint8_t*>(aligned);
}

class SlotHeap {
public:
    void* allocate(std::size_t bytes) {
        const std::size_t need = round_up(bytes == 0 ? 1 : bytes, kAlign);
        std::lock_guard<std::mutex> lock(mu_);
        Chunk* c = nullptr;
        if (need > kChunk / 2) {   // a block of its own
            chunks_.push_back(Chunk{map_aligned(round_up(need, kHuge)), round_up(need, kHuge), 0, 0});
            c = &chunks_.back();
        } else {
            for (Chunk& ch : chunks_)
                if (ch.size == kChunk && ch.size - ch.used >= need) c = &ch;   // the newest that fits
            if (!c) {
                chunks_.push_back(Chunk{map_aligned(kChunk), kChunk, 0, 0});
                c = &chunks_.back();
            }
        }
        uint8_t* p = c->base + c->used;
        c->used += need;
        c->live += need;
        return p;
    }

    void free(void* ptr, std::size_t bytes) noexcept {
        if (!ptr) return;
        const std::size_t need = round_up(bytes == 0 ? 1 : bytes, kAlign);
        uint8_t* p = static_cast<uint8_t*>(ptr);
        std::lock_guard<std::mutex> lock(mu_);
        for (std::size_t i = 0; i < chunks_.size(); ++i) {
            Chunk& c = chunks_[i];
            if (p < c.base || p >= c.base + c.size) continue;
            c.live -= need;
            if (c.live == 0) {
                munmap(c.base, c.size);
                chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(i));
            } else {
                // Give the hole's whole pages back (the block is never reused in place).
                const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
                const uintptr_t lo = round_up(reinterpret_cast<uintptr_t>(p), page);
                const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + need) / page * page;
                if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
            }
            return;
        }
    }

private:
    std::mutex mu_;
    std::vector<Chunk> chunks_;
};

SlotHeap& heap() {
    static SlotHeap* h = new SlotHeap;   // never destroyed: slots may outlive static destructors
    return *h;
}

#endif

}  // namespace

void* slot_memory_allocate(std::size_t bytes) {
#if defined(BITNET_SLOT_MMAP)
    return heap().allocate(bytes);
#else
    void* p = std::aligned_alloc(kAlign, round_up(bytes == 0 ? 1 : bytes, kAlign));
    if (!p) throw std::bad_alloc();
    return p;
#endif
}

void slot_memory_free(void* p, std::size_t bytes) noexcept {
#if defined(BITNET_SLOT_MMAP)
    heap().free(p, bytes);
#else
    (void)bytes;
    std::free(p);
#endif
}

void* kernel_scratch(std::size_t bytes) {
    struct Scratch {
        void* p = nullptr;
        std::size_t n = 0;
        ~Scratch() { std::free(p); }
    };
    thread_local Scratch s;
    if (s.n < bytes) {
        const std::size_t n = round_up(bytes, 64);
        void* p = std::aligned_alloc(64, n);
        if (!p) throw std::bad_alloc();
        std::free(s.p);
        s.p = p;
        s.n = n;
    }
    return s.p;
}

}  // namespace sim
}  // namespace bitnet
