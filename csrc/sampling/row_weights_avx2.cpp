// row_weights compiled for AVX2 + FMA. As in beam/logits_row_avx2.cpp, the headers are included in
// an anonymous namespace, inside `avx2` to tell them from the baseline `pyfastseq`, so that none of
// this code can be merged with the baseline copies.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "sampling/row_weights_simd.h"

#if PYFASTSEQ_AVX2
#pragma GCC target("avx2,fma")
namespace avx2 {
namespace {
#include "sampling/row_weights.h"
}  // namespace
}  // namespace avx2

double pyfastseq_row_weights_f32_avx2(const float* row, int64_t n, float inv_t, float* w) {
  return avx2::pyfastseq::row_weights<avx2::pyfastseq::Float32Loader>(row, n, inv_t, w);
}
double pyfastseq_row_weights_f16_avx2(const uint16_t* row, int64_t n, float inv_t, float* w) {
  return avx2::pyfastseq::row_weights<avx2::pyfastseq::Float16Loader>(row, n, inv_t, w);
}
double pyfastseq_row_weights_bf16_avx2(const uint16_t* row, int64_t n, float inv_t, float* w) {
  return avx2::pyfastseq::row_weights<avx2::pyfastseq::BFloat16Loader>(row, n, inv_t, w);
}
#endif
