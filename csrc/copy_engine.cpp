// Copy engine: batched arena <-> device/host copies (see rapidfire/copy_engine.h).
#include "rapidfire/copy_engine.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef RAPIDFIRE_WITH_CUDA
#include "rapidfire/cuda_memory.h"
#endif

namespace rapidfire {

namespace {

// Host batches smaller than this are copied inline: handing 256 KiB to a worker
// costs about as much (a wake-up, ~10-50 us) as copying it (~25 us at 10 GB/s).
constexpr std::size_t kInlineBytes = 256 * 1024;
// Smallest piece handed to a worker: large enough to amortise the hand-off.
constexpr std::size_t kMinPiece = 1024 * 1024;

#ifndef RAPIDFIRE_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "a CUDA copy was requested but rapidfire_core._C was built without CUDA (RAPIDFIRE_CUDA=0 "
      "or no toolkit at build time)");
}
#endif

}  // namespace

// ---- CopyEvent ----------------------------------------------------------------

std::shared_ptr<CopyEvent> CopyEvent::host(std::size_t pieces, std::size_t nbytes) {
  std::shared_ptr<CopyEvent> e(new CopyEvent());
  e->remaining_ = pieces;
  e->nbytes_ = nbytes;
  return e;
}

std::shared_ptr<CopyEvent> CopyEvent::cuda(std::uintptr_t event, int device, std::size_t nbytes) {
  std::shared_ptr<CopyEvent> e(new CopyEvent());
  e->cuda_event_ = event;
  e->device_ = device;
  e->nbytes_ = nbytes;
  return e;
}

CopyEvent::~CopyEvent() {
#ifdef RAPIDFIRE_WITH_CUDA
  // Destroying a pending event is legal: the runtime frees it once it completes.
  if (cuda_event_ != 0) cuda::event_destroy(cuda_event_);
#endif
}

bool CopyEvent::query() const {
  if (cuda_event_ != 0) {
#ifdef RAPIDFIRE_WITH_CUDA
    return cuda::event_query(cuda_event_);
#else
    no_cuda();
#endif
  }
  std::lock_guard<std::mutex> lock(mu_);
  return remaining_ == 0;
}

void CopyEvent::synchronize() const {
  if (cuda_event_ != 0) {
#ifdef RAPIDFIRE_WITH_CUDA
    cuda::event_synchronize(cuda_event_);
    return;
#else
    no_cuda();
#endif
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return remaining_ == 0; });
}

void CopyEvent::block_stream(std::uintptr_t stream) const {
  if (cuda_event_ == 0) {
    synchronize();
    return;
  }
#ifdef RAPIDFIRE_WITH_CUDA
  cuda::stream_wait_event(stream, cuda_event_, device_);
#else
  (void)stream;
  no_cuda();
#endif
}

void CopyEvent::piece_done() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--remaining_ == 0) cv_.notify_all();
}

// ---- CopyThreads --------------------------------------------------------------

CopyThreads::CopyThreads(int num_threads) {
  threads_.reserve(static_cast<std::size_t>(num_threads));
  for (int i = 0; i < num_threads; ++i) threads_.emplace_back([this] { loop(); });
}

CopyThreads::~CopyThreads() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void CopyThreads::submit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
}

void CopyThreads::loop() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every queued piece is done
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

// ---- CopyEngine ---------------------------------------------------------------

namespace {

int default_threads(int requested) {
  if (requested > 0) return requested;
  unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp<unsigned>(hw, 1, 4));
}

}  // namespace

CopyEngine::CopyEngine(std::shared_ptr<HostArena> arena, int num_threads)
    : arena_(std::move(arena)), threads_(default_threads(num_threads)) {
  if (!arena_) throw std::invalid_argument("CopyEngine needs an arena");
}

std::shared_ptr<CopyEvent> CopyEngine::host_to_device(const std::vector<CopyRange>& ranges,
                                                      const CopyTarget& target) {
  return submit(ranges, true, target);
}

std::shared_ptr<CopyEvent> CopyEngine::device_to_host(const std::vector<CopyRange>& ranges,
                                                      const CopyTarget& target) {
  return submit(ranges, false, target);
}

