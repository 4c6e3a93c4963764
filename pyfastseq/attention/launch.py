"""Launchers for the Triton kernels: grids, block sizes, autotuning, strides.

On a GPU the kernels are autotuned, keyed on the head dim, the power-of-two bucket of L and the
dtype, so new sequence lengths neither recompile nor re-tune (the per-row lengths are tensors). The
Triton interpreter (``TRITON_INTERPRET=1``, CPU) cannot benchmark configurations, so there one fixed
configuration runs.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton

from .backward import unilm_bwd_dkdv_kernel, unilm_bwd_dq_kernel
from .forward import unilm_fwd_kernel

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _fits(config, D: int, elem: int) -> bool:
    # One resident tile plus two streamed tiles per pipeline stage.
    tiles = config.kwargs["BLOCK_M"] + 2 * config.kwargs["BLOCK_N"] * max(config.num_stages, 1)
    return tiles * D * elem <= 224 * 1024


def _prune(configs, named_args, **kwargs):
    """Skip configurations that cannot fit shared memory at this head dim and element size (the
    autotuner would also reject them, after compiling them)."""
    D = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    elem = named_args["Q"].element_size()
    kept = [c for c in configs if _fits(c, D, elem)]
    return kept or configs[-1:]


_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
    for bm, bn, w, st in [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2)]
]
_BWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
    for bm, bn, w, st in [(32, 128, 8, 2), (64, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2), (32, 32, 4, 1)]
]
_KEY = ["HEAD_DIM", "L_BUCKET"]
_KERNELS = {
    "fwd": (unilm_fwd_kernel, _FWD_CONFIGS),
    "dkdv": (unilm_bwd_dkdv_kernel, _BWD_CONFIGS),
    "dq": (unilm_bwd_dq_kernel, _BWD_CONFIGS),
}
# Interpreter blocks: small enough to exercise multi-block paths on short test sequences.
INTERPRET_BLOCKS = {name: {"BLOCK_M": 32, "BLOCK_N": 32} for name in _KERNELS}


@functools.cache
def _autotuned(which: str):
    kernel, configs = _KERNELS[which]
    # Every kernel writes all of its outputs, so the autotuner may rerun them freely.
    return triton.autotune(configs, key=_KEY, prune_configs_by={"early_config_prune": _prune})(kernel)


def _kernel(which: str):
    """(launchable kernel, block-size kwargs): autotuned on a GPU, fixed blocks in the interpreter."""
    if interpreting():
        return _KERNELS[which][0], INTERPRET_BLOCKS[which]
    return _autotuned(which), {}


def _bucket(L: int) -> int:
    return 1 << max(4, math.ceil(math.log2(max(L, 1))))


def _grid(block: str, L: int, BH: int):
    return lambda meta: (triton.cdiv(L, meta[block]), BH)


def forward(q, k, v, prefix, seq, scale: float):
    """(out [B, H, L, D] in q's dtype, lse [B, H, L] fp32 log2 domain)."""
    B, H, L, D = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    kernel, fixed = _kernel("fwd")
    kernel[_grid("BLOCK_M", L, B * H)](
        q, k, v, out, lse, prefix, seq, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, L, scale * LOG2E, _bucket(L), HEAD_DIM=D, IEEE=q.dtype == torch.float32, **fixed,
    )
    return out, lse


def backward(do, q, k, v, out, lse, prefix, seq, scale: float):
    """(dq, dk, dv) in the inputs' dtypes."""
    B, H, L, D = q.shape
    delta = (do.float() * out.float()).sum(-1).contiguous()  # [B, H, L]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = dict(HEAD_DIM=D, IEEE=q.dtype == torch.float32)
    kernel, fixed = _kernel("dkdv")
    kernel[_grid("BLOCK_N", L, B * H)](
        q, k, v, do, dk, dv, lse, delta, prefix, seq,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        H, L, scale, scale * LOG2E, _bucket(L), **common, **fixed,
    )
    kernel, fixed = _kernel("dq")
    kernel[_grid("BLOCK_M", L, B * H)](
        q, k, v, do, dq, lse, delta, prefix, seq,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        H, L, scale, scale * LOG2E, _bucket(L), **common, **fixed,
    )
    return dq, dk, dv
