// model.cpp: reading a BitNet b1.58 model's configuration and weights from a GGUF file.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "log.h"
#include "quant.h"

namespace bitnet {

const char* activation_name(Activation a) { return a == Activation::RELU2 ? "relu2" : "silu"; }
const char* rope_style_name(RopeStyle r) { return r == RopeStyle::NEOX ? "neox" : "norm"; }

const char* proj_tensor_name(int proj) {
    static const char* names[PROJ_COUNT] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                            "ffn_gate", "ffn_up", "ffn_down"};
    return (proj >= 0 && proj < PROJ_COUNT) ? names[proj] : "?";
}

const uint8_t* HostMatrix::row_data(int64_t r, uint8_t* scratch) const {
    const uint8_t* p = data + static_cast<size_t>(r) * row_bytes;
    if (!file) return p;
    file->read_range(p, row_bytes, scratch);
    return scratch;
}

void HostMatrix::row(int64_t r, float* out) const {
    thread_local std::vector<uint8_t> scratch;
    if (file) scratch.resize(row_bytes);
    dequantize_row(tensor->type, row_data(r, scratch.data()), out, cols);
}

void Model::release_output_copy() {
    if (!output_.copy) return;
    output_.data = output_.tensor->data;
    output_.copy.reset();
    output_.file = file_.get();
    if (cfg_.tied_output) embd_ = output_;
}

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& msg) {
    throw Error(ErrorCode::FILE, path + ": " + msg);
}

// Integer hyper-parameter that may be stored as a scalar or a per-layer array whose entries
// must all be equal (this runtime does not support non-uniform layers).
int64_t get_uniform(const GGUFFile& f, const std::string& key, int64_t def, bool required) {
    const GGUFValue* v = f.find(key);
    if (!v) {
        if (required) bad(f.path(), "metadata key '" + key + "' is missing");
        return def;
    }
    if (v->type == GGUFType::ARRAY) {
        if (v->ints.empty()) bad(f.path(), "metadata key '" + key + "' is an empty or non-integer array");
        for (int64_t x : v->ints)
            if (x != v->ints[0])
                bad(f.path(), "metadata key '" + key + "' varies per layer; only uniform layers are supported");
        return v->ints[0];
    }
    const uint64_t u = f.get_uint(key);
    if (u > (uint64_t{1} << 40)) bad(f.path(), "metadata key '" + key + "' is out of range: " + std::to_string(u));
    return static_cast<int64_t>(u);
}

bool is_bitnet_cpp_arch(const std::string& arch) { return arch == "bitnet-b1.58" || arch == "bitnet-25"; }

}  // namespace

Model::Model(const std::string& path, Transport& card, int first_slot) : path_(path), first_slot_(first_slot) {
    file_ = std::make_unique<GGUFFile>(path);
    read_config();
    load_weights(card);
}

uint64_t Model::weight_size() const {
    uint64_t total = 0;
    for (const auto& t : file_->tensors()) total += t.nbytes;
    return total;
}

