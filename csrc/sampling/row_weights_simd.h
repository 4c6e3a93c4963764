// AVX2 + FMA and AVX-512 builds of row_weights (row_weights_avx2.cpp, row_weights_avx512.cpp), on
// x86-64 with GCC or Clang; the sampling step picks one by what the CPU has.
#pragma once
#include <cstdint>

#include "common/cpu.h"

#if PYFASTSEQ_AVX2
double pyfastseq_row_weights_f32_avx2(const float* row, int64_t n, float inv_t, float* w);
double pyfastseq_row_weights_f16_avx2(const uint16_t* row, int64_t n, float inv_t, float* w);
double pyfastseq_row_weights_bf16_avx2(const uint16_t* row, int64_t n, float inv_t, float* w);
double pyfastseq_row_weights_f32_avx512(const float* row, int64_t n, float inv_t, float* w);
double pyfastseq_row_weights_f16_avx512(const uint16_t* row, int64_t n, float inv_t, float* w);
double pyfastseq_row_weights_bf16_avx512(const uint16_t* row, int64_t n, float inv_t, float* w);
#endif

// Defines the entry points above for one build, in a file that has included row_weights.h inside a
// namespace named `isa`.
#define PYFASTSEQ_DEFINE_ROW_WEIGHTS(isa)                                                           \
  double pyfastseq_row_weights_f32_##isa(const float* row, int64_t n, float inv_t, float* w) {      \
    return isa::pyfastseq::row_weights<isa::pyfastseq::Float32Loader>(row, n, inv_t, w);            \
  }                                                                                                 \
  double pyfastseq_row_weights_f16_##isa(const uint16_t* row, int64_t n, float inv_t, float* w) {   \
    return isa::pyfastseq::row_weights<isa::pyfastseq::Float16Loader>(row, n, inv_t, w);            \
  }                                                                                                 \
  double pyfastseq_row_weights_bf16_##isa(const uint16_t* row, int64_t n, float inv_t, float* w) {  \
    return isa::pyfastseq::row_weights<isa::pyfastseq::BFloat16Loader>(row, n, inv_t, w);           \
  }
