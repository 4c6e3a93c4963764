// fp16 for the CPU emulator (emulator.h): storage and the conversion to float the kernels use.
#pragma once
#include <cmath>
#include <cstdint>

struct __half {
  uint16_t bits;
};

inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }

inline float __half2float(__half h) {
  const int exponent = (h.bits >> 10) & 0x1f, mantissa = h.bits & 0x3ff;
  const float sign = (h.bits & 0x8000) ? -1.0f : 1.0f;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -24);
  if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
  return sign * std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
}
