// gguf.h: a validating, memory-mapped reader for GGUF v2/v3 model files.
//
// Every count, string length, offset, alignment, dimension and type read from the file is
// checked before it is used; a malformed file raises bitnet::Error(ErrorCode::FILE) with a
// message that names the offending field (and the tensor or key it belongs to). The mapping
// stays alive as long as the GGUFFile object, and tensor data pointers point into it.
//
// Thread-safety: a GGUFFile is immutable after construction; concurrent reads are safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "error.h"

namespace bitnet {

// GGUF metadata value types (gguf.md).
enum class GGUFType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
    BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GGUFType t);

// One metadata value. Scalars fill exactly one of u/i/f/b/s according to `type`
// (integers are stored both as u and i when they fit). Arrays fill elem_type, count and,
// for arrays of scalars or strings, one of ints/floats/strs (unsigned elements are stored
// from their bit pattern, so a uint64 above INT64_MAX reads back with a cast). Nested arrays
// are validated and kept only as a count.
struct GGUFValue {
    GGUFType type = GGUFType::UINT8;
    uint64_t u = 0;
    int64_t i = 0;
    double f = 0.0;
    bool b = false;
    std::string s;
    GGUFType elem_type = GGUFType::UINT8;
    uint64_t count = 0;
    std::vector<int64_t> ints;       // integer and bool arrays
    std::vector<double> floats;      // float arrays
    std::vector<std::string> strs;   // string arrays
    bool is_integer() const;         // any integer scalar type
    bool is_float() const;           // FLOAT32 / FLOAT64
};

// The dialect decides the meaning of GGML type ids that the two ecosystems assign
// differently (REFERENCE.md 2.4): upstream ggml/llama.cpp, or the bitnet.cpp fork.
enum class Dialect { UPSTREAM, BITNET_CPP };

// Tensor element types this package reads. The mapping from file type id to TensorType is
// dialect-aware (see docs/FORMAT.md).
enum class TensorType { F32, F16, BF16, Q8_0, Q4_0, Q6_K, TQ1_0, TQ2_0, I2_S };
const char* tensor_type_name(TensorType t);
bool tensor_type_is_ternary(TensorType t);   // TQ1_0, TQ2_0, I2_S

// Block geometry of a type: `block` elements take `block_bytes` bytes. I2_S is special
// (n/4 bytes + a 32-byte tail holding the f32 scale); tensor_nbytes() handles it.
int64_t tensor_type_block(TensorType t);
size_t tensor_type_block_bytes(TensorType t);
// Bytes of a tensor with ne0 elements per row and n elements in all. Throws Error(FILE)
// naming `what` if ne0 is not a multiple of the block size or the size overflows.
size_t tensor_nbytes(TensorType t, int64_t ne0, int64_t n, const std::string& what);

// Text from a file (a key, a tensor name) or a path, made safe for an error message: control
// bytes and bytes that are not valid UTF-8 become \xNN, so messages are always valid UTF-8.
// quote_name also cuts very long names and adds single quotes.
std::string printable_text(const std::string& s);
std::string quote_name(const std::string& s);

struct GGUFTensor {
    std::string name;
    uint32_t type_id = 0;        // the raw id in the file
    TensorType type = TensorType::F32;
    int n_dims = 0;
    int64_t ne[4] = {1, 1, 1, 1};  // ggml order: ne[0] is the contiguous axis
    int64_t n_elements = 0;
    uint64_t offset = 0;         // relative to the start of the data section
    const uint8_t* data = nullptr;
    size_t nbytes = 0;
};

class GGUFFile {
public:
    // Opens, maps and validates `path`. Throws Error(FILE) naming the problem; when the file
    // cannot be opened the message carries strerror's text ("No such file or directory" for
    // a missing file, which Python maps to BitNetFileNotFoundError).
    explicit GGUFFile(const std::string& path);
    ~GGUFFile();
    GGUFFile(const GGUFFile&) = delete;
    GGUFFile& operator=(const GGUFFile&) = delete;

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    size_t file_size() const { return size_; }
    size_t alignment() const { return alignment_; }
    size_t data_offset() const { return data_offset_; }
    const std::string& architecture() const { return arch_; }
    Dialect dialect() const { return dialect_; }

    const std::map<std::string, GGUFValue>& metadata() const { return kv_; }
    const GGUFValue* find(const std::string& key) const;
    bool has(const std::string& key) const { return find(key) != nullptr; }

    // Typed getters. The one-argument forms throw Error(FILE) naming the key if it is
    // missing; all forms throw if the value has an incompatible type or is out of range.
    uint64_t get_uint(const std::string& key) const;
    uint64_t get_uint(const std::string& key, uint64_t def) const;
    double get_float(const std::string& key) const;
    double get_float(const std::string& key, double def) const;
    std::string get_string(const std::string& key) const;
    std::string get_string(const std::string& key, const std::string& def) const;
    bool get_bool(const std::string& key, bool def) const;

    const std::vector<GGUFTensor>& tensors() const { return tensors_; }

    // Tells the kernel that the pages wholly inside this tensor's data are not needed now
    // (madvise MADV_DONTNEED on the read-only private mapping): they leave the process's
    // resident set and are read again from the file if touched. Used after a tensor was
    // copied to the card.
    void release_pages(const GGUFTensor& t) const;
    // The same for the bytes [p, p + n) of a tensor's data (p inside the mapping).
    void release_range(const uint8_t* p, size_t n) const;
    // Copies the bytes [p, p + n) of a tensor's data (p inside the mapping) into dst through
    // the file descriptor (pread), so that they do not join the process's resident set.
    // Throws Error(FILE) if the file cannot be read.
    void read_range(const uint8_t* p, size_t n, uint8_t* dst) const;
    const GGUFTensor* tensor(const std::string& name) const;   // nullptr if absent

private:
    void parse();

    std::string path_;
    int fd_ = -1;
    const uint8_t* base_ = nullptr;
    size_t size_ = 0;
    uint32_t version_ = 0;
    size_t alignment_ = 32;
    size_t data_offset_ = 0;
    std::string arch_;
    Dialect dialect_ = Dialect::UPSTREAM;
    std::map<std::string, GGUFValue> kv_;
    std::vector<GGUFTensor> tensors_;
    std::map<std::string, size_t> tensor_index_;
};

}  // namespace bitnet
