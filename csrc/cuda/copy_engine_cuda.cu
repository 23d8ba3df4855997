// CUDA runtime calls for the host arena and the copy engine (see rapidfire/cuda_memory.h).
// Host-only code: compiled by nvcc so that this directory is the one place that
// needs the toolkit. Streams and events are the driver's objects, so handles
// created by torch's runtime work here and the other way round (both runtimes use
// the device's primary context).
#include "rapidfire/cuda_memory.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace rapidfire::cuda {

namespace {

std::string describe(cudaError_t err) {
  return std::string(cudaGetErrorString(err)) + " (" + cudaGetErrorName(err) + ")";
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the non-sticky error so later calls are not blamed for it
    throw std::runtime_error(std::string(what) + " failed: " + describe(err));
  }
}

// True unless `device` is known to have no active primary context. Asked through the driver
// API, loaded at run time (the runtime has already loaded libcuda; we do not link it), the way
// torch's device guard asks before it switches back to a device.
bool may_have_primary_context(int device) {
  using GetState = int (*)(int, unsigned int*, int*);  // cuDevicePrimaryCtxGetState(CUdevice, ...)
  static const GetState get_state = []() -> GetState {
    void* lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (lib == nullptr) lib = dlopen("libcuda.so.1", RTLD_LAZY);
    return lib == nullptr ? nullptr : reinterpret_cast<GetState>(dlsym(lib, "cuDevicePrimaryCtxGetState"));
  }();
  if (get_state == nullptr) return true;  // cannot tell: behave as if it had one
  unsigned int flags = 0;
  int active = 0;
  // CUdevice handles are device ordinals (as torch relies on too); on any error, assume active.
  return get_state(device, &flags, &active) != 0 || active != 0;
}

// Makes `device` current for the scope and restores the caller's device after it: torch shares
// the thread's current device (same primary contexts), so leaving it changed would move the
// caller's later work to another GPU on a multi-GPU host. Exception, as in torch's guard: a
// previous device without a primary context (a thread that never used a GPU reports device 0)
// is not restored, since making it current would create a context (hundreds of MB) on a GPU
// the process never used.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      cudaGetLastError();
      previous_ = -1;
    }
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ < 0 || previous_ == device_ || !may_have_primary_context(previous_)) return;
    if (cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = -1;
};

cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
cudaEvent_t as_event(std::uintptr_t e) { return reinterpret_cast<cudaEvent_t>(e); }

}  // namespace

void* host_alloc_pinned(std::size_t nbytes, int device, std::string& error) noexcept {
  try {
    DeviceGuard guard(device);
    void* p = nullptr;
    // Portable: every context (every device) sees it as pinned, not only `device`'s.
    cudaError_t err = cudaHostAlloc(&p, nbytes, cudaHostAllocPortable);
    if (err != cudaSuccess) {
      error = describe(err);
      cudaGetLastError();
      return nullptr;
    }
    return p;
  } catch (const std::exception& e) {
    error = e.what();
    return nullptr;
  }
}

void host_free_pinned(void* ptr) noexcept {
  if (cudaFreeHost(ptr) != cudaSuccess) cudaGetLastError();
}

std::uintptr_t copy_async(const RawCopy* copies, std::size_t n, bool host_to_device, int device,
                          std::uintptr_t stream) {
  DeviceGuard guard(device);
  const cudaMemcpyKind kind = host_to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  for (std::size_t i = 0; i < n; ++i) {
    check(cudaMemcpyAsync(copies[i].dst, copies[i].src, copies[i].count, kind, as_stream(stream)),
          host_to_device ? "cudaMemcpyAsync(host to device)" : "cudaMemcpyAsync(device to host)");
  }
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  cudaError_t err = cudaEventRecord(event, as_stream(stream));
  if (err != cudaSuccess) {
    cudaEventDestroy(event);
    check(err, "cudaEventRecord");
  }
  return reinterpret_cast<std::uintptr_t>(event);
}

bool event_query(std::uintptr_t event) {
  cudaError_t err = cudaEventQuery(as_event(event));
  if (err == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  check(err, "cudaEventQuery");
  return true;
}

void event_synchronize(std::uintptr_t event) { check(cudaEventSynchronize(as_event(event)), "cudaEventSynchronize"); }

void stream_wait_event(std::uintptr_t stream, std::uintptr_t event, int device) {
  DeviceGuard guard(device);
  check(cudaStreamWaitEvent(as_stream(stream), as_event(event), 0), "cudaStreamWaitEvent");
}

void event_destroy(std::uintptr_t event) noexcept {
  if (cudaEventDestroy(as_event(event)) != cudaSuccess) cudaGetLastError();
}

}  // namespace rapidfire::cuda
