// kernel_transport.cpp: the transport that speaks the card driver's protocol
// (docs/DEVICE_ABI.md): open the node, GET_INFO, mmap the DMA buffer, move weights and
// activations through it, issue LOAD_SLOT / MATMUL / FREE_SLOTS / GET_PERF_EXT, and wait for
// completion with poll() under a deadline.
//
// All system calls go through a Syscalls object, so the very same code runs against a real
// /dev/bitnetN and against the driver emulation of "sim+ioctl".
//
// Thread-safety: commands that use the DMA buffer (load, run) are serialised by cmd_mu_;
// queries (counters, slot table) may run beside them.
#include <fcntl.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>

#include "bitnet_abi.h"
#include "error.h"
#include "syscalls.h"
#include "transport.h"

namespace bitnet {
namespace {

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
uint64_t row_bytes(int64_t k) { return static_cast<uint64_t>((k + 63) / 64) * 16; }

// How a driver errno maps onto the library's codes (docs/DEVICE_ABI.md "Error codes").
ErrorCode code_for_errno(int err) {
    switch (err) {
        case EBUSY: return ErrorCode::BUSY;
        case ENOMEM:
        case ENOSPC: return ErrorCode::NO_MEMORY;
        case ETIMEDOUT: return ErrorCode::TIMEOUT;
        case EIO:
        case ENODEV:
        case ENXIO: return ErrorCode::HW_ERROR;
        case ECANCELED: return ErrorCode::ABORTED;
        default: return ErrorCode::IOCTL;   // EINVAL, EFAULT, ENOTTY, ENOENT, EOPNOTSUPP ...
    }
}

// Slot layout (docs/DEVICE_ABI.md "Weight slot layout"): groups of 64 elements in 16 bytes;
// byte m of group g holds codes t + 1 of elements 64g + m + 16j at bits 2j+1:2j, j = 0..3;
// padding elements hold code 1.
void pack_row(const int8_t* t, int64_t k, uint8_t* dst) {
    const int64_t groups = (k + 63) / 64;
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t base = g * 64;
        if (base + 64 <= k) {
            for (int m = 0; m < 16; ++m) {
                const int8_t* e = t + base + m;
                dst[g * 16 + m] = static_cast<uint8_t>((e[0] + 1) | ((e[16] + 1) << 2) | ((e[32] + 1) << 4) | ((e[48] + 1) << 6));
            }
        } else {
            for (int m = 0; m < 16; ++m) {
                unsigned byte = 0;
                for (int j = 0; j < 4; ++j) {
                    const int64_t e = base + m + 16 * j;
                    const unsigned code = e < k ? static_cast<unsigned>(t[e] + 1) : 1u;
                    byte |= code << (2 * j);
                }
                dst[g * 16 + m] = static_cast<uint8_t>(byte);
            }
        }
    }
}

class KernelTransport final : public Transport {
public:
    KernelTransport(std::shared_ptr<Syscalls> sys, const std::string& path, const std::string& name)
        : sys_(std::move(sys)), path_(path), name_(name) {
        try {
            open_card();
        } catch (...) {
            release();
            throw;
        }
    }
    ~KernelTransport() override { release(); }

    std::string name() const override { return name_; }
    std::string kernel_name() const override { return engine_; }
    sim::BoardProfile profile() const override { return profile_; }
    bool counters_modeled() const override { return (info_.capabilities & BITNET_CAP_EMULATED) != 0; }

    void load_slot(int slot, const int8_t* t, int64_t n, int64_t k, float scale) override;
    void free_slot(int slot) override { free_ids(slot, slot + 1); }
    void free_all() override { free_ids(0, static_cast<int64_t>(info_.max_slot_id) + 1); }
    void free_range(int lo, int hi) override { free_ids(lo, hi); }
    bool has_slot(int slot) const override {
        std::lock_guard<std::mutex> lock(slots_mu_);
        return slots_.count(slot) != 0;
    }
    SlotInfo slot_info(int slot) const override {
        std::lock_guard<std::mutex> lock(slots_mu_);
        auto it = slots_.find(slot);
        if (it == slots_.end()) throw Error(ErrorCode::INVALID, "card slot " + std::to_string(slot) + " holds no weights");
        return it->second;
    }
    uint64_t weight_used() const override { return perf_ext(false).weight_bytes_used; }
    uint64_t weight_capacity() const override { return info_.weight_capacity; }

