// dispatch.cpp: picks the kernel table at run time from CPU features and $BITNET_KERNEL.
// One build runs on any CPU of its architecture: ISA-specific files are compiled with their
// own flags and only entered after the checks below.
#include <cstdint>
#include <cstdlib>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include "../../cpp/error.h"
#include "kernels.h"

namespace bitnet {
namespace sim {

namespace {

#if defined(__x86_64__) || defined(_M_X64)
// CPUID + XGETBV feature detection, independent of the compiler's __builtin_cpu_supports
// (whose feature names differ between GCC and Clang versions).
struct X86Features {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512 = false;   // F, DQ, BW, VL and VNNI, with the OS saving ZMM state
    bool amx_int8 = false; // AMX-TILE + AMX-INT8 (and GFNI, which amx.cpp uses) in CPUID; the OS
                           // permission is asked separately
};

X86Features detect() {
    X86Features f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = (c >> 27) & 1;
    f.fma = (c >> 12) & 1;
    f.f16c = (c >> 29) & 1;
    uint64_t xcr0 = 0;
    if (osxsave) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
    }
    const bool os_avx = (xcr0 & 0x6) == 0x6;
    const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    f.avx2 = os_avx && ((b >> 5) & 1) && f.fma && f.f16c;
    const bool avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    const bool vnni = (c >> 11) & 1;
    f.avx512 = os_avx512 && f.avx2 && avx512f && avx512dq && avx512bw && avx512vl && vnni;
    const bool gfni = (c >> 8) & 1;
    f.amx_int8 = f.avx512 && gfni && ((d >> 24) & 1) && ((d >> 25) & 1);
    return f;
}

const X86Features& features() {
    static const X86Features f = detect();
    return f;
}
#endif

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has(const char* what) {
    const std::string w(what);
    if (w == "avx2") return features().avx2;
    if (w == "avx512") return features().avx512;
    return false;
}
#endif

}  // namespace

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_amx_int8() { return features().amx_int8; }
#endif

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
