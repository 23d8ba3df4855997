// Page-level advice for large host buffers (Linux; a no-op elsewhere).
//
// A fresh multi-hundred-MB host buffer is faulted in 4 KiB at a time on first
// touch, which caps a copy into it at ~1-2 GB/s. Asking the kernel for
// transparent huge pages (madvise(MADV_HUGEPAGE), honoured when THP is
// "always" or "madvise") makes the same first touch fault 2 MiB at a time.
// Used for the pageable arena and for the CPU pool's freshly allocated state
// buffers; pinned (cudaHostAlloc) memory is already resident and needs none.
#pragma once

#include <cstddef>

namespace rapidfire {

// Smallest range worth advising: below it no whole 2 MiB page fits reliably.
constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

// madvise(MADV_HUGEPAGE) on the whole 2 MiB pages inside [ptr, ptr + nbytes).
// Returns the number of bytes advised: 0 when no whole huge page lies inside,
// on non-Linux systems, or when the kernel refuses (e.g. THP compiled out).
// Never fails: the advice only changes how fast pages are faulted in.
std::size_t advise_huge_pages(void* ptr, std::size_t nbytes);

}  // namespace rapidfire