    void run(const MatmulCommand& cmd) override;

    Counters counters() const override {
        const bitnet_perf_ext p = perf_ext(false);
        Counters c;
        c.total_cycles = p.total_cycles;
        c.dma_cycles = p.dma_cycles;
        c.compute_cycles = p.compute_cycles;
        c.commands = p.commands;
        c.matmuls = p.matmuls;
        c.macs = p.macs;
        c.dma_bytes = p.dma_bytes;
        c.weight_bytes_read = p.weight_bytes_read;
        return c;
    }
    void reset_counters() override { perf_ext(true); }

    void inject_fault(sim::FaultKind kind, int count, int64_t after) override {
        if (!(info_.capabilities & BITNET_CAP_FAULT_INJECT))
            throw Error(ErrorCode::INVALID, name_ + ": this card does not support fault injection");
        bitnet_fault f;
        std::memset(&f, 0, sizeof(f));
        f.kind = static_cast<uint32_t>(kind);
        f.count = static_cast<uint32_t>(std::max(count, 0));
        f.after = static_cast<uint32_t>(std::min<int64_t>(std::max<int64_t>(after, 0), UINT32_MAX));
        do_ioctl(BITNET_IOC_INJECT_FAULT, &f, "INJECT_FAULT");
    }
    void set_timeout_ms(int64_t ms) override { timeout_ms_.store(ms > 0 ? std::min<int64_t>(ms, int64_t{1} << 40) : 30000); }

private:
    void open_card();
    void release();
    [[noreturn]] void fail_errno(const std::string& what, int err) const {
        throw Error(code_for_errno(err), path_ + ": " + what + " failed: " + std::strerror(err) + " (errno " +
                                             std::to_string(err) + ")");
    }
    // ioctl with EINTR retried; returns 0 or the errno.
    int xioctl(unsigned long request, void* arg) const {
        for (;;) {
            if (sys_->ioctl(fd_, request, arg) == 0) return 0;
            const int err = errno;
            if (err != EINTR) return err;
        }
    }
    void do_ioctl(unsigned long request, void* arg, const char* what) const {
        if (const int err = xioctl(request, arg)) fail_errno(what, err);
    }
    bitnet_perf_ext perf_ext(bool clear) const {
        bitnet_perf_ext p;
        std::memset(&p, 0, sizeof(p));
        p.flags = clear ? BITNET_PERF_CLEAR : 0u;
        do_ioctl(BITNET_IOC_GET_PERF_EXT, &p, "GET_PERF_EXT");
        return p;
    }
    void free_ids(int64_t lo, int64_t hi);
    void wait_done();
    uint8_t* at(uint64_t off) const { return map_ + off; }

    std::shared_ptr<Syscalls> sys_;
    std::string path_, name_;
    int fd_ = -1;
    uint8_t* map_ = nullptr;
    size_t map_size_ = 0;
    bitnet_info info_{};
    sim::BoardProfile profile_;
    std::string engine_;
    std::atomic<int64_t> timeout_ms_{30000};

