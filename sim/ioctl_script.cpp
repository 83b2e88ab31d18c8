// ioctl_script.cpp: run a byte-string script of system calls on a fresh emulated card driver
// (see ioctl_script.h for the format and the invariants).
#include "ioctl_script.h"

#include <fcntl.h>
#include <sys/mman.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>

#include "../cpp/bitnet_abi.h"
#include "driver_emu.h"

namespace bitnet {
namespace sim {
namespace {

constexpr size_t kMaxOps = 256;    // script steps run per input (bounds the time per input)
constexpr size_t kArgBytes = 512;  // the argument buffer (the largest struct is 296 bytes)

// Reads the script; past the end every read yields zeros.
class Reader {
public:
    Reader(const uint8_t* data, size_t size) : p_(data), left_(size) {}
    bool done() const { return left_ == 0; }
    void bytes(void* dst, size_t n) {
        const size_t k = n < left_ ? n : left_;
        if (k) std::memcpy(dst, p_, k);
        if (n > k) std::memset(static_cast<uint8_t*>(dst) + k, 0, n - k);
        p_ += k;
        left_ -= k;
    }
    template <typename T>
    T get() {
        T v;
        bytes(&v, sizeof(v));
        return v;
    }

private:
    const uint8_t* p_;
    size_t left_;
};

const unsigned long kRequests[15] = {
    BITNET_IOC_START_INFERENCE, BITNET_IOC_LOAD_WEIGHTS, BITNET_IOC_GET_STATUS, BITNET_IOC_WAIT_COMPLETE,
    BITNET_IOC_ABORT,           BITNET_IOC_GET_PERF,     BITNET_IOC_RESET,      BITNET_IOC_GET_INFO,
    BITNET_IOC_LOAD_SLOT,       BITNET_IOC_FREE_SLOTS,   BITNET_IOC_SLOT_INFO,  BITNET_IOC_MATMUL,
    BITNET_IOC_GET_PERF_EXT,    BITNET_IOC_INJECT_FAULT, BITNET_IOC_INJECT_FAULT_V20,
};

bool errno_listed(int e) {
    switch (e) {
        case EBADF: case ENOTTY: case EFAULT: case EINVAL: case ENOENT: case ENOMEM: case EBUSY: case EIO:
        case ETIMEDOUT: case ECANCELED: case EOPNOTSUPP: return true;
        default: return false;
    }
}

uint64_t row_bytes_of(uint32_t k) { return (static_cast<uint64_t>(k) + 63) / 64 * 16; }

struct Layout {
    uint64_t in_off, in_size, out_off, out_size, w_off, w_size;
    // An aligned offset inside a region, from an arbitrary value.
    uint64_t in(uint64_t v) const { return in_off + (v % in_size) / 64 * 64; }
    uint64_t out(uint64_t v) const { return out_off + (v % out_size) / 64 * 64; }
    uint64_t w(uint64_t v) const { return w_off + (v % w_size) / 64 * 64; }
};

// Mode bit 2: bring a request's offsets into their regions and its shapes down to sizes the
// small card takes, so the fuzzer gets past the range checks into the card's deeper paths.
void fix_up(unsigned long req, uint8_t* arg, const Layout& L) {
    switch (req) {
        case BITNET_IOC_START_INFERENCE: {
            bitnet_inference_cmd c;
            std::memcpy(&c, arg, sizeof(c));
            c.input_offset = L.in(c.input_offset);
            c.output_offset = L.out(c.output_offset);
            c.input_size %= 4096;
            c.output_size %= 4096;
            std::memcpy(arg, &c, sizeof(c));
            break;
        }
        case BITNET_IOC_LOAD_WEIGHTS: {
            bitnet_weight_cmd c;
            std::memcpy(&c, arg, sizeof(c));
            c.weight_offset = L.w(c.weight_offset);
            c.layer_id %= 8;
            c.weight_size = static_cast<uint32_t>(c.weight_size % L.w_size);
            std::memcpy(arg, &c, sizeof(c));
            break;
        }
        case BITNET_IOC_LOAD_SLOT: {
            bitnet_load_slot c;
            std::memcpy(&c, arg, sizeof(c));
            c.slot %= 8;
            c.flags = 0;
            c.reserved = 0;
            c.n = c.n % 64 + 1;
            c.k = c.k % 512 + 1;
            c.row_begin %= c.n;
            c.row_count = c.row_count % (c.n - c.row_begin) + 1;
            c.src_offset = L.w(c.src_offset);
            c.src_size = c.row_count * row_bytes_of(c.k);
            std::memcpy(arg, &c, sizeof(c));
            break;
        }
        case BITNET_IOC_FREE_SLOTS: {
            bitnet_free_slots c;
            std::memcpy(&c, arg, sizeof(c));
            c.first %= 16;
            c.end = c.first + c.end % 16;
            c.flags = 0;
            c.reserved = 0;
            std::memcpy(arg, &c, sizeof(c));
            break;
        }
        case BITNET_IOC_SLOT_INFO: {
            bitnet_slot_info c;
            std::memcpy(&c, arg, sizeof(c));
            c.slot %= 8;
            c.flags = 0;
            std::memcpy(arg, &c, sizeof(c));
            break;
        }
        case BITNET_IOC_MATMUL: {
            bitnet_matmul_cmd c;
            std::memcpy(&c, arg, sizeof(c));
            c.rows = c.rows % 8 + 1;
            c.k = c.k % 512 + 1;
            c.act_stride = c.k + c.act_stride % 4;
            c.n_ops = c.n_ops % BITNET_MAX_OPS + 1;
            c.flags = 0;
            c.reserved = 0;
            c.act_offset = L.in(c.act_offset);
            c.scale_offset = L.in(c.scale_offset);
            for (bitnet_matmul_op& op : c.ops) {
                op.slot %= 8;
                op.flags &= BITNET_OP_ACC;
                op.y_offset = L.out(op.y_offset);
                op.acc_offset = L.out(op.acc_offset);
                op.reserved = 0;
            }
            std::memcpy(arg, &c, sizeof(c));
            break;
        }
        case BITNET_IOC_GET_PERF_EXT: {
            bitnet_perf_ext c;
            std::memcpy(&c, arg, sizeof(c));
            c.flags &= BITNET_PERF_CLEAR;
            c.reserved = 0;
            std::memcpy(arg, &c, sizeof(c));
            break;
        }
        case BITNET_IOC_INJECT_FAULT: {
            bitnet_fault c;
            std::memcpy(&c, arg, sizeof(c));
            c.kind %= 6;
            c.count %= 3;
            c.after %= 4;
            c.reserved = 0;
            std::memcpy(arg, &c, sizeof(c));
            break;
        }
        default: break;
    }
}

}  // namespace

std::string run_ioctl_script(const uint8_t* data, size_t size, std::map<unsigned long, int>* succeeded) {
    DriverEmuConfig cfg;
    cfg.profile = board_profile("kv260");
    cfg.profile.weight_capacity = 64 << 10;   // small: bounds staging memory and matmul sizes
    cfg.input_size = 16 << 10;
    cfg.output_size = 16 << 10;
    cfg.weight_size = 16 << 10;
    cfg.timeout_ms = 20;   // WAIT_COMPLETE on a hung command costs this much
    cfg.max_slots = 16;
    cfg.max_rows = 64;
    ThreadPool pool(1);
    auto emu = std::make_unique<DriverEmu>(cfg, &pool);
    const Layout L{0, cfg.input_size, cfg.input_size, cfg.output_size, cfg.input_size + cfg.output_size,
                   cfg.weight_size};
    uint8_t* mem = emu->region();
    const uint64_t mem_size = emu->region_size();

    std::string bad;
    auto check = [&](int r, const char* what) {
        if (!bad.empty()) return;
        if (r == 0) return;
        if (r != -1) bad = std::string(what) + " returned " + std::to_string(r);
        else if (!errno_listed(errno)) bad = std::string(what) + " failed with unlisted errno " + std::to_string(errno);
    };

    int fd = emu->open(cfg.node.c_str(), O_RDWR);
    Reader in(data, size);
    alignas(8) uint8_t arg[kArgBytes];
    for (size_t step = 0; step < kMaxOps && !in.done() && bad.empty(); ++step) {
        const uint8_t op = in.get<uint8_t>();
        switch (op % 8) {
            case 0: {
                const uint8_t which = in.get<uint8_t>() % 16;
                const uint8_t mode = in.get<uint8_t>();
                const unsigned long req = which < 15 ? kRequests[which] : in.get<uint32_t>();
                size_t n = (req >> 16) & 0x3fffu;
                if (n > kArgBytes) n = kArgBytes;
                std::memset(arg, 0, sizeof(arg));
                in.bytes(arg, n);
                if (mode & 4) fix_up(req, arg, L);
                const int use_fd = (mode & 2) ? fd + 7 : fd;
                const int r = emu->ioctl(use_fd, req, (mode & 1) ? nullptr : arg);
                check(r, "ioctl");
                if (r == 0 && succeeded) ++(*succeeded)[req];
                break;
            }
            case 1:
            case 2: {
                const uint64_t off = in.get<uint32_t>() % mem_size;
                uint64_t len = in.get<uint16_t>();
                if (len > mem_size - off) len = mem_size - off;
                in.bytes(mem + off, len);
                if (op % 8 == 2)
                    for (uint64_t i = 0; i < len; ++i) {
                        uint8_t b = mem[off + i];
                        for (int j = 0; j < 8; j += 2)
                            if (((b >> j) & 3) == 3) b = static_cast<uint8_t>(b & ~(1u << j));   // code 3 -> 2
                        mem[off + i] = b;
                    }
                break;
            }
            case 3: {
                struct pollfd p;
                p.fd = fd;
                p.events = POLLIN;
                p.revents = 0;
                const int r = emu->poll(&p, 1, in.get<uint8_t>() % 4 * 5);
                if (r < 0) check(r, "poll");
                break;
            }
            case 4: {
                if (fd >= 0) check(emu->close(fd), "close");
                fd = emu->open(cfg.node.c_str(), O_RDWR);
                if (fd < 0 && bad.empty()) bad = "re-open of the node failed with errno " + std::to_string(errno);
                break;
            }
            case 5: {
                const uint32_t len = in.get<uint32_t>();
                const uint16_t off = in.get<uint16_t>();
                const uint8_t flags = in.get<uint8_t>();
                void* p = emu->mmap(nullptr, len, PROT_READ | PROT_WRITE, (flags & 1) ? MAP_SHARED : MAP_PRIVATE, fd, off);
                if (p != MAP_FAILED) check(emu->munmap(p, len), "munmap");
                else if (!errno_listed(errno) && bad.empty()) bad = "mmap failed with unlisted errno";
                break;
            }
            case 6: {
                char path[33];
                const size_t n = in.get<uint8_t>() % 32;
                in.bytes(path, n);
                path[n] = 0;
                const int r = emu->open(path, O_RDWR);
                if (r >= 0) {
                    if (r == fd || fd >= 0) bad = "a second open of the node succeeded";
                    else fd = r;
                } else if (errno != ENOENT && errno != EBUSY && errno != EFAULT && bad.empty()) {
                    bad = "open failed with unexpected errno " + std::to_string(errno);
                }
                break;
            }
            case 7: {
                const uint64_t off = L.in(in.get<uint32_t>());
                const uint32_t count = in.get<uint8_t>();
                for (uint32_t i = 0; i < count && off + 4 * (i + 1) <= L.in_off + L.in_size; ++i) {
                    const float s = 1.0f + static_cast<float>(in.get<uint8_t>());
                    std::memcpy(mem + off + 4 * i, &s, 4);
                }
                break;
            }
        }
        // The card's status register must always make sense.
        if (fd >= 0 && bad.empty()) {
            bitnet_status st;
            if (emu->ioctl(fd, BITNET_IOC_GET_STATUS, &st) != 0) bad = "GET_STATUS failed on the open descriptor";
            else if (st.state > BITNET_STATE_ERROR) bad = "invalid state " + std::to_string(st.state);
            else if (st.error_code > BITNET_ERR_ENGINE) bad = "invalid card error code " + std::to_string(st.error_code);
            else if (st.state == BITNET_STATE_ERROR && st.error_code == BITNET_ERR_OK) bad = "state ERROR with error code OK";
        }
    }
    if (fd >= 0) {
        const int r = emu->close(fd);
        if (r != 0 && bad.empty()) bad = "final close failed";
    }
    emu.reset();
    return bad;
}

}  // namespace sim
}  // namespace bitnet
