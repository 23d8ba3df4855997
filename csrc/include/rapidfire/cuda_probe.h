// Thin wrappers over the CUDA runtime, implemented in csrc/cuda/probe.cu.
//
// Declared without any CUDA header so that plain C++ translation units can call
// them; they exist only when the library is built with RAPIDFIRE_WITH_CUDA.
#pragma once

#include <string>

namespace rapidfire::cuda {

// cudaRuntimeGetVersion; the static runtime answers even without a driver.
int runtime_version();

// cudaDriverGetVersion; 0 when no driver is installed.
int driver_version();

// cudaGetDeviceCount. Returns the count, or -1 and fills `error` with the
// runtime's message (e.g. "no CUDA-capable device is detected").
int device_count(std::string& error);

}  // namespace rapidfire::cuda
