// Transparent-huge-page advice for large host buffers (see rapidfire/host_pages.h).
#include "rapidfire/host_pages.h"

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace rapidfire {

std::size_t advise_huge_pages(void* ptr, std::size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(ptr);
  const std::uintptr_t first = (begin + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  const std::uintptr_t last = (begin + nbytes) & ~(kHugePageBytes - 1);
  if (ptr == nullptr || last <= first) return 0;
  // Only whole huge pages inside the range: advice never spills onto bytes of
  // neighbouring allocations.
  if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE) != 0) return 0;
  return last - first;
#else
  (void)ptr;
  (void)nbytes;
  return 0;
#endif
}

}  // namespace rapidfire
