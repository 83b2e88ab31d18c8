// gguf.cpp: the validating GGUF v2/v3 reader declared in gguf.h.
//
// The file is mapped read-only and parsed with a bounds-checked cursor. Nothing read from the
// file is trusted: every count is compared with the bytes that are left before anything is
// allocated for it, and every tensor is checked for type, shape, size, alignment, bounds and
// overlap before its data pointer is handed out. The rules are listed in docs/FORMAT.md
// ("Reading GGUF"); keep the two in step.
#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

namespace bitnet {

// ---------------------------------------------------------------------------------------------
// Type names and geometry
// ---------------------------------------------------------------------------------------------

const char* gguf_type_name(GGUFType t) {
    switch (t) {
        case GGUFType::UINT8: return "uint8";
        case GGUFType::INT8: return "int8";
        case GGUFType::UINT16: return "uint16";
        case GGUFType::INT16: return "int16";
        case GGUFType::UINT32: return "uint32";
        case GGUFType::INT32: return "int32";
        case GGUFType::FLOAT32: return "float32";
        case GGUFType::BOOL: return "bool";
        case GGUFType::STRING: return "string";
        case GGUFType::ARRAY: return "array";
        case GGUFType::UINT64: return "uint64";
        case GGUFType::INT64: return "int64";
        case GGUFType::FLOAT64: return "float64";
    }
    return "unknown";
}

bool GGUFValue::is_integer() const {
    switch (type) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64:
            return true;
        default:
            return false;
    }
}

bool GGUFValue::is_float() const {
    return type == GGUFType::FLOAT32 || type == GGUFType::FLOAT64;
}

const char* tensor_type_name(TensorType t) {
    switch (t) {
        case TensorType::F32: return "F32";
        case TensorType::F16: return "F16";
        case TensorType::BF16: return "BF16";
        case TensorType::Q8_0: return "Q8_0";
        case TensorType::Q4_0: return "Q4_0";
        case TensorType::Q6_K: return "Q6_K";
        case TensorType::TQ1_0: return "TQ1_0";
        case TensorType::TQ2_0: return "TQ2_0";
        case TensorType::I2_S: return "I2_S";
    }
    return "unknown";
}

bool tensor_type_is_ternary(TensorType t) {
    return t == TensorType::TQ1_0 || t == TensorType::TQ2_0 || t == TensorType::I2_S;
}

// Block geometry (ggml-common.h). I2_S reports its 128-element packing group; its real size
// rule (n/4 bytes plus a 32-byte tail) lives in tensor_nbytes().
int64_t tensor_type_block(TensorType t) {
    switch (t) {
        case TensorType::F32: case TensorType::F16: case TensorType::BF16: return 1;
        case TensorType::Q8_0: case TensorType::Q4_0: return 32;
        case TensorType::Q6_K: case TensorType::TQ1_0: case TensorType::TQ2_0: return 256;
        case TensorType::I2_S: return 128;
    }
    return 1;
}

size_t tensor_type_block_bytes(TensorType t) {
    switch (t) {
        case TensorType::F32: return 4;
        case TensorType::F16: case TensorType::BF16: return 2;
        case TensorType::Q8_0: return 34;    // f16 d, int8 qs[32]
        case TensorType::Q4_0: return 18;    // f16 d, u8 qs[16]
        case TensorType::Q6_K: return 210;   // u8 ql[128], u8 qh[64], int8 scales[16], f16 d
        case TensorType::TQ1_0: return 54;   // u8 qs[48], u8 qh[4], f16 d
        case TensorType::TQ2_0: return 66;   // u8 qs[64], f16 d
        case TensorType::I2_S: return 32;    // 128 two-bit codes
    }
    return 1;
}

