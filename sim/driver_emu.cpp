// driver_emu.cpp: the emulated card driver (see driver_emu.h and docs/DEVICE_ABI.md).
//
// Structure follows a kernel driver: every ioctl first copies its argument in (EFAULT),
// checks what it can without the card (EINVAL), then takes the device lock and checks the
// card's state (EBUSY, EIO) and the slot table (ENOENT, ENOMEM) before anything changes. A
// rejected request therefore never changes the card.
#include "driver_emu.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>
#include <utility>

#include "../cpp/error.h"

namespace bitnet {
namespace sim {
namespace {

constexpr uint64_t kAlign = 64;              // DMA descriptor alignment of every offset
constexpr uint32_t kMaxSlotId = 0x7FFFFFFEu;  // slot ids fit an int, end = id + 1 too
constexpr uint32_t kMaxDim = 1u << 24;        // max_k, max_n
constexpr uint32_t kHwVersion = 0x020000;     // 2.0.0

uint64_t row_bytes_u(uint32_t k) { return (static_cast<uint64_t>(k) + 63) / 64 * 16; }

void copy_name(char* dst, size_t cap, const std::string& s) {
    const size_t n = std::min(cap - 1, s.size());
    std::memcpy(dst, s.data(), n);
    std::memset(dst + n, 0, cap - n);
}

}  // namespace

DriverEmu::DriverEmu(const DriverEmuConfig& cfg, ThreadPool* pool) : cfg_(cfg), card_(cfg.profile, pool) {
    const uint64_t page = 4096;
    for (uint64_t s : {cfg_.input_size, cfg_.output_size, cfg_.weight_size})
        if (s == 0 || s % page != 0 || s > (1ull << 40))
            throw Error(ErrorCode::INVALID, "driver emulation: region sizes must be non-zero multiples of 4096");
    if (cfg_.max_ops == 0 || cfg_.max_ops > BITNET_MAX_OPS || cfg_.max_rows == 0 || cfg_.max_slots == 0)
        throw Error(ErrorCode::INVALID, "driver emulation: bad limits");
    region_size_ = cfg_.input_size + cfg_.output_size + cfg_.weight_size;
    // Anonymous memory: pages cost nothing until touched, like a reserved DMA pool.
    void* p = ::mmap(nullptr, region_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        throw Error(ErrorCode::NO_MEMORY, "driver emulation: cannot reserve a " + std::to_string(region_size_) +
                                              "-byte DMA buffer");
    region_ = static_cast<uint8_t*>(p);
    in_off_ = 0;
    out_off_ = cfg_.input_size;
    w_off_ = cfg_.input_size + cfg_.output_size;
    worker_ = std::thread([this] { worker_loop(); });
}

DriverEmu::~DriverEmu() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stopping_ = true;
        abort_requested_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    ::munmap(region_, region_size_);
}

int DriverEmu::fail(int err) {
    errno = err;
    return -1;
}

bool DriverEmu::check_fd(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    return open_fd_ >= 0 && fd == open_fd_;
}

bool DriverEmu::ready_locked() const {
    return !busy_ && (state_ == BITNET_STATE_IDLE || state_ == BITNET_STATE_ERROR);
}

int DriverEmu::mutable_state_check_locked() {
    if (state_ == BITNET_STATE_ERROR) return EIO;
    if (busy_ || state_ != BITNET_STATE_IDLE) return EBUSY;
    return 0;
}

bool DriverEmu::region_ok(uint64_t off, uint64_t size, uint64_t base, uint64_t len) const {
    return off % kAlign == 0 && off >= base && size <= len && off - base <= len - size;
}

// ------------------------------------------------------------------------ file operations

int DriverEmu::open(const char* path, int flags) {
    (void)flags;
    if (!path) return fail(EFAULT);
    if (cfg_.node != path) return fail(ENOENT);
    std::lock_guard<std::mutex> lock(mu_);
    if (open_fd_ >= 0) return fail(EBUSY);   // one process owns the card
    open_fd_ = next_fd_++;
    return open_fd_;
}

int DriverEmu::close(int fd) {
    if (!check_fd(fd)) return fail(EBADF);
    {
        // A load in progress on another thread finishes first (it owns the staging buffer).
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return state_ != BITNET_STATE_LOADING_WEIGHTS; });
    }
    do_abort();
    std::lock_guard<std::mutex> lock(mu_);
    staging_ = Staging{};
    open_fd_ = -1;
    return 0;
}

