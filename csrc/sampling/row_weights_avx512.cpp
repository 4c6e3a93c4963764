// row_weights compiled for AVX-512 (16 floats per instruction), as row_weights_avx2.cpp is for AVX2.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "sampling/row_weights_simd.h"

#if PYFASTSEQ_AVX2
#include <immintrin.h>
#pragma GCC target("avx512f,fma")
#define PYFASTSEQ_LANES 16
#define PYFASTSEQ_SCALEF 1  // exp2_nonpositive rounds and scales with AVX-512 instructions
namespace avx512 {
namespace {
#include "sampling/row_weights.h"
}  // namespace
}  // namespace avx512

PYFASTSEQ_DEFINE_ROW_WEIGHTS(avx512)
#endif
