// What energy measurement costs per window (job spec `energy`): EnergyMeter::Read on a powercap
// tree of two packages (made in a temporary directory; this machine may have none) plus the
// SumWindowEnergy all-gather, on the ranks of `mpirun -np N energy_bench` (or one process). A window
// closes once every energy.window_steps steps, outside the step's timer, so the overhead on the
// step is this cost / window_steps / the step's time (docs/PERFORMANCE.md, "Energy").
//
// usage: [mpirun -np N] energy_bench [WINDOWS]   (default 2000 windows, 5 batches; median printed)
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "runtime/device/energy.h"

int main(int argc, char** argv) {
  using namespace fjord;
  namespace fs = std::filesystem;
  const int windows = argc > 1 ? std::atoi(argv[1]) : 2000;
  CommOptions options;
  options.timeout = std::chrono::seconds(60);
  StatusOr<std::unique_ptr<Communicator>> made = CreateCommunicator(options);
  if (!made.ok()) {
    std::fprintf(stderr, "energy_bench: %s\n", made.status().message().c_str());
    return 1;
  }
  Communicator& comm = **made;
  const fs::path root = fs::temp_directory_path() / ("fjord_energy_bench_" + std::to_string(::getpid()));
  for (int z = 0; z < 2; ++z) {
    const fs::path zone = root / ("intel-rapl:" + std::to_string(z));
    fs::create_directories(zone);
    std::ofstream(zone / "name") << "package-" << z << "\n";
    std::ofstream(zone / "max_energy_range_uj") << "262143328850\n";
    std::ofstream(zone / "energy_uj") << 123456789 + z << "\n";
  }
  EnergyMeter::Options where;
  where.powercap_root = root.string();
  std::unique_ptr<EnergyMeter> meter = EnergyMeter::Open(where);
  if (!meter->measuring()) {
    std::fprintf(stderr, "energy_bench: the counter tree did not read\n");
    return 1;
  }
  (void)meter->Read();
  std::vector<double> per_window_us;
  for (int batch = 0; batch < 5; ++batch) {
    if (!comm.Barrier().ok()) return 1;
    const auto t0 = std::chrono::steady_clock::now();
    for (int w = 0; w < windows; ++w) {
      StatusOr<WindowEnergy> sum = SumWindowEnergy(comm, meter->Read(), meter->covered(), 0.0, 1.0);
      if (!sum.ok()) {
        std::fprintf(stderr, "energy_bench: %s\n", sum.status().message().c_str());
        return 1;
      }
    }
    per_window_us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / windows);
  }
  fs::remove_all(root);
  std::sort(per_window_us.begin(), per_window_us.end());
  if (comm.rank() == 0) {
    std::printf("| ranks | windows x batches | us per window (median of batches, rank 0) | min | max |\n");
    std::printf("| %d | %d x 5 | %.2f | %.2f | %.2f |\n", comm.size(), windows, per_window_us[2],
                per_window_us[0], per_window_us[4]);
  }
  return 0;
}