    std::mutex cmd_mu_;               // the DMA buffer and the card's command queue
    mutable std::mutex slots_mu_;
    std::map<int, SlotInfo> slots_;   // the host's copy of the card's slot table
};

void KernelTransport::open_card() {
    fd_ = sys_->open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) {
        const int err = errno;
        std::string msg = "cannot open " + path_ + ": " + std::strerror(err) + ".";
        if (err == ENOENT || err == ENODEV || err == ENXIO)
            msg += " No BitNet card is present at that path; use device=\"sim\" for the simulator";
        else if (err == EACCES || err == EPERM)
            msg += " Give your user access to the node (udev rule or group), or use device=\"sim\" for the simulator";
        else if (err == EBUSY)
            msg += " Another process has the card open (one process owns a card); or use device=\"sim\"";
        else
            msg += " Use device=\"sim\" for the simulator";
        throw Error(ErrorCode::OPEN, msg);
    }
    std::memset(&info_, 0, sizeof(info_));
    if (const int err = xioctl(BITNET_IOC_GET_INFO, &info_))
        throw Error(ErrorCode::OPEN, "cannot open " + path_ + ": it does not answer GET_INFO (" + std::strerror(err) +
                                         "), so it is not a BitNet card speaking ABI " +
                                         std::to_string(BITNET_ABI_MAJOR) + "; use device=\"sim\" for the simulator");
    if (info_.abi_major != BITNET_ABI_MAJOR)
        throw Error(ErrorCode::OPEN, "cannot open " + path_ + ": the card speaks ABI " + std::to_string(info_.abi_major) +
                                         "." + std::to_string(info_.abi_minor) + ", this library ABI " +
                                         std::to_string(BITNET_ABI_MAJOR) + ".x");
    // The buffer layout comes from the card; check it before trusting any offset.
    auto region_in = [&](uint64_t off, uint64_t size) {
        return size > 0 && off <= info_.mmap_size && size <= info_.mmap_size - off && off % info_.dma_align == 0;
    };
    const bool align_ok = info_.dma_align >= 4 && info_.dma_align <= 4096 && (info_.dma_align & (info_.dma_align - 1)) == 0;
    const bool ok = align_ok && info_.mmap_size > 0 && region_in(info_.input_offset, info_.input_size) &&
                    region_in(info_.output_offset, info_.output_size) &&
                    region_in(info_.weight_offset, info_.weight_size) && info_.max_ops >= 1 &&
                    info_.max_ops <= BITNET_MAX_OPS && info_.max_rows >= 1 && info_.max_k >= 1 && info_.max_n >= 1 &&
                    info_.clock_hz > 0 && info_.lanes > 0 && info_.lane_width > 0 && info_.ddr_bytes_per_s > 0 &&
                    info_.dma_bytes_per_s > 0 && (info_.capabilities & BITNET_CAP_MATMUL);
    if (!ok)
        throw Error(ErrorCode::OPEN, "cannot open " + path_ +
                                         ": the card reports an inconsistent DMA buffer layout or limits (GET_INFO)");
    info_.board[sizeof(info_.board) - 1] = 0;
    info_.engine[sizeof(info_.engine) - 1] = 0;
    engine_ = info_.engine;
    profile_.name = info_.board;
    profile_.clock_mhz = static_cast<double>(info_.clock_hz) / 1e6;
    profile_.lanes = static_cast<int>(info_.lanes);
    profile_.lane_width = static_cast<int>(info_.lane_width);
    profile_.ddr_gbps = static_cast<double>(info_.ddr_bytes_per_s) / 1e9;
    profile_.dma_gbps = static_cast<double>(info_.dma_bytes_per_s) / 1e9;
    profile_.dma_setup_cycles = info_.dma_setup_cycles;
    profile_.pipeline_cycles = info_.pipeline_cycles;
    profile_.weight_capacity = info_.weight_capacity;

    map_size_ = static_cast<size_t>(info_.mmap_size);
    void* p = sys_->mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) {
        const int err = errno;
        map_size_ = 0;
        throw Error(ErrorCode::MMAP, "cannot map the DMA buffer of " + path_ + " (" + std::to_string(info_.mmap_size) +
                                         " bytes): " + std::strerror(err));
    }
    map_ = static_cast<uint8_t*>(p);
    // Start from a clean card: no command, no error, no slots of an earlier owner.
    do_ioctl(BITNET_IOC_RESET, nullptr, "RESET");
    bitnet_free_slots f{0, info_.max_slot_id == UINT32_MAX ? UINT32_MAX : info_.max_slot_id + 1, 0, 0};
    do_ioctl(BITNET_IOC_FREE_SLOTS, &f, "FREE_SLOTS");
}

void KernelTransport::release() {
    if (fd_ >= 0) {
        xioctl(BITNET_IOC_ABORT, nullptr);
        if (map_) sys_->munmap(map_, map_size_);
        sys_->close(fd_);
    }
    map_ = nullptr;
    fd_ = -1;
}

