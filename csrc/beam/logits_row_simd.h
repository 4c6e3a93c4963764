// AVX2 + FMA and AVX-512 builds of row_normaliser and collect_above (logits_row_avx2.cpp,
// logits_row_avx512.cpp), on x86-64 with GCC or Clang; logits_row_dispatch.h picks one by what the
// CPU has.
#pragma once
#include <cstdint>

#include "common/cpu.h"

// Declares one build's entry point of both passes for one logits dtype.
#define PYFASTSEQ_DECLARE_ROW_PASSES_FOR(isa, dtype, Bits)                                                \
  float pyfastseq_normaliser_##dtype##_##isa(const Bits* row, int64_t n, float* log_sum, bool* nan);     \
  int64_t pyfastseq_collect_above_##dtype##_##isa(const Bits* row, int64_t begin, int64_t end, float t,   \
                                                  float* logits, int32_t* tokens, int32_t room, int32_t* count);
#define PYFASTSEQ_DECLARE_ROW_PASSES(isa)               \
  PYFASTSEQ_DECLARE_ROW_PASSES_FOR(isa, f32, float)     \
  PYFASTSEQ_DECLARE_ROW_PASSES_FOR(isa, f16, uint16_t)  \
  PYFASTSEQ_DECLARE_ROW_PASSES_FOR(isa, bf16, uint16_t)

#if PYFASTSEQ_AVX2
PYFASTSEQ_DECLARE_ROW_PASSES(avx2)
PYFASTSEQ_DECLARE_ROW_PASSES(avx512)
#endif

// Defines the entry points above for one build, in a file that has included logits_row.h inside a
// namespace named `isa`.
#define PYFASTSEQ_DEFINE_ROW_PASSES_FOR(isa, dtype, Bits, Loader)                                      \
  float pyfastseq_normaliser_##dtype##_##isa(const Bits* row, int64_t n, float* log_sum, bool* nan) { \
    return isa::pyfastseq::row_normaliser<isa::pyfastseq::Loader>(row, n, log_sum, nan);               \
  }                                                                                                    \
  int64_t pyfastseq_collect_above_##dtype##_##isa(const Bits* row, int64_t begin, int64_t end, float t, \
                                                 float* logits, int32_t* tokens, int32_t room,          \
                                                 int32_t* count) {                                      \
    return isa::pyfastseq::collect_above<isa::pyfastseq::Loader>(row, begin, end, t, logits, tokens,  \
                                                                 room, count);                         \
  }
#define PYFASTSEQ_DEFINE_ROW_PASSES(isa)                             \
  PYFASTSEQ_DEFINE_ROW_PASSES_FOR(isa, f32, float, Float32Loader)    \
  PYFASTSEQ_DEFINE_ROW_PASSES_FOR(isa, f16, uint16_t, Float16Loader) \
  PYFASTSEQ_DEFINE_ROW_PASSES_FOR(isa, bf16, uint16_t, BFloat16Loader)
