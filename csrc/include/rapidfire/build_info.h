// Build facts and a live GPU probe for the rapidfire_core native library.
//
// Pure C++ (no Python, no torch): the pybind11 layer in python/ turns these
// structs into the dict returned by rapidfire_core._C.build_info().
#pragma once

#include <optional>
#include <string>

namespace rapidfire {

// What the library was compiled with. Fixed at build time.
struct BuildConfig {
  std::string version;                    // package version, e.g. "0.1.0"
  bool cuda_compiled = false;             // csrc/cuda/*.cu linked in
  std::string cuda_toolkit_version;       // "13.0.88", empty when CPU-only
  std::string cuda_architectures;         // CMAKE_CUDA_ARCHITECTURES, e.g. "90-real 90-virtual"
  std::string compiler;                   // "GNU 12.2.0"
  std::string build_type;                 // "Release", "Debug", ...
};

// What the CUDA runtime says right now. Re-queried on every call.
struct DeviceStatus {
  std::optional<int> runtime_version;     // cudaRuntimeGetVersion, e.g. 13000; nullopt when CPU-only
  std::optional<int> driver_version;      // cuDriverGetVersion, e.g. 12040; nullopt when no driver loads
  bool usable = false;                    // cudaGetDeviceCount succeeded with count >= 1
  int count = 0;                          // devices visible to this process
  std::string error;                      // why !usable; empty when usable
};

// Compile-time facts about this build of the library.
const BuildConfig& build_config();

// Probe the CUDA runtime now (never cached: a process may gain or lose
// devices through CUDA_VISIBLE_DEVICES before its first CUDA call).
DeviceStatus query_devices();

}  // namespace rapidfire
