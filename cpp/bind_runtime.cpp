// bind_runtime.cpp: Python access to the device and runtime.
#include "bindings.h"

namespace bitnet {
void bind_runtime(pybind11::module_& m) {}
}  // namespace bitnet