size_t tensor_nbytes(TensorType t, int64_t ne0, int64_t n, const std::string& what) {
    if (ne0 < 1 || n < 0 || (n > 0 && n % ne0 != 0)) {
        fail(ErrorCode::FILE, what + ": inconsistent element counts (ne0 " + std::to_string(ne0) +
                                  ", " + std::to_string(n) + " elements)");
    }
    const uint64_t un = static_cast<uint64_t>(n);
    if (t == TensorType::I2_S) {
        // bitnet.cpp packs the flattened tensor in groups of 128 and appends a 32-byte tail
        // (f32 scale + padding): ggml_nbytes = n/4 + 32 in the fork.
        if (n % 128 != 0) {
            fail(ErrorCode::FILE, what + ": I2_S needs an element count that is a multiple of 128, got " +
                                      std::to_string(n));
        }
        const uint64_t bytes = un / 4 + 32;
        if (bytes > std::numeric_limits<size_t>::max()) {
            fail(ErrorCode::FILE, what + ": byte size overflows size_t");
        }
        return static_cast<size_t>(bytes);
    }
    const int64_t block = tensor_type_block(t);
    if (ne0 % block != 0) {
        fail(ErrorCode::FILE, what + ": ne0 " + std::to_string(ne0) + " is not a multiple of the " +
                                  tensor_type_name(t) + " block size " + std::to_string(block));
    }
    const uint64_t blocks = un / static_cast<uint64_t>(block);
    const uint64_t bb = tensor_type_block_bytes(t);
    if (blocks > std::numeric_limits<size_t>::max() / bb) {
        fail(ErrorCode::FILE, what + ": byte size overflows size_t");
    }
    return static_cast<size_t>(blocks * bb);
}

namespace {

// Length of the valid UTF-8 sequence starting at s[k], or 0 if there is none.
size_t utf8_len(const std::string& s, size_t k) {
    const auto b = [&](size_t j) { return static_cast<unsigned char>(s[j]); };
    const unsigned char c = b(k);
    size_t n;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1fu; }
    else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0fu; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07u; }
    else return 0;
    if (k + n > s.size()) return 0;
    for (size_t j = 1; j < n; ++j) {
        if ((b(k + j) & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (b(k + j) & 0x3fu);
    }
    // Reject overlong forms, surrogates and values past U+10FFFF.
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return n;
}

}  // namespace

namespace {

std::string escape_text(const std::string& s, size_t limit) {
    static const char* hex = "0123456789abcdef";
    std::string out;
    size_t k = 0;
    while (k < s.size() && k < limit) {
        const unsigned char ch = static_cast<unsigned char>(s[k]);
        const size_t n = utf8_len(s, k);
        if (n == 0 || ch < 0x20 || ch == 0x7f) {
            out += "\\x";
            out += hex[ch >> 4];
            out += hex[ch & 15];
            ++k;
        } else {
            out.append(s, k, n);
            k += n;
        }
    }
    if (k < s.size()) out += "...";
    return out;
}

}  // namespace

std::string printable_text(const std::string& s) { return escape_text(s, std::string::npos); }

std::string quote_name(const std::string& s) { return "'" + escape_text(s, 200) + "'"; }

// ---------------------------------------------------------------------------------------------
// Parsing helpers
// ---------------------------------------------------------------------------------------------

namespace {

constexpr uint8_t kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr size_t kHeaderBytes = 4 + 4 + 8 + 8;        // magic, version, tensor count, kv count
constexpr uint64_t kMaxNameBytes = 65535;             // keys and tensor names
constexpr uint64_t kMaxStringBytes = uint64_t(1) << 30;  // any one string value (1 GiB)
constexpr int kMaxArrayDepth = 8;                     // array of array of ... (never seen in models)
constexpr int kMaxDims = 4;                           // GGML_MAX_DIMS
// The smallest encodings, used to reject counts that cannot fit in the bytes left.
constexpr uint64_t kMinKVBytes = 8 + 1 + 4 + 1;              // key length, 1 key byte, type, u8
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name, n_dims, 1 dim, type, offset

uint64_t load_le(const uint8_t* p, int n) {
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | p[k];
    return v;
}

bool is_unsigned(GGUFType t) {
    return t == GGUFType::UINT8 || t == GGUFType::UINT16 || t == GGUFType::UINT32 || t == GGUFType::UINT64;
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GGUFType::FLOAT64); }

// Fixed size of a scalar value type in bytes; 0 for STRING and ARRAY.
uint64_t scalar_bytes(GGUFType t) {
    switch (t) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
        case GGUFType::UINT16: case GGUFType::INT16: return 2;
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
        case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
        case GGUFType::STRING: case GGUFType::ARRAY: return 0;
    }
    return 0;
}

// Smallest encoding of one array element of type t (for the count-vs-bytes bound).
uint64_t min_elem_bytes(GGUFType t) {
    if (t == GGUFType::STRING) return 8;        // the length
    if (t == GGUFType::ARRAY) return 4 + 8;     // element type and count
    return scalar_bytes(t);
}

