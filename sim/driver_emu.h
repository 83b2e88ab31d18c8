// driver_emu.h: the BitNet card's Linux driver, emulated in process on top of the simulator.
//
// DriverEmu implements the Syscalls interface (cpp/syscalls.h) the way the kernel driver of
// docs/DEVICE_ABI.md behaves: one device node, exclusive open, one mmap'd DMA buffer (here
// plain host memory), the ioctls of cpp/bitnet_abi.h validated as a driver validates them
// (unknown requests ENOTTY, bad pointers EFAULT, bad offsets/sizes/flags EINVAL, empty slots
// ENOENT, busy card EBUSY, card in ERROR EIO, weight memory full ENOMEM, timeouts ETIMEDOUT),
// poll() signalling completion, and a command worker so a card is really busy while it
// computes. The card behind it is a sim::SimCard, so "sim+ioctl" gives bit-identical results
// and counters to "sim" while exercising the kernel transport's real request stream.
//
// Thread-safety: every method may be called from any thread (as with a real driver).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../cpp/bitnet_abi.h"
#include "../cpp/syscalls.h"
#include "card.h"

namespace bitnet {
namespace sim {

struct DriverEmuConfig {
    BoardProfile profile;
    std::string node = "/dev/bitnet-emu0";
    uint64_t input_size = BITNET_INPUT_DEFAULT_SIZE;
    uint64_t output_size = BITNET_OUTPUT_DEFAULT_SIZE;
    uint64_t weight_size = BITNET_WEIGHT_DEFAULT_SIZE;
    int64_t timeout_ms = 30000;   // WAIT_COMPLETE gives up after this (VIBEE: 30 s)
    uint32_t max_slots = 65536;
    uint32_t max_rows = 4096;
    uint32_t max_ops = BITNET_MAX_OPS;
};

class DriverEmu final : public Syscalls {
public:
    // `pool` runs the simulated engine; it must outlive the emulator.
    DriverEmu(const DriverEmuConfig& cfg, ThreadPool* pool);
    ~DriverEmu() override;
    DriverEmu(const DriverEmu&) = delete;
    DriverEmu& operator=(const DriverEmu&) = delete;

    int open(const char* path, int flags) override;
    int close(int fd) override;
    int ioctl(int fd, unsigned long request, void* arg) override;
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) override;
    int munmap(void* addr, size_t length) override;
    int poll(struct pollfd* fds, nfds_t nfds, int timeout_ms) override;

    const DriverEmuConfig& config() const { return cfg_; }
    SimCard& card() { return card_; }
    // The DMA buffer as the driver sees it (tests read and write it without mmap).
    uint8_t* region() { return region_; }
    uint64_t region_size() const { return region_size_; }

private:
    struct Staging {   // a LOAD_SLOT in progress (rows arrive in order)
        bool active = false;
        uint32_t slot = 0, n = 0, k = 0, rows_done = 0;
        float scale = 0;
        std::vector<int8_t> t;   // n * k codes
    };

    int fail(int err);
    bool check_fd(int fd);
    bool ready_locked() const;
    int mutable_state_check_locked();   // 0, or the errno for a card that cannot take a command
    bool region_ok(uint64_t off, uint64_t size, uint64_t base, uint64_t len) const;

    int do_start_inference(const bitnet_inference_cmd& c);
    int do_load(uint32_t slot, uint32_t n, uint32_t k, float scale, uint32_t row_begin, uint32_t row_count,
                const uint8_t* src);
    int do_free(const bitnet_free_slots& f);
    int do_slot_info(bitnet_slot_info& s);
    int do_matmul(const bitnet_matmul_cmd& c);
    int do_wait();
    int do_abort();
    int do_reset();
    void fill_info(bitnet_info& info) const;
    void worker_loop();

    DriverEmuConfig cfg_;
    SimCard card_;
    uint8_t* region_ = nullptr;
    uint64_t region_size_ = 0;
    uint64_t in_off_ = 0, out_off_ = 0, w_off_ = 0;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    int open_fd_ = -1;
    int next_fd_ = 1000;
    uint32_t state_ = BITNET_STATE_IDLE;
    uint32_t error_code_ = BITNET_ERR_OK;
    uint32_t current_slot_ = 0;
    uint32_t rows_processed_ = 0;
    Staging staging_;
    std::set<uint32_t> slots_;   // the driver's slot table (the card holds the data)

    // The command in flight (at most one).
    bool busy_ = false;
    bool pending_ = false;
    bool abort_requested_ = false;
    bool stopping_ = false;
    uint32_t hangs_ = 0;        // next commands that never finish on their own
    uint32_t hang_after_ = 0;   // commands that still complete before those
    MatmulCommand cmd_;
    std::vector<int8_t> act_copy_;   // compacted activations when act_stride != k
    std::thread worker_;
};

}  // namespace sim
}  // namespace bitnet
