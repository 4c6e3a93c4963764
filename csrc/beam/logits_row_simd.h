// AVX2 + FMA and AVX-512 builds of row_logsumexp and collect_above (logits_row_avx2.cpp,
// logits_row_avx512.cpp), on
// x86-64 with GCC or Clang; logits_row_dispatch.h picks one by what the CPU has.
#pragma once
#include <cstdint>

#include "common/cpu.h"

#if PYFASTSEQ_AVX2
float pyfastseq_logsumexp_f32_avx2(const float* row, int64_t n, bool* nan);
float pyfastseq_logsumexp_f16_avx2(const uint16_t* row, int64_t n, bool* nan);
float pyfastseq_logsumexp_bf16_avx2(const uint16_t* row, int64_t n, bool* nan);
float pyfastseq_logsumexp_f32_avx512(const float* row, int64_t n, bool* nan);
float pyfastseq_logsumexp_f16_avx512(const uint16_t* row, int64_t n, bool* nan);
float pyfastseq_logsumexp_bf16_avx512(const uint16_t* row, int64_t n, bool* nan);
int64_t pyfastseq_collect_above_f32_avx2(const float* row, int64_t begin, int64_t end, float threshold,
                                     float* logits, int32_t* tokens, int32_t room, int32_t* count);
int64_t pyfastseq_collect_above_f16_avx2(const uint16_t* row, int64_t begin, int64_t end, float threshold,
                                     float* logits, int32_t* tokens, int32_t room, int32_t* count);
int64_t pyfastseq_collect_above_bf16_avx2(const uint16_t* row, int64_t begin, int64_t end, float threshold,
                                     float* logits, int32_t* tokens, int32_t room, int32_t* count);
int64_t pyfastseq_collect_above_f32_avx512(const float* row, int64_t begin, int64_t end, float threshold,
                                     float* logits, int32_t* tokens, int32_t room, int32_t* count);
int64_t pyfastseq_collect_above_f16_avx512(const uint16_t* row, int64_t begin, int64_t end, float threshold,
                                     float* logits, int32_t* tokens, int32_t room, int32_t* count);
int64_t pyfastseq_collect_above_bf16_avx512(const uint16_t* row, int64_t begin, int64_t end, float threshold,
                                     float* logits, int32_t* tokens, int32_t room, int32_t* count);
#endif

// Defines the entry points above for one build, in a file that has included logits_row.h inside a
// namespace named `isa`.
#define PYFASTSEQ_DEFINE_ROW_PASSES_FOR(isa, dtype, Bits, Loader)                                      \
  float pyfastseq_logsumexp_##dtype##_##isa(const Bits* row, int64_t n, bool* nan) {                  \
    return isa::pyfastseq::row_logsumexp<isa::pyfastseq::Loader>(row, n, nan);                         \
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
