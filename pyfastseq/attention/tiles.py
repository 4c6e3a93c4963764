"""Tile helpers shared by the forward and backward kernels."""

import triton
import triton.language as tl


@triton.jit
def visible(q_idx, k_idx, s, n):
    """UniLM mask over broadcast query and key index tiles (prefix length s, row length n)."""
    return (q_idx < n) & (k_idx < n) & ((k_idx < s) | (k_idx <= q_idx))


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """tl.dot; fp32 inputs ask for full fp32 products (no TF32) so fp32 matches the reference."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)