// A bounds-checked reader over the mapped file. The `what` arguments name the field being
// read, for the error message.
class Cursor {
public:
    Cursor(const uint8_t* base, size_t size, const std::string& file)
        : base_(base), size_(size), file_(file) {}

    size_t pos() const { return pos_; }
    uint64_t remaining() const { return size_ - pos_; }

    [[noreturn]] void error(const std::string& msg) const {
        fail(ErrorCode::FILE, file_ + ": " + msg);   // file_ is already quote-safe
    }

    void need(uint64_t n, const std::string& what) const {
        if (n > remaining()) {
            error(what + ": needs " + std::to_string(n) + " bytes at offset " + std::to_string(pos_) +
                  " but the file has only " + std::to_string(remaining()) + " left (truncated file?)");
        }
    }

    uint64_t read(int nbytes, const std::string& what) {
        need(static_cast<uint64_t>(nbytes), what);
        const uint64_t v = load_le(base_ + pos_, nbytes);
        pos_ += static_cast<size_t>(nbytes);
        return v;
    }
    // Callers that already checked need() for a run of fixed-size values.
    uint64_t read_unchecked(int nbytes) {
        const uint64_t v = load_le(base_ + pos_, nbytes);
        pos_ += static_cast<size_t>(nbytes);
        return v;
    }

    // A gguf_string: u64 length, then the bytes. `what()` names the field; it is only called
    // to build an error message (string arrays hold hundreds of thousands of elements).
    template <typename What>
    std::string string(uint64_t max_len, What&& what) {
        if (remaining() < 8) need(8, what() + " length");
        const uint64_t len = read_unchecked(8);
        if (len > remaining()) {
            error(what() + ": length " + std::to_string(len) + " exceeds the " + std::to_string(remaining()) +
                  " bytes left in the file");
        }
        if (len > max_len) {
            error(what() + ": length " + std::to_string(len) + " exceeds the limit of " +
                  std::to_string(max_len) + " bytes");
        }
        std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
        pos_ += static_cast<size_t>(len);
        return s;
    }

private:
    const uint8_t* base_;
    size_t size_;
    size_t pos_ = 0;
    const std::string& file_;
};

double float_from_bits32(uint64_t bits) {
    const uint32_t b = static_cast<uint32_t>(bits);
    float f;
    std::memcpy(&f, &b, sizeof f);
    return static_cast<double>(f);
}

double float_from_bits64(uint64_t bits) {
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}

// Reads one scalar of type t at the cursor (bounds already checked by the caller) into
// (u, i, f, b). Returns false for a bool byte other than 0/1.
bool read_scalar(Cursor& c, GGUFType t, uint64_t& u, int64_t& i, double& f, bool& b) {
    u = 0; i = 0; f = 0.0; b = false;
    switch (t) {
        case GGUFType::UINT8: case GGUFType::UINT16: case GGUFType::UINT32: case GGUFType::UINT64: {
            u = c.read_unchecked(static_cast<int>(scalar_bytes(t)));
            if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) i = static_cast<int64_t>(u);
            return true;
        }
        case GGUFType::INT8: i = static_cast<int8_t>(c.read_unchecked(1)); break;
        case GGUFType::INT16: i = static_cast<int16_t>(c.read_unchecked(2)); break;
        case GGUFType::INT32: i = static_cast<int32_t>(c.read_unchecked(4)); break;
        case GGUFType::INT64: i = static_cast<int64_t>(c.read_unchecked(8)); break;
        case GGUFType::FLOAT32: f = float_from_bits32(c.read_unchecked(4)); return true;
        case GGUFType::FLOAT64: f = float_from_bits64(c.read_unchecked(8)); return true;
        case GGUFType::BOOL: {
            const uint64_t v = c.read_unchecked(1);
            if (v > 1) return false;
            b = v != 0;
            u = v;
            i = static_cast<int64_t>(v);
            return true;
        }
        case GGUFType::STRING: case GGUFType::ARRAY: return true;
    }
    if (i >= 0) u = static_cast<uint64_t>(i);   // signed types: also fill u when it fits
    return true;
}

