// transport.h: how the host Device talks to a card.
//
// A transport carries the card protocol (load a weight slot, run a matmul command, read the
// counters) to one card. Two exist by design (DESIGN.md section 4): the simulator transport,
// which calls the in-process card model directly, and the kernel transport, which speaks the
// ioctl/mmap protocol of docs/DEVICE_ABI.md to /dev/bitnetN (or to the driver emulation).
// The runtime only ever sees this interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../sim/card.h"

namespace bitnet {

using sim::Counters;
using sim::MatmulCommand;
using sim::MatmulOp;
using sim::SlotInfo;

class Transport {
public:
    virtual ~Transport() = default;
    virtual std::string name() const = 0;              // "sim", "/dev/bitnet0", ...
    virtual std::string kernel_name() const = 0;       // the matmul kernel doing the work
    virtual sim::BoardProfile profile() const = 0;     // the board the counters model

    virtual void load_slot(int slot, const int8_t* t, int64_t n, int64_t k, float scale) = 0;
    virtual void free_slot(int slot) = 0;
    virtual void free_all() = 0;
    virtual void free_range(int lo, int hi) = 0;   // slots lo <= id < hi
    virtual bool has_slot(int slot) const = 0;
    virtual SlotInfo slot_info(int slot) const = 0;
    virtual uint64_t weight_used() const = 0;
    virtual uint64_t weight_capacity() const = 0;

    virtual void run(const MatmulCommand& cmd) = 0;    // blocks until the card finished

    virtual Counters counters() const = 0;
    virtual void reset_counters() = 0;
    // True when the counters come from the cycle model (simulator, emulated driver), false
    // for a real card's hardware counters.
    virtual bool counters_modeled() const { return true; }

    // Test hooks. inject_fault: after `after` more matmul commands complete, the next `count`
    // fail as a card reporting `kind` would (Error(HW_ERROR) with the card's error code), or
    // never finish (HANG; Error(INVALID) from a transport that cannot model it). kind NONE
    // clears. set_timeout_ms: how long run() waits for the card.
    virtual void inject_fault(sim::FaultKind kind, int count, int64_t after) = 0;
    virtual void set_timeout_ms(int64_t ms) { (void)ms; }
};

// The in-process simulator transport.
std::unique_ptr<Transport> make_sim_transport(const sim::BoardProfile& profile, ThreadPool* pool);

// The kernel transport: the ioctl/mmap/poll protocol of docs/DEVICE_ABI.md to the card node
// `path`, through `sys` (real_syscalls() for /dev/bitnetN, sim::DriverEmu for "sim+ioctl").
// `name` is what name() reports. Throws Error(OPEN) when the node cannot be opened or is not
// a card speaking ABI 2, Error(MMAP) when its DMA buffer cannot be mapped.
class Syscalls;
std::unique_ptr<Transport> make_kernel_transport(std::shared_ptr<Syscalls> sys, const std::string& path,
                                                 const std::string& name);

}  // namespace bitnet
