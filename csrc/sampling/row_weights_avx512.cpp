// row_weights compiled for AVX-512 (16 floats per instruction), as row_weights_avx2.cpp is for AVX2.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "sampling/row_weights_simd.h"

#if PYFASTSEQ_AVX2
#pragma GCC target("avx512f,fma")
#define PYFASTSEQ_LANES 16
namespace avx512 {
namespace {
#include "sampling/row_weights.h"
}  // namespace
}  // namespace avx512

double pyfastseq_row_weights_f32_avx512(const float* row, int64_t n, float inv_t, float* w) {
  return avx512::pyfastseq::row_weights<avx512::pyfastseq::Float32Loader>(row, n, inv_t, w);
}
double pyfastseq_row_weights_f16_avx512(const uint16_t* row, int64_t n, float inv_t, float* w) {
  return avx512::pyfastseq::row_weights<avx512::pyfastseq::Float16Loader>(row, n, inv_t, w);
}
double pyfastseq_row_weights_bf16_avx512(const uint16_t* row, int64_t n, float inv_t, float* w) {
  return avx512::pyfastseq::row_weights<avx512::pyfastseq::BFloat16Loader>(row, n, inv_t, w);
}
#endif
