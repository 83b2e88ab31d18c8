// model.h: a BitNet b1.58 model loaded from a GGUF file.
//
// The host keeps what the host computes with (embedding table, norm weights, the output
// head) and hands every ternary projection to the card, one weight slot per matrix.
// Architecture variants are read from the file's metadata, never guessed from shapes
// (docs/FORMAT.md "Architectures").
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "transport.h"

namespace bitnet {

enum class Activation { RELU2, SILU };
enum class RopeStyle { NEOX, NORM };   // NEOX: halves rotate together; NORM: adjacent pairs

const char* activation_name(Activation a);
const char* rope_style_name(RopeStyle r);

struct ModelConfig {
    std::string arch;             // general.architecture
    std::string name;             // general.name (may be empty)
    int64_t n_vocab = 0;
    int64_t n_embd = 0;           // hidden size
    int64_t n_layer = 0;
    int64_t n_head = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;
    int64_t n_ff = 0;             // intermediate size
    int64_t n_ctx = 0;            // max_seq_len (context_length)
    float rms_eps = 1e-5f;
    float rope_theta = 10000.0f;
    float rope_freq_scale = 1.0f; // linear rope scaling: positions are multiplied by this
    int64_t rope_dim = 0;         // rotated dims per head (<= head_dim)
    RopeStyle rope_style = RopeStyle::NEOX;
    Activation act = Activation::RELU2;
    bool sub_norms = true;        // attn_sub_norm / ffn_sub_norm present
    bool tied_output = true;      // output head = token embedding
    int64_t bos_token = -1;
    int64_t eos_token = -1;
    std::vector<int32_t> stop_tokens;   // eos (and eot if the file names one)

    int64_t q_dim() const { return n_head * head_dim; }
    int64_t kv_dim() const { return n_head_kv * head_dim; }
};

// The ternary projections of one layer, in slot order.
enum Proj { PROJ_Q = 0, PROJ_K, PROJ_V, PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN, PROJ_COUNT };
const char* proj_tensor_name(int proj);   // "attn_q", ...

// A float matrix stored as a GGUF tensor (embedding / output head): rows are dequantized on
// demand so that the file's own (possibly compact) format stays the only copy in memory (the
// output head's copy below replaces the file's pages, which are released).
struct HostMatrix {
    const GGUFTensor* tensor = nullptr;
    const uint8_t* data = nullptr;           // the rows: in the file mapping, or in `copy`
    int64_t rows = 0;
    int64_t cols = 0;
    size_t row_bytes = 0;
    // The output head is the largest read of every decode step: it is copied out of the file
    // mapping into huge-page memory at load (the 4 KiB page walks of the mapping cost ~7% of
    // the head's bandwidth), shared by the tied embedding.
    std::shared_ptr<const std::vector<uint8_t, sim::SlotAllocator<uint8_t>>> copy;
    // Set when the copy was given back (Model::release_output_copy): rows are then read through
    // the file (pread) on demand, and `data` is the mapping (for passes over every row).
    const GGUFFile* file = nullptr;
    void row(int64_t r, float* out) const;   // dequantize row r into out[cols]
    // Row r's bytes (row_bytes of them): in memory, or read from the file into scratch.
    const uint8_t* row_data(int64_t r, uint8_t* scratch) const;
};

struct LayerWeights {
    std::vector<float> attn_norm;       // [n_embd]
    std::vector<float> attn_sub_norm;   // [q_dim] (empty if the arch has none)
    std::vector<float> ffn_norm;        // [n_embd]
    std::vector<float> ffn_sub_norm;    // [n_ff] (empty if none)
    int slot[PROJ_COUNT] = {-1, -1, -1, -1, -1, -1, -1};
    int64_t rows[PROJ_COUNT] = {0};
    int64_t cols[PROJ_COUNT] = {0};
};

class Model {
public:
    // Opens and validates the file, reads the configuration and loads every ternary
    // projection into `card` (slots first_slot, first_slot+1, ...). Throws Error(FILE) for a
    // bad file, Error(NO_MEMORY) if the card cannot hold the weights.
    Model(const std::string& path, Transport& card, int first_slot = 0);

    const ModelConfig& config() const { return cfg_; }
    const std::string& path() const { return path_; }
    const GGUFFile& file() const { return *file_; }
    const std::vector<LayerWeights>& layers() const { return layers_; }
    const HostMatrix& embedding() const { return embd_; }
    const HostMatrix& output() const { return output_; }
    const std::vector<float>& output_norm() const { return output_norm_; }
    uint64_t ternary_bytes() const { return ternary_bytes_; }    // bytes in card slots
    uint64_t weight_size() const;                                 // bytes of weights in the file
    int first_slot() const { return first_slot_; }
    int slot_count() const { return static_cast<int>(cfg_.n_layer) * PROJ_COUNT; }
    std::vector<std::string> notes() const { return notes_; }    // what the loader decided
    // Gives back the output head's in-memory copy (the fast head keeps its own int8 copy and
    // needs only a few full-precision rows per token): those rows, and the tied embedding's,
    // are then read from the file on demand. Not while a forward pass runs.
    void release_output_copy();

private:
    void read_config();
    void load_weights(Transport& card);
    std::vector<float> load_vector(const std::string& name, int64_t n, bool required);

    std::string path_;
    std::unique_ptr<GGUFFile> file_;
    ModelConfig cfg_;
    HostMatrix embd_;
    HostMatrix output_;
    std::vector<float> output_norm_;
    std::vector<LayerWeights> layers_;
    uint64_t ternary_bytes_ = 0;
    int first_slot_ = 0;
    std::vector<std::string> notes_;
};

}  // namespace bitnet
