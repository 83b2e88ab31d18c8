// dispatch.cpp: picks the kernel table at run time from CPU features and $BITNET_KERNEL.
// Only the scalar reference exists so far; SIMD tables register here as they are added.
#include <cstdlib>
#include <string>

#include "../../cpp/error.h"
#include "kernels.h"

namespace bitnet {
namespace sim {

std::vector<std::string> available_kernels() { return {"ref"}; }

const KernelTable& select_kernels() {
    const char* env = std::getenv("BITNET_KERNEL");
    if (env && *env) {
        const std::string want(env);
        if (want == "ref") return ref_kernels();
        if (want == "auto") return ref_kernels();
        std::string names;
        for (const auto& n : available_kernels()) names += (names.empty() ? "" : ", ") + n;
        throw Error(ErrorCode::INVALID, "BITNET_KERNEL=" + want +
                                            " is not a kernel this CPU and build can run; choose one of: " +
                                            names + " (or unset it)");
    }
    return ref_kernels();
}

}  // namespace sim
}  // namespace bitnet