std::shared_ptr<CopyEvent> CopyEngine::submit(const std::vector<CopyRange>& ranges, bool to_device,
                                              const CopyTarget& target) {
  // Validate the whole batch before enqueueing any of it.
  std::size_t total = 0;
  for (const CopyRange& r : ranges) {
    if (r.nbytes == 0) continue;
    arena_->check_range(r.arena_offset, r.nbytes);
    if (r.ptr == 0) throw std::invalid_argument("copy range with a null pointer");
    total += r.nbytes;
  }
  std::uint8_t* base = arena_->data();
  if (target.cuda) {
#ifdef RAPIDFIRE_WITH_CUDA
    std::vector<cuda::RawCopy> raw;
    raw.reserve(ranges.size());
    for (const CopyRange& r : ranges) {
      if (r.nbytes == 0) continue;
      void* host = base + r.arena_offset;
      void* other = reinterpret_cast<void*>(r.ptr);
      raw.push_back(to_device ? cuda::RawCopy{host, other, r.nbytes} : cuda::RawCopy{other, host, r.nbytes});
    }
    std::uintptr_t event = cuda::copy_async(raw.data(), raw.size(), to_device, target.device, target.stream);
    return CopyEvent::cuda(event, target.device, total);
#else
    no_cuda();
#endif
  }
  std::vector<std::pair<const void*, void*>> ends;
  std::vector<std::size_t> sizes;
  ends.reserve(ranges.size());
  sizes.reserve(ranges.size());
  for (const CopyRange& r : ranges) {
    if (r.nbytes == 0) continue;
    void* host = base + r.arena_offset;
    void* other = reinterpret_cast<void*>(r.ptr);
    ends.emplace_back(to_device ? std::pair<const void*, void*>{host, other}
                                : std::pair<const void*, void*>{other, host});
    sizes.push_back(r.nbytes);
  }
  return run_host(ends, sizes);
}

std::shared_ptr<CopyEvent> CopyEngine::copy_within(std::size_t src_offset, std::size_t dst_offset,
                                                   std::size_t nbytes) {
  if (nbytes == 0) return CopyEvent::host(0, 0);
  arena_->check_range(src_offset, nbytes);
  arena_->check_range(dst_offset, nbytes);
  if (src_offset < dst_offset + nbytes && dst_offset < src_offset + nbytes) {
    throw std::invalid_argument("copy_within: source and destination ranges overlap");
  }
  std::uint8_t* base = arena_->data();
  return run_host({{base + src_offset, base + dst_offset}}, {nbytes});
}

std::shared_ptr<CopyEvent> CopyEngine::run_host(const std::vector<std::pair<const void*, void*>>& ends,
                                                const std::vector<std::size_t>& sizes) {
  std::size_t total = 0;
  for (std::size_t n : sizes) total += n;
  if (total < kInlineBytes) {
    for (std::size_t i = 0; i < sizes.size(); ++i) std::memcpy(ends[i].second, ends[i].first, sizes[i]);
    return CopyEvent::host(0, total);
  }
  // Pieces of ~total/threads bytes (>= 1 MiB), cut across range boundaries.
  const std::size_t workers = static_cast<std::size_t>(threads_.size());
  const std::size_t piece = std::max(kMinPiece, (total + workers - 1) / workers);
  struct Piece {
    const void* src;
    void* dst;
    std::size_t n;
  };
  std::vector<Piece> pieces;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto* src = static_cast<const std::uint8_t*>(ends[i].first);
    auto* dst = static_cast<std::uint8_t*>(ends[i].second);
    for (std::size_t at = 0; at < sizes[i]; at += piece) {
      pieces.push_back({src + at, dst + at, std::min(piece, sizes[i] - at)});
    }
  }
  auto event = CopyEvent::host(pieces.size(), total);
  for (const Piece& p : pieces) {
    threads_.submit([p, event] {
      std::memcpy(p.dst, p.src, p.n);
      event->piece_done();
    });
  }
  return event;
}

}  // namespace rapidfire
