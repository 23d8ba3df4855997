// Batched, asynchronous copies between a HostArena and "the other side".
//
// The other side is either CUDA device memory (pointers from torch's caching
// allocator) or, on the CPU path, ordinary host memory (pointers of CPU torch
// tensors). One call moves a whole batch of ranges:
//
//   for (arena_offset, ptr, nbytes) in ranges:     # h2d: arena -> ptr, d2h: ptr -> arena
//       copy nbytes
//   return an event that completes when every range has been copied
//
// CUDA target: one cudaMemcpyAsync per range on the stream the caller passes
// (torch's `stream.cuda_stream`), then one event recorded on that stream. The
// call returns as soon as the copies are enqueued; nothing waits on the host.
// Host target: the ranges are split into pieces of >= 1 MiB and copied by the
// engine's worker threads (a single thread's memcpy reaches ~10 GB/s, DRAM several
// times that); batches under 256 KiB are copied inline by the caller. The event
// completes when the last piece is done.
//
// Every arena range must lie inside one live slot (checked before anything is
// enqueued, so a bad batch copies nothing). The caller keeps the slots and the
// other side's memory alive until the event completes.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "rapidfire/host_arena.h"

namespace rapidfire {

struct CopyRange {
  std::size_t arena_offset;  // bytes from the start of the arena
  std::uintptr_t ptr;        // device pointer (CUDA target) or host pointer (host target)
  std::size_t nbytes;
};

// Where the other side of a batch lives.
struct CopyTarget {
  bool cuda = false;          // false: ptr is host memory, the copy runs on worker threads
  int device = 0;             // CUDA device index (cuda only)
  std::uintptr_t stream = 0;  // cudaStream_t as an integer; 0 = legacy default stream (cuda only)
};

// Completion of one batch. Shared by the engine's workers and the caller.
class CopyEvent {
 public:
  // Host batch of `pieces` pieces (0: already complete).
  static std::shared_ptr<CopyEvent> host(std::size_t pieces, std::size_t nbytes);
  // CUDA batch whose completion is the recorded event `event` on `device`.
  static std::shared_ptr<CopyEvent> cuda(std::uintptr_t event, int device, std::size_t nbytes);
  ~CopyEvent();

  bool query() const;        // complete now? never blocks
  void synchronize() const;  // block the calling thread until complete
  // Make `stream` (cudaStream_t as an integer) wait for this batch without blocking
  // the host (cudaStreamWaitEvent). A host batch has no stream to hand over: this
  // synchronizes instead, which is what "the consumer is the host" means.
  void block_stream(std::uintptr_t stream) const;

  bool is_cuda() const { return cuda_event_ != 0; }
  std::uintptr_t cuda_event() const { return cuda_event_; }  // cudaEvent_t, 0 for a host batch
  int device() const { return device_; }
  std::size_t nbytes() const { return nbytes_; }

  void piece_done();  // called by a worker when one piece of a host batch is copied

 private:
  CopyEvent() = default;
  std::uintptr_t cuda_event_ = 0;
  int device_ = -1;
  std::size_t nbytes_ = 0;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::size_t remaining_ = 0;  // host pieces not yet copied
};

// A few threads that run host-to-host copy pieces, FIFO.
class CopyThreads {
 public:
  explicit CopyThreads(int num_threads);
  ~CopyThreads();  // finishes every queued piece, then joins
  CopyThreads(const CopyThreads&) = delete;
  CopyThreads& operator=(const CopyThreads&) = delete;
  void submit(std::function<void()> task);
  int size() const { return static_cast<int>(threads_.size()); }

 private:
  void loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

class CopyEngine {
 public:
  // num_threads: host copy workers; <= 0 picks min(4, hardware threads).
  explicit CopyEngine(std::shared_ptr<HostArena> arena, int num_threads = 0);

  std::shared_ptr<CopyEvent> host_to_device(const std::vector<CopyRange>& ranges, const CopyTarget& target);
  std::shared_ptr<CopyEvent> device_to_host(const std::vector<CopyRange>& ranges, const CopyTarget& target);
  // Host-to-host inside the arena (snapshots, clones): [src, src+n) -> [dst, dst+n).
  // Both ranges must lie in live slots and must not overlap.
  std::shared_ptr<CopyEvent> copy_within(std::size_t src_offset, std::size_t dst_offset, std::size_t nbytes);

  const std::shared_ptr<HostArena>& arena() const { return arena_; }
  int num_threads() const { return threads_.size(); }

 private:
  std::shared_ptr<CopyEvent> submit(const std::vector<CopyRange>& ranges, bool to_device, const CopyTarget& target);
  std::shared_ptr<CopyEvent> run_host(const std::vector<std::pair<const void*, void*>>& ends,
                                      const std::vector<std::size_t>& sizes);

  std::shared_ptr<HostArena> arena_;
  CopyThreads threads_;
};

}  // namespace rapidfire
