"""Public UniLM attention: argument checks, backend choice, the ``torch.library`` ops and autograd.

Three layers, as in FlashAttention's interface: the custom ops ``pyfastseq::unilm_attention_fwd`` /
``_bwd`` (so ``torch.compile`` sees one opaque node with a fake implementation), the
``UniLMAttention`` autograd.Function (the ops under ``torch.compile``, their implementations
eagerly), and :func:`unilm_attention`, which validates.

Backend, chosen per call:

* CUDA tensors run the Triton kernels.
* CPU tensors run the same Triton kernels under Triton's interpreter when ``TRITON_INTERPRET=1`` is
  set (before Triton is first imported) and Triton imports; otherwise the dense-mask PyTorch
  reference of :mod:`pyfastseq.attention.reference`. bfloat16 never runs in the interpreter (its
  ``tl.dot`` multiplies raw bf16 bits): CPU bf16 always takes the reference; nor does anything
  under Triton 3.6's interpreter with NumPy 2.4 or later, which fails on every kernel.
* ``PYFASTSEQ_ATTENTION_BACKEND=triton|torch`` forces one (``auto``, the default, does the above).

Triton is imported only when a call needs it, so ``import pyfastseq`` never requires it.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from typing import Optional, Sequence, Union

import torch

from .._validate import check_dense, finite_float
from . import dropout
from .reference import (
    check_lengths,
    unilm_attention_reference,
    unilm_attention_reference_backward,
    unilm_attention_reference_lse,
)

__all__ = ["unilm_attention", "UniLMAttention", "backend_for"]

HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LN2 = math.log(2.0)

Lengths = Union[torch.Tensor, Sequence[int]]


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _leading_ints(version: str, count: int) -> tuple:
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:count])


@functools.cache
def _interpreter_unusable() -> Optional[str]:
    """Why Triton's interpreter cannot run the kernels with the installed NumPy, or None: Triton 3.6's
    interpreter turns a loop bound, a one-element array, into an int, which NumPy 2.4 refuses, so every
    kernel fails (Triton 3.7 reads it as a scalar)."""
    import numpy
    import triton

    if _leading_ints(triton.__version__, 2) <= (3, 6) and _leading_ints(numpy.__version__, 2) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter cannot run with NumPy {numpy.__version__}; "
                "install triton>=3.7 or numpy<2.4")
    return None


def backend_for(device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """``"triton"`` or ``"torch"``: which implementation a call on ``device`` runs (see module doc)."""
    forced = os.environ.get("PYFASTSEQ_ATTENTION_BACKEND", "auto")
    if forced not in ("auto", "triton", "torch"):
        raise ValueError(f"PYFASTSEQ_ATTENTION_BACKEND must be auto, triton or torch, got {forced!r}")
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if forced == "triton":
        if not _triton_importable():
            raise RuntimeError("PYFASTSEQ_ATTENTION_BACKEND=triton but triton is not installed")
        if device.type == "cpu" and not interpreting:
            raise RuntimeError("PYFASTSEQ_ATTENTION_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1")
        if device.type == "cpu" and dtype == torch.bfloat16:
            raise RuntimeError("PYFASTSEQ_ATTENTION_BACKEND=triton: the Triton interpreter computes bfloat16 "
                               "dots wrongly; use float16/float32 on CPU or a GPU")
        if device.type == "cpu" and _interpreter_unusable():
            raise RuntimeError(f"PYFASTSEQ_ATTENTION_BACKEND=triton: {_interpreter_unusable()}")
        return "triton"
    if forced == "torch" or not _triton_importable():
        return "torch"
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu" and interpreting and dtype != torch.bfloat16 and not _interpreter_unusable():
        return "triton"
    return "torch"


# ---- custom ops ----------------------------------------------------------------------------------

def _laid_out_as(like: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in ``empty_like(like)``'s layout: the ops' outputs have the strides their fake
    implementations promise (those of q, k or v, as the Triton path allocates), whichever backend runs."""
    # Equal strides to a dense ``like`` are empty_like's; any other case gets a copy in its layout.
    return value if value.stride() == like.stride() else torch.empty_like(like).copy_(value)


def _check_seed(seed, q: torch.Tensor) -> None:
    """Dropout's seed, as the kernels read it: one int64 on q's device (checked without reading it)."""
    if not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() != 1:
        raise ValueError(f"dropout_p > 0 needs seed, one int64 tensor element, got {seed!r:.80}")
    if seed.device != q.device:
        raise ValueError(f"seed must be on q's device {q.device}, got {seed.device}")


