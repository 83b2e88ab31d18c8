// bind_gguf.cpp: Python access to the GGUF reader (inspection, dequantization).
//
// bitnet._core.GGUFFile is a read-only view of a validated, memory-mapped GGUF file. Every
// array it returns is a fresh, Python-owned copy, so nothing refers to the mapping after the
// object is gone. Parsing and decoding run with the GIL released.
#include <memory>
#include <string>
#include <vector>

#include <pybind11/numpy.h>

#include "bindings.h"
#include "gguf.h"
#include "quant.h"

namespace py = pybind11;

namespace bitnet {
namespace {

// Strings from the file need not be UTF-8; undecodable bytes become surrogates, so
// s.encode("utf-8", "surrogateescape") gives the original bytes back.
py::str to_pystr(const std::string& s) {
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogateescape");
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
}

// A name given by Python (str, or bytes) as the raw bytes used in the file.
std::string from_pyname(const py::handle& h) {
    if (py::isinstance<py::bytes>(h)) return h.cast<std::string>();
    if (!py::isinstance<py::str>(h)) throw py::type_error("tensor name must be str or bytes");
    py::bytes b = h.attr("encode")("utf-8", "surrogateescape");
    return b.cast<std::string>();
}

bool is_signed(GGUFType t) {
    return t == GGUFType::INT8 || t == GGUFType::INT16 || t == GGUFType::INT32 || t == GGUFType::INT64;
}

py::object value_to_py(const GGUFValue& v) {
    switch (v.type) {
        case GGUFType::STRING: return to_pystr(v.s);
        case GGUFType::BOOL: return py::bool_(v.b);
        case GGUFType::FLOAT32: case GGUFType::FLOAT64: return py::float_(v.f);
        case GGUFType::ARRAY: break;
        default:
            if (is_signed(v.type)) return py::int_(v.i);
            return py::int_(v.u);
    }
    const size_t n = static_cast<size_t>(v.count);
    py::list out(n);
    switch (v.elem_type) {
        case GGUFType::STRING:
            for (size_t k = 0; k < n; ++k) out[k] = to_pystr(v.strs[k]);
            break;
        case GGUFType::FLOAT32: case GGUFType::FLOAT64:
            for (size_t k = 0; k < n; ++k) out[k] = py::float_(v.floats[k]);
            break;
        case GGUFType::BOOL:
            for (size_t k = 0; k < n; ++k) out[k] = py::bool_(v.ints[k] != 0);
            break;
        case GGUFType::UINT64:
            for (size_t k = 0; k < n; ++k) out[k] = py::int_(static_cast<uint64_t>(v.ints[k]));
            break;
        case GGUFType::ARRAY:
            // Nested arrays are validated but their contents are not kept (no model uses them).
            for (size_t k = 0; k < n; ++k) out[k] = py::none();
            break;
        default:
            for (size_t k = 0; k < n; ++k) out[k] = py::int_(v.ints[k]);
            break;
    }
    return std::move(out);
}

const GGUFTensor& lookup(const GGUFFile& f, const py::handle& name) {
    const std::string key = from_pyname(name);
    const GGUFTensor* t = f.tensor(key);
    if (!t) throw py::key_error("no tensor named " + quote_name(key) + " in " + printable_text(f.path()));
    return *t;
}

// PyTorch order: ggml's ne reversed.
std::vector<py::ssize_t> torch_shape(const GGUFTensor& t) {
    std::vector<py::ssize_t> shape;
    for (int d = t.n_dims - 1; d >= 0; --d) shape.push_back(static_cast<py::ssize_t>(t.ne[d]));
    return shape;
}

// Hands a heap vector to NumPy without copying; the capsule frees it with the array.
template <typename T>
py::array_t<T> adopt(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
    auto* owned = new std::vector<T>(std::move(v));
    py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>(shape, owned->data(), free_when_done);
}

const char* dialect_name(Dialect d) { return d == Dialect::BITNET_CPP ? "bitnet.cpp" : "upstream"; }

}  // namespace

void bind_gguf(py::module_& m) {
    py::class_<GGUFFile>(m, "GGUFFile", R"doc(
A validated, memory-mapped GGUF v2/v3 model file (read-only).

Parameters
----------
path : str or os.PathLike
    The file to open. Every header field, key, tensor shape, type, offset and size is
    validated on open (docs/FORMAT.md, "Reading GGUF").

Raises
------
bitnet.errors.BitNetFileNotFoundError
    The file does not exist.
bitnet.errors.BitNetFormatError
    The file is malformed or uses an unsupported feature; the message names the field.
)doc")
        .def(py::init([](const py::object& path) {
                 py::bytes raw = py::module_::import("os").attr("fsencode")(path);
                 const std::string p = raw.cast<std::string>();
                 py::gil_scoped_release release;
                 return std::make_unique<GGUFFile>(p);
             }),
             py::arg("path"))
        .def_property_readonly("path", [](const GGUFFile& f) {
            return py::module_::import("os").attr("fsdecode")(py::bytes(f.path()));
        })
        .def_property_readonly("version", &GGUFFile::version)
        .def_property_readonly("architecture", [](const GGUFFile& f) { return to_pystr(f.architecture()); })
        .def_property_readonly("dialect", [](const GGUFFile& f) { return dialect_name(f.dialect()); },
                               "'upstream' (ggml/llama.cpp type ids) or 'bitnet.cpp' (the fork's ids).")
        .def_property_readonly("alignment", &GGUFFile::alignment)
        .def_property_readonly("data_offset", &GGUFFile::data_offset)
        .def_property_readonly("file_size", &GGUFFile::file_size)
        .def("metadata", [](const GGUFFile& f) {
            py::dict out;
            for (const auto& kv : f.metadata()) out[to_pystr(kv.first)] = value_to_py(kv.second);
            return out;
        }, R"doc(
All metadata as a dict: integers, floats, bools and strings as Python scalars; arrays as
lists (nested arrays, which no model uses, as lists of None).
)doc")
        .def("tensors", [](const GGUFFile& f) {
            py::list out;
            for (const GGUFTensor& t : f.tensors()) {
                py::dict d;
                d["name"] = to_pystr(t.name);
                d["type"] = tensor_type_name(t.type);
                d["type_id"] = t.type_id;
                const std::vector<py::ssize_t> shape = torch_shape(t);
                py::tuple pshape(shape.size());
                for (size_t k = 0; k < shape.size(); ++k) pshape[k] = py::int_(shape[k]);
                d["shape"] = pshape;
                d["offset"] = t.offset;
                d["nbytes"] = t.nbytes;
                out.append(d);
            }
            return out;
        }, R"doc(
Tensor descriptions in file order: dicts with name, type (e.g. "TQ2_0"), type_id (the raw
id in the file), shape (PyTorch order, i.e. ggml's ne reversed), offset (relative to
data_offset) and nbytes.
)doc")
        .def("dequantize", [](const GGUFFile& f, const py::object& name) {
            const GGUFTensor& t = lookup(f, name);
            const std::vector<py::ssize_t> shape = torch_shape(t);
            std::vector<float> out(static_cast<size_t>(t.n_elements));
            {
                py::gil_scoped_release release;
                if (t.type == TensorType::I2_S) {
                    // Not a row type: decode the packed matrix and expand t * beta.
                    const TernaryMatrix tm = decode_ternary(t);
                    for (size_t k = 0; k < out.size(); ++k) out[k] = static_cast<float>(tm.t[k]) * tm.scale;
                } else {
                    const int64_t ne0 = t.ne[0];
                    const int64_t rows = t.n_elements / ne0;
                    const size_t row_bytes = tensor_nbytes(t.type, ne0, ne0, "tensor " + quote_name(t.name));
                    for (int64_t r = 0; r < rows; ++r) {
                        dequantize_row(t.type, t.data + static_cast<size_t>(r) * row_bytes,
                                       out.data() + r * ne0, ne0);
                    }
                }
            }
            return adopt(std::move(out), shape);
        }, py::arg("name"), R"doc(
The tensor as a float32 array in PyTorch shape (bit-exact with ggml's dequantizers). I2_S
tensors (2-D only) are expanded to t * beta.
)doc")
        .def("ternary", [](const GGUFFile& f, const py::object& name) {
            const GGUFTensor& t = lookup(f, name);
            TernaryMatrix tm;
            {
                py::gil_scoped_release release;
                tm = decode_ternary(t);
            }
            std::vector<py::ssize_t> shape = {static_cast<py::ssize_t>(tm.rows), static_cast<py::ssize_t>(tm.cols)};
            py::array_t<int8_t> codes = adopt(std::move(tm.t), shape);
            return py::make_tuple(codes, tm.scale, tm.ternarised);
        }, py::arg("name"), R"doc(
Decode a 2-D weight into BitNet b1.58 form: (t, scale, ternarised) with t an int8 array
[rows, cols] of codes in {-1, 0, +1} and W = t * scale. Float tensors that are not already
ternary are ternarised with absmean (ternarised is then True).
)doc")
        // The C++ typed getters, for tests (the runtime reads hyper-parameters through them).
        .def("_get_uint", [](const GGUFFile& f, const std::string& key, const py::object& def) {
            return def.is_none() ? f.get_uint(key) : f.get_uint(key, def.cast<uint64_t>());
        }, py::arg("key"), py::arg("default") = py::none())
        .def("_get_float", [](const GGUFFile& f, const std::string& key, const py::object& def) {
            return def.is_none() ? f.get_float(key) : f.get_float(key, def.cast<double>());
        }, py::arg("key"), py::arg("default") = py::none())
        .def("_get_string", [](const GGUFFile& f, const std::string& key, const py::object& def) {
            return to_pystr(def.is_none() ? f.get_string(key) : f.get_string(key, def.cast<std::string>()));
        }, py::arg("key"), py::arg("default") = py::none())
        .def("_get_bool", [](const GGUFFile& f, const std::string& key, bool def) { return f.get_bool(key, def); },
             py::arg("key"), py::arg("default"))
        .def("__repr__", [](const GGUFFile& f) {
            return "<GGUFFile " + quote_name(f.path()) + " v" + std::to_string(f.version()) + " arch=" +
                   printable_text(f.architecture()) + " (" + dialect_name(f.dialect()) + "), " +
                   std::to_string(f.tensors().size()) + " tensors>";
        });

    // Test hooks for the scalar conversions (element-wise over arrays).
    m.def("_fp16_to_fp32", [](py::array_t<uint16_t, py::array::c_style | py::array::forcecast> a) {
        std::vector<float> out(static_cast<size_t>(a.size()));
        const uint16_t* src = a.data();
        for (size_t k = 0; k < out.size(); ++k) out[k] = fp16_to_fp32(src[k]);
        return adopt(std::move(out), {static_cast<py::ssize_t>(a.size())});
    });
    m.def("_bf16_to_fp32", [](py::array_t<uint16_t, py::array::c_style | py::array::forcecast> a) {
        std::vector<float> out(static_cast<size_t>(a.size()));
        const uint16_t* src = a.data();
        for (size_t k = 0; k < out.size(); ++k) out[k] = bf16_to_fp32(src[k]);
        return adopt(std::move(out), {static_cast<py::ssize_t>(a.size())});
    });
    m.def("_fp32_to_fp16", [](py::array_t<float, py::array::c_style | py::array::forcecast> a) {
        std::vector<uint16_t> out(static_cast<size_t>(a.size()));
        const float* src = a.data();
        for (size_t k = 0; k < out.size(); ++k) out[k] = fp32_to_fp16(src[k]);
        return adopt(std::move(out), {static_cast<py::ssize_t>(a.size())});
    });
    m.def("_ternarise_absmean", [](py::array_t<float, py::array::c_style | py::array::forcecast> a) {
        std::vector<int8_t> t(static_cast<size_t>(a.size()));
        float beta = 0.0f;
        ternarise_absmean(a.data(), static_cast<int64_t>(a.size()), t.data(), &beta);
        return py::make_tuple(adopt(std::move(t), {static_cast<py::ssize_t>(a.size())}), beta);
    });
}

}  // namespace bitnet
