// syscalls.h: the system calls the kernel transport makes, behind one swappable interface.
//
// The kernel transport (kernel_transport.cpp) talks to a card only through a Syscalls object:
// real_syscalls() forwards to the C library (open/close/ioctl/mmap/munmap/poll on
// /dev/bitnetN); sim/driver_emu.h implements the same calls on top of the card simulator, so
// CI runs the transport's exact request stream without hardware (DESIGN.md section 4).
//
// Contract: every method behaves like its libc namesake: on failure it returns -1 (MAP_FAILED
// for mmap) and sets errno. Implementations must be thread-safe.
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <cstddef>
#include <memory>

namespace bitnet {

class Syscalls {
public:
    virtual ~Syscalls() = default;
    virtual int open(const char* path, int flags) = 0;
    virtual int close(int fd) = 0;
    virtual int ioctl(int fd, unsigned long request, void* arg) = 0;
    virtual void* mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) = 0;
    virtual int munmap(void* addr, size_t length) = 0;
    virtual int poll(struct pollfd* fds, nfds_t nfds, int timeout_ms) = 0;
};

// The process's real system calls.
std::shared_ptr<Syscalls> real_syscalls();

}  // namespace bitnet
