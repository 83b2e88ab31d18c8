// bindings.h: the pieces of the bitnet._core pybind11 module, one function per area.
#pragma once

#include <pybind11/pybind11.h>

namespace bitnet {
void bind_gguf(pybind11::module_& m);      // bind_gguf.cpp: model file inspection
void bind_runtime(pybind11::module_& m);   // bind_runtime.cpp: device, model, jobs
void bind_abi(pybind11::module_& m);       // bind_abi.cpp: device ABI layout, driver emulation
}  // namespace bitnet
