// ioctl_script.h: drive the emulated card driver (driver_emu.h) with a byte string.
//
// The byte string is a script of system calls a user process could make on the card node:
// ioctls with arbitrary request numbers and argument bytes, writes into the DMA buffer,
// poll, mmap/munmap, close and re-open. It is what fuzz/fuzz_ioctl.cpp feeds to libFuzzer, and
// tests/test_fuzz_regressions.py replays the recorded inputs through the same function (via
// bitnet._core._replay_ioctl_script), so a crash the fuzzer found stays fixed.
//
// The driver must survive any script: every call returns 0 or -1 with an errno the ABI lists
// (docs/DEVICE_ABI.md section 10), and GET_STATUS afterwards reports a valid state and card
// error code. Script format (every read past the end yields zeros):
//
//   repeat: op (u8), then by op % 8:
//     0  ioctl: which (u8: % 16 picks one of the ABI's requests, 15 = a raw u32 request that
//        follows), mode (u8: bit 0 NULL argument, bit 1 a closed descriptor, bit 2 move the
//        offsets and sizes into their regions and shrink shapes, so deep paths are reached),
//        argument bytes (as many as the request's size field, at most 512)
//     1  write to the DMA buffer: offset (u32, % buffer size), length (u16), bytes
//     2  write packed weight rows: like 1, but 2-bit code 3 becomes 2 (every code a trit)
//     3  poll: timeout (u8 % 4 * 5 ms)
//     4  close the descriptor, and open the node again
//     5  mmap: length (u32), offset (u16), flags (u8: bit 0 MAP_SHARED); munmap if it worked
//     6  open a path: length (u8 % 32), bytes
//     7  write an activation scale block: offset (u32), count (u8); finite positive floats
//
// Thread-safety: each call builds and destroys its own driver; calls may run concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace bitnet {
namespace sim {

// Runs the script on a fresh emulated card (small DMA regions and weight memory, short
// timeouts). Returns "" when every invariant held, else a description of the first violation.
// `succeeded`, if given, counts the ioctls that returned 0, by request number (tests check
// that a seed reaches the paths it is meant to).
std::string run_ioctl_script(const uint8_t* data, size_t size, std::map<unsigned long, int>* succeeded = nullptr);

}  // namespace sim
}  // namespace bitnet
