// CUDA runtime probes (see rapidfire/cuda_probe.h). Host-only code: compiled by
// nvcc so that this directory is the single place that needs the toolkit.
#include "rapidfire/cuda_probe.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

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

int driver_version(std::string& error) {
  // The library stays loaded (RTLD_NOLOAD-free dlopen is reference counted; the runtime opens the
  // same file when it initializes).
  void* lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    error = std::string("no NVIDIA driver: libcuda.so.1 cannot be loaded (") + (why ? why : "unknown") + ")";
    return 0;
  }
  using GetVersion = int (*)(int*);  // CUresult cuDriverGetVersion(int*)
  auto get_version = reinterpret_cast<GetVersion>(dlsym(lib, "cuDriverGetVersion"));
  int v = 0;
  if (get_version == nullptr || get_version(&v) != 0 || v <= 0) {
    error = "the NVIDIA driver's libcuda.so.1 loaded but did not report its CUDA version";
    return 0;
  }
  return v;
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
