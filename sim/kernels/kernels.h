// kernels.h: ternary x int8 matrix kernels of the card simulator.
//
// The card's weight memory holds each matrix in the canonical slot layout below. A kernel
// may keep a private repacked copy (prepared once at load) for speed, but it must produce
// exactly the integer results of the scalar reference (ref.cpp), which is the specification.
//
// Canonical slot layout (also docs/DEVICE_ABI.md):
//   an N x K matrix (N output rows, K inputs), row-major; each row is ceil(K/4) bytes of
//   2-bit codes c = t + 1 in {0, 1, 2} (3 is never stored), element k of a row in byte k/4 at
//   bits 2*(k%4)+1 : 2*(k%4) (low bits first), padded with code 1 (t = 0) up to row_bytes,
//   which is ceil(K/4) rounded up to a multiple of 32 bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bitnet {
namespace sim {

constexpr int64_t kRowAlign = 32;

inline int64_t slot_row_bytes(int64_t k) { return ((k + 3) / 4 + kRowAlign - 1) / kRowAlign * kRowAlign; }

// One weight slot: a packed ternary matrix and its scale beta (W = t * beta).
struct TernarySlot {
    int64_t n = 0;                  // output rows
    int64_t k = 0;                  // inputs per row
    int64_t row_bytes = 0;          // slot_row_bytes(k)
    float scale = 0.0f;             // beta
    std::vector<uint8_t> packed;    // n * row_bytes bytes, canonical layout
    std::shared_ptr<void> repacked; // kernel-private layout (owned by the kernel that made it)
    std::string repacked_by;        // name of that kernel

    int8_t get(int64_t row, int64_t col) const {
        const uint8_t byte = packed[static_cast<size_t>(row * row_bytes + col / 4)];
        return static_cast<int8_t>(((byte >> (2 * (col % 4))) & 3) - 1);
    }
};

// Pack t (N x K, row-major, values in {-1,0,1}) into a slot.
void pack_slot(const int8_t* t, int64_t n, int64_t k, float scale, TernarySlot& slot);

// A kernel implementation. All functions compute, for rows j in [j0, j1) of the slot and
// every activation row b in [0, B):
//     acc[b * ldacc + j] = sum_{i<K} q[b * K + i] * t[j, i]      (exact int32)
struct KernelTable {
    const char* name;
    // Build the kernel's private layout from the canonical one (may be null: uses canonical).
    void (*prepare)(TernarySlot& slot);
    void (*gemm)(const TernarySlot& slot, const int8_t* q, int64_t B, int32_t* acc, int64_t ldacc,
                 int64_t j0, int64_t j1);
};

const KernelTable& ref_kernels();
// The kernel table for this process: $BITNET_KERNEL (ref|avx2|avx512|neon) if set and
// supported by the CPU, else the best one the CPU supports. Throws Error(INVALID) for an
// unknown or unsupported $BITNET_KERNEL.
const KernelTable& select_kernels();
// Names of the kernels this CPU can run, best last.
std::vector<std::string> available_kernels();

}  // namespace sim
}  // namespace bitnet
