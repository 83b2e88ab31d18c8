// fuzz_ioctl.cpp: libFuzzer target for the emulated card driver's request parsing
// (sim/driver_emu.cpp): each input is a script of ioctls (any request number, any argument
// bytes), DMA-buffer contents, poll, mmap, close/re-open (format: sim/ioctl_script.h) run on a
// fresh emulated card. Nothing may crash, hang or leak, every call must fail only with an errno
// the ABI lists, and the status register must stay valid; a violation aborts so that libFuzzer
// records the input.
//
// Build and run: bash fuzz/run.sh [seconds]. A recorded failure goes to
// tests/fuzz_regressions/*.ioctl, which tests/test_fuzz_regressions.py replays.
#include <cstdint>
#include <cstdio>
#include <string>

#include "ioctl_script.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string bad = bitnet::sim::run_ioctl_script(data, size);
    if (!bad.empty()) {
        std::fprintf(stderr, "driver emulation invariant violated: %s\n", bad.c_str());
        __builtin_trap();
    }
    return 0;
}