void* DriverEmu::mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) {
    (void)addr;
    (void)prot;
    if (!check_fd(fd)) {
        errno = EBADF;
        return MAP_FAILED;
    }
    if (offset != 0 || length == 0 || length > region_size_ || !(flags & MAP_SHARED)) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    return region_;
}

int DriverEmu::munmap(void* addr, size_t length) {
    if (addr != region_ || length == 0 || length > region_size_) return fail(EINVAL);
    return 0;
}

int DriverEmu::poll(struct pollfd* fds, nfds_t nfds, int timeout_ms) {
    if (nfds > 0 && !fds) return fail(EFAULT);
    std::unique_lock<std::mutex> lock(mu_);
    bool any_open = false;
    for (nfds_t i = 0; i < nfds; ++i) any_open = any_open || (open_fd_ >= 0 && fds[i].fd == open_fd_);
    if (any_open) {
        auto ready = [this] { return ready_locked() || stopping_; };
        if (timeout_ms < 0) cv_.wait(lock, ready);
        else cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready);
    }
    int count = 0;
    for (nfds_t i = 0; i < nfds; ++i) {
        fds[i].revents = 0;
        if (fds[i].fd < 0) continue;
        if (open_fd_ < 0 || fds[i].fd != open_fd_) {
            fds[i].revents = POLLNVAL;
        } else if (ready_locked()) {
            fds[i].revents = static_cast<short>(fds[i].events & (POLLIN | POLLRDNORM));
            if (state_ == BITNET_STATE_ERROR) fds[i].revents |= POLLERR;
        }
        if (fds[i].revents) ++count;
    }
    return count;
}

// ------------------------------------------------------------------------------- ioctls

