"""Launchers for the Triton kernels: grids, block sizes, autotuning, strides.

On a GPU the kernels are autotuned, keyed on the head dim, the power-of-two bucket of L, the dtype
and whether dropout runs (its variant needs more registers and shared memory), so new sequence
lengths neither recompile nor re-tune (the per-row lengths are tensors). The Triton interpreter
(``TRITON_INTERPRET=1``, CPU) cannot benchmark configurations, so there one fixed configuration
runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading

import torch
import triton

from .._validate import INT32_MAX
from . import dropout
from .backward import unilm_bwd_dkdv_kernel, unilm_bwd_dq_kernel, unilm_bwd_kernel
from .forward import unilm_fwd_kernel

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _fits(config, D: int, elem: int) -> bool:
    # One resident tile plus two streamed tiles per pipeline stage.
    tiles = config.kwargs["BLOCK_M"] + 2 * config.kwargs.get("BLOCK_N", 0) * max(config.num_stages, 1)
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
    for bm, bn, w, st in [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2)]
]
_BWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
    for bm, bn, w, st in [(32, 128, 8, 2), (64, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2), (32, 32, 4, 1)]
]
_KEY = ["HEAD_DIM", "L_BUCKET", "DROPOUT"]
_KERNELS = {
    "fwd": (unilm_fwd_kernel, _FWD_CONFIGS),
    "dkdv": (unilm_bwd_dkdv_kernel, _BWD_CONFIGS),
    "dq": (unilm_bwd_dq_kernel, _BWD_CONFIGS),
    "bwd": (unilm_bwd_kernel, _BWD_CONFIGS),
}
# Interpreter blocks: small enough to exercise multi-block paths on short test sequences.
INTERPRET_BLOCKS = {name: {"BLOCK_M": 32, "BLOCK_N": 32} for name in _KERNELS}


class _Autotuned:
    """A kernel autotuned on a GPU, launched as a Triton kernel is (``kernel[grid](*args, **kwargs)``).

    The first launch for a key (head dim, L bucket, dtype, dropout or not) goes through
    ``triton.autotune``, which times the configurations; later ones go to the kernel with the
    configuration it chose. The autotuner's own lookup rebuilds its key from all of a launch's ~40
    arguments each time: host time that a training step of small layers waits on.
    """

    def __init__(self, which: str):
        kernel, configs = _KERNELS[which]
        # Every kernel writes all of its outputs, so the autotuner may rerun them freely.
        self.autotuner = triton.autotune(configs, key=_KEY, prune_configs_by={"early_config_prune": _prune})(kernel)
        self.kernel = kernel
        self.bucket_at = kernel.arg_names.index("L_BUCKET")
        self.chosen = {}
        self.tuning = threading.Lock()  # best_config is the autotuner's last choice: one tuning launch at a time

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            key = (kwargs["HEAD_DIM"], args[self.bucket_at], args[0].dtype, kwargs["DROPOUT"])
            config = self.chosen.get(key)
            if config is None:
                with self.tuning:
                    self.autotuner[grid](*args, **kwargs)
                    self.chosen[key] = self.autotuner.best_config.all_kwargs()
            else:
                self.kernel[grid](*args, **kwargs, **config)
        return launch


@functools.cache
def _autotuned(which: str) -> _Autotuned:
    return _Autotuned(which)


class _Interpreted:
    """A kernel run by Triton's interpreter, one launch at a time: the interpreter patches
    ``triton.language`` module-wide for the length of a launch, so launches from two threads would
    undo each other's patches."""

    lock = threading.Lock()

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with self.lock:
                self.kernel[grid](*args, **kwargs)
        return launch


def _kernel(which: str):
    """(launchable kernel, block-size kwargs): autotuned on a GPU, fixed blocks in the interpreter."""
    if interpreting():
        return _Interpreted(_KERNELS[which][0]), INTERPRET_BLOCKS[which]
    return _autotuned(which), {}


def _bucket(L: int) -> int:
    return 1 << max(4, math.ceil(math.log2(max(L, 1))))


# Grid axis 1 runs over batch * head, and CUDA allows at most 65,535 blocks there: larger batches
# are launched in slices of whole batch rows.
MAX_GRID_Y = 65535


def _head_extent(t: torch.Tensor) -> int:
    """Elements that one (batch, head) slice of a [B, H, L, D] tensor spans."""
    _, _, L, D = t.shape
    _, _, stride_l, stride_d = t.stride()
    return 1 + (L - 1) * abs(stride_l) + (D - 1) * abs(stride_d)


def check_launch_limits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError for [B, H, L, D] inputs the kernels cannot address: they index within one
    (batch, head) in int32, and launch at least one whole batch row of heads at a time."""
    H = q.shape[1]
    if H > MAX_GRID_Y:
        raise ValueError(f"q has {H} heads; the Triton kernels take at most {MAX_GRID_Y}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if _head_extent(t) > INT32_MAX:
            hint = "; make it contiguous [B, H, L, D]" if t.shape[2] * t.shape[3] <= INT32_MAX else ""
            raise ValueError(f"one head of {name} spans {_head_extent(t)} elements, past the Triton kernels' "
                             f"32-bit offsets{hint}")


def _batch_slices(B: int, H: int):
    step = max(MAX_GRID_Y // H, 1)
    return [slice(b, min(b + step, B)) for b in range(0, B, step)]


def _contiguous_lengths(prefix: torch.Tensor, seq: torch.Tensor):
    """The kernels read row b's length at offset b: a column of a [B, 2] tensor would be misread."""
    return prefix.contiguous(), seq.contiguous()