void read_value(Cursor& c, GGUFType type, GGUFValue& out, const std::string& ctx, int depth) {
    out.type = type;
    if (type == GGUFType::STRING) {
        out.s = c.string(kMaxStringBytes, [&] { return ctx + " string value"; });
        return;
    }
    if (type != GGUFType::ARRAY) {
        c.need(scalar_bytes(type), ctx + " " + gguf_type_name(type) + " value");
        if (!read_scalar(c, type, out.u, out.i, out.f, out.b)) {
            c.error(ctx + ": bool value is neither 0 nor 1");
        }
        return;
    }
    if (depth >= kMaxArrayDepth) {
        c.error(ctx + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " levels");
    }
    const uint32_t et = static_cast<uint32_t>(c.read(4, ctx + " array element type"));
    if (!known_value_type(et)) {
        c.error(ctx + ": unknown array element type " + std::to_string(et));
    }
    out.elem_type = static_cast<GGUFType>(et);
    out.count = c.read(8, ctx + " array count");
    const uint64_t min_bytes = min_elem_bytes(out.elem_type);
    if (out.count > c.remaining() / min_bytes) {
        c.error(ctx + ": array count " + std::to_string(out.count) + " of " + gguf_type_name(out.elem_type) +
                " cannot fit in the " + std::to_string(c.remaining()) + " bytes left in the file");
    }
    const size_t count = static_cast<size_t>(out.count);
    switch (out.elem_type) {
        case GGUFType::STRING:
            out.strs.reserve(count);
            for (size_t k = 0; k < count; ++k) {
                out.strs.push_back(c.string(kMaxStringBytes, [&] { return ctx + " element " + std::to_string(k); }));
            }
            return;
        case GGUFType::ARRAY:
            // Nested arrays are validated (and bounded) but only their count is kept.
            for (size_t k = 0; k < count; ++k) {
                GGUFValue inner;
                read_value(c, GGUFType::ARRAY, inner, ctx + " element " + std::to_string(k), depth + 1);
            }
            return;
        case GGUFType::FLOAT32: case GGUFType::FLOAT64: {
            out.floats.resize(count);
            uint64_t u; int64_t i; bool b;
            for (size_t k = 0; k < count; ++k) read_scalar(c, out.elem_type, u, i, out.floats[k], b);
            return;
        }
        default: {
            out.ints.resize(count);
            uint64_t u; int64_t i; double f; bool b;
            for (size_t k = 0; k < count; ++k) {
                if (!read_scalar(c, out.elem_type, u, i, f, b)) {
                    c.error(ctx + ": bool element " + std::to_string(k) + " is neither 0 nor 1");
                }
                // Unsigned values are stored from u: uint64 values above INT64_MAX keep their bit
                // pattern, and elem_type says how to read them back.
                out.ints[k] = is_unsigned(out.elem_type) ? static_cast<int64_t>(u) : i;
            }
            return;
        }
    }
}

// Names of the upstream ggml type ids, for messages about ids this package does not read.
const char* upstream_type_name(uint32_t id) {
    static const char* names[] = {
        "F32", "F16", "Q4_0", "Q4_1", nullptr, nullptr, "Q5_0", "Q5_1", "Q8_0", "Q8_1",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
        "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
        "BF16", nullptr, nullptr, nullptr, "TQ1_0", "TQ2_0", nullptr, nullptr, nullptr, "MXFP4",
        "NVFP4", "Q1_0",
    };
    if (id < sizeof(names) / sizeof(names[0])) return names[id];
    return nullptr;
}

