// sim_transport.cpp: the direct transport to the in-process card simulator.
#include <memory>

#include "transport.h"

namespace bitnet {
namespace {

class SimTransport final : public Transport {
public:
    SimTransport(const sim::BoardProfile& p, ThreadPool* pool) : card_(p, pool) {}
    std::string name() const override { return "sim"; }
    std::string kernel_name() const override { return card_.kernel_name(); }
    sim::BoardProfile profile() const override { return card_.profile(); }
    void load_slot(int slot, const int8_t* t, int64_t n, int64_t k, float scale) override {
        card_.load_slot(slot, t, n, k, scale);
    }
    void free_slot(int slot) override { card_.free_slot(slot); }
    void free_all() override { card_.free_all(); }
    void free_range(int lo, int hi) override { card_.free_range(lo, hi); }
    bool has_slot(int slot) const override { return card_.has_slot(slot); }
    SlotInfo slot_info(int slot) const override { return card_.slot_info(slot); }
    uint64_t weight_used() const override { return card_.weight_used(); }
    uint64_t weight_capacity() const override { return card_.profile().weight_capacity; }
    void run(const MatmulCommand& cmd) override { card_.run(cmd); }
    Counters counters() const override { return card_.counters(); }
    void reset_counters() override { card_.reset_counters(); }
    void inject_fault(sim::FaultKind kind, int count, int64_t after) override { card_.inject_fault(kind, count, after); }

private:
    sim::SimCard card_;
};

}  // namespace

std::unique_ptr<Transport> make_sim_transport(const sim::BoardProfile& profile, ThreadPool* pool) {
    return std::make_unique<SimTransport>(profile, pool);
}

}  // namespace bitnet
