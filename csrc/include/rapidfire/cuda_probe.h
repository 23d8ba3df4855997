// Thin wrappers over the CUDA runtime, implemented in csrc/cuda/probe.cu.
//
// Declared without any CUDA header so that plain C++ translation units can call
// them; they exist only when the library is built with RAPIDFIRE_WITH_CUDA.
#pragma once

#include <string>

namespace rapidfire::cuda {

// cudaRuntimeGetVersion; the static runtime answers even without a driver.
int runtime_version();

// The NVIDIA driver's CUDA version (cuDriverGetVersion, e.g. 12040 for a 550 driver), asked of
// libcuda.so.1 directly so that "no driver at all" is told apart from "a driver too old for this
// runtime" (the runtime reports both as cudaErrorInsufficientDriver). Returns 0 and fills `error`
// when libcuda.so.1 cannot be loaded or answers with an error.
int driver_version(std::string& error);

// cudaGetDeviceCount. Returns the count, or -1 and fills `error` with the
// runtime's message (e.g. "no CUDA-capable device is detected").
int device_count(std::string& error);

}  // namespace rapidfire::cuda