def _forward(q, k, v, prefix_lens, seq_lens, scale, dropout_p=0.0, seed=None):
    """(out [B, H, L, D], lse [B, H, L] fp32 in the log2 domain); lengths int32 and the dropout seed
    (int64 [1], when ``dropout_p`` > 0) on q's device."""
    if dropout_p:
        _check_seed(seed, q)
    if q.numel() == 0:
        return torch.zeros_like(q), q.new_zeros(q.shape[:3], dtype=torch.float32)
    if backend_for(q.device, q.dtype) == "triton":
        from . import launch

        return launch.forward(q, k, v, prefix_lens, seq_lens, scale, dropout_p, seed)
    out = _laid_out_as(q, unilm_attention_reference(q, k, v, prefix_lens, seq_lens, scale, dropout_p, seed))
    return out, unilm_attention_reference_lse(q, k, prefix_lens, seq_lens, scale) / _LN2


def _backward(dout, q, k, v, out, lse, prefix_lens, seq_lens, scale, dropout_p=0.0, seed=None):
    """(dq, dk, dv) for the forward that produced ``out`` and ``lse``."""
    if q.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    if backend_for(q.device, q.dtype) == "triton":
        from . import launch

        return launch.backward(dout, q, k, v, out, lse, prefix_lens, seq_lens, scale, dropout_p, seed)
    dq, dk, dv = unilm_attention_reference_backward(dout, q, k, v, prefix_lens, seq_lens, scale, dropout_p, seed)
    return _laid_out_as(q, dq), _laid_out_as(k, dk), _laid_out_as(v, dv)


@torch.library.custom_op("pyfastseq::unilm_attention_fwd", mutates_args=())
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_lens: torch.Tensor,
         seq_lens: torch.Tensor, scale: float, dropout_p: float = 0.0,
         seed: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, prefix_lens, seq_lens, scale, dropout_p, seed)


@_fwd.register_fake
def _(q, k, v, prefix_lens, seq_lens, scale, dropout_p=0.0, seed=None):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("pyfastseq::unilm_attention_bwd", mutates_args=())
def _bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
         lse: torch.Tensor, prefix_lens: torch.Tensor, seq_lens: torch.Tensor, scale: float,
         dropout_p: float = 0.0,
         seed: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dout, q, k, v, out, lse, prefix_lens, seq_lens, scale, dropout_p, seed)


@_bwd.register_fake
def _(dout, q, k, v, out, lse, prefix_lens, seq_lens, scale, dropout_p=0.0, seed=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, prefix_lens, seq_lens, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, prefix_lens, seq_lens, seed)
    ctx.scale, ctx.dropout_p = scale, dropout_p
    ctx.mark_non_differentiable(lse)
    # lse never has a gradient: materialising one would allocate and zero-fill [B, H, L] per layer.
    ctx.set_materialize_grads(False)


def _grads(ctx, dout, backward):
    if dout is None:  # what used out handed back no gradient (a Function returning None for it)
        return (None,) * 8
    q, k, v, out, lse, prefix_lens, seq_lens, seed = ctx.saved_tensors
    with torch.no_grad():
        dq, dk, dv = backward(dout, q, k, v, out, lse, prefix_lens, seq_lens, ctx.scale, ctx.dropout_p, seed)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():  # create_graph=True
        dq, dk, dv = _FirstOrderOnly.apply(q, k, v, dout, dq, dk, dv)
    return dq, dk, dv, None, None, None, None, None


class _FirstOrderOnly(torch.autograd.Function):
    """``(q, k, v, dout, dq, dk, dv) -> (dq, dk, dv)``, whose own backward raises: the backward is not
    itself differentiable, so a double backward (``create_graph=True``, a gradient penalty) must fail
    rather than drop the second-order terms. ``once_differentiable`` raises only when ``dout`` needs a
    gradient, not when the terms run through q, k and v alone."""

    @staticmethod
    def forward(ctx, q, k, v, dout, dq, dk, dv):
        return dq, dk, dv

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("unilm_attention has no double backward: its gradients cannot be differentiated "
                           "(create_graph=True); those of pyfastseq.attention.unilm_attention_reference, "
                           "in plain PyTorch, can be")


_fwd.register_autograd(lambda ctx, dout, _dlse: _grads(ctx, dout, _bwd), setup_context=_setup_context)


class UniLMAttention(torch.autograd.Function):
    """``UniLMAttention.apply(q, k, v, prefix_lens, seq_lens, scale, dropout_p=0.0, seed=None)``
    ``-> (out, lse)``.

    Takes already-validated arguments: int32 length tensors on q's device, a float scale, and with
    ``dropout_p`` > 0 an int64 ``[1]`` seed on q's device (the backward redraws the forward's choice
    from it). Under ``torch.compile`` it runs the custom ops (one opaque node each); eagerly it calls
    their implementations directly, since the ops' dispatch and autograd wrapper cost several times
    the host time of the kernels' launches, which a stack of small attention layers waits on.
    """

    # forward(ctx, ...) rather than a separate setup_context: Function.apply binds a signature with
    # inspect on every call when there is one.
    @staticmethod
    def forward(ctx, q, k, v, prefix_lens, seq_lens, scale, dropout_p=0.0, seed=None):
        inputs = (q, k, v, prefix_lens, seq_lens, scale, dropout_p, seed)
        output = (_fwd if torch.compiler.is_compiling() else _forward)(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dout, _dlse):
        return _grads(ctx, dout, _bwd if torch.compiler.is_compiling() else _backward)


