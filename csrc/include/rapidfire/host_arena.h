// One large host allocation, carved into variable-size slots.
//
// The arena is where every pooled run keeps its trainable state (LoRA weights,
// optimizer moments, step counters) while it is off the GPU, and the staging
// area for every copy to and from the GPU. It is allocated ONCE:
//
//   pinned    cudaHostAlloc (page-locked, so the GPU's DMA engines read and write
//             it directly and cudaMemcpyAsync is truly asynchronous);
//   pageable  an anonymous mmap (page-aligned, lazily faulted) when no GPU is
//             usable, when the build has no CUDA, or when pinning was declined.
//
// Slots: allocate(n) returns the byte offset of a free range of at least n bytes
// (rounded up to `alignment`, best fit); free(offset) returns it and merges it
// with free neighbours, so a free list of K blocks never has two adjacent ones.
// Every public method is thread-safe (one mutex; the bookkeeping is O(log K)).
// Running out of space throws ArenaExhausted, naming the sizes; nothing is
// changed by a failed call.
//
// Pure C++: no Python, no torch. The CUDA calls live in csrc/cuda/ behind
// rapidfire/cuda_memory.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace rapidfire {

// allocate() found no free block large enough. `what()` names the request, the
// free bytes, the largest free block and the capacity.
class ArenaExhausted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class PinMode {
  Auto,      // pin when a CUDA device is usable, else pageable (pin_error() says why)
  Pinned,    // pin or throw
  Pageable,  // never pin
};

PinMode parse_pin_mode(const std::string& name);  // "auto" | "pinned" | "pageable"

struct ArenaStats {
  std::size_t capacity = 0;       // bytes in the arena
  std::size_t used = 0;           // bytes in live slots (rounded sizes)
  std::size_t peak_used = 0;      // high-water mark of `used`
  std::size_t largest_free = 0;   // the largest single allocation that would succeed now
  std::size_t num_slots = 0;      // live slots
  std::size_t num_free_blocks = 0;
};

class HostArena {
 public:
  // capacity: bytes (rounded up to whole pages). alignment: every slot offset and
  // size is a multiple of it (a power of two >= 64; 512 matches the granularity of
  // torch's CUDA caching allocator). device: the CUDA device whose driver context
  // pins the memory (pinned memory is portable: usable from every device).
  HostArena(std::size_t capacity, std::size_t alignment = 512, PinMode mode = PinMode::Auto,
            int device = 0);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  // Offset of a new slot of round_up(max(nbytes, 1), alignment) bytes.
  std::size_t allocate(std::size_t nbytes);
  // Return a slot. Throws std::invalid_argument if `offset` is not a live slot
  // (double free, stray offset): the free list is never corrupted.
  void free(std::size_t offset);
  // Size of the live slot at `offset` (its rounded size); throws if not live.
  std::size_t slot_size(std::size_t offset) const;
  // Throws std::out_of_range unless [offset, offset + nbytes) lies inside one live slot.
  void check_range(std::size_t offset, std::size_t nbytes) const;

  ArenaStats stats() const;
  std::vector<std::pair<std::size_t, std::size_t>> slots() const;        // (offset, size), by offset
  std::vector<std::pair<std::size_t, std::size_t>> free_blocks() const;  // (offset, size), by offset

  std::uint8_t* data() const { return base_; }
  std::size_t capacity() const { return capacity_; }
  std::size_t alignment() const { return alignment_; }
  bool pinned() const { return pinned_; }
  // Why the arena is pageable under PinMode::Auto ("" when pinned or Pageable was asked).
  const std::string& pin_error() const { return pin_error_; }

 private:
  void insert_free(std::size_t offset, std::size_t size);  // caller holds mu_
  void erase_free(std::size_t offset, std::size_t size);   // caller holds mu_

  std::uint8_t* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t alignment_ = 0;
  bool pinned_ = false;
  std::string pin_error_;

  mutable std::mutex mu_;
  std::map<std::size_t, std::size_t> free_by_offset_;             // offset -> size
  std::set<std::pair<std::size_t, std::size_t>> free_by_size_;    // (size, offset): best fit
  std::map<std::size_t, std::size_t> live_;                       // offset -> size
  std::size_t used_ = 0;
  std::size_t peak_used_ = 0;
};

}  // namespace rapidfire
