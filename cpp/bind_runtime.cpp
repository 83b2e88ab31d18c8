// bind_runtime.cpp: the Device/Job API of bitnet._core. The Python package (core.py) wraps
// these in the seed API; every call that touches the card or runs the model releases the GIL.
#include <pybind11/numpy.h>

#include <algorithm>
#include <chrono>
#include <pybind11/stl.h>

#include "bindings.h"
#include "device.h"
#include "runtime.h"

namespace py = pybind11;

namespace bitnet {
namespace {

py::array_t<int32_t> to_numpy(const std::vector<int32_t>& v) {
    py::array_t<int32_t> out(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

std::vector<int32_t> from_numpy(const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& a) {
    if (a.ndim() != 1) throw Error(ErrorCode::INVALID, "token array must be 1-D");
    return std::vector<int32_t>(a.data(), a.data() + a.size());
}

py::dict config_dict(const Model& m) {
    const ModelConfig& c = m.config();
    py::dict d;
    d["arch"] = c.arch;
    d["name"] = c.name;
    d["vocab_size"] = c.n_vocab;
    d["hidden_size"] = c.n_embd;
    d["num_layers"] = c.n_layer;
    d["num_heads"] = c.n_head;
    d["num_kv_heads"] = c.n_head_kv;
    d["head_dim"] = c.head_dim;
    d["intermediate_size"] = c.n_ff;
    d["max_seq_len"] = c.n_ctx;
    d["rms_norm_eps"] = c.rms_eps;
    d["rope_theta"] = c.rope_theta;
    d["rope_dim"] = c.rope_dim;
    d["rope_style"] = rope_style_name(c.rope_style);
    d["activation"] = activation_name(c.act);
    d["sub_norms"] = c.sub_norms;
    d["tied_output"] = c.tied_output;
    d["bos_token_id"] = c.bos_token;
    d["eos_token_id"] = c.eos_token;
    d["stop_token_ids"] = c.stop_tokens;
    d["weight_size"] = m.weight_size();
    d["card_weight_bytes"] = m.ternary_bytes();
    d["embedding_type"] = tensor_type_name(m.embedding().tensor->type);
    d["output_type"] = tensor_type_name(m.output().tensor->type);
    d["path"] = m.path();
    d["gguf_version"] = m.file().version();
    d["notes"] = m.notes();
    return d;
}

}  // namespace

void bind_runtime(py::module_& m) {
    py::class_<Job, std::shared_ptr<Job>>(m, "Job", "A generation job running on a Device.")
        .def("wait", &Job::wait, py::arg("timeout_ms") = -1, py::call_guard<py::gil_scoped_release>(),
             "Wait up to timeout_ms (negative: forever); True if the job has finished.")
        .def("wait_for_tokens", &Job::wait_for_tokens, py::arg("n"), py::arg("timeout_ms") = -1,
             py::arg("seq") = 0, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("done", &Job::done)
        .def_property_readonly("n_seq", &Job::n_seq)
        .def("abort", &Job::abort)
        .def("tokens", [](const Job& j, size_t seq) { return to_numpy(j.tokens(seq)); }, py::arg("seq") = 0)
        .def("tokens_from", [](const Job& j, size_t start, size_t seq) { return to_numpy(j.tokens_from(start, seq)); },
             py::arg("start"), py::arg("seq") = 0)
        .def("token_times", [](const Job& j, size_t seq) {
                 const std::vector<double> t = j.token_times(seq);
                 py::array_t<double> out(static_cast<py::ssize_t>(t.size()));
                 if (!t.empty()) std::copy(t.begin(), t.end(), out.mutable_data());
                 return out;
             }, py::arg("seq") = 0,
             "Seconds since the job started at which each token of sequence seq was produced (float64).")
        .def_property_readonly("seconds", &Job::seconds, "Seconds from the job's start to its end; 0 while it runs.")
        .def_property_readonly("stop_reason", [](const Job& j) { return j.stop_reason(); })
        .def("seq_stop_reason", [](const Job& j, size_t seq) { return j.stop_reason(seq); }, py::arg("seq"))
        .def("rethrow_if_failed", &Job::rethrow_if_failed);

    py::class_<Device>(m, "Device", "A BitNet card (simulated or real) with its loaded model.")
        .def(py::init([](const std::string& spec, const std::string& profile, int n_threads, py::object clock_mhz,
                         py::object lanes, py::object lane_width, py::object ddr_gbps, py::object dma_gbps,
                         py::object emu) {
                 // A named board profile, optionally with custom cycle-model parameters.
                 sim::BoardProfile p = sim::board_profile(profile);
                 bool custom = false;
                 auto set = [&](const py::object& v, auto& field) {
                     if (v.is_none()) return;
                     field = v.cast<std::remove_reference_t<decltype(field)>>();
                     custom = true;
                 };
                 set(clock_mhz, p.clock_mhz);
                 set(lanes, p.lanes);
                 set(lane_width, p.lane_width);
                 set(ddr_gbps, p.ddr_gbps);
                 set(dma_gbps, p.dma_gbps);
                 if (custom) p.name += "+custom";
                 sim::validate_profile(p);
                 EmulatedDriverOptions eo;
                 if (!emu.is_none()) {
                     const py::dict d = emu.cast<py::dict>();
                     for (auto item : d) {
                         const std::string key = item.first.cast<std::string>();
                         if (key == "input_size") eo.input_size = item.second.cast<uint64_t>();
                         else if (key == "output_size") eo.output_size = item.second.cast<uint64_t>();
                         else if (key == "weight_size") eo.weight_size = item.second.cast<uint64_t>();
                         else if (key == "max_rows") eo.max_rows = item.second.cast<uint32_t>();
                         else if (key == "max_ops") eo.max_ops = item.second.cast<uint32_t>();
                         else throw Error(ErrorCode::INVALID, "unknown emulated-driver option '" + key + "'");
                     }
                 }
                 py::gil_scoped_release nogil;
                 return std::make_unique<Device>(spec, p, n_threads, eo);
             }),
             py::arg("spec") = "sim", py::arg("profile") = "vibee-zcu104", py::arg("n_threads") = 0,
             py::arg("clock_mhz") = py::none(), py::arg("lanes") = py::none(), py::arg("lane_width") = py::none(),
             py::arg("ddr_gbps") = py::none(), py::arg("dma_gbps") = py::none(), py::arg("emu") = py::none())
        .def_property_readonly("n_threads", &Device::n_threads)
        .def_property_readonly("spec", &Device::spec)
        .def_property_readonly("closed", &Device::closed)
        .def_property_readonly("busy", &Device::busy)
        .def("close", &Device::close, py::call_guard<py::gil_scoped_release>())
        .def("load_model", &Device::load_model, py::arg("path"), py::arg("fast_head") = false,
             py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("has_model", &Device::has_model)
        .def("model_config",
             [](const Device& d) -> py::object {
                 auto model = d.model();
                 if (!model) return py::none();
                 return config_dict(*model);
             })
        .def("logits",
             [](Device& d, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens) {
                 std::vector<int32_t> toks = from_numpy(tokens);
                 std::vector<float> out;
                 {
                     py::gil_scoped_release nogil;
                     out = d.logits(toks);
                 }
                 // The width from the result itself: another thread may load another model, or
                 // close the device, as soon as logits() has returned (tokens are never empty).
                 const py::ssize_t V = static_cast<py::ssize_t>(out.size() / toks.size());
                 py::array_t<float> arr({static_cast<py::ssize_t>(toks.size()), V});
                 std::copy(out.begin(), out.end(), arr.mutable_data());
                 return arr;
             },
             py::arg("tokens"))
        .def("submit",
             [](Device& d, const std::vector<py::array_t<int32_t, py::array::c_style | py::array::forcecast>>& prompts,
                int64_t max_new_tokens, float temperature, int64_t top_k, float top_p, uint64_t seed,
                std::vector<int32_t> stop_tokens, const py::object& record) {
                 GenerateRequest req;
                 for (const auto& p : prompts) req.prompts.push_back(from_numpy(p));
                 req.max_new_tokens = max_new_tokens;
                 req.sampling.temperature = temperature;
                 req.sampling.top_k = top_k;
                 req.sampling.top_p = top_p;
                 req.sampling.seed = seed;
                 req.stop_tokens = std::move(stop_tokens);
                 std::shared_ptr<Job> job;
                 {
                     py::gil_scoped_release nogil;
                     job = d.submit(req);
                 }
                 // `record` (a list) receives the job before this call returns, so a caller's
                 // exception handler can abort it even when Ctrl-C is raised the moment the
                 // interpreter gets control back (before the return value is stored anywhere).
                 if (!record.is_none()) record.attr("append")(job);
                 return job;
             },
             py::arg("prompts"), py::arg("max_new_tokens"), py::arg("temperature") = 0.0f, py::arg("top_k") = 0,
             py::arg("top_p") = 1.0f, py::arg("seed") = 0, py::arg("stop_tokens") = std::vector<int32_t>{},
             py::arg("record") = py::none())
        .def("status",
             [](const Device& d) {
                 DeviceStatus s = d.status();
                 py::dict r;
                 r["state"] = device_state_name(s.state);
                 r["current_layer"] = s.current_layer;
                 r["tokens_processed"] = s.tokens_processed;
                 r["error_code"] = s.error_code;
                 r["card_error"] = s.card_error;
                 return r;
             })
        .def("perf",
             [](const Device& d) {
                 DevicePerf p = d.perf();
                 py::dict r;
                 r["total_cycles"] = p.counters.total_cycles;
                 r["dma_cycles"] = p.counters.dma_cycles;
                 r["compute_cycles"] = p.counters.compute_cycles;
                 r["commands"] = p.counters.commands;
                 r["matmuls"] = p.counters.matmuls;
                 r["macs"] = p.counters.macs;
                 r["dma_bytes"] = p.counters.dma_bytes;
                 r["weight_bytes_read"] = p.counters.weight_bytes_read;
                 r["clock_mhz"] = p.clock_mhz;
                 r["counters_source"] = p.counters_modeled ? "cycle model" : "hardware";
                 r["inference_count"] = p.inference_count;
                 r["tokens_generated"] = p.tokens_generated;
                 r["tokens_prefilled"] = p.tokens_prefilled;
                 r["tokens_per_second"] = p.tokens_per_second;
                 r["last_job_seconds"] = p.last_job_seconds;
                 // Card time (cycles / clock) beside host wall time, named apart.
                 const double hz = p.clock_mhz * 1e6;
                 r["card_seconds_total"] = hz > 0 ? static_cast<double>(p.counters.total_cycles) / hz : 0.0;
                 r["last_job_card_cycles"] = p.last_job_card_cycles;
                 const double card_s = hz > 0 ? static_cast<double>(p.last_job_card_cycles) / hz : 0.0;
                 r["last_job_card_seconds"] = card_s;
                 r["last_job_host_seconds"] = p.last_job_seconds;
                 r["host_tokens_per_second"] = p.tokens_per_second;
                 r["last_job_tokens"] = p.last_job_tokens;
                 r["card_tokens_per_second"] = card_s > 0 ? static_cast<double>(p.last_job_tokens) / card_s : 0.0;
                 r["head_calls"] = p.head_calls;
                 r["head_rescored"] = p.head_rescored;
                 return r;
             })
        .def("card_info",
             [](const Device& d) {
                 const Transport& t = d.transport();
                 const sim::BoardProfile p = t.profile();
                 py::dict r;
                 r["transport"] = t.name();
                 r["kernel"] = t.kernel_name();
                 r["n_threads"] = d.n_threads();
                 r["profile"] = p.name;
                 r["clock_mhz"] = p.clock_mhz;
                 r["lanes"] = p.lanes;
                 r["lane_width"] = p.lane_width;
                 r["ddr_gbps"] = p.ddr_gbps;
                 r["dma_gbps"] = p.dma_gbps;
                 r["dma_setup_cycles"] = p.dma_setup_cycles;
                 r["pipeline_cycles"] = p.pipeline_cycles;
                 r["counters"] = t.counters_modeled() ? "cycle model" : "hardware";
                 r["weight_capacity"] = t.weight_capacity();
                 r["weight_used"] = t.weight_used();
                 return r;
             })
        .def("load_user_weights",
             [](Device& d, int layer_id, const py::array_t<int8_t, py::array::c_style | py::array::forcecast>& t,
                float scale) {
                 if (t.ndim() != 2) throw Error(ErrorCode::INVALID, "weights must be 2-D [out_features, in_features]");
                 const int64_t n = t.shape(0), k = t.shape(1);
                 py::gil_scoped_release nogil;
                 d.load_user_weights(layer_id, t.data(), n, k, scale);
             },
             py::arg("layer_id"), py::arg("codes"), py::arg("scale"))
        .def("matmul",
             [](Device& d, int layer_id, const py::array_t<float, py::array::c_style | py::array::forcecast>& x,
                bool return_acc) -> py::object {
                 if (x.ndim() != 2) throw Error(ErrorCode::INVALID, "x must be 2-D [batch, in_features]");
                 const int64_t B = x.shape(0), k = x.shape(1);
                 std::vector<float> y;
                 std::vector<int32_t> acc;
                 {
                     py::gil_scoped_release nogil;
                     y = d.matmul(layer_id, x.data(), B, k, return_acc ? &acc : nullptr);
                 }
                 const py::ssize_t N = B > 0 ? static_cast<py::ssize_t>(y.size() / static_cast<size_t>(B)) : 0;
                 py::array_t<float> ya({static_cast<py::ssize_t>(B), N});
                 std::copy(y.begin(), y.end(), ya.mutable_data());
                 if (!return_acc) return std::move(ya);
                 py::array_t<int32_t> aa({static_cast<py::ssize_t>(B), N});
                 std::copy(acc.begin(), acc.end(), aa.mutable_data());
                 return py::make_tuple(ya, aa);
             },
             py::arg("layer_id"), py::arg("x"), py::arg("return_acc") = false)
        .def("_inject_fault",
             [](Device& d, int count, const std::string& kind, int64_t after) {
                 // Test hook: docs/DEVICE_ABI.md INJECT_FAULT (kinds engine, dma, fifo_overflow, hw, hang).
                 static const std::pair<const char*, sim::FaultKind> kinds[] = {
                     {"none", sim::FaultKind::NONE}, {"engine", sim::FaultKind::ENGINE}, {"hang", sim::FaultKind::HANG},
                     {"dma", sim::FaultKind::DMA}, {"fifo_overflow", sim::FaultKind::FIFO_OVERFLOW}, {"hw", sim::FaultKind::HW}};
                 for (const auto& k : kinds)
                     if (kind == k.first) {
                         if (count < 0) throw Error(ErrorCode::INVALID, "count must be >= 0, got " + std::to_string(count));
                         if (after < 0) throw Error(ErrorCode::INVALID, "after must be >= 0, got " + std::to_string(after));
                         d.transport().inject_fault(k.second, count, after);
                         return;
                     }
                 throw Error(ErrorCode::INVALID, "unknown fault kind '" + kind +
                                                     "': choose engine, dma, fifo_overflow, hw, hang or none");
             },
             py::arg("count") = 1, py::arg("kind") = "engine", py::arg("after") = 0)
        .def("_inject_hang", [](Device& d) { d.transport().inject_fault(sim::FaultKind::HANG, 1, 0); })
        .def("_set_card_timeout_ms", [](Device& d, int64_t ms) { d.transport().set_timeout_ms(ms); }, py::arg("ms"))
        .def("_reset_counters", [](Device& d) { d.transport().reset_counters(); })
        .def("abort", &Device::abort)
        .def("reset", &Device::reset, py::call_guard<py::gil_scoped_release>());

    // Kernel test hooks: run one kernel on given data (tests compare kernels bit for bit).
    m.def("_kernel_gemm",
          [](const std::string& name, const py::array_t<int8_t, py::array::c_style | py::array::forcecast>& t,
             const py::array_t<int8_t, py::array::c_style | py::array::forcecast>& q, int64_t j0, int64_t j1) {
              const sim::KernelTable& k = sim::kernels_by_name(name);
              if (t.ndim() != 2 || q.ndim() != 2 || t.shape(1) != q.shape(1))
                  throw Error(ErrorCode::INVALID, "t must be [N, K] and q [B, K]");
              const int64_t N = t.shape(0), K = t.shape(1), B = q.shape(0);
              if (j0 < 0 || j1 > N || j0 > j1) throw Error(ErrorCode::INVALID, "bad row range");
              for (int64_t i = 0; i < N * K; ++i)
                  if (t.data()[i] < -1 || t.data()[i] > 1) throw Error(ErrorCode::INVALID, "codes must be -1/0/1");
              sim::TernarySlot slot;
              sim::pack_slot(t.data(), N, K, 1.0f, slot);
              const int64_t kpad = sim::slot_k_padded(K);
              std::vector<int8_t> qp(static_cast<size_t>(B * kpad), 0);
              std::vector<int32_t> qs(static_cast<size_t>(B), 0);
              for (int64_t b = 0; b < B; ++b)
                  for (int64_t i = 0; i < K; ++i) {
                      qp[b * kpad + i] = q.data()[b * K + i];
                      qs[b] += q.data()[b * K + i];
                  }
              sim::ActBatch act;
              act.q = qp.data();
              act.B = B;
              act.K = K;
              act.ldq = kpad;
              act.qsum = qs.data();
              std::vector<uint8_t> prep;
              if (k.prepared_size) {
                  const size_t need = k.prepared_size(act);
                  if (need > 0) {
                      prep.resize(need + 64);
                      uint8_t* aligned = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(prep.data()) + 63) & ~uintptr_t(63));
                      k.prepare_act(act, aligned);
                      act.prepared = aligned;
                  }
              }
              py::array_t<int32_t> out({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(N)});
              std::fill(out.mutable_data(), out.mutable_data() + B * N, 0);
              k.gemm(slot, act, out.mutable_data(), N, j0, j1);
              return out;
          },
          py::arg("kernel"), py::arg("t"), py::arg("q"), py::arg("j0"), py::arg("j1"));
    m.def("_kernel_dot_f16",
          [](const std::string& name, const py::array_t<uint16_t, py::array::c_style | py::array::forcecast>& rows,
             const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
              // x is one vector [n] (result [R]) or a batch [W, n] (result [W, R]).
              const sim::KernelTable& k = sim::kernels_by_name(name);
              if (rows.ndim() != 2 || (x.ndim() != 1 && x.ndim() != 2) || rows.shape(1) != x.shape(x.ndim() - 1))
                  throw Error(ErrorCode::INVALID, "rows must be [R, n] (fp16 bits) and x [n] or [W, n]");
              const py::ssize_t R = rows.shape(0), n = rows.shape(1), W = x.ndim() == 2 ? x.shape(0) : 1;
              py::array_t<float> out = x.ndim() == 2 ? py::array_t<float>({W, R}) : py::array_t<float>(R);
              k.dot_f16(rows.data(), n, R, x.data(), n, W, n, out.mutable_data(), R);
              return out;
          },
          py::arg("kernel"), py::arg("rows"), py::arg("x"));
    m.def("_kernel_dot_f32",
          [](const std::string& name, const py::array_t<float, py::array::c_style | py::array::forcecast>& rows,
             const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
              // x is one vector [n] (result [R]) or a batch [W, n] (result [W, R]).
              const sim::KernelTable& k = sim::kernels_by_name(name);
              if (rows.ndim() != 2 || (x.ndim() != 1 && x.ndim() != 2) || rows.shape(1) != x.shape(x.ndim() - 1))
                  throw Error(ErrorCode::INVALID, "rows must be [R, n] and x [n] or [W, n]");
              const py::ssize_t R = rows.shape(0), n = rows.shape(1), W = x.ndim() == 2 ? x.shape(0) : 1;
              py::array_t<float> out = x.ndim() == 2 ? py::array_t<float>({W, R}) : py::array_t<float>(R);
              k.dot_f32(rows.data(), n, R, x.data(), n, W, n, out.mutable_data(), R);
              return out;
          },
          py::arg("kernel"), py::arg("rows"), py::arg("x"));
    m.def("_kernel_dot_i8",
          [](const std::string& name, const py::array_t<int8_t, py::array::c_style | py::array::forcecast>& rows,
             const py::array_t<int8_t, py::array::c_style | py::array::forcecast>& x) {
              const sim::KernelTable& k = sim::kernels_by_name(name);
              // x is one vector [n] (result [R]) or a batch [W, n] (result [W, R]).
              if (rows.ndim() != 2 || (x.ndim() != 1 && x.ndim() != 2) || rows.shape(1) != x.shape(x.ndim() - 1))
                  throw Error(ErrorCode::INVALID, "rows must be [R, n] and x [n] or [W, n]");
              for (py::ssize_t i = 0; i < rows.size(); ++i)
                  if (rows.data()[i] == -128) throw Error(ErrorCode::INVALID, "rows must be in [-127, 127]");
              for (py::ssize_t i = 0; i < x.size(); ++i)
                  if (x.data()[i] == -128) throw Error(ErrorCode::INVALID, "x must be in [-127, 127]");
              const py::ssize_t R = rows.shape(0), n = rows.shape(1), W = x.ndim() == 2 ? x.shape(0) : 1;
              py::array_t<int32_t> out = x.ndim() == 2 ? py::array_t<int32_t>({W, R}) : py::array_t<int32_t>(R);
              k.dot_i8(rows.data(), n, R, x.data(), n, W, n, out.mutable_data(), R);
              return out;
          },
          py::arg("kernel"), py::arg("rows"), py::arg("x"));
    // The host thread pool's view of the CPUs (thread_pool.h), for tests and `bitnet bench`.
    m.def("_usable_cpus", &ThreadPool::usable_cpus);
    m.def("_cgroup_cpu_limit", &ThreadPool::cgroup_cpu_limit, py::arg("proc_cgroup"), py::arg("root"));
    // The host's RMSNorm (runtime.cpp) on rows of x [R, n], for tests of its summation order.
    m.def("_rmsnorm",
          [](const py::array_t<float, py::array::c_style | py::array::forcecast>& x,
             const py::array_t<float, py::array::c_style | py::array::forcecast>& w, float eps) {
              if (x.ndim() != 2 || w.ndim() != 1 || x.shape(1) != w.shape(0) || x.shape(1) == 0)
                  throw Error(ErrorCode::INVALID, "x must be [R, n] and w [n], n >= 1");
              py::array_t<float> out({x.shape(0), x.shape(1)});
              for (py::ssize_t r = 0; r < x.shape(0); ++r)
                  rmsnorm(x.data() + r * x.shape(1), w.data(), x.shape(1), eps, out.mutable_data() + r * x.shape(1));
              return out;
          },
          py::arg("x"), py::arg("w"), py::arg("eps"));
    // Memory read bandwidth of this machine (benchmarks/bandwidth.py, `bitnet bench`): streams
    // a buffer of `bytes` (in weight-slot memory) with `threads` threads of a persistent pool using a kernel's widest
    // loads (default: this process's kernel), best of `reps` after one warm-up; returns GB/s.
    m.def("_read_bandwidth",
          [](int64_t bytes, int threads, int reps, const std::string& kernel) {
              if (bytes < (1 << 20) || threads < 1 || threads > 1024 || reps < 1)
                  throw Error(ErrorCode::INVALID, "bytes must be >= 1 MiB, threads in [1, 1024], reps >= 1");
              const sim::KernelTable& k = kernel.empty() ? sim::select_kernels() : sim::kernels_by_name(kernel);
              const int64_t chunk = (bytes / threads + 4095) / 4096 * 4096, total = chunk * threads;
              // The kind of memory the weights live in (2 MiB-aligned, huge pages advised): a
              // bound measured on 4 KiB pages would be one the engine can beat.
              std::vector<uint8_t, sim::SlotAllocator<uint8_t>> raw(static_cast<size_t>(total + 64));
              uint8_t* buf = raw.data() + (64 - reinterpret_cast<uintptr_t>(raw.data()) % 64) % 64;
              for (int64_t i = 0; i < total; i += 4096) buf[i] = static_cast<uint8_t>(i >> 12);   // fault pages in
              ThreadPool pool(threads);
              std::vector<uint64_t> sums(static_cast<size_t>(threads));
              double best = 0;
              py::gil_scoped_release nogil;
              for (int r = 0; r < reps + 1; ++r) {
                  const auto t0 = std::chrono::steady_clock::now();
                  pool.parallel_for(threads, 1, [&](int64_t b, int64_t e) {
                      for (int64_t t = b; t < e; ++t) sums[static_cast<size_t>(t)] = k.read_sum(buf + t * chunk, chunk);
                  });
                  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                  if (r > 0) best = std::max(best, static_cast<double>(total) / dt / 1e9);   // r == 0 warms up
              }
              return best;
          },
          py::arg("bytes") = int64_t{1} << 30, py::arg("threads") = 1, py::arg("reps") = 3, py::arg("kernel") = "");
    m.def("board_profiles", &sim::board_profile_names);
    m.def("available_kernels", &sim::available_kernels);
}

}  // namespace bitnet