int DriverEmu::ioctl(int fd, unsigned long request, void* arg) {
    if (!check_fd(fd)) return fail(EBADF);
    // copy_from_user / copy_to_user equivalents: a null argument is an unreadable one.
    auto in = [&](auto& s) -> bool {
        if (!arg) return false;
        std::memcpy(&s, arg, sizeof(s));
        return true;
    };
    auto out = [&](const auto& s) { std::memcpy(arg, &s, sizeof(s)); };
    switch (request) {
        case BITNET_IOC_START_INFERENCE: {
            bitnet_inference_cmd c;
            if (!in(c)) return fail(EFAULT);
            return do_start_inference(c);
        }
        case BITNET_IOC_LOAD_WEIGHTS: {
            bitnet_weight_cmd c;
            if (!in(c)) return fail(EFAULT);
            if (c.weight_size < sizeof(bitnet_slot_header) ||
                !region_ok(c.weight_offset, c.weight_size, w_off_, cfg_.weight_size))
                return fail(EINVAL);
            bitnet_slot_header h;
            std::memcpy(&h, region_ + c.weight_offset, sizeof(h));
            if (h.magic != BITNET_SLOT_MAGIC || h.n == 0 || h.k == 0 || h.n > kMaxDim || h.k > kMaxDim) return fail(EINVAL);
            if (c.weight_size != sizeof(h) + static_cast<uint64_t>(h.n) * row_bytes_u(h.k)) return fail(EINVAL);
            return do_load(c.layer_id, h.n, h.k, h.scale, 0, h.n, region_ + c.weight_offset + sizeof(h));
        }
        case BITNET_IOC_GET_STATUS: {
            if (!arg) return fail(EFAULT);
            bitnet_status s;
            {
                std::lock_guard<std::mutex> lock(mu_);
                s.state = state_;
                s.current_layer = current_slot_;
                s.tokens_processed = rows_processed_;
                s.error_code = error_code_;
            }
            out(s);
            return 0;
        }
        case BITNET_IOC_WAIT_COMPLETE: return do_wait();
        case BITNET_IOC_ABORT: return do_abort();
        case BITNET_IOC_GET_PERF: {
            if (!arg) return fail(EFAULT);
            const Counters c = card_.counters();
            bitnet_perf p;
            std::memset(&p, 0, sizeof(p));
            p.total_cycles = c.total_cycles;
            p.dma_cycles = c.dma_cycles;
            p.compute_cycles = c.compute_cycles;
            out(p);
            return 0;
        }
        case BITNET_IOC_RESET: return do_reset();
        case BITNET_IOC_GET_INFO: {
            if (!arg) return fail(EFAULT);
            bitnet_info info;
            fill_info(info);
            out(info);
            return 0;
        }
        case BITNET_IOC_LOAD_SLOT: {
            bitnet_load_slot c;
            if (!in(c)) return fail(EFAULT);
            if (c.flags != 0 || c.reserved != 0 || c.k == 0 || c.k > kMaxDim) return fail(EINVAL);
            if (c.src_size != static_cast<uint64_t>(c.row_count) * row_bytes_u(c.k) ||
                !region_ok(c.src_offset, c.src_size, w_off_, cfg_.weight_size))
                return fail(EINVAL);
            return do_load(c.slot, c.n, c.k, c.scale, c.row_begin, c.row_count, region_ + c.src_offset);
        }
        case BITNET_IOC_FREE_SLOTS: {
            bitnet_free_slots c;
            if (!in(c)) return fail(EFAULT);
            return do_free(c);
        }
        case BITNET_IOC_SLOT_INFO: {
            bitnet_slot_info c;
            if (!in(c)) return fail(EFAULT);
            const int r = do_slot_info(c);
            if (r == 0) out(c);
            return r;
        }
        case BITNET_IOC_MATMUL: {
            bitnet_matmul_cmd c;
            if (!in(c)) return fail(EFAULT);
            return do_matmul(c);
        }
        case BITNET_IOC_GET_PERF_EXT: {
            bitnet_perf_ext p;
            if (!in(p)) return fail(EFAULT);
            if ((p.flags & ~BITNET_PERF_CLEAR) != 0 || p.reserved != 0) return fail(EINVAL);
            const uint32_t flags = p.flags;
            const Counters c = card_.counters();
            std::memset(&p, 0, sizeof(p));
            p.flags = flags;
            p.total_cycles = c.total_cycles;
            p.dma_cycles = c.dma_cycles;
            p.compute_cycles = c.compute_cycles;
            p.commands = c.commands;
            p.matmuls = c.matmuls;
            p.macs = c.macs;
            p.dma_bytes = c.dma_bytes;
            p.weight_bytes_read = c.weight_bytes_read;
            p.weight_bytes_used = card_.weight_used();
            {
                std::lock_guard<std::mutex> lock(mu_);
                p.slots_used = static_cast<uint32_t>(slots_.size());
            }
            if (flags & BITNET_PERF_CLEAR) card_.reset_counters();
            out(p);
            return 0;
        }
        case BITNET_IOC_INJECT_FAULT:
        case BITNET_IOC_INJECT_FAULT_V20: {
            bitnet_fault f;
            std::memset(&f, 0, sizeof(f));
            if (request == BITNET_IOC_INJECT_FAULT_V20) {   // ABI 2.0: kind and count only
                bitnet_fault_v20 v;
                if (!in(v)) return fail(EFAULT);
                f.kind = v.kind;
                f.count = v.count;
            } else if (!in(f)) {
                return fail(EFAULT);
            }
            if (f.reserved != 0 || f.kind > BITNET_FAULT_HW) return fail(EINVAL);
            // One pending fault at a time: a new request replaces the last one.
            std::lock_guard<std::mutex> lock(mu_);
            card_.inject_fault(FaultKind::NONE, 0);
            hangs_ = 0;
            hang_after_ = 0;
            if (f.kind == BITNET_FAULT_HANG) {
                hangs_ = f.count;
                hang_after_ = f.after;
            } else if (f.kind != BITNET_FAULT_NONE) {
                card_.inject_fault(static_cast<FaultKind>(f.kind), static_cast<int>(std::min<uint32_t>(f.count, 1u << 30)),
                                   f.after);
            }
            return 0;
        }
        default: return fail(ENOTTY);
    }
}