void KernelTransport::free_ids(int64_t lo, int64_t hi) {
    lo = std::max<int64_t>(lo, 0);
    hi = std::min<int64_t>(hi, static_cast<int64_t>(info_.max_slot_id) + 1);
    if (hi <= lo) return;
    std::lock_guard<std::mutex> cmd(cmd_mu_);
    bitnet_free_slots f{static_cast<uint32_t>(lo), static_cast<uint32_t>(hi), 0, 0};
    do_ioctl(BITNET_IOC_FREE_SLOTS, &f, "FREE_SLOTS");
    std::lock_guard<std::mutex> lock(slots_mu_);
    slots_.erase(slots_.lower_bound(static_cast<int>(lo)),
                 hi > INT32_MAX ? slots_.end() : slots_.lower_bound(static_cast<int>(hi)));
}

void KernelTransport::load_slot(int slot, const int8_t* t, int64_t n, int64_t k, float scale) {
    // The simulator's argument checks, with its messages, so both transports reject alike.
    if (slot < 0) throw Error(ErrorCode::INVALID, "slot id must be >= 0, got " + std::to_string(slot));
    if (n <= 0 || k <= 0)
        throw Error(ErrorCode::INVALID, "weight matrix must be non-empty, got shape [" + std::to_string(n) + ", " +
                                            std::to_string(k) + "]");
    if (n > (int64_t{1} << 31) || k > (int64_t{1} << 31)) throw Error(ErrorCode::INVALID, "weight matrix too large");
    if (!std::isfinite(scale) || scale < 0)
        throw Error(ErrorCode::INVALID, "weight scale must be finite and >= 0, got " + std::to_string(scale));
    for (int64_t i = 0; i < n * k; ++i)
        if (t[i] < -1 || t[i] > 1)
            throw Error(ErrorCode::INVALID, "weight codes must be -1, 0 or +1; element " + std::to_string(i) + " is " +
                                                std::to_string(t[i]));
    if (static_cast<uint64_t>(slot) > info_.max_slot_id || static_cast<uint64_t>(n) > info_.max_n ||
        static_cast<uint64_t>(k) > info_.max_k)
        throw Error(ErrorCode::INVALID, "slot " + std::to_string(slot) + " [" + std::to_string(n) + ", " +
                                            std::to_string(k) + "] exceeds the card's limits (slot id <= " +
                                            std::to_string(info_.max_slot_id) + ", rows <= " + std::to_string(info_.max_n) +
                                            ", inputs <= " + std::to_string(info_.max_k) + ")");
    const uint64_t rb = row_bytes(k);
    const uint64_t chunk_rows = std::min<uint64_t>(info_.weight_size / rb, static_cast<uint64_t>(n));
    if (chunk_rows == 0)
        throw Error(ErrorCode::INVALID, "one weight row of " + std::to_string(k) + " inputs needs " + std::to_string(rb) +
                                            " bytes; the card's weight staging region holds " +
                                            std::to_string(info_.weight_size));
    std::lock_guard<std::mutex> cmd(cmd_mu_);
    for (uint64_t r0 = 0; r0 < static_cast<uint64_t>(n); r0 += chunk_rows) {
        const uint64_t rows = std::min<uint64_t>(chunk_rows, static_cast<uint64_t>(n) - r0);
        uint8_t* dst = at(info_.weight_offset);
        for (uint64_t r = 0; r < rows; ++r) pack_row(t + (r0 + r) * static_cast<uint64_t>(k), k, dst + r * rb);
        bitnet_load_slot c;
        std::memset(&c, 0, sizeof(c));
        c.slot = static_cast<uint32_t>(slot);
        c.n = static_cast<uint32_t>(n);
        c.k = static_cast<uint32_t>(k);
        c.scale = scale;
        c.row_begin = static_cast<uint32_t>(r0);
        c.row_count = static_cast<uint32_t>(rows);
        c.src_offset = info_.weight_offset;
        c.src_size = rows * rb;
        if (const int err = xioctl(BITNET_IOC_LOAD_SLOT, &c)) {
            if (err == ENOMEM || err == ENOSPC) {
                const uint64_t used = perf_ext(false).weight_bytes_used;
                const uint64_t old = has_slot(slot) ? slot_info(slot).bytes : 0;
                throw Error(ErrorCode::NO_MEMORY, "card weight memory full: slot " + std::to_string(slot) + " needs " +
                                                      std::to_string(static_cast<uint64_t>(n) * rb) + " bytes, " +
                                                      std::to_string(info_.weight_capacity - (used - old)) + " of " +
                                                      std::to_string(info_.weight_capacity) + " are free");
            }
            fail_errno("LOAD_SLOT (slot " + std::to_string(slot) + ")", err);
        }
    }
    bitnet_slot_info si;
    std::memset(&si, 0, sizeof(si));
    si.slot = static_cast<uint32_t>(slot);
    do_ioctl(BITNET_IOC_SLOT_INFO, &si, "SLOT_INFO");
    SlotInfo info;
    info.slot = slot;
    info.n = si.n;
    info.k = si.k;
    info.scale = si.scale;
    info.bytes = si.bytes;
    std::lock_guard<std::mutex> lock(slots_mu_);
    slots_[slot] = info;
}

