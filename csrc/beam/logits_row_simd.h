// AVX2 + FMA and AVX-512 builds of row_logsumexp (logits_row_avx2.cpp, logits_row_avx512.cpp), on
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
#endif

// Defines the entry points above for one build, in a file that has included logits_row.h inside a
// namespace named `isa`.
#define PYFASTSEQ_DEFINE_LOGSUMEXP(isa)                                                \
  float pyfastseq_logsumexp_f32_##isa(const float* row, int64_t n, bool* nan) {        \
    return isa::pyfastseq::row_logsumexp<isa::pyfastseq::Float32Loader>(row, n, nan);  \
  }                                                                                    \
  float pyfastseq_logsumexp_f16_##isa(const uint16_t* row, int64_t n, bool* nan) {     \
    return isa::pyfastseq::row_logsumexp<isa::pyfastseq::Float16Loader>(row, n, nan);  \
  }                                                                                    \
  float pyfastseq_logsumexp_bf16_##isa(const uint16_t* row, int64_t n, bool* nan) {    \
    return isa::pyfastseq::row_logsumexp<isa::pyfastseq::BFloat16Loader>(row, n, nan); \
  }
