// Lets a module linked on a new glibc (this project's dev hosts: Debian 12, glibc 2.36) load on
// glibc 2.28 (manylinux_2_28: RHEL 8, Ubuntu 20.04 has 2.31). Compiled only when CMake's
// RAPIDFIRE_GLIBC_COMPAT is on (x86_64, host glibc newer than 2.28); the linker's
// --wrap=NAME then sends every reference to NAME -- ours, static libstdc++'s and the static CUDA
// runtime's -- to __wrap_NAME below.
//
// * Functions in glibc_pinned_symbols.def: __wrap_NAME is a tail jump to NAME at its pre-2.34
//   version (pinned with .symver), so arguments and return pass through untouched; RF_ALIAS
//   entries jump to another function (glibc 2.38's C23 strto*/sscanf to the classic ones).
// * __libc_single_threaded (GLIBC_2.32), read by libstdc++ to skip atomic reference counts in a
//   process that never started a thread: ours is always 0 ("threads may exist"), which only costs
//   the atomics (correct in every process).
// * arc4random (GLIBC_2.36), reached through libstdc++'s std::random_device: getrandom (2.25).
#include <sys/random.h>

#include <cerrno>
#include <cstdint>

// __wrap_NAME: a tail jump to TARGET@VERSION (registers, stack and varargs pass through).
#define RF_ALIAS(name, target, version)                                  \
  __asm__(".symver rf_pinned_" #name ", " #target "@" version "\n"       \
          ".globl __wrap_" #name "\n"                                    \
          ".hidden __wrap_" #name "\n"                                   \
          ".type __wrap_" #name ", @function\n"                          \
          "__wrap_" #name ":\n"                                          \
          "  jmp rf_pinned_" #name "@PLT\n"                              \
          ".size __wrap_" #name ", . - __wrap_" #name "\n");
#define RF_PIN(name, version) RF_ALIAS(name, name, version)
#include "glibc_pinned_symbols.def"
#undef RF_PIN
#undef RF_ALIAS

extern "C" {

__attribute__((visibility("hidden"))) char __wrap___libc_single_threaded = 0;

__attribute__((visibility("hidden"))) std::uint32_t __wrap_arc4random(void) {
  std::uint32_t value = 0;
  auto* out = reinterpret_cast<unsigned char*>(&value);
  std::size_t filled = 0;
  while (filled < sizeof(value)) {  // getrandom may return fewer bytes or EINTR; never fails otherwise
    ssize_t n = getrandom(out + filled, sizeof(value) - filled, 0);
    if (n > 0) filled += static_cast<std::size_t>(n);
    else if (errno != EINTR) break;
  }
  return value;
}

}  // extern "C"
