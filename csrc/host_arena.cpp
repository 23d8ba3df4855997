// Host arena: one allocation, best-fit slots, coalescing free list (see rapidfire/host_arena.h).
#include "rapidfire/host_arena.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <sstream>

#include "rapidfire/build_info.h"
#include "rapidfire/host_pages.h"
#ifdef RAPIDFIRE_WITH_CUDA
#include "rapidfire/cuda_memory.h"
#endif

namespace rapidfire {

namespace {

bool is_power_of_two(std::size_t x) { return x != 0 && (x & (x - 1)) == 0; }

std::size_t round_up(std::size_t x, std::size_t to) { return (x + to - 1) / to * to; }

std::size_t page_size() {
  long p = ::sysconf(_SC_PAGESIZE);
  return p > 0 ? static_cast<std::size_t>(p) : 4096;
}

// Human-readable bytes for error messages: "1536 bytes (1.50 KiB)".
std::string bytes(std::size_t n) {
  std::ostringstream s;
  s << n << " bytes";
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = -1;
  while (v >= 1024.0 && u < 3) {
    v /= 1024.0;
    ++u;
  }
  if (u >= 0) {
    s.precision(2);
    s << std::fixed << " (" << v << " " << units[u] << ")";
  }
  return s.str();
}

}  // namespace

PinMode parse_pin_mode(const std::string& name) {
  if (name == "auto") return PinMode::Auto;
  if (name == "pinned") return PinMode::Pinned;
  if (name == "pageable") return PinMode::Pageable;
  throw std::invalid_argument("pin must be 'auto', 'pinned' or 'pageable', got '" + name + "'");
}

HostArena::HostArena(std::size_t capacity, std::size_t alignment, PinMode mode, int device) {
  if (!is_power_of_two(alignment) || alignment < 64) {
    throw std::invalid_argument("arena alignment must be a power of two >= 64, got " +
                                std::to_string(alignment));
  }
  if (capacity == 0) throw std::invalid_argument("arena capacity must be > 0 bytes");
  alignment_ = alignment;
  capacity_ = round_up(capacity, std::max(alignment, page_size()));

  if (mode != PinMode::Pageable) {
#ifdef RAPIDFIRE_WITH_CUDA
    // Auto pins only when the runtime sees a device: without a driver
    // cudaHostAlloc would fail anyway, after a slow initialisation attempt.
    DeviceStatus status = query_devices();
    if (status.usable) {
      std::string error;
      void* p = cuda::host_alloc_pinned(capacity_, device, error);
      if (p != nullptr) {
        base_ = static_cast<std::uint8_t*>(p);
        pinned_ = true;
      } else {
        pin_error_ = "cudaHostAlloc(" + bytes(capacity_) + ") failed: " + error;
      }
    } else {
      pin_error_ = "no usable CUDA device: " + status.error;
    }
#else
    (void)device;
    pin_error_ = "rapidfire_core._C was built without CUDA";
#endif
    if (!pinned_ && mode == PinMode::Pinned) {
      throw std::runtime_error("cannot allocate a pinned host arena: " + pin_error_);
    }
  }
  if (!pinned_) {
    // Anonymous mmap: page-aligned, zero-filled, faulted in on first touch.
    void* p = ::mmap(nullptr, capacity_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      throw std::runtime_error("cannot allocate a host arena of " + bytes(capacity_) +
                               ": mmap failed: " + std::strerror(errno));
    }
    base_ = static_cast<std::uint8_t*>(p);
    advise_huge_pages(base_, capacity_);  // first touch of a slot: 2 MiB faults, not 4 KiB
  }
  insert_free(0, capacity_);
}

HostArena::~HostArena() {
  if (base_ == nullptr) return;
#ifdef RAPIDFIRE_WITH_CUDA
  if (pinned_) {
    cuda::host_free_pinned(base_);
    return;
  }
#endif
  ::munmap(base_, capacity_);
}

void HostArena::insert_free(std::size_t offset, std::size_t size) {
  free_by_offset_.emplace(offset, size);
  free_by_size_.emplace(size, offset);
}

void HostArena::erase_free(std::size_t offset, std::size_t size) {
  free_by_offset_.erase(offset);
  free_by_size_.erase({size, offset});
}

std::size_t HostArena::allocate(std::size_t nbytes) {
  if (nbytes > capacity_) {
    ArenaStats s = stats();
    throw ArenaExhausted("host arena exhausted: requested " + bytes(nbytes) + " but the capacity is " +
                         bytes(s.capacity) + " (" + bytes(s.used) + " in use)");
  }
  const std::size_t size = round_up(std::max<std::size_t>(nbytes, 1), alignment_);
  std::lock_guard<std::mutex> lock(mu_);
  // Best fit: the smallest free block that holds `size`, lowest offset on ties.
  auto it = free_by_size_.lower_bound({size, 0});
  if (it == free_by_size_.end()) {
    std::size_t largest = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
    throw ArenaExhausted("host arena exhausted: requested " + bytes(nbytes) + " (rounded to " +
                         bytes(size) + "), free " + bytes(capacity_ - used_) + " of capacity " +
                         bytes(capacity_) + ", largest free block " + bytes(largest) + " in " +
                         std::to_string(free_by_offset_.size()) + " free block(s)");
  }
  const std::size_t block_size = it->first;
  const std::size_t offset = it->second;
  erase_free(offset, block_size);
  if (block_size > size) insert_free(offset + size, block_size - size);
  live_.emplace(offset, size);
  used_ += size;
  peak_used_ = std::max(peak_used_, used_);
  return offset;
}

void HostArena::free(std::size_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = live_.find(offset);
  if (live == live_.end()) {
    throw std::invalid_argument("host arena: offset " + std::to_string(offset) +
                                " is not a live slot (double free or stray offset)");
  }
  std::size_t start = offset;
  std::size_t size = live->second;
  live_.erase(live);
  used_ -= size;
  // Merge with the free block that starts where this slot ends ...
  auto next = free_by_offset_.find(offset + size);
  if (next != free_by_offset_.end()) {
    const std::size_t next_size = next->second;
    erase_free(offset + size, next_size);
    size += next_size;
  }
  // ... and with the one that ends where it starts.
  auto after = free_by_offset_.lower_bound(offset);
  if (after != free_by_offset_.begin()) {
    auto prev = std::prev(after);
    if (prev->first + prev->second == offset) {
      start = prev->first;
      const std::size_t prev_size = prev->second;
      erase_free(start, prev_size);
      size += prev_size;
    }
  }
  insert_free(start, size);
}

std::size_t HostArena::slot_size(std::size_t offset) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(offset);
  if (it == live_.end()) {
    throw std::invalid_argument("host arena: offset " + std::to_string(offset) + " is not a live slot");
  }
  return it->second;
}

void HostArena::check_range(std::size_t offset, std::size_t nbytes) const {
  std::lock_guard<std::mutex> lock(mu_);
  // The live slot with the greatest start <= offset.
  auto it = live_.upper_bound(offset);
  if (it != live_.begin()) {
    --it;
    const std::size_t end = it->first + it->second;
    if (offset < end && nbytes <= end - offset) return;
  }
  throw std::out_of_range("host arena: bytes [" + std::to_string(offset) + ", " +
                          std::to_string(offset + nbytes) + ") are not inside one live slot");
}

ArenaStats HostArena::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  ArenaStats s;
  s.capacity = capacity_;
  s.used = used_;
  s.peak_used = peak_used_;
  s.largest_free = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
  s.num_slots = live_.size();
  s.num_free_blocks = free_by_offset_.size();
  return s;
}

std::vector<std::pair<std::size_t, std::size_t>> HostArena::slots() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {live_.begin(), live_.end()};
}

std::vector<std::pair<std::size_t, std::size_t>> HostArena::free_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {free_by_offset_.begin(), free_by_offset_.end()};
}

}  // namespace rapidfire
