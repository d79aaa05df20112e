// Energy counters of a rank's node, read at window boundaries (job spec `energy`, docs/PERFORMANCE.md
// "Energy"): the Linux powercap RAPL package counters (CPU, AMD included on recent kernels) and
// NVML's total-energy counter of the rank's GPU, NVML loaded with dlopen so that a build and a node
// without it still run. A counter that cannot be read is left out with a note saying why, so "not
// measured" is always distinguishable from zero joules.
//
// A node's counters are shared by the ranks on it (one RAPL package counter for every rank of a
// socket, one GPU counter for every rank on that GPU), so the sum over ranks counts each counter
// once: KeepFirstOnNode gives every counter to the lowest rank of its host that found it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "common/status.h"

namespace fjord {

class EnergyMeter {
 public:
  struct Options {
    // The powercap tree: every top-level zone ROOT/intel-rapl:N (not its sub-zones, which the
    // package counts already; not "psys", the platform zone that contains the packages) with a
    // readable energy_uj and max_energy_range_uj. "" = no CPU counters.
    std::string powercap_root = "/sys/class/powercap";
    // The NVML library for dlopen ("" = no GPU counter) and the rank's GPU slot: NVML device
    // slot % nvmlDeviceGetCount, the rule that picks the CUDA device (local rank % GPUs); -1 = the
    // rank has no GPU.
    std::string nvml_library;
    int gpu_slot = -1;
  };

  // Finds the counters. Never fails: what cannot be read is left out and described in notes().
  static std::unique_ptr<EnergyMeter> Open(const Options& options);
  ~EnergyMeter();
  EnergyMeter(const EnergyMeter&) = delete;
  EnergyMeter& operator=(const EnergyMeter&) = delete;

  // The counters found, in a fixed order: keys name each on its node ("rapl:ROOT/intel-rapl:0",
  // "nvml:0"), names say what it is for a reader ("RAPL package-0 (ROOT/intel-rapl:0)", "NVML GPU
  // 0 (NVIDIA H100 80GB HBM3)").
  const std::vector<std::string>& keys() const { return keys_; }
  const std::vector<std::string>& names() const { return names_; }
  // Why a counter was left out or stopped ("ROOT/intel-rapl:0/energy_uj: Permission denied ...").
  const std::vector<std::string>& notes() const { return notes_; }

  // Reads only the counters i with keep[i] (another rank of this node reads the others).
  void Keep(const std::vector<bool>& keep);
  // Whether this meter reads at least one counter and none has failed.
  bool measuring() const;
  // Whether this rank's energy is counted: it found counters (read by it or given to a sibling
  // on its node) and none of its own has failed.
  bool covered() const { return !failed_ && !keys_.empty(); }

  // Microjoules of all kept counters since the previous Read (the first Read starts the window
  // and returns 0), with the RAPL wrap-around at max_energy_range_uj undone. nullopt once any kept
  // counter has failed to read (it disappeared, holds no number, went backwards): from then on
  // this meter measures nothing, and notes() says which counter and why.
  std::optional<uint64_t> Read();

 private:
  struct Counter;
  EnergyMeter() = default;
  std::vector<std::string> keys_, names_, notes_;
  std::vector<std::unique_ptr<Counter>> counters_;
  struct Nvml;
  std::unique_ptr<Nvml> nvml_;
  bool failed_ = false;
};

// For each counter of `meter`, whether this rank reads it: a counter whose key a lower rank on the
// same host also found is that rank's. One AllGatherStrings (at setup, not per window).
Status KeepFirstOnNode(Communicator& comm, const std::string& host, EnergyMeter& meter);

// One window summed over ranks.
struct WindowEnergy {
  int ranks = 0;              // ranks in the sum
  int measured_ranks = 0;     // ranks whose counters held the whole window (or a sibling's did)
  int estimated_ranks = 0;    // ranks without counters, estimated from energy.rank_power_w
  uint64_t measured_uj = 0;   // microjoules read from counters
  uint64_t estimated_uj = 0;  // rank_power_w x the window's seconds, for the estimated ranks
};

// This rank's part of a window: `measured` is what its meter read (nullopt when it measures
// nothing: no counter, a failed one), `covered` whether the rank counts as measured (its meter
// measures, or its counters all belong to a sibling that does); a rank not covered is estimated
// as rank_power_w x seconds when rank_power_w > 0. One collective (an all-gather of a fixed-size
// record), summed in integers so every rank gets the same, exact total.
StatusOr<WindowEnergy> SumWindowEnergy(Communicator& comm, std::optional<uint64_t> measured, bool covered,
                                       double rank_power_w, double seconds);

}  // namespace fjord