// File type id -> TensorType. The ids 36..39 mean different things to upstream ggml and to
// the bitnet.cpp fork (REFERENCE.md 2.4):
//
//   id | upstream ggml                         | bitnet.cpp fork        | here
//   ---+---------------------------------------+------------------------+---------------------------
//    0 | F32                                   | F32                    | F32
//    1 | F16                                   | F16                    | F16
//    2 | Q4_0                                  | Q4_0                   | Q4_0
//    8 | Q8_0                                  | Q8_0                   | Q8_0
//   14 | Q6_K                                  | Q6_K                   | Q6_K
//   30 | BF16                                  | BF16                   | BF16
//   34 | TQ1_0                                 | TQ1_0                  | TQ1_0
//   35 | TQ2_0                                 | TQ2_0                  | TQ2_0
//   36 | IQ4_NL_4_4 (removed; never in files)  | I2_S                   | I2_S if bitnet.cpp dialect
//      |                                       |                        | or arch "bitnet", else error
//   37 | IQ4_NL_4_8 (removed)                  | I8_S (activations)     | error
//   38 | IQ4_NL_8_8 (removed)                  | TL1                    | error
//   39 | MXFP4                                 | TL2                    | error
//   anything else                                                     | error naming the id
TensorType map_type_id(uint32_t id, Dialect dialect, const std::string& arch, const std::string& ctx,
                       const Cursor& c) {
    const bool fork = dialect == Dialect::BITNET_CPP;
    switch (id) {
        case 0: return TensorType::F32;
        case 1: return TensorType::F16;
        case 2: return TensorType::Q4_0;
        case 8: return TensorType::Q8_0;
        case 14: return TensorType::Q6_K;
        case 30: return TensorType::BF16;
        case 34: return TensorType::TQ1_0;
        case 35: return TensorType::TQ2_0;
        case 36:
            // Upstream never writes 36 to files (it was the in-memory repack type IQ4_NL_4_4),
            // and the fork also writes arch "bitnet", so "bitnet" + 36 can only be I2_S.
            if (fork || arch == "bitnet") return TensorType::I2_S;
            c.error(ctx + ": type id 36 is I2_S in bitnet.cpp files but IQ4_NL_4_4 (a removed in-memory "
                          "repack type) in upstream ggml; architecture " + quote_name(arch) +
                    " is not a bitnet.cpp architecture (bitnet-b1.58, bitnet-25, bitnet), so the id is "
                    "ambiguous and the tensor is rejected");
        case 37:
            c.error(ctx + ": type id 37 (I8_S, a bitnet.cpp activation type; IQ4_NL_4_8 upstream, removed) "
                          "is never valid in a model file");
        case 38:
            if (fork) {
                c.error(ctx + ": type id 38 is TL1: TL1/TL2 lookup-table layouts depend on build-time tuning "
                              "and are not supported; re-convert with --type i2_s or tq2_0");
            }
            c.error(ctx + ": type id 38 (IQ4_NL_8_8, a removed upstream repack type) is not valid in a file");
        case 39:
            if (fork) {
                c.error(ctx + ": type id 39 is TL2: TL1/TL2 lookup-table layouts depend on build-time tuning "
                              "and are not supported; re-convert with --type i2_s or tq2_0");
            }
            c.error(ctx + ": type id 39 (MXFP4 in upstream ggml" +
                    std::string(arch == "bitnet" ? "; TL2 if written by bitnet.cpp" : "") +
                    ") is not supported by this package");
        default:
            break;
    }
    const char* name = upstream_type_name(id);
    if (name) {
        c.error(ctx + ": type id " + std::to_string(id) + " (" + name +
                ") is not supported (supported: F32, F16, BF16, Q4_0, Q8_0, Q6_K, TQ1_0, TQ2_0, I2_S)");
    }
    c.error(ctx + ": unknown type id " + std::to_string(id));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// GGUFFile
// ---------------------------------------------------------------------------------------------

GGUFFile::GGUFFile(const std::string& file) : path_(file) {
    const std::string path = printable_text(file);   // for messages
    fd_ = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
        const int err = errno;
        // strerror(ENOENT) is "No such file or directory": bitnet.errors maps that text to
        // BitNetFileNotFoundError.
        fail(ErrorCode::FILE, path + ": cannot open: " + std::strerror(err));
    }
    try {
        struct stat st;
        if (::fstat(fd_, &st) != 0) {
            const int err = errno;
            fail(ErrorCode::FILE, path + ": cannot stat: " + std::strerror(err));
        }
        if (!S_ISREG(st.st_mode)) {
            fail(ErrorCode::FILE, path + ": not a regular file");
        }
        if (static_cast<uint64_t>(st.st_size) > std::numeric_limits<size_t>::max()) {
            fail(ErrorCode::FILE, path + ": file too large to map on this platform");
        }
        size_ = static_cast<size_t>(st.st_size);
        if (size_ < kHeaderBytes) {
            // Still say "bad magic" when the few bytes there are not GGUF at all.
            uint8_t head[4] = {0, 0, 0, 0};
            const ssize_t got = size_ >= 4 ? ::pread(fd_, head, 4, 0) : 0;
            if (got == 4 && std::memcmp(head, kMagic, 4) != 0) {
                fail(ErrorCode::FILE, path + ": not a GGUF file: bad magic");
            }
            fail(ErrorCode::FILE, path + ": truncated header: the file has " + std::to_string(size_) +
                                      " bytes, a GGUF header needs " + std::to_string(kHeaderBytes));
        }
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
        if (p == MAP_FAILED) {
            const int err = errno;
            fail(ErrorCode::FILE, path + ": cannot map: " + std::strerror(err));
        }
        base_ = static_cast<const uint8_t*>(p);
        parse();
    } catch (...) {
        if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
        base_ = nullptr;
        ::close(fd_);
        fd_ = -1;
        throw;
    }
}