void DriverEmu::fill_info(bitnet_info& info) const {
    std::memset(&info, 0, sizeof(info));
    const BoardProfile& p = card_.profile();
    info.abi_major = BITNET_ABI_MAJOR;
    info.abi_minor = BITNET_ABI_MINOR;
    info.hw_version = kHwVersion;
    info.capabilities = BITNET_CAP_MATMUL | BITNET_CAP_ACC_OUT | BITNET_CAP_FAULT_INJECT | BITNET_CAP_EMULATED;
    info.mmap_size = region_size_;
    info.input_offset = in_off_;
    info.input_size = cfg_.input_size;
    info.output_offset = out_off_;
    info.output_size = cfg_.output_size;
    info.weight_offset = w_off_;
    info.weight_size = cfg_.weight_size;
    info.weight_capacity = p.weight_capacity;
    info.max_slots = cfg_.max_slots;
    info.max_slot_id = kMaxSlotId;
    info.max_ops = cfg_.max_ops;
    info.max_rows = cfg_.max_rows;
    info.max_k = kMaxDim;
    info.max_n = kMaxDim;
    info.clock_hz = static_cast<uint64_t>(std::llround(p.clock_mhz * 1e6));
    info.lanes = static_cast<uint32_t>(p.lanes);
    info.lane_width = static_cast<uint32_t>(p.lane_width);
    info.ddr_bytes_per_s = static_cast<uint64_t>(std::llround(p.ddr_gbps * 1e9));
    info.dma_bytes_per_s = static_cast<uint64_t>(std::llround(p.dma_gbps * 1e9));
    info.dma_setup_cycles = static_cast<uint32_t>(p.dma_setup_cycles);
    info.pipeline_cycles = static_cast<uint32_t>(p.pipeline_cycles);
    info.dma_align = static_cast<uint32_t>(kAlign);
    copy_name(info.board, sizeof(info.board), p.name);
    copy_name(info.engine, sizeof(info.engine), std::string("sim:") + card_.kernel_name() + " (driver emulation)");
}

int DriverEmu::do_start_inference(const bitnet_inference_cmd& c) {
    if (c.flags != 0 || c.num_tokens == 0 || c.input_size == 0 || c.output_size == 0 ||
        !region_ok(c.input_offset, c.input_size, in_off_, cfg_.input_size) ||
        !region_ok(c.output_offset, c.output_size, out_off_, cfg_.output_size))
        return fail(EINVAL);
    // A matrix-engine card has no token engine (no BITNET_CAP_LEGACY_INFERENCE).
    return fail(EOPNOTSUPP);
}