void Model::read_config() {
    const GGUFFile& f = *file_;
    ModelConfig& c = cfg_;
    c.arch = f.architecture();
    if (c.arch != "bitnet" && !is_bitnet_cpp_arch(c.arch) && c.arch != "llama") {
        bad(path_, "architecture '" + c.arch +
                       "' is not a BitNet b1.58 model; supported: bitnet, bitnet-b1.58, bitnet-25 (and llama with "
                       "ternary weights)");
    }
    const std::string p = c.arch + ".";
    c.name = f.get_string("general.name", "");
    c.n_embd = get_uniform(f, p + "embedding_length", 0, true);
    c.n_layer = get_uniform(f, p + "block_count", 0, true);
    c.n_ff = get_uniform(f, p + "feed_forward_length", 0, true);
    c.n_head = get_uniform(f, p + "attention.head_count", 0, true);
    c.n_head_kv = get_uniform(f, p + "attention.head_count_kv", c.n_head, false);
    if (c.n_embd <= 0 || c.n_layer <= 0 || c.n_ff <= 0 || c.n_head <= 0 || c.n_head_kv <= 0)
        bad(path_, "embedding_length, block_count, feed_forward_length and head counts must be positive");
    if (c.n_layer > 4096) bad(path_, "block_count " + std::to_string(c.n_layer) + " is implausibly large");
    if (c.n_head % c.n_head_kv != 0)
        bad(path_, "attention.head_count (" + std::to_string(c.n_head) + ") is not a multiple of head_count_kv (" +
                       std::to_string(c.n_head_kv) + ")");
    c.head_dim = get_uniform(f, p + "attention.key_length", c.n_embd / c.n_head, false);
    const int64_t vlen = get_uniform(f, p + "attention.value_length", c.head_dim, false);
    if (vlen != c.head_dim) bad(path_, "attention.value_length differs from key_length; not supported");
    if (c.head_dim <= 0 || c.head_dim > 1024 || c.head_dim % 2 != 0)
        bad(path_, "head dimension " + std::to_string(c.head_dim) + " must be even and in 2..1024");
    c.rope_dim = get_uniform(f, p + "rope.dimension_count", c.head_dim, false);
    if (c.rope_dim <= 0 || c.rope_dim > c.head_dim || c.rope_dim % 2 != 0)
        bad(path_, "rope.dimension_count " + std::to_string(c.rope_dim) + " must be even and <= head dimension " +
                       std::to_string(c.head_dim));
    c.rms_eps = static_cast<float>(f.get_float(p + "attention.layer_norm_rms_epsilon", 1e-5));
    if (!(c.rms_eps > 0.0f) || !std::isfinite(c.rms_eps)) bad(path_, "attention.layer_norm_rms_epsilon must be > 0");
    c.rope_theta = static_cast<float>(f.get_float(p + "rope.freq_base", 10000.0));
    if (!(c.rope_theta > 1.0f) || !std::isfinite(c.rope_theta)) bad(path_, "rope.freq_base must be finite and > 1");
    const std::string scaling = f.get_string(p + "rope.scaling.type", "none");
    if (scaling == "linear") {
        const double factor = f.get_float(p + "rope.scaling.factor", 1.0);
        if (!(factor > 0) || !std::isfinite(factor)) bad(path_, "rope.scaling.factor must be > 0");
        c.rope_freq_scale = static_cast<float>(1.0 / factor);
    } else if (scaling != "none") {
        bad(path_, "rope.scaling.type '" + scaling + "' is not supported (only none and linear)");
    }

    const GGUFTensor* embd = f.tensor("token_embd.weight");
    if (!embd) bad(path_, "tensor 'token_embd.weight' is missing");
    if (embd->n_dims != 2 || embd->ne[0] != c.n_embd)
        bad(path_, "tensor 'token_embd.weight' must have shape [n_vocab, " + std::to_string(c.n_embd) + "]");
    c.n_vocab = embd->ne[1];
    const int64_t vocab_key = get_uniform(f, p + "vocab_size", c.n_vocab, false);
    if (vocab_key != c.n_vocab)
        bad(path_, p + "vocab_size (" + std::to_string(vocab_key) + ") disagrees with token_embd.weight rows (" +
                       std::to_string(c.n_vocab) + ")");
    if (c.n_vocab > (int64_t{1} << 31) - 1) bad(path_, "vocabulary larger than 2^31-1 tokens");

    c.n_ctx = get_uniform(f, p + "context_length", 0, false);
    if (c.n_ctx <= 0) {
        c.n_ctx = 2048;
        notes_.push_back("no context_length in the file; max_seq_len set to 2048");
    }
    if (c.n_ctx > (int64_t{1} << 24)) bad(path_, "context_length " + std::to_string(c.n_ctx) + " is implausibly large");

    // Activation: upstream llama.cpp reads <arch>.hidden_activation and defaults to SiLU for
    // arch "bitnet"; the bitnet.cpp dialect's arches were built with squared ReLU.
    std::string act = f.get_string(p + "hidden_activation", "");
    if (act.empty()) {
        if (is_bitnet_cpp_arch(c.arch)) {
            c.act = Activation::RELU2;
            notes_.push_back("activation: relu2 (implied by arch " + c.arch + ")");
        } else {
            c.act = Activation::SILU;
            notes_.push_back("activation: silu (no " + p +
                             "hidden_activation key; upstream llama.cpp's default). BitNet b1.58 2B-4T needs relu2: "
                             "re-convert with `python -m bitnet convert`");
            log_message(LogLevel::WARNING, path_ + ": " + notes_.back());
        }
    } else if (act == "relu2" || act == "relu_sqr" || act == "relu_squared" || act == "squared_relu") {
        c.act = Activation::RELU2;
    } else if (act == "silu" || act == "swish" || act == "swiglu") {
        c.act = Activation::SILU;
    } else {
        bad(path_, p + "hidden_activation '" + act + "' is not supported (relu2 or silu)");
    }
    // RoPE: the bitnet family uses the NeoX half-split layout (HF q/k rows unpermuted);
    // LLaMA-arch conversions permute q/k for the interleaved layout.
    c.rope_style = c.arch == "llama" ? RopeStyle::NORM : RopeStyle::NEOX;

    c.sub_norms = f.tensor("blk.0.attn_sub_norm.weight") != nullptr;
    if (c.arch != "llama" && !c.sub_norms) bad(path_, "tensor 'blk.0.attn_sub_norm.weight' is missing (arch " + c.arch + " has sub-norms)");
    c.tied_output = f.tensor("output.weight") == nullptr;

    const GGUFValue* bos = f.find("tokenizer.ggml.bos_token_id");
    const GGUFValue* eos = f.find("tokenizer.ggml.eos_token_id");
    const GGUFValue* eot = f.find("tokenizer.ggml.eot_token_id");
    auto token_id = [&](const GGUFValue* v, const char* key) -> int64_t {
        if (!v) return -1;
        if (!v->is_integer() || v->i < 0 || v->i >= c.n_vocab) {
            notes_.push_back(std::string(key) + " is not a token id of this vocabulary; ignored");
            return -1;
        }
        return v->i;
    };
    c.bos_token = token_id(bos, "tokenizer.ggml.bos_token_id");
    c.eos_token = token_id(eos, "tokenizer.ggml.eos_token_id");
    const int64_t eot_token = token_id(eot, "tokenizer.ggml.eot_token_id");
    if (c.eos_token >= 0) c.stop_tokens.push_back(static_cast<int32_t>(c.eos_token));
    if (eot_token >= 0 && eot_token != c.eos_token) c.stop_tokens.push_back(static_cast<int32_t>(eot_token));
}

