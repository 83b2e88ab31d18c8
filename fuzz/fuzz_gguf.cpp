// fuzz_gguf.cpp: libFuzzer target for the model-file path: GGUF parsing and validation,
// metadata getters, tensor decoding and the model loader (configuration checks and loading
// the weights onto a simulated card). Any input must end in success or bitnet::Error.
//
// Build and run: bash fuzz/run.sh [seconds]
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "transport.h"

using namespace bitnet;

namespace {

struct Card {
    ThreadPool pool{1};
    std::unique_ptr<Transport> transport = make_sim_transport(sim::board_profile("kv260"), &pool);
};

Card& card() {
    static Card c;
    return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // GGUFFile maps a path: hand it the input through an anonymous in-memory file.
    const int fd = memfd_create("fuzz.gguf", 0);
    if (fd < 0) return 0;
    if (size > 0 && write(fd, data, size) != static_cast<ssize_t>(size)) {
        close(fd);
        return 0;
    }
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    try {
        GGUFFile f(path);
        for (const auto& kv : f.metadata()) {
            try {
                (void)f.get_uint(kv.first, 0);
            } catch (const Error&) {
            }
            try {
                (void)f.get_string(kv.first, "");
            } catch (const Error&) {
            }
        }
        std::vector<float> row;
        for (const GGUFTensor& t : f.tensors()) {
            try {
                if (t.n_elements <= (1 << 20) && t.n_dims == 2) (void)decode_ternary(t);
            } catch (const Error&) {
            }
            try {
                if (t.type != TensorType::I2_S && t.ne[0] <= (1 << 16)) {
                    row.resize(static_cast<size_t>(t.ne[0]));
                    dequantize_row(t.type, t.data, row.data(), t.ne[0]);
                }
            } catch (const Error&) {
            }
        }
    } catch (const Error&) {
    }
    try {
        card().transport->free_all();
        Model m(path, *card().transport, 0);
        (void)m.weight_size();
    } catch (const Error&) {
    }
    close(fd);
    return 0;
}