int DriverEmu::do_load(uint32_t slot, uint32_t n, uint32_t k, float scale, uint32_t row_begin, uint32_t row_count,
                       const uint8_t* src) {
    if (slot > kMaxSlotId || n == 0 || k == 0 || n > kMaxDim || k > kMaxDim) return fail(EINVAL);
    if (!std::isfinite(scale) || scale < 0) return fail(EINVAL);
    if (row_count == 0 || row_begin >= n || row_count > n - row_begin) return fail(EINVAL);
    const uint64_t rb = row_bytes_u(k);
    std::unique_lock<std::mutex> lock(mu_);
    if (const int e = mutable_state_check_locked()) return fail(e);
    if (row_begin == 0) {
        // A new load (abandoning any unfinished one): the matrix must fit the weight memory
        // as it will be once it replaces the slot's old content.
        const uint64_t bytes = static_cast<uint64_t>(n) * rb;
        const uint64_t old = card_.has_slot(static_cast<int>(slot)) ? card_.slot_info(static_cast<int>(slot)).bytes : 0;
        staging_ = Staging{};
        if (card_.weight_used() - old + bytes > card_.profile().weight_capacity) return fail(ENOMEM);
        if (!slots_.count(slot) && slots_.size() >= cfg_.max_slots) return fail(ENOMEM);
        try {
            staging_.t.assign(static_cast<size_t>(n) * k, 0);
        } catch (const std::bad_alloc&) {
            staging_ = Staging{};
            return fail(ENOMEM);
        }
        staging_.active = true;
        staging_.slot = slot;
        staging_.n = n;
        staging_.k = k;
        staging_.scale = scale;
        staging_.rows_done = 0;
    } else if (!staging_.active || staging_.slot != slot || staging_.n != n || staging_.k != k ||
               std::memcmp(&staging_.scale, &scale, sizeof(float)) != 0 || staging_.rows_done != row_begin) {
        return fail(EINVAL);   // a continuation that does not continue the load in progress
    }
    state_ = BITNET_STATE_LOADING_WEIGHTS;   // other mutating requests now get EBUSY
    lock.unlock();

    // The DMA engine reads the rows; the card checks every code (3 is not a trit) and that
    // the padding of the last group holds code 1 (t = 0).
    bool ok = true;
    const uint64_t groups = rb / 16;
    for (uint32_t r = 0; r < row_count && ok; ++r) {
        const uint8_t* row = src + static_cast<uint64_t>(r) * rb;
        int8_t* dst = staging_.t.data() + static_cast<size_t>(row_begin + r) * k;
        for (uint64_t g = 0; g < groups && ok; ++g) {
            for (uint32_t m = 0; m < 16; ++m) {
                const uint8_t byte = row[g * 16 + m];
                for (uint32_t j = 0; j < 4; ++j) {
                    const uint64_t e = g * 64 + m + 16 * j;
                    const int code = (byte >> (2 * j)) & 3;
                    if (e < k) {
                        if (code == 3) ok = false;
                        dst[e] = static_cast<int8_t>(code - 1);
                    } else if (code != 1) {
                        ok = false;
                    }
                }
            }
        }
    }
    int err = ok ? 0 : EINVAL;
    bool commit = false;
    lock.lock();
    if (!ok) {
        if (row_begin == 0) staging_ = Staging{};
    } else {
        staging_.rows_done += row_count;
        commit = staging_.rows_done == n;
    }
    if (commit) {
        Staging s = std::move(staging_);
        staging_ = Staging{};
        lock.unlock();
        try {
            card_.load_slot(static_cast<int>(slot), s.t.data(), n, k, scale);
        } catch (const Error& e) {
            err = e.code() == ErrorCode::NO_MEMORY ? ENOMEM : EIO;
        } catch (const std::bad_alloc&) {
            err = ENOMEM;
        }
        lock.lock();
        if (err == 0) slots_.insert(slot);
    }
    state_ = BITNET_STATE_IDLE;
    lock.unlock();
    cv_.notify_all();
    return err ? fail(err) : 0;
}

int DriverEmu::do_free(const bitnet_free_slots& f) {
    if (f.flags != 0 || f.reserved != 0 || f.first > f.end) return fail(EINVAL);
    std::lock_guard<std::mutex> lock(mu_);
    if (const int e = mutable_state_check_locked()) return fail(e);
    const uint32_t lo = std::min(f.first, kMaxSlotId + 1), hi = std::min(f.end, kMaxSlotId + 1);
    if (lo < hi) {
        card_.free_range(static_cast<int>(lo), static_cast<int>(hi));
        slots_.erase(slots_.lower_bound(lo), slots_.lower_bound(hi));
        if (staging_.active && staging_.slot >= lo && staging_.slot < hi) staging_ = Staging{};
    }
    return 0;
}

