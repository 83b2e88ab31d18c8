// dispatch.cpp: picks the kernel table at run time from CPU features and $BITNET_KERNEL.
// One build runs on any CPU of its architecture: ISA-specific files are compiled with their
// own flags and only entered after the checks below.
#include <cstdlib>
#include <string>

#include "../../cpp/error.h"
#include "kernels.h"

namespace bitnet {
namespace sim {

namespace {

bool cpu_has(const char* what) {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const std::string w(what);
    if (w == "avx2")
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (w == "avx512")
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("f16c");
    return false;
#elif defined(__aarch64__)
    return std::string(what) == "neon";   // Advanced SIMD is mandatory on AArch64
#else
    (void)what;
    return false;
#endif
}

}  // namespace

std::vector<std::string> available_kernels() {
    std::vector<std::string> out{"ref"};
#if defined(__x86_64__) || defined(_M_X64)
    if (cpu_has("avx2")) out.push_back("avx2");
    if (cpu_has("avx512")) out.push_back("avx512");
    if (cpu_has("avx512") && amx_available()) out.push_back("amx");
#endif
#if defined(__aarch64__)
    out.push_back("neon");
#endif
    return out;
}

const KernelTable& kernels_by_name(const std::string& name) {
    bool ok = false;
    for (const auto& n : available_kernels()) ok = ok || n == name;
    if (ok) {
        if (name == "ref") return ref_kernels();
#if defined(__x86_64__) || defined(_M_X64)
        if (name == "avx2") return avx2_kernels();
        if (name == "avx512") return avx512_kernels();
        if (name == "amx") return amx_kernels();
#endif
#if defined(__aarch64__)
        if (name == "neon") return neon_kernels();
#endif
    }
    std::string names;
    for (const auto& n : available_kernels()) names += (names.empty() ? "" : ", ") + n;
    throw Error(ErrorCode::INVALID, "kernel '" + name + "' is not one this CPU and build can run; choose one of: " +
                                        names + " (or auto)");
}

const KernelTable& select_kernels() {
    const char* env = std::getenv("BITNET_KERNEL");
    if (env && *env && std::string(env) != "auto") {
        try {
            return kernels_by_name(env);
        } catch (const Error& e) {
            throw Error(ErrorCode::INVALID, std::string("BITNET_KERNEL=") + env + ": " + e.what());
        }
    }
    return kernels_by_name(available_kernels().back());
}

}  // namespace sim
}  // namespace bitnet
