"""Attention dropout's random stream in plain PyTorch: which (query, key) probabilities a call drops.

The Triton kernels draw the same bits (``tiles.dropout_keep``), so the kernels, the CPU fallback and
the tests' reference drop the same entries for the same seed, and the backward regenerates the
forward's choice instead of storing a ``[B, H, L, L]`` mask.

Entry ``(b, h, i, j)`` of a call's ``[B, H, L, L]`` probabilities reads Philox4x32-10 (Triton's
``tl.randint4x``: key = the call's 64-bit seed, counter = the 64-bit offset
``((b * H + h) * L + i) * ceil(L / 8) + j // 8``, low word first, then zeros). The four 32-bit words
give eight 16-bit halves, entry ``j`` taking half ``j % 8`` (word ``(j % 8) // 2``, low half first),
so one Philox call serves eight entries, as FlashAttention's dropout serves several per call. The entry
survives iff its half is at least ``threshold = min(round(p * 65536), 65535)``: the dropout
probability is ``p`` to within ``2**-16``, and survivors are scaled by ``65536 / (65536 - threshold)``,
the inverse of the exact keep probability, so the output's expectation is the undropped attention's.
A ``p`` under ``2**-17`` has threshold 0 and drops nothing.
"""

from __future__ import annotations

import math

import torch

_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_LOW32 = 0xFFFFFFFF
SEED_HIGH = 1 << 62  # seeds are drawn from [0, SEED_HIGH): any int64 the kernels load


def threshold(p: float) -> int:
    """The 16-bit threshold below which an entry is dropped (at most 65535: something survives)."""
    return min(round(p * 65536), 65535)


def keep_scale(p: float) -> float:
    """What survivors are multiplied by: the inverse of the exact keep probability."""
    return 65536.0 / (65536 - threshold(p))


def _mul_hi_lo(a: int, b: torch.Tensor):
    """(high, low) 32-bit words of ``a * b`` for a 32-bit constant ``a`` and int64 tensor ``b`` of
    32-bit values, in 16-bit limbs so that no int64 product overflows."""
    a0, a1 = a & 0xFFFF, a >> 16
    b0, b1 = b & 0xFFFF, b >> 16
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> 16) + (p01 & 0xFFFF) + (p10 & 0xFFFF)
    low = ((mid & 0xFFFF) << 16) | (p00 & 0xFFFF)
    high = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
    return high & _LOW32, low


def philox4x32(seed: torch.Tensor, offset: torch.Tensor):
    """Triton's ``tl.randint4x(seed, offset)``: four int64 tensors of 32-bit words, for an int64
    ``seed`` (one element) and int64 ``offset`` tensor."""
    seed = seed.reshape(()).to(device=offset.device, dtype=torch.int64)
    k0, k1 = seed & _LOW32, (seed >> 32) & _LOW32
    c0, c1 = offset & _LOW32, (offset >> 32) & _LOW32
    c2 = c3 = torch.zeros_like(offset)
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _LOW32, (k1 + _KEY_B) & _LOW32
    return c0, c1, c2, c3


def dropout_keep_mask(seed: torch.Tensor, B: int, H: int, L: int, p: float, device=None) -> torch.Tensor:
    """Boolean ``[B, H, L, L]``: True where the kernels keep entry ``(b, h, i, j)`` (module doc)."""
    groups = math.ceil(L / 8)
    row = torch.arange(B * H * L, device=device, dtype=torch.int64).view(B, H, L, 1)
    words = philox4x32(seed, row * groups + torch.arange(groups, device=device, dtype=torch.int64))
    cut = threshold(p)
    keep = torch.stack([half >= cut for word in words for half in (word & 0xFFFF, word >> 16)], dim=-1)
    return keep.view(B, H, L, groups * 8)[..., :L]


def draw_seed(device: torch.device) -> torch.Tensor:
    """A call's seed, one int64 on ``device`` from its default generator (``torch.manual_seed``
    makes calls reproducible; on a GPU no host sync)."""
    return torch.randint(SEED_HIGH, (1,), device=device, dtype=torch.int64)