int DriverEmu::do_slot_info(bitnet_slot_info& s) {
    if (s.flags != 0 || s.slot > kMaxSlotId) return fail(EINVAL);
    std::lock_guard<std::mutex> lock(mu_);
    if (!slots_.count(s.slot)) return fail(ENOENT);
    const SlotInfo info = card_.slot_info(static_cast<int>(s.slot));
    s.n = static_cast<uint32_t>(info.n);
    s.k = static_cast<uint32_t>(info.k);
    s.scale = info.scale;
    s.reserved = 0;
    s.bytes = static_cast<uint64_t>(info.n) * row_bytes_u(static_cast<uint32_t>(info.k));
    return 0;
}

int DriverEmu::do_matmul(const bitnet_matmul_cmd& c) {
    if (c.flags != 0 || c.reserved != 0) return fail(EINVAL);
    if (c.rows == 0 || c.rows > cfg_.max_rows || c.k == 0 || c.k > kMaxDim || c.act_stride < c.k) return fail(EINVAL);
    if (c.n_ops == 0 || c.n_ops > cfg_.max_ops) return fail(EINVAL);
    const uint64_t act_bytes = static_cast<uint64_t>(c.rows - 1) * c.act_stride + c.k;
    const uint64_t sx_bytes = 4ull * c.rows;
    if (!region_ok(c.act_offset, act_bytes, in_off_, cfg_.input_size) ||
        !region_ok(c.scale_offset, sx_bytes, in_off_, cfg_.input_size))
        return fail(EINVAL);
    if (c.act_offset < c.scale_offset + sx_bytes && c.scale_offset < c.act_offset + act_bytes) return fail(EINVAL);
    for (uint32_t i = 0; i < c.n_ops; ++i)
        if (c.ops[i].reserved != 0 || (c.ops[i].flags & ~BITNET_OP_ACC) != 0) return fail(EINVAL);

    std::unique_lock<std::mutex> lock(mu_);
    if (const int e = mutable_state_check_locked()) return fail(e);
    std::vector<std::pair<uint64_t, uint64_t>> ranges;   // output byte ranges [begin, end)
    MatmulCommand cmd;
    cmd.B = c.rows;
    cmd.K = c.k;
    for (uint32_t i = 0; i < c.n_ops; ++i) {
        const bitnet_matmul_op& op = c.ops[i];
        if (!slots_.count(op.slot)) return fail(ENOENT);
        const SlotInfo info = card_.slot_info(static_cast<int>(op.slot));
        if (info.k != static_cast<int64_t>(c.k)) return fail(EINVAL);
        const uint64_t bytes = 4ull * c.rows * static_cast<uint64_t>(info.n);
        if (!region_ok(op.y_offset, bytes, out_off_, cfg_.output_size)) return fail(EINVAL);
        ranges.emplace_back(op.y_offset, op.y_offset + bytes);
        MatmulOp mop;
        mop.slot = static_cast<int>(op.slot);
        mop.y = reinterpret_cast<float*>(region_ + op.y_offset);
        if (op.flags & BITNET_OP_ACC) {
            if (!region_ok(op.acc_offset, bytes, out_off_, cfg_.output_size)) return fail(EINVAL);
            ranges.emplace_back(op.acc_offset, op.acc_offset + bytes);
            mop.acc = reinterpret_cast<int32_t*>(region_ + op.acc_offset);
        }
        cmd.ops.push_back(mop);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
        if (ranges[i].first < ranges[i - 1].second) return fail(EINVAL);   // products would overwrite each other

    // The activation DMA: the engine receives B dense rows of K values.
    if (c.act_stride == c.k) {
        cmd.q = reinterpret_cast<const int8_t*>(region_ + c.act_offset);
    } else {
        act_copy_.resize(static_cast<size_t>(c.rows) * c.k);
        for (uint32_t r = 0; r < c.rows; ++r)
            std::memcpy(act_copy_.data() + static_cast<size_t>(r) * c.k,
                        region_ + c.act_offset + static_cast<uint64_t>(r) * c.act_stride, c.k);
        cmd.q = act_copy_.data();
    }
    cmd.sx = reinterpret_cast<const float*>(region_ + c.scale_offset);
    cmd_ = std::move(cmd);
    busy_ = true;
    pending_ = true;
    abort_requested_ = false;
    state_ = BITNET_STATE_DMA_TRANSFER;
    error_code_ = BITNET_ERR_OK;
    current_slot_ = c.ops[0].slot;
    lock.unlock();
    cv_.notify_all();
    return 0;
}

void DriverEmu::worker_loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        cv_.wait(lock, [this] { return stopping_ || pending_; });
        if (!pending_) return;   // stopping, nothing in flight
        pending_ = false;
        state_ = BITNET_STATE_RUNNING;
        if (hangs_ > 0 && hang_after_ > 0) {
            --hang_after_;
        } else if (hangs_ > 0) {
            // A hung engine: never finishes until ABORT or RESET stops it.
            --hangs_;
            cv_.wait(lock, [this] { return abort_requested_ || stopping_; });
        }
        uint32_t code = BITNET_ERR_OK;
        if (!abort_requested_ && !stopping_) {
            MatmulCommand cmd = cmd_;
            lock.unlock();
            try {
                card_.run(cmd);
            } catch (const Error& e) {
                // A card fault carries its own code (DMA, FIFO_OVERFLOW, ...).
                if (e.code() == ErrorCode::HW_ERROR)
                    code = e.card_code() ? e.card_code() : static_cast<uint32_t>(BITNET_ERR_ENGINE);
                else
                    code = e.code() == ErrorCode::INVALID ? BITNET_ERR_INVALID_PARAM : BITNET_ERR_HW;
            } catch (...) {
                code = BITNET_ERR_HW;
            }
            lock.lock();
            if (code == BITNET_ERR_OK) {
                current_slot_ = static_cast<uint32_t>(cmd.ops.back().slot);
                rows_processed_ += static_cast<uint32_t>(cmd.B);
            }
        }
        if (code != BITNET_ERR_OK) {
            state_ = BITNET_STATE_ERROR;
            error_code_ = code;
        } else {
            state_ = BITNET_STATE_IDLE;
            error_code_ = (abort_requested_ || stopping_) ? BITNET_ERR_ABORTED : BITNET_ERR_OK;
        }
        busy_ = false;
        abort_requested_ = false;
        cv_.notify_all();
    }
}

int DriverEmu::do_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg_.timeout_ms);
    if (!cv_.wait_until(lock, deadline, [this] { return ready_locked(); })) return fail(ETIMEDOUT);
    if (state_ == BITNET_STATE_ERROR) return fail(EIO);
    if (error_code_ == BITNET_ERR_ABORTED) return fail(ECANCELED);
    return 0;
}

int DriverEmu::do_abort() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!busy_) return 0;
    abort_requested_ = true;
    cv_.notify_all();
    cv_.wait(lock, [this] { return !busy_; });   // at most the rest of one command
    return 0;
}

int DriverEmu::do_reset() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (state_ == BITNET_STATE_LOADING_WEIGHTS) return fail(EBUSY);
    }
    do_abort();
    std::lock_guard<std::mutex> lock(mu_);
    state_ = BITNET_STATE_IDLE;
    error_code_ = BITNET_ERR_OK;
    rows_processed_ = 0;
    staging_ = Staging{};
    hangs_ = 0;
    hang_after_ = 0;
    card_.inject_fault(FaultKind::NONE, 0);
    return 0;
}

}  // namespace sim
}  // namespace bitnet
