// bind_abi.cpp: the device ABI seen from Python, for tests and tools.
//
// abi_layout(): sizes and field offsets of every struct of cpp/bitnet_abi.h, the request
// numbers and the constants (tests/test_abi.py checks them against docs/DEVICE_ABI.md).
// _DriverEmu: the emulated card driver with raw syscall access, so tests send exactly the
// bytes a user-space program would (malformed requests included) and read errno back.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <sys/mman.h>

#include <cerrno>
#include <utility>

#include "../sim/driver_emu.h"
#include "../sim/ioctl_script.h"
#include "bindings.h"
#include "bitnet_abi.h"
#include "error.h"

namespace py = pybind11;

namespace bitnet {
namespace {

template <class S>
struct Layout {
    py::dict fields;
    size_t size = sizeof(S);
};

#define BITNET_FIELD(L, S, f) \
    (L).fields[#f] = py::make_tuple(offsetof(S, f), sizeof(std::declval<S&>().f))

py::dict struct_entry(size_t size, const py::dict& fields) {
    py::dict d;
    d["size"] = size;
    d["fields"] = fields;
    return d;
}

py::dict abi_layout() {
    py::dict structs;
    {
        Layout<bitnet_inference_cmd> l;
        BITNET_FIELD(l, bitnet_inference_cmd, input_offset);
        BITNET_FIELD(l, bitnet_inference_cmd, output_offset);
        BITNET_FIELD(l, bitnet_inference_cmd, input_size);
        BITNET_FIELD(l, bitnet_inference_cmd, output_size);
        BITNET_FIELD(l, bitnet_inference_cmd, num_tokens);
        BITNET_FIELD(l, bitnet_inference_cmd, flags);
        structs["bitnet_inference_cmd"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_weight_cmd> l;
        BITNET_FIELD(l, bitnet_weight_cmd, weight_offset);
        BITNET_FIELD(l, bitnet_weight_cmd, layer_id);
        BITNET_FIELD(l, bitnet_weight_cmd, weight_size);
        structs["bitnet_weight_cmd"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_slot_header> l;
        BITNET_FIELD(l, bitnet_slot_header, magic);
        BITNET_FIELD(l, bitnet_slot_header, n);
        BITNET_FIELD(l, bitnet_slot_header, k);
        BITNET_FIELD(l, bitnet_slot_header, scale);
        structs["bitnet_slot_header"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_status> l;
        BITNET_FIELD(l, bitnet_status, state);
        BITNET_FIELD(l, bitnet_status, current_layer);
        BITNET_FIELD(l, bitnet_status, tokens_processed);
        BITNET_FIELD(l, bitnet_status, error_code);
        structs["bitnet_status"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_perf> l;
        BITNET_FIELD(l, bitnet_perf, total_cycles);
        BITNET_FIELD(l, bitnet_perf, dma_cycles);
        BITNET_FIELD(l, bitnet_perf, compute_cycles);
        BITNET_FIELD(l, bitnet_perf, tokens_per_second);
        BITNET_FIELD(l, bitnet_perf, reserved);
        structs["bitnet_perf"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_info> l;
        BITNET_FIELD(l, bitnet_info, abi_major);
        BITNET_FIELD(l, bitnet_info, abi_minor);
        BITNET_FIELD(l, bitnet_info, hw_version);
        BITNET_FIELD(l, bitnet_info, capabilities);
        BITNET_FIELD(l, bitnet_info, mmap_size);
        BITNET_FIELD(l, bitnet_info, input_offset);
        BITNET_FIELD(l, bitnet_info, input_size);
        BITNET_FIELD(l, bitnet_info, output_offset);
        BITNET_FIELD(l, bitnet_info, output_size);
        BITNET_FIELD(l, bitnet_info, weight_offset);
        BITNET_FIELD(l, bitnet_info, weight_size);
        BITNET_FIELD(l, bitnet_info, weight_capacity);
        BITNET_FIELD(l, bitnet_info, max_slots);
        BITNET_FIELD(l, bitnet_info, max_slot_id);
        BITNET_FIELD(l, bitnet_info, max_ops);
        BITNET_FIELD(l, bitnet_info, max_rows);
        BITNET_FIELD(l, bitnet_info, max_k);
        BITNET_FIELD(l, bitnet_info, max_n);
        BITNET_FIELD(l, bitnet_info, clock_hz);
        BITNET_FIELD(l, bitnet_info, lanes);
        BITNET_FIELD(l, bitnet_info, lane_width);
        BITNET_FIELD(l, bitnet_info, ddr_bytes_per_s);
        BITNET_FIELD(l, bitnet_info, dma_bytes_per_s);
        BITNET_FIELD(l, bitnet_info, dma_setup_cycles);
        BITNET_FIELD(l, bitnet_info, pipeline_cycles);
        BITNET_FIELD(l, bitnet_info, dma_align);
        BITNET_FIELD(l, bitnet_info, reserved0);
        BITNET_FIELD(l, bitnet_info, board);
        BITNET_FIELD(l, bitnet_info, engine);
        BITNET_FIELD(l, bitnet_info, reserved);
        structs["bitnet_info"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_load_slot> l;
        BITNET_FIELD(l, bitnet_load_slot, slot);
        BITNET_FIELD(l, bitnet_load_slot, flags);
        BITNET_FIELD(l, bitnet_load_slot, n);
        BITNET_FIELD(l, bitnet_load_slot, k);
        BITNET_FIELD(l, bitnet_load_slot, scale);
        BITNET_FIELD(l, bitnet_load_slot, row_begin);
        BITNET_FIELD(l, bitnet_load_slot, row_count);
        BITNET_FIELD(l, bitnet_load_slot, reserved);
        BITNET_FIELD(l, bitnet_load_slot, src_offset);
        BITNET_FIELD(l, bitnet_load_slot, src_size);
        structs["bitnet_load_slot"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_free_slots> l;
        BITNET_FIELD(l, bitnet_free_slots, first);
        BITNET_FIELD(l, bitnet_free_slots, end);
        BITNET_FIELD(l, bitnet_free_slots, flags);
        BITNET_FIELD(l, bitnet_free_slots, reserved);
        structs["bitnet_free_slots"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_slot_info> l;
        BITNET_FIELD(l, bitnet_slot_info, slot);
        BITNET_FIELD(l, bitnet_slot_info, flags);
        BITNET_FIELD(l, bitnet_slot_info, n);
        BITNET_FIELD(l, bitnet_slot_info, k);
        BITNET_FIELD(l, bitnet_slot_info, scale);
        BITNET_FIELD(l, bitnet_slot_info, reserved);
        BITNET_FIELD(l, bitnet_slot_info, bytes);
        structs["bitnet_slot_info"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_matmul_op> l;
        BITNET_FIELD(l, bitnet_matmul_op, slot);
        BITNET_FIELD(l, bitnet_matmul_op, flags);
        BITNET_FIELD(l, bitnet_matmul_op, y_offset);
        BITNET_FIELD(l, bitnet_matmul_op, acc_offset);
        BITNET_FIELD(l, bitnet_matmul_op, reserved);
        structs["bitnet_matmul_op"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_matmul_cmd> l;
        BITNET_FIELD(l, bitnet_matmul_cmd, act_offset);
        BITNET_FIELD(l, bitnet_matmul_cmd, scale_offset);
        BITNET_FIELD(l, bitnet_matmul_cmd, rows);
        BITNET_FIELD(l, bitnet_matmul_cmd, k);
        BITNET_FIELD(l, bitnet_matmul_cmd, act_stride);
        BITNET_FIELD(l, bitnet_matmul_cmd, n_ops);
        BITNET_FIELD(l, bitnet_matmul_cmd, flags);
        BITNET_FIELD(l, bitnet_matmul_cmd, reserved);
        BITNET_FIELD(l, bitnet_matmul_cmd, ops);
        structs["bitnet_matmul_cmd"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_perf_ext> l;
        BITNET_FIELD(l, bitnet_perf_ext, flags);
        BITNET_FIELD(l, bitnet_perf_ext, reserved);
        BITNET_FIELD(l, bitnet_perf_ext, total_cycles);
        BITNET_FIELD(l, bitnet_perf_ext, dma_cycles);
        BITNET_FIELD(l, bitnet_perf_ext, compute_cycles);
        BITNET_FIELD(l, bitnet_perf_ext, commands);
        BITNET_FIELD(l, bitnet_perf_ext, matmuls);
        BITNET_FIELD(l, bitnet_perf_ext, macs);
        BITNET_FIELD(l, bitnet_perf_ext, dma_bytes);
        BITNET_FIELD(l, bitnet_perf_ext, weight_bytes_read);
        BITNET_FIELD(l, bitnet_perf_ext, weight_bytes_used);
        BITNET_FIELD(l, bitnet_perf_ext, slots_used);
        BITNET_FIELD(l, bitnet_perf_ext, reserved2);
        BITNET_FIELD(l, bitnet_perf_ext, reserved3);
        structs["bitnet_perf_ext"] = struct_entry(l.size, l.fields);
    }
    {
        Layout<bitnet_fault> l;
        BITNET_FIELD(l, bitnet_fault, kind);
        BITNET_FIELD(l, bitnet_fault, count);
        BITNET_FIELD(l, bitnet_fault, after);
        BITNET_FIELD(l, bitnet_fault, reserved);
        structs["bitnet_fault"] = struct_entry(l.size, l.fields);
    }

    py::dict ioctls;
    auto add = [&](const char* name, unsigned long req) {
        py::dict d;
        d["request"] = req;
        d["nr"] = req & 0xffu;
        d["type"] = (req >> 8) & 0xffu;
        d["size"] = (req >> 16) & 0x3fffu;
        d["dir"] = (req >> 30) & 0x3u;
        ioctls[name] = d;
    };
    add("START_INFERENCE", BITNET_IOC_START_INFERENCE);
    add("LOAD_WEIGHTS", BITNET_IOC_LOAD_WEIGHTS);
    add("GET_STATUS", BITNET_IOC_GET_STATUS);
    add("WAIT_COMPLETE", BITNET_IOC_WAIT_COMPLETE);
    add("ABORT", BITNET_IOC_ABORT);
    add("GET_PERF", BITNET_IOC_GET_PERF);
    add("RESET", BITNET_IOC_RESET);
    add("GET_INFO", BITNET_IOC_GET_INFO);
    add("LOAD_SLOT", BITNET_IOC_LOAD_SLOT);
    add("FREE_SLOTS", BITNET_IOC_FREE_SLOTS);
    add("SLOT_INFO", BITNET_IOC_SLOT_INFO);
    add("MATMUL", BITNET_IOC_MATMUL);
    add("GET_PERF_EXT", BITNET_IOC_GET_PERF_EXT);
    add("INJECT_FAULT", BITNET_IOC_INJECT_FAULT);

    py::dict c;
    c["MAGIC"] = static_cast<int>(BITNET_IOC_MAGIC);
    c["ABI_MAJOR"] = BITNET_ABI_MAJOR;
    c["ABI_MINOR"] = BITNET_ABI_MINOR;
    c["MAX_OPS"] = BITNET_MAX_OPS;
    c["GROUP"] = BITNET_GROUP;
    c["SLOT_MAGIC"] = BITNET_SLOT_MAGIC;
    c["MMAP_DEFAULT_SIZE"] = BITNET_MMAP_DEFAULT_SIZE;
    c["INPUT_DEFAULT_SIZE"] = BITNET_INPUT_DEFAULT_SIZE;
    c["OUTPUT_DEFAULT_SIZE"] = BITNET_OUTPUT_DEFAULT_SIZE;
    c["WEIGHT_DEFAULT_SIZE"] = BITNET_WEIGHT_DEFAULT_SIZE;
    c["CAP_MATMUL"] = BITNET_CAP_MATMUL;
    c["CAP_ACC_OUT"] = BITNET_CAP_ACC_OUT;
    c["CAP_LEGACY_INFERENCE"] = BITNET_CAP_LEGACY_INFERENCE;
    c["CAP_FAULT_INJECT"] = BITNET_CAP_FAULT_INJECT;
    c["CAP_EMULATED"] = BITNET_CAP_EMULATED;
    c["OP_ACC"] = BITNET_OP_ACC;
    c["PERF_CLEAR"] = BITNET_PERF_CLEAR;
    c["FAULT_NONE"] = BITNET_FAULT_NONE;
    c["FAULT_ENGINE"] = BITNET_FAULT_ENGINE;
    c["FAULT_HANG"] = BITNET_FAULT_HANG;
    c["FAULT_DMA"] = BITNET_FAULT_DMA;
    c["FAULT_FIFO_OVERFLOW"] = BITNET_FAULT_FIFO_OVERFLOW;
    c["FAULT_HW"] = BITNET_FAULT_HW;
    c["IOC_INJECT_FAULT_V20"] = BITNET_IOC_INJECT_FAULT_V20;
    py::dict states;
    states["IDLE"] = static_cast<int>(BITNET_STATE_IDLE);
    states["LOADING_WEIGHTS"] = static_cast<int>(BITNET_STATE_LOADING_WEIGHTS);
    states["RUNNING"] = static_cast<int>(BITNET_STATE_RUNNING);
    states["DMA_TRANSFER"] = static_cast<int>(BITNET_STATE_DMA_TRANSFER);
    states["ERROR"] = static_cast<int>(BITNET_STATE_ERROR);
    py::dict errors;
    errors["OK"] = static_cast<int>(BITNET_ERR_OK);
    errors["INVALID_PARAM"] = static_cast<int>(BITNET_ERR_INVALID_PARAM);
    errors["DMA"] = static_cast<int>(BITNET_ERR_DMA);
    errors["TIMEOUT"] = static_cast<int>(BITNET_ERR_TIMEOUT);
    errors["BUSY"] = static_cast<int>(BITNET_ERR_BUSY);
    errors["NO_MEMORY"] = static_cast<int>(BITNET_ERR_NO_MEMORY);
    errors["WEIGHT_MISMATCH"] = static_cast<int>(BITNET_ERR_WEIGHT_MISMATCH);
    errors["HW"] = static_cast<int>(BITNET_ERR_HW);
    errors["FIFO_OVERFLOW"] = static_cast<int>(BITNET_ERR_FIFO_OVERFLOW);
    errors["FIFO_UNDERFLOW"] = static_cast<int>(BITNET_ERR_FIFO_UNDERFLOW);
    errors["AXI"] = static_cast<int>(BITNET_ERR_AXI);
    errors["ABORTED"] = static_cast<int>(BITNET_ERR_ABORTED);
    errors["NO_SLOT"] = static_cast<int>(BITNET_ERR_NO_SLOT);
    errors["ENGINE"] = static_cast<int>(BITNET_ERR_ENGINE);

    py::dict r;
    r["structs"] = structs;
    r["ioctls"] = ioctls;
    r["constants"] = c;
    r["states"] = states;
    r["card_errors"] = errors;
    return r;
}

// The emulated driver with its own thread pool, owned by Python.
struct EmuHandle {
    std::unique_ptr<ThreadPool> pool;
    std::unique_ptr<sim::DriverEmu> emu;
};

}  // namespace

void bind_abi(py::module_& m) {
    m.def("abi_layout", &abi_layout, "Sizes, field offsets, request numbers and constants of cpp/bitnet_abi.h.");
    m.def("_replay_ioctl_script",
          [](const py::bytes& script) {
              const std::string s = script;
              std::map<unsigned long, int> ok;
              std::string bad;
              {
                  py::gil_scoped_release nogil;
                  bad = sim::run_ioctl_script(reinterpret_cast<const uint8_t*>(s.data()), s.size(), &ok);
              }
              return py::make_tuple(bad, ok);
          },
          py::arg("script"),
          "Run a fuzz_ioctl script (sim/ioctl_script.h) on a fresh emulated card: (the violated invariant or '', "
          "{request: ioctls that succeeded}).");

    py::class_<EmuHandle, std::shared_ptr<EmuHandle>>(
        m, "_DriverEmu", "The emulated card driver (sim/driver_emu.h) with raw syscall access, for tests.")
        .def(py::init([](const std::string& profile, uint64_t input_size, uint64_t output_size, uint64_t weight_size,
                         int64_t timeout_ms, uint32_t max_rows, uint32_t max_slots, int n_threads,
                         uint64_t weight_capacity) {
                 auto h = std::make_shared<EmuHandle>();
                 h->pool = std::make_unique<ThreadPool>(n_threads > 0 ? n_threads : 1);
                 sim::DriverEmuConfig cfg;
                 cfg.profile = sim::board_profile(profile);
                 if (weight_capacity) cfg.profile.weight_capacity = weight_capacity;
                 cfg.input_size = input_size;
                 cfg.output_size = output_size;
                 cfg.weight_size = weight_size;
                 cfg.timeout_ms = timeout_ms;
                 cfg.max_rows = max_rows;
                 cfg.max_slots = max_slots;
                 h->emu = std::make_unique<sim::DriverEmu>(cfg, h->pool.get());
                 return h;
             }),
             py::arg("profile") = "vibee-zcu104", py::arg("input_size") = BITNET_INPUT_DEFAULT_SIZE,
             py::arg("output_size") = BITNET_OUTPUT_DEFAULT_SIZE, py::arg("weight_size") = BITNET_WEIGHT_DEFAULT_SIZE,
             py::arg("timeout_ms") = 30000, py::arg("max_rows") = 4096, py::arg("max_slots") = 65536,
             py::arg("n_threads") = 1, py::arg("weight_capacity") = 0)
        .def_property_readonly("node", [](const EmuHandle& h) { return h.emu->config().node; })
        .def("open",
             [](EmuHandle& h, const std::string& path) {
                 const int r = h.emu->open(path.c_str(), 2 /* O_RDWR */);
                 return py::make_tuple(r, r < 0 ? errno : 0);
             },
             py::arg("path"))
        .def("close",
             [](EmuHandle& h, int fd) {
                 int r, e;
                 {
                     py::gil_scoped_release nogil;
                     r = h.emu->close(fd);
                     e = r < 0 ? errno : 0;
                 }
                 return py::make_tuple(r, e);
             },
             py::arg("fd"))
        .def("ioctl",
             [](EmuHandle& h, int fd, unsigned long request, py::object buf) {
                 void* arg = nullptr;
                 py::buffer_info info;
                 if (!buf.is_none()) {
                     info = py::buffer(buf).request(true);
                     const size_t need = (request >> 16) & 0x3fffu;
                     if (static_cast<size_t>(info.size * info.itemsize) < need)
                         throw Error(ErrorCode::INVALID, "buffer smaller than the request's size field");
                     arg = info.ptr;
                 }
                 int r, e;
                 {
                     py::gil_scoped_release nogil;
                     r = h.emu->ioctl(fd, request, arg);
                     e = r < 0 ? errno : 0;
                 }
                 return py::make_tuple(r, e);
             },
             py::arg("fd"), py::arg("request"), py::arg("buf") = py::none(),
             "ioctl(fd, request, buf) -> (ret, errno); buf (a writable buffer or None) is the argument.")
        .def("mmap",
             [](EmuHandle& h, int fd, uint64_t length, int64_t offset, bool shared) {
                 void* p = h.emu->mmap(nullptr, length, PROT_READ | PROT_WRITE, shared ? MAP_SHARED : MAP_PRIVATE, fd,
                                       static_cast<off_t>(offset));
                 return py::make_tuple(p == MAP_FAILED ? -1 : 0, p == MAP_FAILED ? errno : 0);
             },
             py::arg("fd"), py::arg("length"), py::arg("offset") = 0, py::arg("shared") = true)
        .def("poll",
             [](EmuHandle& h, int fd, int timeout_ms) {
                 struct pollfd p;
                 p.fd = fd;
                 p.events = POLLIN;
                 p.revents = 0;
                 int r, e;
                 {
                     py::gil_scoped_release nogil;
                     r = h.emu->poll(&p, 1, timeout_ms);
                     e = r < 0 ? errno : 0;
                 }
                 return py::make_tuple(r, static_cast<int>(p.revents), e);
             },
             py::arg("fd"), py::arg("timeout_ms"))
        .def("region",
             [](py::object self) {
                 EmuHandle& h = self.cast<EmuHandle&>();
                 return py::array_t<uint8_t>({static_cast<py::ssize_t>(h.emu->region_size())}, {1},
                                             h.emu->region(), self);
             },
             "The DMA buffer (a uint8 view; writes are what the host puts in the mmap'd buffer).")
        .def("counters",
             [](EmuHandle& h) {
                 const sim::Counters c = h.emu->card().counters();
                 py::dict d;
                 d["total_cycles"] = c.total_cycles;
                 d["dma_cycles"] = c.dma_cycles;
                 d["compute_cycles"] = c.compute_cycles;
                 d["commands"] = c.commands;
                 d["matmuls"] = c.matmuls;
                 d["macs"] = c.macs;
                 d["dma_bytes"] = c.dma_bytes;
                 d["weight_bytes_read"] = c.weight_bytes_read;
                 return d;
             })
        .def("slots",
             [](EmuHandle& h, int lo, int hi) {
                 std::vector<int> out;
                 for (int s = lo; s < hi; ++s)
                     if (h.emu->card().has_slot(s)) out.push_back(s);
                 return out;
             },
             py::arg("lo") = 0, py::arg("hi") = 64)
        .def("read_slot",
             [](EmuHandle& h, int slot) {
                 const sim::SlotInfo info = h.emu->card().slot_info(slot);
                 const std::vector<int8_t> t = h.emu->card().read_slot(slot);
                 py::array_t<int8_t> a({static_cast<py::ssize_t>(info.n), static_cast<py::ssize_t>(info.k)});
                 std::copy(t.begin(), t.end(), a.mutable_data());
                 return py::make_tuple(a, info.scale);
             },
             py::arg("slot"));
}

}  // namespace bitnet
