// error.cpp: names of error codes (used in messages and exposed to Python).
#include "error.h"

namespace bitnet {

const char* error_code_name(ErrorCode c) {
    switch (c) {
        case ErrorCode::OK: return "OK";
        case ErrorCode::OPEN: return "OPEN";
        case ErrorCode::MMAP: return "MMAP";
        case ErrorCode::IOCTL: return "IOCTL";
        case ErrorCode::TIMEOUT: return "TIMEOUT";
        case ErrorCode::BUSY: return "BUSY";
        case ErrorCode::INVALID: return "INVALID";
        case ErrorCode::NO_MEMORY: return "NO_MEMORY";
        case ErrorCode::HW_ERROR: return "HW_ERROR";
        case ErrorCode::FILE: return "FILE";
        case ErrorCode::CLOSED: return "CLOSED";
        case ErrorCode::ABORTED: return "ABORTED";
        case ErrorCode::STATE: return "STATE";
    }
    return "UNKNOWN";
}

}  // namespace bitnet
