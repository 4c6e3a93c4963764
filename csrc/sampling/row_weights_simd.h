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
