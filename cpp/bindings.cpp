// bindings.cpp: the bitnet._core module. C++ errors (bitnet::Error) become the Python
// exception hierarchy of bitnet/errors.py, chosen by error code; C++ log messages go to the
// Python logger "bitnet".
#include "bindings.h"

#include "error.h"
#include "log.h"

namespace py = pybind11;

namespace bitnet {
namespace {

void raise_python_error(const Error& e) {
    // bitnet.errors builds the right subclass (BitNetError, or one that also derives from
    // ValueError / TimeoutError / FileNotFoundError).
    py::object errors = py::module_::import("bitnet.errors");
    py::object exc = errors.attr("_from_code")(static_cast<int>(e.code()), e.what(), e.card_code());
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
}

}  // namespace
}  // namespace bitnet

PYBIND11_MODULE(_core, m) {
    m.doc() = "bitnet C++ core: GGUF reader, card simulator, BitNet b1.58 runtime";

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const bitnet::Error& e) {
            bitnet::raise_python_error(e);
        }
    });

    m.def("_enable_logging", []() {
        bitnet::set_log_sink([](bitnet::LogLevel level, const std::string& msg) {
            py::gil_scoped_acquire gil;
            try {
                py::module_::import("logging").attr("getLogger")("bitnet").attr("log")(
                    static_cast<int>(level), msg);
            } catch (py::error_already_set& err) {
                err.discard_as_unraisable("bitnet log sink");
            }
        });
    }, "Route C++ log messages to the Python logger 'bitnet'.");
    m.def("_disable_logging", []() { bitnet::set_log_sink(nullptr); });

    py::dict codes;
    for (int c = 0; c >= -12; --c) {
        codes[py::str(bitnet::error_code_name(static_cast<bitnet::ErrorCode>(c)))] = c;
    }
    m.attr("ERROR_CODES") = codes;

    bitnet::bind_gguf(m);
    bitnet::bind_runtime(m);
    bitnet::bind_abi(m);
}
