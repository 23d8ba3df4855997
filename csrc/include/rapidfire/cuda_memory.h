// CUDA runtime calls the host arena and the copy engine need, implemented in
// csrc/cuda/copy_engine_cuda.cu.
//
// Declared without any CUDA header (handles travel as std::uintptr_t) so plain
// C++ translation units can call them; they exist only when the library is built
// with RAPIDFIRE_WITH_CUDA. Every function throws std::runtime_error with the
// runtime's message on failure, except where it says otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace rapidfire::cuda {

// cudaHostAlloc(portable) of `nbytes` on `device`'s context. Returns nullptr and
// fills `error` on failure (no driver, no device, out of pinned memory).
void* host_alloc_pinned(std::size_t nbytes, int device, std::string& error) noexcept;
// cudaFreeHost; errors are ignored (at interpreter exit the runtime may be gone).
void host_free_pinned(void* ptr) noexcept;

// One range of a batched copy: `count` bytes from `src` to `dst`.
struct RawCopy {
  const void* src;
  void* dst;
  std::size_t count;
};

// Enqueue `n` cudaMemcpyAsync(kind) on `stream` (cudaStream_t as an integer;
// 0 = the legacy default stream) after making `device` current, then record a
// new event (timing disabled) on the same stream. Returns the event handle.
// host_to_device selects cudaMemcpyHostToDevice, else DeviceToHost.
std::uintptr_t copy_async(const RawCopy* copies, std::size_t n, bool host_to_device, int device,
                          std::uintptr_t stream);

bool event_query(std::uintptr_t event);                        // cudaEventQuery == cudaSuccess
void event_synchronize(std::uintptr_t event);                  // cudaEventSynchronize
void stream_wait_event(std::uintptr_t stream, std::uintptr_t event, int device);  // cudaStreamWaitEvent
void event_destroy(std::uintptr_t event) noexcept;             // errors ignored

}  // namespace rapidfire::cuda