void KernelTransport::run(const MatmulCommand& cmd) {
    if (!cmd.q || !cmd.sx) throw Error(ErrorCode::INVALID, "matmul command without activation buffers");
    if (cmd.B <= 0 || cmd.K <= 0) throw Error(ErrorCode::INVALID, "matmul command with an empty activation batch");
    if (cmd.ops.empty()) throw Error(ErrorCode::INVALID, "matmul command with no products");
    std::vector<int64_t> ns;
    {
        std::lock_guard<std::mutex> lock(slots_mu_);
        for (const MatmulOp& op : cmd.ops) {
            auto it = slots_.find(op.slot);
            if (it == slots_.end())
                throw Error(ErrorCode::INVALID, "matmul on card slot " + std::to_string(op.slot) + ", which holds no weights");
            if (it->second.k != cmd.K)
                throw Error(ErrorCode::INVALID, "matmul on card slot " + std::to_string(op.slot) + ": the slot has " +
                                                    std::to_string(it->second.k) + " inputs, the activations " +
                                                    std::to_string(cmd.K));
            if (!op.y) throw Error(ErrorCode::INVALID, "matmul product without an output buffer");
            ns.push_back(it->second.n);
        }
    }
    const uint64_t A = info_.dma_align;
    const uint64_t K = static_cast<uint64_t>(cmd.K);
    std::lock_guard<std::mutex> lock(cmd_mu_);
    // Products go in groups of max_ops, rows in chunks that fit the input and output regions.
    for (size_t o0 = 0; o0 < cmd.ops.size(); o0 += info_.max_ops) {
        const size_t o1 = std::min(cmd.ops.size(), o0 + info_.max_ops);
        auto fits = [&](uint64_t rows) {
            const uint64_t in = align_up(rows * K, A) + rows * 4;
            uint64_t out = 0;
            for (size_t o = o0; o < o1; ++o) {
                const uint64_t b = rows * static_cast<uint64_t>(ns[o]) * 4;
                out += align_up(b, A) * (cmd.ops[o].acc ? 2 : 1);
            }
            return in <= info_.input_size && out <= info_.output_size;
        };
        uint64_t per_row_out = 0;
        for (size_t o = o0; o < o1; ++o) per_row_out += static_cast<uint64_t>(ns[o]) * 4 * (cmd.ops[o].acc ? 2 : 1);
        uint64_t chunk = std::min<uint64_t>({static_cast<uint64_t>(cmd.B), info_.max_rows, info_.input_size / (K + 4),
                                             info_.output_size / std::max<uint64_t>(per_row_out, 1)});
        while (chunk > 0 && !fits(chunk)) --chunk;
        if (chunk == 0)
            throw Error(ErrorCode::INVALID, "one activation row (" + std::to_string(K) + " inputs, " +
                                                std::to_string(per_row_out) +
                                                " output bytes) does not fit the card's DMA regions");
        for (uint64_t b0 = 0; b0 < static_cast<uint64_t>(cmd.B); b0 += chunk) {
            const uint64_t rows = std::min<uint64_t>(chunk, static_cast<uint64_t>(cmd.B) - b0);
            bitnet_matmul_cmd c;
            std::memset(&c, 0, sizeof(c));
            c.act_offset = info_.input_offset;
            c.scale_offset = info_.input_offset + align_up(rows * K, A);
            c.rows = static_cast<uint32_t>(rows);
            c.k = static_cast<uint32_t>(K);
            c.act_stride = static_cast<uint32_t>(K);
            c.n_ops = static_cast<uint32_t>(o1 - o0);
            std::memcpy(at(c.act_offset), cmd.q + b0 * K, rows * K);
            std::memcpy(at(c.scale_offset), cmd.sx + b0, rows * 4);
            uint64_t off = info_.output_offset;
            for (size_t o = o0; o < o1; ++o) {
                bitnet_matmul_op& op = c.ops[o - o0];
                const uint64_t bytes = rows * static_cast<uint64_t>(ns[o]) * 4;
                op.slot = static_cast<uint32_t>(cmd.ops[o].slot);
                op.y_offset = off;
                off += align_up(bytes, A);
                if (cmd.ops[o].acc) {
                    op.flags = BITNET_OP_ACC;
                    op.acc_offset = off;
                    off += align_up(bytes, A);
                }
            }
            do_ioctl(BITNET_IOC_MATMUL, &c, "MATMUL");
            wait_done();
            for (size_t o = o0; o < o1; ++o) {
                const bitnet_matmul_op& op = c.ops[o - o0];
                const uint64_t n = static_cast<uint64_t>(ns[o]);
                std::memcpy(cmd.ops[o].y + b0 * n, at(op.y_offset), rows * n * 4);
                if (cmd.ops[o].acc) std::memcpy(cmd.ops[o].acc + b0 * n, at(op.acc_offset), rows * n * 4);
            }
        }
    }
}

