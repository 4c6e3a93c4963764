// Run-time choice of instruction set. Kernels that ship an AVX2 + FMA (or AVX-512) build beside the
// baseline one compile it in a file of its own under `#pragma GCC target`, and callers take it only
// when the CPU has those instructions, so one wheel runs everywhere. Include this before any such
// pragma: its inline functions must stay baseline code.
#pragma once
#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__)
#define PYFASTSEQ_AVX2 1
#else
#define PYFASTSEQ_AVX2 0
#endif

namespace pyfastseq {

// True when this CPU runs the AVX2 + FMA builds, decided once per process. A non-empty
// PYFASTSEQ_DISABLE_AVX2 keeps every kernel on its baseline build (to test or compare it).
inline bool cpu_has_avx2_fma() {
#if PYFASTSEQ_AVX2
  static const bool has = [] {
    const char* disable = std::getenv("PYFASTSEQ_DISABLE_AVX2");
    const bool disabled = disable != nullptr && disable[0] != '\0';
    return !disabled && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

// True when this CPU runs the AVX-512 (F + FMA) builds, which some row passes ship beside the AVX2
// ones. PYFASTSEQ_DISABLE_AVX2 turns them off too; a non-empty PYFASTSEQ_DISABLE_AVX512 alone keeps
// those kernels on their AVX2 builds.
inline bool cpu_has_avx512() {
#if PYFASTSEQ_AVX2
  static const bool has = [] {
    const char* disable = std::getenv("PYFASTSEQ_DISABLE_AVX512");
    const bool disabled = disable != nullptr && disable[0] != '\0';
    return !disabled && cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace pyfastseq
