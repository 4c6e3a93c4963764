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

import torch

__all__ = ["unilm_mask", "unilm_attention_probs", "unilm_attention_reference", "unilm_attention_reference_lse",
           "unilm_attention_reference_backward"]


def unilm_mask(prefix_lens, seq_lens, L: int) -> torch.Tensor:
    """Boolean ``[B, L, L]`` mask, True where query ``i`` (dim 1) may attend to key ``j`` (dim 2).

    ``prefix_lens``/``seq_lens``: ``[B]`` integers (``seq_lens=None`` means every row is ``L`` long).
    The mask lives on ``prefix_lens``' device.
    """
    prefix = torch.as_tensor(prefix_lens).long().reshape(-1)  # [B]
    seq = prefix.new_full(prefix.shape, L) if seq_lens is None else torch.as_tensor(seq_lens, device=prefix.device).long().reshape(-1)
    if seq.shape != prefix.shape:
        raise ValueError(f"seq_lens must have shape {tuple(prefix.shape)} like prefix_lens, got {tuple(seq.shape)}")
    pos = torch.arange(L, device=prefix.device)
    i = pos.view(1, L, 1)  # query
    j = pos.view(1, 1, L)  # key
    s = prefix.view(-1, 1, 1)
    n = seq.view(-1, 1, 1)
    return (i < n) & (j < n) & ((j < s) | (j <= i))  # [B, L, L]


def _masked_scores(q, k, prefix_lens, seq_lens, scale):
    L = q.shape[-2]
    mask = unilm_mask(prefix_lens.to(q.device), None if seq_lens is None else seq_lens.to(q.device), L)[:, None]  # [B, 1, L, L]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, L, L]
    return scores.masked_fill(~mask, float("-inf")), mask


def unilm_attention_probs(q, k, prefix_lens, seq_lens=None, scale=None) -> torch.Tensor:
    """Attention probabilities ``[B, H, L, L]``; rows of padded queries (no visible key) are zeros."""
    scores, mask = _masked_scores(q, k, prefix_lens, seq_lens, scale)
    has_key = mask.any(-1, keepdim=True)  # [B, 1, L, 1]
    # A row with no visible key would softmax to NaN (and NaN gradients): give it zeros instead.
    return torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1).masked_fill(~has_key, 0.0)


def unilm_attention_reference(q, k, v, prefix_lens, seq_lens=None, scale=None) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` over ``[B, H, L, D]`` in the inputs' dtype, with autograd.

    Padded query rows (no visible key) output zeros and pass no gradient. ``scale`` defaults to
    ``D ** -0.5``.
    """
    return torch.matmul(unilm_attention_probs(q, k, prefix_lens, seq_lens, scale), v)


def unilm_attention_reference_backward(dout, q, k, v, prefix_lens, seq_lens=None, scale=None):
    """(dq, dk, dv) of :func:`unilm_attention_reference` written out, for code that runs with autograd
    off (a ``torch.library`` op's implementation). Computed in fp32 (as the kernels accumulate) and
    returned in the inputs' dtype."""
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dout, q, k, v = (t.float() for t in (dout, q, k, v))
    probs = unilm_attention_probs(q, k, prefix_lens, seq_lens, scale)  # [B, H, L, L]
    dv = torch.matmul(probs.transpose(-1, -2), dout)
    dprobs = torch.matmul(dout, v.transpose(-1, -2))
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdim=True))  # softmax backward
    dq = torch.matmul(dscores, k) * scale
    dk = torch.matmul(dscores.transpose(-1, -2), q) * scale
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)


def unilm_attention_reference_lse(q, k, prefix_lens, seq_lens=None, scale=None) -> torch.Tensor:
    """Natural-log ``logsumexp`` of each query's visible scores, ``[B, H, L]`` fp32 (0 for padded rows)."""
    scores, mask = _masked_scores(q.float(), k.float(), prefix_lens, seq_lens, scale)
    lse = torch.logsumexp(scores, dim=-1)
    return torch.where(mask.any(-1), lse, torch.zeros_like(lse))
