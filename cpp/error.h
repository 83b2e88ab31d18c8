// error.h: the one error type of the C++ core.
//
// Every failure inside the library is a bitnet::Error carrying an ErrorCode. The pybind11
// layer turns it into bitnet.BitNetError (with .code) or one of its subclasses. Nothing in the
// library calls abort()/exit() or prints to stdout.
//
// The negative codes keep the numbers of the VIBEE libbitnet error list so that code written
// against that library keeps its meaning; codes below -9 are ours.
#pragma once

#include <stdexcept>
#include <string>

namespace bitnet {

enum class ErrorCode : int {
    OK = 0,
    OPEN = -1,        // device could not be opened
    MMAP = -2,        // DMA region could not be mapped
    IOCTL = -3,       // the driver rejected a request
    TIMEOUT = -4,     // a wait ran out of time
    BUSY = -5,        // the device is running another job
    INVALID = -6,     // a bad argument (wrong shape, range, type ...)
    NO_MEMORY = -7,   // card or host memory exhausted
    HW_ERROR = -8,    // the card reported a fault
    FILE = -9,        // a model file is missing, unreadable or malformed
    CLOSED = -10,     // the device was closed
    ABORTED = -11,    // the job was aborted
    STATE = -12,      // the call is not valid in the device's current state (e.g. no model)
};

const char* error_code_name(ErrorCode c);

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
    // A fault the card reported: code HW_ERROR plus the card's own error code
    // (enum bitnet_card_error of docs/DEVICE_ABI.md section 10, e.g. 2 = DMA).
    Error(ErrorCode code, const std::string& msg, unsigned card_code)
        : std::runtime_error(msg), code_(code), card_code_(card_code) {}
    ErrorCode code() const { return code_; }
    unsigned card_code() const { return card_code_; }   // 0 when the card reported nothing

private:
    ErrorCode code_;
    unsigned card_code_ = 0;
};

// Convenience for the common "bad file" and "bad argument" cases.
[[noreturn]] inline void fail(ErrorCode code, const std::string& msg) { throw Error(code, msg); }

}  // namespace bitnet