GGUFFile::~GGUFFile() {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
    if (fd_ >= 0) ::close(fd_);
}

void GGUFFile::release_pages(const GGUFTensor& t) const { release_range(t.data, t.nbytes); }

void GGUFFile::release_range(const uint8_t* p, size_t n) const {
    if (!base_ || !p || n == 0 || p < base_ || p + n > base_ + size_) return;
    const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void GGUFFile::read_range(const uint8_t* p, size_t n, uint8_t* dst) const {
    if (!base_ || !p || p < base_ || n > size_ || static_cast<size_t>(p - base_) > size_ - n)
        throw Error(ErrorCode::FILE, printable_text(path_) + ": read outside the file");
    size_t done = 0;
    while (done < n) {
        const ssize_t got = ::pread(fd_, dst + done, n - done, static_cast<off_t>(p - base_) + static_cast<off_t>(done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            const int err = got < 0 ? errno : 0;
            throw Error(ErrorCode::FILE, printable_text(path_) + ": cannot read " + std::to_string(n) + " bytes at offset " +
                                             std::to_string(p - base_) + ": " +
                                             (err ? std::strerror(err) : "the file is shorter than when it was opened"));
        }
        done += static_cast<size_t>(got);
    }
}

void GGUFFile::parse() {
    const std::string label = printable_text(path_);
    Cursor c(base_, size_, label);

    // --- header -------------------------------------------------------------------------------
    if (std::memcmp(base_, kMagic, 4) != 0) {
        static const char* hex = "0123456789abcdef";
        std::string got;
        for (int k = 0; k < 4; ++k) {
            got += hex[base_[k] >> 4];
            got += hex[base_[k] & 15];
            if (k < 3) got += ' ';
        }
        c.error("not a GGUF file: bad magic (bytes " + got + ", expected 47 47 55 46 \"GGUF\")");
    }
    c.read(4, "magic");
    version_ = static_cast<uint32_t>(c.read(4, "version"));
    if (version_ == 0x02000000u || version_ == 0x03000000u) {
        c.error("version field reads " + std::to_string(version_) +
                ": this is a big-endian GGUF file, which is not supported");
    }
    if (version_ == 1) {
        c.error("GGUF version 1 is not supported (it used 32-bit counts and lengths); re-convert the "
                "model with a current converter (versions 2 and 3 are accepted)");
    }
    if (version_ != 2 && version_ != 3) {
        c.error("unsupported GGUF version " + std::to_string(version_) + " (versions 2 and 3 are accepted)");
    }
    const uint64_t n_tensors = c.read(8, "tensor count");
    const uint64_t n_kv = c.read(8, "metadata kv count");
    // Bound both counts by the bytes left before anything is allocated for them.
    if (n_kv > c.remaining() / kMinKVBytes) {
        c.error("metadata kv count " + std::to_string(n_kv) + " cannot fit in the " +
                std::to_string(c.remaining()) + " bytes after the header");
    }
    if (n_tensors > c.remaining() / kMinTensorInfoBytes) {
        c.error("tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
                std::to_string(c.remaining()) + " bytes after the header");
    }
    if (n_kv * kMinKVBytes + n_tensors * kMinTensorInfoBytes > c.remaining()) {
        c.error("metadata kv count " + std::to_string(n_kv) + " and tensor count " + std::to_string(n_tensors) +
                " together cannot fit in the " + std::to_string(c.remaining()) + " bytes after the header");
    }

    // --- metadata -----------------------------------------------------------------------------
    for (uint64_t k = 0; k < n_kv; ++k) {
        const std::string kctx = "metadata kv #" + std::to_string(k);
        std::string key = c.string(kMaxNameBytes, [&] { return kctx + " key"; });
        if (key.empty()) c.error(kctx + ": empty key");
        const std::string ctx = "key " + quote_name(key);
        if (kv_.count(key)) c.error(ctx + ": duplicate key");
        const uint32_t t = static_cast<uint32_t>(c.read(4, ctx + " value type"));
        if (!known_value_type(t)) c.error(ctx + ": unknown value type " + std::to_string(t));
        GGUFValue v;
        read_value(c, static_cast<GGUFType>(t), v, ctx, 0);
        kv_.emplace(std::move(key), std::move(v));
    }

    const GGUFValue* arch = find("general.architecture");
    if (!arch) c.error("required key 'general.architecture' is missing");
    if (arch->type != GGUFType::STRING) {
        c.error(std::string("key 'general.architecture': expected a string, found ") + gguf_type_name(arch->type));
    }
    arch_ = arch->s;
    dialect_ = (arch_ == "bitnet-b1.58" || arch_ == "bitnet-25") ? Dialect::BITNET_CPP : Dialect::UPSTREAM;

    alignment_ = 32;   // gguf.md default
    if (const GGUFValue* al = find("general.alignment")) {
        if (al->type != GGUFType::UINT32) {
            c.error(std::string("key 'general.alignment': expected uint32, found ") + gguf_type_name(al->type));
        }
        if (al->u == 0 || (al->u & (al->u - 1)) != 0) {
            c.error("key 'general.alignment': " + std::to_string(al->u) + " is not a non-zero power of two");
        }
        alignment_ = static_cast<size_t>(al->u);
    }

    // --- tensor infos -------------------------------------------------------------------------
    tensors_.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t k = 0; k < n_tensors; ++k) {
        GGUFTensor t;
        t.name = c.string(kMaxNameBytes, [&] { return "tensor info #" + std::to_string(k) + " name"; });
        const std::string ctx = "tensor " + quote_name(t.name);
        if (t.name.empty()) c.error("tensor info #" + std::to_string(k) + ": empty tensor name");
        if (tensor_index_.count(t.name)) c.error(ctx + ": duplicate tensor name");

        const uint32_t n_dims = static_cast<uint32_t>(c.read(4, ctx + " n_dims"));
        if (n_dims < 1 || n_dims > static_cast<uint32_t>(kMaxDims)) {
            c.error(ctx + ": n_dims " + std::to_string(n_dims) + " is outside 1.." + std::to_string(kMaxDims));
        }
        t.n_dims = static_cast<int>(n_dims);
        int64_t n = 1;
        for (int d = 0; d < t.n_dims; ++d) {
            const std::string dctx = ctx + " dim " + std::to_string(d);
            const uint64_t ne = c.read(8, dctx);
            // Zero-sized dims are rejected: an empty tensor has no use in a model, and
            // zero-length tensors would make the overlap check meaningless.
            if (ne == 0) c.error(dctx + " is 0 (empty tensors are not accepted)");
            if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
                c.error(dctx + " is " + std::to_string(ne) + ", larger than INT64_MAX");
            }
            const int64_t sne = static_cast<int64_t>(ne);
            if (n > std::numeric_limits<int64_t>::max() / sne) {
                c.error(ctx + ": the element count (product of the dims) overflows int64");
            }
            n *= sne;
            t.ne[d] = sne;
        }
        t.n_elements = n;
        t.type_id = static_cast<uint32_t>(c.read(4, ctx + " type"));
        t.type = map_type_id(t.type_id, dialect_, arch_, ctx, c);
        t.offset = c.read(8, ctx + " offset");
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    // --- data section -------------------------------------------------------------------------
    const uint64_t end_of_infos = c.pos();
    data_offset_ = static_cast<size_t>((end_of_infos + alignment_ - 1) / alignment_ * alignment_);
    const uint64_t data_bytes = data_offset_ <= size_ ? size_ - data_offset_ : 0;
    if (!tensors_.empty() && data_offset_ > size_) {
        c.error("the data section would start at offset " + std::to_string(data_offset_) +
                " (end of tensor infos rounded up to the alignment " + std::to_string(alignment_) +
                "), past the end of the " + std::to_string(size_) + "-byte file");
    }
    for (GGUFTensor& t : tensors_) {
        const std::string ctx = "tensor " + quote_name(t.name);
        t.nbytes = tensor_nbytes(t.type, t.ne[0], t.n_elements, label + ": " + ctx + " (" + tensor_type_name(t.type) + ")");
        if (t.offset % alignment_ != 0) {
            c.error(ctx + ": offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                    std::to_string(alignment_));
        }
        if (t.offset > data_bytes || t.nbytes > data_bytes - t.offset) {
            c.error(ctx + ": data [" + std::to_string(t.offset) + ", +" + std::to_string(t.nbytes) +
                    " bytes) runs past the end of the file (data section of " + std::to_string(data_bytes) +
                    " bytes at file offset " + std::to_string(data_offset_) + ")");
        }
        t.data = base_ + data_offset_ + t.offset;
    }
    // Overlap: sort by offset and compare neighbours.
    std::vector<const GGUFTensor*> order;
    order.reserve(tensors_.size());
    for (const GGUFTensor& t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](const GGUFTensor* a, const GGUFTensor* b) { return a->offset < b->offset; });
    for (size_t k = 1; k < order.size(); ++k) {
        const GGUFTensor* a = order[k - 1];
        const GGUFTensor* b = order[k];
        if (b->offset < a->offset + a->nbytes) {
            c.error("tensor " + quote_name(b->name) + " (offset " + std::to_string(b->offset) + ") overlaps tensor " +
                    quote_name(a->name) + " (offset " + std::to_string(a->offset) + ", " + std::to_string(a->nbytes) +
                    " bytes)");
        }
    }
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
    auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
}

const GGUFTensor* GGUFFile::tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

[[noreturn]] void type_error(const std::string& path, const std::string& key, const char* want,
                             const GGUFValue& v) {
    fail(ErrorCode::FILE, printable_text(path) + ": key " + quote_name(key) + ": expected " + want + ", found " +
                              gguf_type_name(v.type));
}

const GGUFValue& require(const GGUFFile& f, const std::string& key) {
    const GGUFValue* v = f.find(key);
    if (!v) fail(ErrorCode::FILE, printable_text(f.path()) + ": required key " + quote_name(key) + " is missing");
    return *v;
}

bool is_signed(GGUFType t) {
    return t == GGUFType::INT8 || t == GGUFType::INT16 || t == GGUFType::INT32 || t == GGUFType::INT64;
}

uint64_t as_uint(const std::string& path, const std::string& key, const GGUFValue& v) {
    if (!v.is_integer()) type_error(path, key, "an unsigned integer", v);
    if (is_signed(v.type) && v.i < 0) {
        fail(ErrorCode::FILE, printable_text(path) + ": key " + quote_name(key) + ": expected an unsigned integer, found the negative " +
                                  gguf_type_name(v.type) + " " + std::to_string(v.i));
    }
    return v.u;
}

double as_float(const std::string& path, const std::string& key, const GGUFValue& v) {
    if (v.is_float()) return v.f;
    if (v.is_integer()) return is_signed(v.type) ? static_cast<double>(v.i) : static_cast<double>(v.u);
    type_error(path, key, "a number", v);
}

}  // namespace