# ---- public function -----------------------------------------------------------------------------

def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_dense(t, name)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, L, D], got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")


def _finite(scale) -> bool:
    if torch.compiler.is_compiling():  # a SymFloat under dynamic=True: comparisons trace, math.isfinite does not
        return -math.inf < scale < math.inf
    return finite_float(scale) is not None


def _as_lengths(values, name: str, B: int, L: int, device: torch.device) -> torch.Tensor:
    """``values`` as int32 [B] on ``device``, checked by :func:`check_lengths`.

    CPU lengths for a GPU go through pinned memory: a copy from pageable memory would first
    synchronise the stream (the host waiting for every layer queued before), where a pinned one
    queues behind that work.
    """
    t = check_lengths(values, name, L, B, L_name="q.shape[2]")
    if t.device.type != "cpu" and t.device != device:
        raise ValueError(f"{name} must be on the CPU or on q's device {device}, got {t.device}")
    t = t.to(dtype=torch.int32)
    if t.device != device and device.type == "cuda" and not torch.compiler.is_compiling():
        t = t.pin_memory()
    return t.to(device=device, non_blocking=True)


def unilm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_lens: Lengths,
                    seq_lens: Optional[Lengths] = None, scale: Optional[float] = None,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """UniLM (prefix-LM) attention over ``[B, H, L, D]`` tensors, differentiable in q, k, v.

    Row ``b`` holds ``seq_lens[b]`` real tokens (default ``L``), the first ``prefix_lens[b]`` the
    source: query ``i`` sees key ``j`` iff ``i, j < seq_lens[b]`` and (``j < prefix_lens[b]`` or
    ``prefix_lens[b] <= j <= i``); padded query rows output zeros (see
    :func:`pyfastseq.unilm_mask` for the picture)::

        out = softmax(q @ k^T * scale, masked) @ v        scale defaults to D ** -0.5

    ``q, k, v``: same shape, dtype (fp16/bf16/fp32) and device; any L and any strides; head dim 32,
    64 or 128 on the Triton kernels, any on the PyTorch fallback. ``prefix_lens``/``seq_lens``:
    ``[B]`` integers in ``[0, L]`` on the CPU or on q's device (O(B) metadata: no mask tensor, and as
    tensors no recompilation when they change; under ``torch.compile`` a Python sequence's values
    are constants of the graph, as Dynamo treats Python ints, so pass tensors there); a prefix
    longer than its row makes the whole row source. CUDA
    runs Triton kernels; CPU runs them under ``TRITON_INTERPRET=1``, else a dense-mask PyTorch
    fallback (module doc).

    ``dropout_p`` in ``[0, 1)`` drops attention probabilities, as
    ``scaled_dot_product_attention(dropout_p=...)`` does (apply it in training only): survivors are
    scaled so the expectation is unchanged, and the backward regenerates the same choice from a seed
    drawn from q's device generator (``torch.manual_seed`` makes calls reproducible). The choice is
    the same on every backend (:mod:`pyfastseq.attention.dropout`).
    """
    _check_qkv(q, k, v)
    B, _, L, D = q.shape
    if backend_for(q.device, q.dtype) == "triton":
        if D not in HEAD_DIMS:
            raise ValueError(f"q's head dim must be one of {HEAD_DIMS} on the Triton kernels, got {D} "
                             "(the PyTorch fallback, PYFASTSEQ_ATTENTION_BACKEND=torch, takes any)")
        from .launch import check_launch_limits

        check_launch_limits(q, k, v)
    prefix = _as_lengths(prefix_lens, "prefix_lens", B, L, q.device)
    seq = _as_lengths(torch.full((B,), L) if seq_lens is None else seq_lens, "seq_lens", B, L, q.device)
    if scale is None:
        scale = max(D, 1) ** -0.5  # D = 0 has an empty output, whatever the scale
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    elif not _finite(scale):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    scale = float(scale)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must lie in [0, 1), got {dropout_p!r}")
    # Compiled, the op itself (its autograd registered): Dynamo cannot trace an autograd.Function
    # handed one tensor twice, as self-attention's q = k = v is.
    attention = _fwd if torch.compiler.is_compiling() else UniLMAttention.apply
    if dropout.threshold(dropout_p) == 0:  # under 2**-17: nothing is dropped
        return attention(q, k, v, prefix, seq, float(scale))[0]
    seed = dropout.draw_seed(q.device)
    return attention(q, k, v, prefix, seq, float(scale), float(dropout_p), seed)[0]
