"""UniLM attention as a transformers attention implementation (``attn_implementation="unilm"``).

transformers hands every keyword argument of ``model(...)`` down to the attention function, so a
stock BERT-style model trains as UniLM with::

    register()                                   # once; pyfastseq.UniLM does it for you
    model = BertModel(config); model.set_attn_implementation("unilm")
    model(input_ids, token_type_ids=segments, prefix_lens=prefix, seq_lens=lengths)

``prefix_lens``/``seq_lens`` are ``[B]`` integers (:func:`lengths_from_segments` derives them from
UniLM's segment ids). When the queries are fewer than the keys (incremental decoding with a KV
cache), the new queries are target tokens at the end of the sequence: they see every earlier key the
4-D boolean ``attention_mask`` allows ([B, 1, Lq, Lk], True = visible), and each other causally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .op import unilm_attention

__all__ = ["NAME", "register", "unilm_attention_forward", "lengths_from_segments"]

NAME = "unilm"


def lengths_from_segments(token_type_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """(prefix_lens, seq_lens) from UniLM segment ids (0 = source, 1 = target) and a padding mask.

    Each row must be laid out source, target, padding; the prefix is the count of real segment-0
    tokens and the length the count of real tokens.
    """
    if token_type_ids.dim() != 2:
        raise ValueError(f"token_type_ids must be 2-D [B, L], got shape {tuple(token_type_ids.shape)}")
    real = torch.ones_like(token_type_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if real.shape != token_type_ids.shape:
        raise ValueError(f"attention_mask must have token_type_ids' shape {tuple(token_type_ids.shape)}, "
                         f"got {tuple(real.shape)}")
    prefix = (real & (token_type_ids == 0)).sum(-1)
    return prefix, real.sum(-1)


def unilm_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            prefix_lens=None, seq_lens=None, **kwargs):
    """transformers attention-function signature: [B, H, Lq, D] in, ([B, Lq, H, D], None) out.
    ``dropout`` (the model's attention-probability dropout) applies in training only."""
    dropout = dropout if module.training else 0.0
    Lq, Lk = query.shape[-2], key.shape[-2]
    if Lq == Lk:
        if prefix_lens is None:
            raise ValueError("attn_implementation='unilm' needs prefix_lens= (and seq_lens= for padded "
                             "batches) in the model call, and a model whose forward hands its keyword "
                             "arguments down to its attention layers; see pyfastseq.attention.hf")
        out = unilm_attention(query, key, value, prefix_lens, seq_lens, scale=scaling, dropout_p=dropout)
    else:
        out = _attend_cached(query, key, value, attention_mask, scaling, dropout)
    return out.transpose(1, 2).contiguous(), None


def _attend_cached(query, key, value, attention_mask, scaling, dropout):
    Lq, Lk = query.shape[-2], key.shape[-2]
    if Lq > Lk:
        raise ValueError(f"more queries ({Lq}) than keys ({Lk})")
    pos = torch.arange(Lk, device=query.device)
    visible = pos[None, :] <= (Lk - Lq + torch.arange(Lq, device=query.device))[:, None]  # [Lq, Lk]
    if attention_mask is not None:
        if attention_mask.dtype != torch.bool or attention_mask.dim() != 4:
            raise ValueError("incremental UniLM attention takes a 4-D boolean attention_mask [B, 1, Lq, Lk]")
        visible = visible & attention_mask
    return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, dropout_p=dropout, scale=scaling)


def register() -> None:
    """Make ``attn_implementation="unilm"`` available to every transformers model (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, unilm_attention_forward)
