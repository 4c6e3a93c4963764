"""UniLM attention as a transformers attention implementation (``attn_implementation="unilm"``).

transformers hands every keyword argument of ``model(...)`` down to the attention function, so a
stock BERT-style model trains as UniLM with::

    register()                                   # once; pyfastseq.UniLM does it for you
    model = BertModel(config); model.set_attn_implementation("unilm")
    model(input_ids, token_type_ids=segments, prefix_lens=prefix, seq_lens=lengths)

``prefix_lens``/``seq_lens`` are ``[B]`` integers (:func:`lengths_from_segments` derives them from
UniLM's segment ids). A 2-D padding ``attention_mask`` ([B, L], 1 = real token) may stand in for
``seq_lens`` when each row's padding is at its end (checked, at the cost of a device sync per layer:
pass ``seq_lens`` to avoid it); given both, ``seq_lens`` rules. When the queries are fewer than the
keys (incremental decoding with a KV cache), the new queries are target tokens at the end of the
sequence: they see every earlier key the boolean ``attention_mask`` allows ([B, Lk] padding, or
[B, 1, Lq, Lk] with True = visible), and each other causally.
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
    if not isinstance(token_type_ids, torch.Tensor):
        raise TypeError(f"token_type_ids must be a torch.Tensor, got {type(token_type_ids).__name__}")
    if token_type_ids.dim() != 2:
        raise ValueError(f"token_type_ids must be 2-D [B, L], got shape {tuple(token_type_ids.shape)}")
    if token_type_ids.dtype.is_floating_point or token_type_ids.dtype.is_complex:
        raise TypeError(f"token_type_ids must hold integers, got {token_type_ids.dtype}")
    if attention_mask is None:
        real = torch.ones_like(token_type_ids, dtype=torch.bool)
    else:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if attention_mask.shape != token_type_ids.shape:
            raise ValueError(f"attention_mask must have token_type_ids' shape {tuple(token_type_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        if not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError("attention_mask must hold 0 (padding) and 1 (real token) only")
        real = attention_mask.to(device=token_type_ids.device, dtype=torch.bool)
    if not ((token_type_ids == 0) | (token_type_ids == 1) | ~real).all():
        raise ValueError("token_type_ids must hold 0 (source) and 1 (target) only")
    prefix, lengths = (real & (token_type_ids == 0)).sum(-1), real.sum(-1)
    pos = torch.arange(token_type_ids.shape[1], device=token_type_ids.device)
    laid_out = (real == (pos < lengths[:, None])) & ((token_type_ids == 0) == (pos < prefix[:, None])) | ~real
    if not laid_out.all():
        b = int((~laid_out).any(-1).nonzero()[0, 0])
        raise ValueError(f"row {b} is not laid out source (segment 0), target (segment 1), then padding")
    return prefix, lengths


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
        if seq_lens is None and attention_mask is not None:
            seq_lens = _lengths_of_padding(attention_mask, Lk)
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


def _lengths_of_padding(attention_mask: torch.Tensor, L: int) -> torch.Tensor:
    """seq_lens from a key-padding mask ([B, 1, 1, L], from :func:`_padding_mask`), whose padding
    must end each row: UniLM's queries past a row's length are padding too."""
    if attention_mask.dtype != torch.bool or attention_mask.shape[1:] != (1, 1, L):
        raise ValueError(f"attn_implementation='unilm' takes a 2-D padding attention_mask [B, {L}]; pass "
                         "prefix_lens= and seq_lens= for anything else")
    real = attention_mask[:, 0, 0]
    lengths = real.sum(-1)
    if not torch.equal(real, torch.arange(L, device=real.device) < lengths[:, None]):
        raise ValueError("attention_mask pads a row other than at its end: UniLM rows are source, target, "
                         "then padding (pass seq_lens= with such a layout of your own)")
    return lengths


def _padding_mask(batch_size, q_length, kv_length, kv_offset=0, attention_mask=None, **kwargs):
    """transformers mask-interface function: the 2-D padding mask as a [B, 1, 1, Lk] view, which the
    attention function reads (the UniLM pattern itself needs no mask), or None."""
    if attention_mask is None:
        return None
    mask = attention_mask[:, kv_offset:kv_offset + kv_length]
    if mask.shape != (batch_size, kv_length):
        raise ValueError(f"attention_mask must be [{batch_size}, {kv_offset + kv_length}] (batch, keys), "
                         f"got {tuple(attention_mask.shape)}")
    return mask.bool()[:, None, None, :]


def register() -> None:
    """Make ``attn_implementation="unilm"`` available to every transformers model (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, unilm_attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:  # an older transformers, without masking_utils, hands its own 4-D mask down
        return
    # Without a mask function of its own, transformers would drop a 2-D padding mask on the way in.
    AttentionMaskInterface.register(NAME, _padding_mask)