void KernelTransport::wait_done() {
    const int64_t timeout = timeout_ms_.load();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout);
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        struct pollfd p;
        p.fd = fd_;
        p.events = POLLIN;
        p.revents = 0;
        const int r = sys_->poll(&p, 1, static_cast<int>(std::min<int64_t>(std::max<int64_t>(left.count(), 0), INT32_MAX)));
        if (r < 0) {
            const int err = errno;
            if (err == EINTR) continue;
            fail_errno("poll", err);
        }
        if (r > 0 && (p.revents & POLLNVAL)) fail_errno("poll", EBADF);
        if (r > 0 && (p.revents & (POLLIN | POLLERR))) break;
        if (std::chrono::steady_clock::now() >= deadline) {
            xioctl(BITNET_IOC_ABORT, nullptr);
            throw Error(ErrorCode::TIMEOUT, name_ + ": the card did not finish a matmul command within " +
                                                std::to_string(timeout) + " ms; the command was aborted");
        }
    }
    bitnet_status st;
    std::memset(&st, 0, sizeof(st));
    do_ioctl(BITNET_IOC_GET_STATUS, &st, "GET_STATUS");
    if (st.state == BITNET_STATE_ERROR) {
        // Keep the card usable (its weights stay); the Device latches the error until reset().
        xioctl(BITNET_IOC_RESET, nullptr);
        throw Error(ErrorCode::HW_ERROR,
                    "card fault: " + name_ + " reported error " + std::to_string(st.error_code) + " (" +
                        sim::card_error_name(st.error_code) + ") on a matmul command (slot " +
                        std::to_string(st.current_layer) + ")",
                    st.error_code);
    }
    if (st.error_code == BITNET_ERR_ABORTED) throw Error(ErrorCode::ABORTED, name_ + ": the card aborted the command");
}

}  // namespace

std::unique_ptr<Transport> make_kernel_transport(std::shared_ptr<Syscalls> sys, const std::string& path,
                                                 const std::string& name) {
    return std::make_unique<KernelTransport>(std::move(sys), path, name);
}

}  // namespace bitnet
