// syscalls.cpp: real_syscalls(), the C library behind the Syscalls interface.
#include "syscalls.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace bitnet {
namespace {

class RealSyscalls final : public Syscalls {
public:
    int open(const char* path, int flags) override { return ::open(path, flags); }
    int close(int fd) override { return ::close(fd); }
    int ioctl(int fd, unsigned long request, void* arg) override { return ::ioctl(fd, request, arg); }
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) override {
        return ::mmap(addr, length, prot, flags, fd, offset);
    }
    int munmap(void* addr, size_t length) override { return ::munmap(addr, length); }
    int poll(struct pollfd* fds, nfds_t nfds, int timeout_ms) override { return ::poll(fds, nfds, timeout_ms); }
};

}  // namespace

std::shared_ptr<Syscalls> real_syscalls() {
    static const std::shared_ptr<Syscalls> sys = std::make_shared<RealSyscalls>();
    return sys;
}

}  // namespace bitnet
