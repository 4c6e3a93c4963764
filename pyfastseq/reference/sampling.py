"""The distribution :class:`pyfastseq.Sampler` draws from, in plain PyTorch (the seed's order:
temperature, top-k, then top-p on the top-k-renormalised distribution)."""

from __future__ import annotations

import torch

TOP_P_SLACK = 1e-6  # as the native kernel: probabilities handed in as logits reach p up to rounding


def sampling_probs(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
    """[N, V] float64 probabilities of each token being drawn from ``[N, V]`` logits.

    ``allowed`` ([N, V] bool, optional) restricts each row first (a trie node's children).
    """
    x = logits.double()  # [N, V]
    if allowed is not None:
        x = x.masked_fill(~allowed, float("-inf"))
    # Best first; top-k keeps every logit equal to the k-th as well (transformers' TopKLogitsWarper).
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices  # [N, V]
    ranked = x.gather(-1, order)  # [N, V] best first
    keep = torch.isfinite(ranked)  # [N, V]
    if 0 < top_k < x.shape[-1]:
        keep &= ranked >= ranked[:, top_k - 1:top_k]
    probs = torch.softmax((ranked / temperature).masked_fill(~keep, float("-inf")), dim=-1)  # [N, V]
    if top_p < 1.0:
        before = probs.cumsum(-1) - probs  # [N, V] mass strictly before each rank
        # The shortest non-empty prefix reaching p: the best rank, and those whose predecessors fall short.
        keep &= (before < top_p - TOP_P_SLACK) | (torch.arange(x.shape[-1], device=x.device) == 0)
        probs = probs.masked_fill(~keep, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, order, probs)
