// kernels.h: ternary x int8 matrix kernels of the card simulator.
//
// The card's weight memory holds each matrix in the slot layout below, which every kernel
// reads directly (no private copies: the card has one weight memory). The scalar reference
// (ref.cpp) is the specification; every SIMD kernel must produce exactly its int32 results.
//
// Slot layout (docs/DEVICE_ABI.md "Weight slot layout"):
//   an N x K matrix (N output rows, K inputs) is stored row after row; each row is padded to
//   kpad = ceil(K / 64) * 64 elements and cut into groups of 64 elements; a group is 16 bytes,
//   and byte m (0..15) of group g holds the 2-bit codes c = t + 1 of elements
//   64g + m, 64g + m + 16, 64g + m + 32, 64g + m + 48 at bits 1:0, 3:2, 5:4, 7:6.
//   Padding elements hold code 1 (t = 0). A row is kpad / 4 bytes.
// The layout lets a SIMD kernel expand 16 bytes into 64 codes with one broadcast, one
// variable shift and one mask, with activations in their natural order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bitnet {
namespace sim {

// Memory for weight slots and other per-token streams (slot_memory.cpp): carved from 2 MiB-
// aligned chunks advised for transparent huge pages (the decode GEMV's ternary pass: 14% less
// time than on 4 KiB pages).
void* slot_memory_allocate(std::size_t bytes);
void slot_memory_free(void* p, std::size_t bytes) noexcept;

// Per-thread scratch memory for a kernel call: 64-byte aligned, at least `bytes` long, kept
// (grown when a call needs more) until the thread ends; one buffer per thread, so a kernel
// must not hold it across a call into another kernel. Throws std::bad_alloc. (In
// slot_memory.cpp, built without ISA flags: ISA files instantiate no standard-library code.)
void* kernel_scratch(std::size_t bytes);

template <class T>
struct SlotAllocator {
    using value_type = T;
    SlotAllocator() = default;
    template <class U>
    SlotAllocator(const SlotAllocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return static_cast<T*>(slot_memory_allocate(n * sizeof(T))); }
    void deallocate(T* p, std::size_t n) noexcept { slot_memory_free(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const SlotAllocator<U>&) const noexcept { return true; }
    template <class U>
    bool operator!=(const SlotAllocator<U>&) const noexcept { return false; }
};

constexpr int64_t kGroup = 64;   // elements per 16-byte group

inline int64_t slot_k_padded(int64_t k) { return (k + kGroup - 1) / kGroup * kGroup; }
inline int64_t slot_row_bytes(int64_t k) { return slot_k_padded(k) / 4; }

// One weight slot: a packed ternary matrix and its scale beta (W = t * beta).
struct TernarySlot {
    int64_t n = 0;                  // output rows
    int64_t k = 0;                  // inputs per row
    int64_t row_bytes = 0;          // slot_row_bytes(k)
    float scale = 0.0f;             // beta
    std::vector<uint8_t, SlotAllocator<uint8_t>> packed;   // n * row_bytes bytes, slot layout

