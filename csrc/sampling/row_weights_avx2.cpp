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

PYFASTSEQ_DEFINE_ROW_WEIGHTS(avx2)
#endif
