// bind_gguf.cpp: Python access to the GGUF reader (inspection, dequantization).
#include "bindings.h"

namespace bitnet {
void bind_gguf(pybind11::module_& m) {}
}  // namespace bitnet