uint64_t GGUFFile::get_uint(const std::string& key) const { return as_uint(path_, key, require(*this, key)); }

uint64_t GGUFFile::get_uint(const std::string& key, uint64_t def) const {
    const GGUFValue* v = find(key);
    return v ? as_uint(path_, key, *v) : def;
}

double GGUFFile::get_float(const std::string& key) const { return as_float(path_, key, require(*this, key)); }

double GGUFFile::get_float(const std::string& key, double def) const {
    const GGUFValue* v = find(key);
    return v ? as_float(path_, key, *v) : def;
}

std::string GGUFFile::get_string(const std::string& key) const {
    const GGUFValue& v = require(*this, key);
    if (v.type != GGUFType::STRING) type_error(path_, key, "a string", v);
    return v.s;
}

std::string GGUFFile::get_string(const std::string& key, const std::string& def) const {
    const GGUFValue* v = find(key);
    if (!v) return def;
    if (v->type != GGUFType::STRING) type_error(path_, key, "a string", *v);
    return v->s;
}

bool GGUFFile::get_bool(const std::string& key, bool def) const {
    const GGUFValue* v = find(key);
    if (!v) return def;
    if (v->type == GGUFType::BOOL) return v->b;
    if (v->is_integer()) {
        if (v->i == 0 && v->u == 0) return false;
        if (v->i == 1 && v->u == 1) return true;
        fail(ErrorCode::FILE, printable_text(path_) + ": key " + quote_name(key) + ": expected a bool (or integer 0/1), found " +
                                  gguf_type_name(v->type) + " " +
                                  (is_signed(v->type) ? std::to_string(v->i) : std::to_string(v->u)));
    }
    type_error(path_, key, "a bool", *v);
}

}  // namespace bitnet
