// The CUDA runtime names pyfastseq's kernels use, for the CPU emulator (emulator.h).
#pragma once
#include "emulator.h"

using cudaStream_t = void*;
enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
