// ref.cpp: the scalar reference kernel (the specification every SIMD kernel must match
// bit for bit). Readable first: unpack one row of codes, then a plain int32 dot product
// against each activation row.
#include <vector>

#include "kernels.h"

namespace bitnet {
namespace sim {

void pack_slot(const int8_t* t, int64_t n, int64_t k, float scale, TernarySlot& slot) {
    slot.n = n;
    slot.k = k;
    slot.row_bytes = slot_row_bytes(k);
    slot.scale = scale;
    slot.repacked.reset();
    slot.repacked_by.clear();
    // Padding codes are 1 (t = 0): every pad byte is 0b01010101.
    slot.packed.assign(static_cast<size_t>(n * slot.row_bytes), 0x55);
    for (int64_t r = 0; r < n; ++r) {
        uint8_t* row = slot.packed.data() + r * slot.row_bytes;
        const int8_t* src = t + r * k;
        for (int64_t c = 0; c < k; ++c) {
            const int shift = 2 * static_cast<int>(c % 4);
            const uint8_t code = static_cast<uint8_t>(src[c] + 1);
            row[c / 4] = static_cast<uint8_t>((row[c / 4] & ~(3u << shift)) | (code << shift));
        }
    }
}

namespace {

void ref_gemm(const TernarySlot& slot, const int8_t* q, int64_t B, int32_t* acc, int64_t ldacc,
              int64_t j0, int64_t j1) {
    const int64_t K = slot.k;
    std::vector<int8_t> row(static_cast<size_t>(K));
    for (int64_t j = j0; j < j1; ++j) {
        const uint8_t* packed = slot.packed.data() + j * slot.row_bytes;
        for (int64_t i = 0; i < K; ++i) {
            row[i] = static_cast<int8_t>(((packed[i / 4] >> (2 * (i % 4))) & 3) - 1);
        }
        for (int64_t b = 0; b < B; ++b) {
            const int8_t* x = q + b * K;
            int32_t sum = 0;
            for (int64_t i = 0; i < K; ++i) sum += static_cast<int32_t>(x[i]) * row[i];
            acc[b * ldacc + j] = sum;
        }
    }
}

}  // namespace

const KernelTable& ref_kernels() {
    static const KernelTable table{"ref", nullptr, ref_gemm};
    return table;
}

}  // namespace sim
}  // namespace bitnet
