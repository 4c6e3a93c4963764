"""The UniLM mask and a dense-mask attention in plain PyTorch: the readable specification, the CPU
fallback of :func:`pyfastseq.unilm_attention`, and the oracle its tests compare the kernels with.

Row ``b`` holds ``seq_lens[b]`` real tokens, the first ``prefix_lens[b]`` of them the source::

    key j ->      s o u r c e | t a r g e t | pad
    query i   s   1 1 1 1 1 1   0 0 0 0 0 0   0 0
              ...
              t   1 1 1 1 1 1   1 0 0 0 0 0   0 0     (causal over the target)
              ...   1 1 1 1 1   1 1 1 1 1 1   0 0
              pad   0 . . . . . . . . . . 0   0 0     (padded queries see nothing, output zeros)

Query ``i`` may see key ``j`` iff ``i < L_b``, ``j < L_b`` and (``j < s`` or ``s <= j <= i``).
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from .._limits import check_memory
from .._validate import INT32_MAX, check_dense, check_integer_dtype
from . import dropout

__all__ = ["unilm_mask", "unilm_attention_probs", "unilm_attention_reference", "unilm_attention_reference_lse",
           "unilm_attention_reference_backward"]


_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def check_lengths(values, name: str, L: int, B: Optional[int] = None, L_name: str = "L") -> torch.Tensor:
    """``values`` (a tensor, array or sequence of ``[B]`` integers; any ``B`` when None) as an integer
    tensor on its own device, each in ``[0, L]`` (``L_name`` says what ``L`` is in messages).

    Python sequences and arrays are always range-checked; tensors on a GPU, and any tensor under
    ``torch.compile``, are not read back (that would synchronise the stream, or break the graph): the
    kernels clamp them into [0, L], and the mask's formula treats them as clamped too.
    """
    if isinstance(values, torch.Tensor):
        check_dense(values, name)
        t = values
    else:
        try:
            t = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a [B] tensor or sequence of integers, got {values!r:.60}") from None
        if t.numel() == 0:
            t = t.long()  # an empty list has no dtype of its own (torch makes it float32)
    check_integer_dtype(t.dtype, name)
    if B is None and t.dim() != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {tuple(t.shape)}")
    if B is not None and t.shape != (B,):
        raise ValueError(f"{name} must have shape ({B},) (one entry per batch row), got {tuple(t.shape)}")
    if t.dtype in _WIDE_UNSIGNED:  # few ops take them (min, max, comparisons): as int64 (2**63 and up wrap)
        t = t.to(torch.int64)
    if not t.numel():
        return t
    if not isinstance(values, torch.Tensor):
        items = [int(x) for x in values]  # host values: readable under torch.compile as well
        lo, hi = min(items), max(items)
    elif t.device.type == "cpu" and not torch.compiler.is_compiling():
        lo, hi = int(t.min()), int(t.max())
    else:  # int64 clamped here: the kernels' int32 copy would wrap 2**32 + 3 to 3
        return t.clamp(0, L) if t.dtype == torch.int64 else t
    if lo < 0 or hi > L:
        raise ValueError(f"{name} must lie in [0, {L_name}] = [0, {L}], got {lo if lo < 0 else hi}")
    return t


def unilm_mask(prefix_lens, seq_lens, L: int) -> torch.Tensor:
    """Boolean ``[B, L, L]`` mask, True where query ``i`` (dim 1) may attend to key ``j`` (dim 2).

    ``prefix_lens``/``seq_lens``: ``[B]`` integers in ``[0, L]`` (``seq_lens=None`` means every row is
    ``L`` long); a prefix longer than its row makes the whole row source, as in
    :func:`pyfastseq.unilm_attention`. The mask lives on ``prefix_lens``' device; lengths on a GPU are
    not read back to be range-checked (the formula clamps them into ``[0, L]``). Its ``B * L * L``
    bytes count against :func:`pyfastseq.set_memory_limit`.
    """
    if isinstance(L, bool) or not isinstance(L, numbers.Integral):
        raise TypeError(f"L must be an int, got {type(L).__name__}")
    if not 0 <= L <= INT32_MAX:
        raise ValueError(f"L must lie in [0, 2**31 - 1], got {L}")
    L = int(L)
    prefix = check_lengths(prefix_lens, "prefix_lens", L)
    seq = None
    if seq_lens is not None:
        seq = check_lengths(seq_lens, "seq_lens", L, prefix.shape[0])
        if seq.is_meta and not prefix.is_meta:
            raise ValueError("seq_lens is on the meta device, which holds no values")
        seq = seq.to(prefix.device)
    check_memory(prefix.shape[0] * L * L, f"unilm_mask of shape ({prefix.shape[0]}, {L}, {L})")
    return _mask(prefix, seq, L)


def _mask(prefix: torch.Tensor, seq: Optional[torch.Tensor], L: int) -> torch.Tensor:
    """:func:`unilm_mask` of checked ``[B]`` lengths on one device."""
    pos = torch.arange(L, device=prefix.device)
    i = pos.view(1, L, 1)  # query
    j = pos.view(1, 1, L)  # key
    s = prefix.view(-1, 1, 1)
    # [B, L, L]: the one full-size tensor, allocated first (an oversized one fails before any work);
    # the rest narrow it in place.
    mask = torch.empty((prefix.shape[0], L, L), dtype=torch.bool, device=prefix.device)
    torch.logical_or(j < s, j <= i, out=mask)
    if seq is not None:
        n = seq.view(-1, 1, 1)
        mask &= i < n
        mask &= j < n
    return mask


def _masked_scores(q, k, prefix_lens, seq_lens, scale):
    B, H, L, _ = q.shape
    # Scores in fp32 at least, as the kernels accumulate them: a half-precision q k^T overflows at 65504.
    score_dtype = torch.promote_types(q.dtype, torch.float32)
    # The mask, and about three [B, H, L, L] tensors alive at once: scores, masked scores, softmax.
    check_memory(B * L * L + 3 * B * H * L * L * score_dtype.itemsize,
                 f"the PyTorch UniLM attention on q of shape {tuple(q.shape)}")
    mask = _mask(prefix_lens.to(q.device), None if seq_lens is None else seq_lens.to(q.device), L)[:, None]  # [B, 1, L, L]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k = _real_rows(q, seq_lens), _real_rows(k, seq_lens)  # else their gradients pick up padding's NaN
    scores = torch.matmul(q.to(score_dtype), k.to(score_dtype).transpose(-1, -2)) * scale  # [B, H, L, L]
    return scores.masked_fill(~mask, float("-inf")), mask


def unilm_attention_probs(q, k, prefix_lens, seq_lens=None, scale=None) -> torch.Tensor:
    """Attention probabilities ``[B, H, L, L]`` in q's dtype; rows of padded queries (no visible key)
    are zeros."""
    scores, mask = _masked_scores(q, k, prefix_lens, seq_lens, scale)
    has_key = mask.any(-1, keepdim=True)  # [B, 1, L, 1]
    # A row with no visible key would softmax to NaN (and NaN gradients): give it zeros instead.
    return torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1).masked_fill(~has_key, 0.0).to(q.dtype)


def _real_rows(t: torch.Tensor, seq_lens) -> torch.Tensor:
    """``t`` [B, H, L, D] with the rows at and past each ``seq_lens[b]`` zeroed: padding meets only
    zero probabilities, but 0 * NaN would still be NaN. The kernels never load those rows."""
    if seq_lens is None:
        return t
    L = t.shape[-2]
    padded = torch.arange(L, device=t.device) >= seq_lens.to(t.device).view(-1, 1)  # [B, L]
    return t.masked_fill(padded.view(-1, 1, L, 1), 0.0)


def _dropped(q, dropout_p: float, seed) -> Optional[torch.Tensor]:
    """Boolean ``[B, H, L, L]``, True where dropout drops an entry; None without dropout."""
    if not dropout_p:
        return None
    B, H, L, _ = q.shape
    return ~dropout.dropout_keep_mask(seed, B, H, L, dropout_p, device=q.device)


def unilm_attention_reference(q, k, v, prefix_lens, seq_lens=None, scale=None, dropout_p=0.0,
                              seed=None) -> torch.Tensor:
    """``dropout(softmax(q k^T * scale + mask)) v`` over ``[B, H, L, D]`` in the inputs' dtype, with
    autograd.

    Padded query rows (no visible key) output zeros and pass no gradient. ``scale`` defaults to
    ``D ** -0.5``. ``dropout_p`` > 0 drops the probabilities the kernels drop for the int64 ``seed``
    (:mod:`pyfastseq.attention.dropout`) and scales the output, as the kernels do, to keep the
    expectation.
    """
    probs = unilm_attention_probs(q, k, prefix_lens, seq_lens, scale)
    dropped = _dropped(q, dropout_p, seed)
    v = _real_rows(v, seq_lens)
    if dropped is None:
        out = torch.matmul(probs, v)
    else:
        out = torch.matmul(probs.masked_fill(dropped, 0.0), v) * dropout.keep_scale(dropout_p)
    return _real_rows(out, seq_lens)  # zeros already; this stops padded rows' gradients


def unilm_attention_reference_backward(dout, q, k, v, prefix_lens, seq_lens=None, scale=None, dropout_p=0.0,
                                       seed=None):
    """(dq, dk, dv) of :func:`unilm_attention_reference` written out, for code that runs with autograd
    off (a ``torch.library`` op's implementation). Computed in fp32 (as the kernels accumulate) and
    returned in the inputs' dtype."""
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dout, q, k, v = (_real_rows(t.float(), seq_lens) for t in (dout, q, k, v))
    probs = unilm_attention_probs(q, k, prefix_lens, seq_lens, scale)  # [B, H, L, L]
    dropped = _dropped(q, dropout_p, seed)
    if dropped is None:
        dv = torch.matmul(probs.transpose(-1, -2), dout)
        dprobs = torch.matmul(dout, v.transpose(-1, -2))
    else:
        keep_scale = dropout.keep_scale(dropout_p)
        dv = torch.matmul(probs.masked_fill(dropped, 0.0).transpose(-1, -2), dout) * keep_scale
        dprobs = torch.matmul(dout, v.transpose(-1, -2)).masked_fill(dropped, 0.0) * keep_scale
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdim=True))  # softmax backward
    dq = torch.matmul(dscores, k) * scale
    dk = torch.matmul(dscores.transpose(-1, -2), q) * scale
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)


def unilm_attention_reference_lse(q, k, prefix_lens, seq_lens=None, scale=None) -> torch.Tensor:
    """Natural-log ``logsumexp`` of each query's visible scores, ``[B, H, L]`` fp32 (0 for padded rows)."""
    scores, mask = _masked_scores(q.float(), k.float(), prefix_lens, seq_lens, scale)
    lse = torch.logsumexp(scores, dim=-1)
    return torch.where(mask.any(-1), lse, torch.zeros_like(lse))
