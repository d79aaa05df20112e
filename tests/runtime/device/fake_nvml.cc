// A stand-in for NVML (libnvidia-ml.so), built as a shared library by tests/CMakeLists.txt and
// loaded by runtime/device/energy.cc through the same dlopen path as the real one. The test drives
// it through files in $FJORD_FAKE_NVML_DIR (read at every call, like sysfs):
//   count        the number of GPUs (missing: 0)
//   init_error   when present, nvmlInit_v2 fails with its number
//   gpuN         GPU N's total energy in millijoules (missing or not a number: the call fails)
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace {

constexpr int kSuccess = 0, kUninitialized = 1, kInvalidArgument = 2, kNotSupported = 3, kUnknown = 999;

std::string File(const std::string& name) {
  const char* dir = std::getenv("FJORD_FAKE_NVML_DIR");
  return std::string(dir ? dir : ".") + "/" + name;
}

// The file's number, or false.
bool ReadNumber(const std::string& name, unsigned long long* value) {
  std::ifstream in(File(name));
  std::string text;
  if (!(in >> text) || text.find_first_not_of("0123456789") != std::string::npos) return false;
  *value = std::strtoull(text.c_str(), nullptr, 10);
  return true;
}

bool g_initialised = false;
struct FakeDevice {
  unsigned int index;
};
FakeDevice g_devices[16];

}  // namespace

extern "C" {

struct nvmlDevice_st;

int nvmlInit_v2() {
  unsigned long long code = 0;
  if (ReadNumber("init_error", &code)) return static_cast<int>(code);
  g_initialised = true;
  return kSuccess;
}

int nvmlShutdown() {
  g_initialised = false;
  return kSuccess;
}

int nvmlDeviceGetCount_v2(unsigned int* count) {
  if (!g_initialised) return kUninitialized;
  unsigned long long n = 0;
  *count = ReadNumber("count", &n) ? static_cast<unsigned int>(n) : 0;
  return kSuccess;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_st** device) {
  if (!g_initialised) return kUninitialized;
  unsigned long long n = 0;
  if (!ReadNumber("count", &n) || index >= n || index >= 16) return kInvalidArgument;
  g_devices[index].index = index;
  *device = reinterpret_cast<nvmlDevice_st*>(&g_devices[index]);
  return kSuccess;
}

int nvmlDeviceGetName(nvmlDevice_st* device, char* name, unsigned int length) {
  std::snprintf(name, length, "Fake GPU %u", reinterpret_cast<FakeDevice*>(device)->index);
  return kSuccess;
}

int nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_st* device, unsigned long long* energy_mj) {
  if (!g_initialised) return kUninitialized;
  const std::string name = "gpu" + std::to_string(reinterpret_cast<FakeDevice*>(device)->index);
  return ReadNumber(name, energy_mj) ? kSuccess : kNotSupported;
}

const char* nvmlErrorString(int code) {
  switch (code) {
    case kSuccess:
      return "Success";
    case kUninitialized:
      return "Uninitialized";
    case kInvalidArgument:
      return "Invalid Argument";
    case kNotSupported:
      return "Not Supported";
    default:
      return code == kUnknown ? "Unknown Error" : "fake NVML error";
  }
}

}  // extern "C"