def _on_device_of(t: torch.Tensor):
    """Triton launches on the current device: make it the tensors' one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _block(meta: dict, block: str) -> int:
    """The block size a grid axis runs over: ``meta[block]``, or with ``"BLOCK_MIN"`` the smaller of
    BLOCK_M and BLOCK_N."""
    return min(meta["BLOCK_M"], meta["BLOCK_N"]) if block == "BLOCK_MIN" else meta[block]


def _launch(which: str, block: str, L: int, H: int, tensors, seed, strided, scalars, meta):
    """Runs kernel ``which`` over every batch slice, one program per ``block`` (see :func:`_block`)
    of L; ``tensors`` are [B, ...] and sliced along the batch, ``seed`` (dropout's, or any tensor
    when there is none) is not, ``strided`` (among ``tensors``) pass their strides too, in order;
    each slice passes its first (batch, head), then ``scalars``."""
    kernel, fixed = _kernel(which)
    B = tensors[0].shape[0]
    strides = [x for t in strided for x in t.stride()]
    with _on_device_of(tensors[0]):
        for rows in _batch_slices(B, H):
            grid = (lambda meta_, n=rows.stop - rows.start: (triton.cdiv(L, _block(meta_, block)), n * H))
            # One slice (any batch under 65,536 / H rows) takes the tensors as they are: a view per
            # tensor per launch is host time the GPU may wait for.
            args = tensors if rows.stop - rows.start == B else [t[rows] for t in tensors]
            kernel[grid](*args, seed, *strides, rows.start * H, *scalars, **meta, **fixed)


def _dropout_args(dropout_p: float, seed, fallback: torch.Tensor):
    """(seed tensor, drop threshold, keep scale, DROPOUT) for the kernels."""
    if dropout_p == 0.0:
        return fallback, 0, 1.0, False
    return seed, dropout.threshold(dropout_p), dropout.keep_scale(dropout_p), True


def forward(q, k, v, prefix, seq, scale: float, dropout_p: float = 0.0, seed=None):
    """(out [B, H, L, D] in q's dtype, lse [B, H, L] fp32 log2 domain); ``dropout_p`` > 0 drops
    probabilities by the stream of ``seed`` (int64 [1] on q's device)."""
    B, H, L, D = q.shape
    prefix, seq = _contiguous_lengths(prefix, seq)
    out = torch.empty_like(q)
    lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    seed, threshold, keep_scale, drops = _dropout_args(dropout_p, seed, prefix)
    _launch("fwd", "BLOCK_M", L, H, (q, k, v, out, lse, prefix, seq), seed, (q, k, v, out),
            (H, L, scale * LOG2E, threshold, keep_scale, _bucket(L)),
            dict(HEAD_DIM=D, DROPOUT=drops, IEEE=q.dtype == torch.float32))
    return out, lse


# The fused backward (one launch, DELTA recomputed per visited query block) up to this many
# (batch, head, query, key) entries, B * H * L^2: 128 heads of L = 512. Such a layer's kernels take
# less GPU time than the host takes to launch them (an H200 runs the 128 x 512 x 512, d = 64 backward
# in ~80 µs, and a Triton launch costs tens of µs of Python), so a launch saved is time saved; past
# it the kernels dominate, and the split backward does no work twice.
FUSED_BACKWARD_MAX_ENTRIES = 128 * 512 * 512


def backward(do, q, k, v, out, lse, prefix, seq, scale: float, dropout_p: float = 0.0, seed=None):
    """(dq, dk, dv) in the inputs' dtypes, for the forward with the same ``dropout_p`` and ``seed``."""
    B, H, L, D = q.shape
    prefix, seq = _contiguous_lengths(prefix, seq)
    if _head_extent(do) > INT32_MAX:  # autograd's layout, not the caller's
        do = do.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    seed, threshold, keep_scale, drops = _dropout_args(dropout_p, seed, prefix)
    scalars = (H, L, scale, scale * LOG2E, threshold, keep_scale, _bucket(L))
    meta = dict(HEAD_DIM=D, DROPOUT=drops, IEEE=q.dtype == torch.float32)
    if B * H * L * L <= FUSED_BACKWARD_MAX_ENTRIES:
        # Programs cover both the query and the key blocks: the grid runs over the smaller block.
        _launch("bwd", "BLOCK_MIN", L, H, (q, k, v, out, do, dq, dk, dv, lse, prefix, seq), seed,
                (q, k, v, out, do, dq, dk, dv), scalars, meta)
        return dq, dk, dv
    delta = torch.empty((B, H, L), device=q.device, dtype=torch.float32)  # written by the dQ kernel
    _launch("dq", "BLOCK_M", L, H, (q, k, v, out, do, dq, lse, delta, prefix, seq), seed, (q, k, v, out, do, dq),
            scalars, meta)
    _launch("dkdv", "BLOCK_N", L, H, (q, k, v, do, dk, dv, lse, delta, prefix, seq), seed, (q, k, v, do, dk, dv),
            scalars, meta)
    return dq, dk, dv
