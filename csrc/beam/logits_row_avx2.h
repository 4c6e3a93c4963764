// AVX2 + FMA builds of row_logsumexp (logits_row_avx2.cpp), on x86-64 with GCC or Clang.
#pragma once
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#define PYFASTSEQ_AVX2_ROWS 1
float pyfastseq_logsumexp_f32_avx2(const float* row, int64_t n, bool* nan);
float pyfastseq_logsumexp_f16_avx2(const uint16_t* row, int64_t n, bool* nan);
float pyfastseq_logsumexp_bf16_avx2(const uint16_t* row, int64_t n, bool* nan);
#else
#define PYFASTSEQ_AVX2_ROWS 0
#endif
