// Run-time choice between the baseline, AVX2 + FMA and AVX-512 builds of the row passes. Never
// include this from a file compiled for AVX2 or AVX-512: its inline functions must stay baseline code.
#pragma once
#include <cstdint>
#include <type_traits>

#include "beam/beam.h"
#include "beam/logits_row.h"
#include "beam/logits_row_simd.h"
#include "common/cpu.h"
#include "common/errors.h"

namespace pyfastseq {

// The log-sum-exp of a whole logits row (NaN reported through *nan): the one pass over every logit
// that a full-vocabulary normaliser costs.
template <class Loader>
float full_logsumexp(const typename Loader::Bits* row, int64_t n, bool* nan) {
#if PYFASTSEQ_AVX2
  if (cpu_has_avx512()) {
    if constexpr (std::is_same_v<Loader, Float32Loader>) return pyfastseq_logsumexp_f32_avx512(row, n, nan);
    if constexpr (std::is_same_v<Loader, Float16Loader>) return pyfastseq_logsumexp_f16_avx512(row, n, nan);
    if constexpr (std::is_same_v<Loader, BFloat16Loader>) return pyfastseq_logsumexp_bf16_avx512(row, n, nan);
  }
  if (cpu_has_avx2_fma()) {
    if constexpr (std::is_same_v<Loader, Float32Loader>) return pyfastseq_logsumexp_f32_avx2(row, n, nan);
    if constexpr (std::is_same_v<Loader, Float16Loader>) return pyfastseq_logsumexp_f16_avx2(row, n, nan);
    if constexpr (std::is_same_v<Loader, BFloat16Loader>) return pyfastseq_logsumexp_bf16_avx2(row, n, nan);
  }
#endif
  return row_logsumexp<Loader>(row, n, nan);
}

// Calls f(Loader{}) with the loader that reads `dtype`; InvalidArgument for an unknown code.
template <class F>
void with_logits_loader(LogitsDtype dtype, F&& f) {
  switch (dtype) {
    case LogitsDtype::kFloat32: return f(Float32Loader{});
    case LogitsDtype::kFloat16: return f(Float16Loader{});
    case LogitsDtype::kBFloat16: return f(BFloat16Loader{});
  }
  fail("logits dtype code ", static_cast<int32_t>(dtype), " is not float32, float16 or bfloat16");
}

}  // namespace pyfastseq