    // Code c = t + 1 of element (row, col).
    int get_code(int64_t row, int64_t col) const {
        const int64_t g = col / kGroup, e = col % kGroup;
        const uint8_t byte = packed[static_cast<size_t>(row * row_bytes + g * 16 + e % 16)];
        return (byte >> (2 * (e / 16))) & 3;
    }
    int8_t get(int64_t row, int64_t col) const { return static_cast<int8_t>(get_code(row, col) - 1); }
};

// Pack t (N x K, row-major, values in {-1,0,1}) into a slot.
void pack_slot(const int8_t* t, int64_t n, int64_t k, float scale, TernarySlot& slot);

// A batch of activation rows as the engine receives them: B rows of K int8 values, row b at
// q + b * ldq, each zero-padded up to slot_k_padded(K) (ldq >= that), and each row's sum
// qsum[b] = sum_k q[b][k] (the SIMD kernels multiply codes c = t + 1 and subtract it).
struct ActBatch {
    const int8_t* q = nullptr;
    int64_t B = 0;
    int64_t K = 0;
    int64_t ldq = 0;
    const int32_t* qsum = nullptr;
    // Kernel-specific re-arrangement of q made once per command by the kernel's prepare_act
    // (null if the kernel has none).
    const void* prepared = nullptr;
};

// A kernel computes, for rows j in [j0, j1) of the slot and every activation row b:
//     acc[b * ldacc + j] = sum_{k<K} q[b][k] * t[j][k]      (exact int32)
struct KernelTable {
    const char* name;
    void (*gemm)(const TernarySlot& slot, const ActBatch& act, int32_t* acc, int64_t ldacc, int64_t j0, int64_t j1);
    // Host-side helper the runtime uses for the output head: dot products of fp16 rows with
    // nx fp32 vectors (a decode batch shares each row read):
    //     out[w * ldo + r] = sum_i fp16(rows[r * ld + i]) * x[w * ldx + i]
    // for r in [0, n_rows), w in [0, nx), each in the fixed order of docs/NUMERICS.md.
    void (*dot_f16)(const uint16_t* rows, int64_t ld, int64_t n_rows, const float* x, int64_t ldx, int64_t nx,
                    int64_t n, float* out, int64_t ldo);
    // fp32 dot products in the same fixed order (attention scores: key rows against the query
    // heads that share them):
    //     out[w * ldo + r] = sum_i rows[r * ld + i] * x[w * ldx + i]
    void (*dot_f32)(const float* rows, int64_t ld, int64_t n_rows, const float* x, int64_t ldx, int64_t nx, int64_t n,
                    float* out, int64_t ldo);
    // Exact int8 dot products (the fast output head's scoring pass) of rows with nx vectors
    // (a decode batch shares each row read), rows and x both in [-127, 127] (-128 is excluded:
    // the AVX2 kernel's sign trick cannot negate it):
    //     out[w * ldo + r] = sum_i rows[r * ld + i] * x[w * ldx + i]
    void (*dot_i8)(const int8_t* rows, int64_t ld, int64_t n_rows, const int8_t* x, int64_t ldx, int64_t nx,
                   int64_t n, int32_t* out, int64_t ldo);
    // Optional: re-arrange a command's activations once before gemm runs on many row blocks
    // (e.g. the AMX tile layout). prepared_size(act) is the bytes needed (0: not needed for
    // this batch); prepare_act fills a buffer of that size (64-byte aligned), which the caller
    // then stores in ActBatch::prepared. (The caller owns the buffer: ISA files instantiate
    // no standard-library templates.)
    size_t (*prepared_size)(const ActBatch& act);
    void (*prepare_act)(const ActBatch& act, uint8_t* buf);
    // Streams n bytes (n a multiple of 64, p 64-byte aligned) with the widest loads of this ISA
    // and returns a checksum: the machine's read bandwidth as decode sees it
    // (benchmarks/bandwidth.py, `bitnet bench`).
    uint64_t (*read_sum)(const uint8_t* p, int64_t n);
    // How many vectors dot_i8 scores in one pass over the rows for about the cost of one (the
    // AMX kernel's tiles hold 16; AVX-512 takes 2 at +7% from memory; the other vector
    // kernels' cost grows with each vector). The fast head spends spare vectors on a second
    // int8 code of each hidden state (runtime.cpp).
    int64_t dot_i8_free_vectors = 1;
    // The engine's activation quantisation (docs/NUMERICS.md "Activation quantisation"):
    // amax = max |x_i| over the non-NaN x_i, s = 127 / max(amax, 1e-5), and
    // q[i] = clamp(round_half_even(x[i] * s), -128, 127) with NaN -> -128; returns s.
    // Every decode step quantises each row four times a layer, so it has SIMD versions too.
    float (*quantize_i8)(const float* x, int64_t n, int8_t* q) = nullptr;
};

// The scalar specification of KernelTable::quantize_i8 (ref.cpp).
float ref_quantize_i8(const float* x, int64_t n, int8_t* q);

const KernelTable& ref_kernels();
#if defined(__x86_64__) || defined(_M_X64)
const KernelTable& avx2_kernels();     // avx2.cpp (compiled with -mavx2 -mfma -mf16c)
const KernelTable& avx512_kernels();   // avx512.cpp (AVX-512 F/BW/VL/VNNI)
const KernelTable& amx_kernels();      // amx.cpp (AMX-INT8 tiles for batches; AVX-512 otherwise)
bool amx_available();                  // CPU has AMX-INT8 and the OS granted tile state
bool cpu_has_amx_int8();
#endif
#if defined(__aarch64__)
const KernelTable& neon_kernels();     // neon.cpp
#endif

// The kernel table for this process: $BITNET_KERNEL (ref|avx2|avx512|neon|auto) if set and
// supported by the CPU, else the best one the CPU supports. Throws Error(INVALID) for an
// unknown or unsupported $BITNET_KERNEL.
const KernelTable& select_kernels();
// Looks a kernel up by name; throws Error(INVALID) if this CPU/build cannot run it.
const KernelTable& kernels_by_name(const std::string& name);
// Names of the kernels this CPU can run, best last.
std::vector<std::string> available_kernels();

}  // namespace sim
}  // namespace bitnet
