// CUDA runtime probes (see rapidfire/cuda_probe.h). Host-only code: compiled by
// nvcc so that this directory is the single place that needs the toolkit.
#include "rapidfire/cuda_probe.h"

#include <cuda_runtime.h>

#include <string>

namespace rapidfire::cuda {

namespace {

std::string describe(cudaError_t err) {
  return std::string(cudaGetErrorString(err)) + " (" + cudaGetErrorName(err) + ")";
}

}  // namespace

int runtime_version() {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

int driver_version() {
  int v = 0;
  return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

int device_count(std::string& error) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    error = describe(err);
    cudaGetLastError();  // reset the last-error slot; this error is not sticky
    return -1;
  }
  return n;
}

}  // namespace rapidfire::cuda
