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

PYFASTSEQ_DEFINE_ROW_WEIGHTS(avx512)
#endif
