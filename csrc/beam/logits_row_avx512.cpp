// The row pass of the beam step compiled for AVX-512 (16 floats per instruction), taken where the
// CPU has it; otherwise as logits_row_avx2.cpp, whose comments say why the header sits in its own
// namespace here.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "beam/logits_row_simd.h"

#if PYFASTSEQ_AVX2
#include <immintrin.h>
#pragma GCC target("avx512f,fma")
#define PYFASTSEQ_LANES 16
#define PYFASTSEQ_SCALEF 1  // exp2_nonpositive rounds and scales with AVX-512 instructions
namespace avx512 {
namespace {
#include "beam/logits_row.h"
}  // namespace
}  // namespace avx512

PYFASTSEQ_DEFINE_ROW_PASSES(avx512)
#endif