std::vector<float> Model::load_vector(const std::string& name, int64_t n, bool required) {
    const GGUFTensor* t = file_->tensor(name);
    if (!t) {
        if (required) bad(path_, "tensor '" + name + "' is missing");
        return {};
    }
    if (t->n_elements != n || t->ne[0] != n)
        bad(path_, "tensor '" + name + "' has " + std::to_string(t->n_elements) + " elements, expected " +
                       std::to_string(n));
    if (tensor_type_is_ternary(t->type) || t->type == TensorType::I2_S)
        bad(path_, "tensor '" + name + "' is a norm weight but has ternary type " + tensor_type_name(t->type));
    std::vector<float> v(static_cast<size_t>(n));
    dequantize_row(t->type, t->data, v.data(), n);
    for (float x : v)
        if (!std::isfinite(x)) bad(path_, "tensor '" + name + "' holds a non-finite value");
    return v;
}

void Model::load_weights(Transport& card) {
    const ModelConfig& c = cfg_;
    auto host_matrix = [&](const GGUFTensor* t, const std::string& name) {
        if (tensor_type_is_ternary(t->type))
            bad(path_, "tensor '" + name + "' has ternary type " + tensor_type_name(t->type) +
                           "; embeddings and output heads must be F32, F16, BF16, Q8_0, Q4_0 or Q6_K");
        HostMatrix m;
        m.tensor = t;
        m.data = t->data;
        m.rows = t->ne[1];
        m.cols = t->ne[0];
        m.row_bytes = t->nbytes / static_cast<size_t>(t->ne[1]);
        return m;
    };
    embd_ = host_matrix(file_->tensor("token_embd.weight"), "token_embd.weight");
    if (c.tied_output) {
        output_ = embd_;
    } else {
        const GGUFTensor* out = file_->tensor("output.weight");
        if (out->n_dims != 2 || out->ne[0] != c.n_embd || out->ne[1] != c.n_vocab)
            bad(path_, "tensor 'output.weight' must have shape [" + std::to_string(c.n_vocab) + ", " +
                           std::to_string(c.n_embd) + "]");
        output_ = host_matrix(out, "output.weight");
    }
    {   // Copy the head out of the mapping in 64 MiB pieces, each piece's file pages released
        // once copied (resident memory grows by at most one piece meanwhile).
        const size_t n = output_.tensor->nbytes;
        auto buf = std::make_shared<std::vector<uint8_t, sim::SlotAllocator<uint8_t>>>();
        buf->resize(n);
        constexpr size_t kPiece = size_t(64) << 20;
        for (size_t o = 0; o < n; o += kPiece) {
            const size_t len = std::min(kPiece, n - o);
            std::memcpy(buf->data() + o, output_.tensor->data + o, len);
            file_->release_range(output_.tensor->data + o, len);
        }
        output_.data = buf->data();
        output_.copy = std::move(buf);
        if (c.tied_output) embd_ = output_;
    }
    output_norm_ = load_vector("output_norm.weight", c.n_embd, true);

    // Expected [out, in] of each projection.
    const int64_t shapes[PROJ_COUNT][2] = {
        {c.q_dim(), c.n_embd}, {c.kv_dim(), c.n_embd}, {c.kv_dim(), c.n_embd}, {c.n_embd, c.q_dim()},
        {c.n_ff, c.n_embd},    {c.n_ff, c.n_embd},     {c.n_embd, c.n_ff},
    };
    layers_.resize(static_cast<size_t>(c.n_layer));
    int ternarised = 0;
    for (int64_t l = 0; l < c.n_layer; ++l) {
        LayerWeights& L = layers_[static_cast<size_t>(l)];
        const std::string b = "blk." + std::to_string(l) + ".";
        L.attn_norm = load_vector(b + "attn_norm.weight", c.n_embd, true);
        L.ffn_norm = load_vector(b + "ffn_norm.weight", c.n_embd, true);
        if (c.sub_norms) {
            L.attn_sub_norm = load_vector(b + "attn_sub_norm.weight", c.q_dim(), true);
            L.ffn_sub_norm = load_vector(b + "ffn_sub_norm.weight", c.n_ff, true);
        }
        for (int p = 0; p < PROJ_COUNT; ++p) {
            const std::string name = b + proj_tensor_name(p) + ".weight";
            const GGUFTensor* t = file_->tensor(name);
            if (!t) bad(path_, "tensor '" + name + "' is missing");
            if (t->n_dims != 2 || t->ne[1] != shapes[p][0] || t->ne[0] != shapes[p][1])
                bad(path_, "tensor '" + name + "' has shape [" + std::to_string(t->ne[1]) + ", " +
                               std::to_string(t->ne[0]) + "], expected [" + std::to_string(shapes[p][0]) + ", " +
                               std::to_string(shapes[p][1]) + "]");
            TernaryMatrix m = decode_ternary(*t);
            if (m.ternarised) ++ternarised;
            float scale = m.scale;
            // Optional per-projection scale tensor (upstream: multiplied onto the output).
            const std::string sname = b + proj_tensor_name(p) + ".scale";
            if (const GGUFTensor* st = file_->tensor(sname)) {
                if (st->n_elements != 1 || tensor_type_is_ternary(st->type))
                    bad(path_, "tensor '" + sname + "' must be a single float");
                float s = 0;
                dequantize_row(st->type, st->data, &s, 1);
                if (!std::isfinite(s)) bad(path_, "tensor '" + sname + "' is not finite");
                scale *= s;
                if (!std::isfinite(scale) || scale < 0) bad(path_, "tensor '" + sname + "' gives a negative or non-finite scale");
            }
            const int slot = first_slot_ + static_cast<int>(l) * PROJ_COUNT + p;
            card.load_slot(slot, m.t.data(), m.rows, m.cols, scale);
            L.slot[p] = slot;
            L.rows[p] = m.rows;
            L.cols[p] = m.cols;
            ternary_bytes_ += card.slot_info(slot).bytes;
            file_->release_pages(*t);   // the card holds it now
        }
    }
    if (ternarised > 0)
        notes_.push_back(std::to_string(ternarised) +
                         " projection(s) held float master weights and were ternarised by absmean at load");
    for (const auto& n : notes_) log_message(LogLevel::INFO, path_ + ": " + n);
}

}  // namespace bitnet
