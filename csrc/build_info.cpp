// Build facts and GPU probe (see rapidfire/build_info.h).
#include "rapidfire/build_info.h"

#ifdef RAPIDFIRE_WITH_CUDA
#include "rapidfire/cuda_probe.h"
#endif

#ifndef RAPIDFIRE_VERSION
#define RAPIDFIRE_VERSION "0.0.0+unknown"
#endif
#ifndef RAPIDFIRE_CUDA_TOOLKIT_VERSION
#define RAPIDFIRE_CUDA_TOOLKIT_VERSION ""
#endif
#ifndef RAPIDFIRE_CUDA_ARCHITECTURES
#define RAPIDFIRE_CUDA_ARCHITECTURES ""
#endif
#ifndef RAPIDFIRE_COMPILER
#define RAPIDFIRE_COMPILER ""
#endif
#ifndef RAPIDFIRE_BUILD_TYPE
#define RAPIDFIRE_BUILD_TYPE ""
#endif

namespace rapidfire {

const BuildConfig& build_config() {
  static const BuildConfig config = [] {
    BuildConfig c;
    c.version = RAPIDFIRE_VERSION;
#ifdef RAPIDFIRE_WITH_CUDA
    c.cuda_compiled = true;
    c.cuda_toolkit_version = RAPIDFIRE_CUDA_TOOLKIT_VERSION;
    c.cuda_architectures = RAPIDFIRE_CUDA_ARCHITECTURES;
#endif
    c.compiler = RAPIDFIRE_COMPILER;
    c.build_type = RAPIDFIRE_BUILD_TYPE;
    return c;
  }();
  return config;
}

DeviceStatus query_devices() {
  DeviceStatus s;
#ifdef RAPIDFIRE_WITH_CUDA
  s.runtime_version = cuda::runtime_version();
  std::string error;
  const int driver = cuda::driver_version(error);
  if (driver <= 0) {
    s.error = error;  // asking the runtime would only say "driver version is insufficient"
    return s;
  }
  s.driver_version = driver;
  // CUDA's minor-version compatibility: a runtime runs on any driver of the same major version or
  // newer (12.x runtimes from driver 525, 13.x from driver 580).
  if (driver / 1000 < *s.runtime_version / 1000) {
    s.error = "the NVIDIA driver supports CUDA " + std::to_string(driver / 1000) + "." +
              std::to_string(driver % 1000 / 10) + " but this build's CUDA runtime is " +
              std::to_string(*s.runtime_version / 1000) + "." + std::to_string(*s.runtime_version % 1000 / 10) +
              ": it needs a driver for CUDA " + std::to_string(*s.runtime_version / 1000) + ".x";
    return s;
  }
  int n = cuda::device_count(error);
  if (n < 0) {
    s.error = error;
  } else if (n == 0) {
    s.error = "CUDA runtime reports 0 devices";
  } else {
    s.count = n;
    s.usable = true;
  }
#else
  s.error = "rapidfire_core._C was built without CUDA (CPU-only build)";
#endif
  return s;
}

}  // namespace rapidfire
