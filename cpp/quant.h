// quant.h: decoding of tensor data into the forms the runtime and the card use.
//
// Float tensors (embeddings, norms, output heads) are dequantized row by row into fp32.
// Ternary weight tensors are decoded into the canonical form of docs/NUMERICS.md:
// int8 codes t in {-1, 0, +1}, row-major [rows][cols] (PyTorch [out, in]), and one fp32
// scale beta per tensor, so that W = t * beta.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.h"

namespace bitnet {

// Dequantize n consecutive elements starting at a block boundary of `src` (for block types
// n must be a multiple of the block size; I2_S is not a row type and is rejected).
void dequantize_row(TensorType type, const uint8_t* src, float* dst, int64_t n);

// fp16 / bf16 <-> fp32 conversions (portable, bit-exact, round-to-nearest-even on narrowing).
float fp16_to_fp32(uint16_t h);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);

struct TernaryMatrix {
    int64_t rows = 0;            // out features
    int64_t cols = 0;            // in features
    std::vector<int8_t> t;       // rows*cols codes in {-1,0,1}, row-major
    float scale = 0.0f;          // beta: W = t * scale
    bool ternarised = false;     // true if a float master weight was ternarised by absmean
};

// Decode a 2-D ternary-capable tensor (TQ1_0, TQ2_0, I2_S, or F32/F16/BF16 holding t*beta or
// a master weight). Throws Error(FILE) naming the tensor when the data cannot be a BitNet
// ternary matrix (non-finite or negative scales, block scales that disagree, bad codes).
// The result is canonical: scale == 0 exactly when every code is 0. TQ1_0/TQ2_0 blocks whose
// codes are all 0, or whose fp16 scale is 0, do not take part in the one-scale check.
// May log (INFO) when a float master weight is ternarised; safe to call without the GIL.
TernaryMatrix decode_ternary(const GGUFTensor& tensor);

// Absmean ternarisation of a float matrix (REFERENCE.md 1.1): beta = max(mean|W|, 1e-5),
// t = clamp(rint(W / beta), -1, 1). Throws Error(INVALID) on a non-finite weight.
void ternarise_absmean(const float* w, int64_t n, int8_t* t, float* beta);

}  // namespace bitnet
