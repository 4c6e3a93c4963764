// The row pass of the beam step compiled for AVX2 + FMA (8 floats per instruction); beam_step.cpp
// calls these only when the CPU has both, so one wheel runs everywhere. The header is included in
// an anonymous namespace, inside `avx2` to tell it from the baseline `pyfastseq`, so that none of
// its AVX2 code can be merged with the baseline copies.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "beam/logits_row_simd.h"

#if PYFASTSEQ_AVX2
#pragma GCC target("avx2,fma")
namespace avx2 {
namespace {
#include "beam/logits_row.h"
}  // namespace
}  // namespace avx2

PYFASTSEQ_DEFINE_ROW_PASSES(avx2)
#endif
