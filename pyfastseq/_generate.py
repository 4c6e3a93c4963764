"""The step function that drives a transformers-style model for ``search(step_fn, batch_size)``.

The prompt (decoder-only) or source (encoder-decoder) runs once; afterwards each call feeds one
token per row against the KV cache reordered by ``beam_idx``, so a step costs O(1) tokens
(never the seed-003 trap of re-running the whole sequence).
"""

from __future__ import annotations

import copy
import inspect
import numbers
from typing import Any

import torch

from ._hf_cache import cache_kwarg, cache_of
from ._validate import check_holds_values, check_integer_dtype


def model_step_fn(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, num_beams: int,
                  model_kwargs: dict[str, Any]):
    config = getattr(model, "config", None)
    if config is None or not callable(model):
        raise TypeError("model must be a transformers-style model with a .config and a forward call")
    vocab = _vocab_size(model)
    _check_input_ids(input_ids, vocab)
    device = _device_of(model, input_ids)
    input_ids = input_ids.to(device, torch.long)  # embeddings take int32 or int64 ids only
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    _check_model_kwargs(model, model_kwargs, encoder_decoder)
    if attention_mask is None:
        attention_mask = _inferred_attention_mask(model, input_ids)
    else:
        _check_attention_mask(attention_mask, input_ids)
    attention_mask = attention_mask.to(device)
    if encoder_decoder:
        return _EncoderDecoderStep(model, input_ids, attention_mask, num_beams, model_kwargs, device, vocab)
    return _DecoderOnlyStep(model, input_ids, attention_mask, num_beams, model_kwargs, device)


def _inferred_attention_mask(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """transformers' mask where none is given: 0 at the pad token where it occurs in ``input_ids`` and is
    not an eos token (left-padded prompts), else all ones."""
    pad, eos = (getattr(getattr(model, "generation_config", None), name, None) for name in ("pad_token_id", "eos_token_id"))
    if pad is None:
        pad = getattr(model.config, "pad_token_id", None)
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    if isinstance(pad, numbers.Integral) and pad not in eos and bool((input_ids == pad).any()):
        return (input_ids != pad).long()
    return torch.ones_like(input_ids)


_SET_BY_GENERATE = frozenset({"position_ids", "cache_position", "use_cache", "cache", "past_key_values", "cache_params"})

# transformers drops the attention mask on these models' cached steps (prepare_inputs_for_generation):
# their state-space layers would otherwise scale a one-token step by the whole mask.
_NO_MASK_ON_CACHED_STEPS = frozenset({"mamba", "falcon_mamba", "mamba2"})


def _check_model_kwargs(model: Any, kwargs: dict[str, Any], encoder_decoder: bool) -> None:
    """Keyword arguments must be named by the forward they go to (the encoder's for an encoder-decoder),
    or be transformers' model-agnostic ones, as transformers' generate checks: a typo is an error."""
    forward = model.get_encoder().forward if encoder_decoder else model.forward
    named = set(inspect.signature(forward).parameters) | {"decoder_start_token_id"}
    try:
        from transformers.utils import TransformersKwargs

        named |= set(TransformersKwargs.__optional_keys__)
    except ImportError:
        pass
    reserved = sorted(k for k, v in kwargs.items() if v is not None and k in _SET_BY_GENERATE)
    if reserved:
        raise ValueError(f"model_kwargs {reserved} are set by generate() itself: positions follow attention_mask, "
                         f"and the cache is the one generate() reorders")
    unused = sorted(k for k, v in kwargs.items() if v is not None and k not in named)
    if unused:
        raise ValueError(f"model_kwargs {unused} are not arguments of {type(model).__name__}'s "
                         f"{'encoder' if encoder_decoder else 'forward'} (check for typos)")


def _vocab_size(model: Any) -> int | None:
    """Rows of the model's input embedding (else ``config.vocab_size``; None when neither says)."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError, NotImplementedError):
        size = getattr(model.config, "vocab_size", None)
        return size if isinstance(size, int) else None


def _check_input_ids(input_ids: Any, vocab: int | None) -> None:
    """A 2-D integer tensor with a column at least, its ids in ``[0, vocab)`` (read back once)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a 2-D [batch, length] tensor of token ids")
    check_integer_dtype(input_ids.dtype, "input_ids", "integer token ids")
    check_holds_values(input_ids, "input_ids")
    if input_ids.shape[1] == 0 and input_ids.shape[0]:
        raise ValueError("input_ids must have at least one column: the prompt (or source) the model starts from")
    if input_ids.numel():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or vocab is not None and hi >= vocab:
            raise ValueError(f"input_ids must lie in [0, {vocab}) (the model's vocabulary), got {lo if lo < 0 else hi}")


def _check_attention_mask(attention_mask: Any, input_ids: torch.Tensor) -> None:
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor or None, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    check_holds_values(attention_mask, "attention_mask")
    if attention_mask.dtype.is_complex or not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")


def _device_of(model: Any, input_ids: torch.Tensor) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return input_ids.device


def _cache_of(model: Any, output: Any) -> Any:
    cache = cache_of(output)
    if cache is None:
        raise TypeError(f"{type(model).__name__} returned no cache that generate() can reorder: generate() feeds "
                        f"one token a step against the model's cache, reordered as the beams move")
    return cache


def _reorder(model: Any, cache: Any, beam_idx: torch.Tensor) -> Any:
    """Reorder (or, with repeated indices, expand) a KV cache along the batch dimension."""
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(beam_idx)
        return cache
    if hasattr(model, "_reorder_cache"):
        return model._reorder_cache(cache, beam_idx)
    raise TypeError(f"cannot reorder the KV cache of {type(model).__name__} ({type(cache).__name__})")


class _ModelStep:
    """What both model steps share: the cache, the attention mask, and forking them."""

    def fork(self, index: torch.Tensor) -> "_ModelStep":
        """A copy whose row ``i`` continues row ``index[i]``, with its own cache; ``self`` is unchanged."""
        if self.cache is None:
            raise ValueError("a step function can be forked only after its first call")
        index = index.to(self.device)
        fork = copy.copy(self)
        fork.cache = _reorder(self.model, copy.deepcopy(self.cache), index)
        fork.mask = self.mask[index]
        return fork


class _DecoderOnlyStep(_ModelStep):
    """GPT-2 style: the prompt runs once per batch item, its cache is then expanded to every beam."""

    def __init__(self, model, input_ids, attention_mask, num_beams, model_kwargs, device):
        self.model, self.k, self.device, self.kwargs = model, num_beams, device, model_kwargs
        self.input_ids = input_ids
        self.mask = attention_mask.long()
        # Left-padded prompts: positions count real tokens only, as transformers' generate does.
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache, self.cache_name = None, cache_kwarg(model)
        # As transformers: every new token takes the segment of its row's last prompt token.
        types = model_kwargs.get("token_type_ids")
        if types is not None and (not isinstance(types, torch.Tensor) or types.shape != input_ids.shape):
            raise ValueError(f"token_type_ids must be a tensor with the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(types.shape) if isinstance(types, torch.Tensor) else type(types).__name__}")
        self.step_kwargs = {} if types is None else {"token_type_ids": types[:, -1:].to(device)}
        self.mask_steps = getattr(model.config, "model_type", None) not in _NO_MASK_ON_CACHED_STEPS
        # Only the last position's logits are needed from the prompt (saves the LM head on the rest).
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            self.kwargs = {"logits_to_keep": 1, **self.kwargs}

    def __call__(self, tokens: torch.Tensor, beam_idx: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] == 0:
            out = self.model(input_ids=self.input_ids, attention_mask=self.mask, position_ids=self.positions,
                             use_cache=True, **self.kwargs)
            expand = torch.arange(self.input_ids.shape[0], device=self.device).repeat_interleave(self.k)
            self.cache = _reorder(self.model, _cache_of(self.model, out), expand)
            self.mask = self.mask[expand]
            self.next_position = self.positions[expand, -1:] + 1
            self.step_kwargs = {name: value[expand] for name, value in self.step_kwargs.items()}
            # index_select, not advanced indexing: the latter copies a [rows, V] expansion 4x slower.
            return out.logits[:, -1, :].index_select(0, expand)
        self.cache = _reorder(self.model, self.cache, beam_idx.to(self.device))
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self.model(input_ids=tokens.to(self.device), attention_mask=self.mask if self.mask_steps else None,
                         position_ids=self.next_position, use_cache=True, **self.step_kwargs,
                         **{self.cache_name: self.cache})
        self.cache = _cache_of(self.model, out)
        self.next_position = self.next_position + 1
        return out.logits[:, -1, :]

    def fork(self, index: torch.Tensor) -> "_DecoderOnlyStep":
        fork = super().fork(index)
        index = index.to(self.device)
        fork.next_position = self.next_position[index]
        fork.step_kwargs = {name: value[index] for name, value in self.step_kwargs.items()}
        return fork


class _EncoderDecoderStep(_ModelStep):
    """BART/T5 style: the encoder runs once per batch item; the decoder starts from its start token."""

    def __init__(self, model, input_ids, attention_mask, num_beams, model_kwargs, device, vocab):
        kwargs = dict(model_kwargs)
        start = kwargs.pop("decoder_start_token_id", None)
        if start is None:
            start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
        if start is None:
            start = getattr(model.config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError("the model has no decoder_start_token_id: pass decoder_start_token_id=...")
        if isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 0 <= start < (vocab or 2**63):
            raise ValueError(f"decoder_start_token_id must be a token id in [0, {vocab}), got {start!r}")
        encoder = model.get_encoder()
        encoded = encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        expand = torch.arange(input_ids.shape[0], device=device).repeat_interleave(num_beams)
        encoded.last_hidden_state = encoded.last_hidden_state.index_select(0, expand)
        self.model, self.device, self.encoded = model, device, encoded
        self.mask = attention_mask[expand]
        self.start = torch.full((len(expand), 1), int(start), dtype=torch.long, device=device)
        self.cache, self.cache_name = None, cache_kwarg(model)

    def __call__(self, tokens: torch.Tensor, beam_idx: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] == 0:
            decoder_input_ids = self.start
        else:
            self.cache = _reorder(self.model, self.cache, beam_idx.to(self.device))
            decoder_input_ids = tokens.to(self.device)
        out = self.model(encoder_outputs=self.encoded, attention_mask=self.mask, decoder_input_ids=decoder_input_ids,
                         use_cache=True, **{self.cache_name: self.cache})
        self.cache = _cache_of(self.model, out)
        return out.logits[:, -1, :]

    def fork(self, index: torch.Tensor) -> "_EncoderDecoderStep":
        fork = super().fork(index)
        fork.encoded = copy.copy(self.encoded)
        fork.encoded.last_hidden_state = self.encoded.last_hidden_state.index_select(0, index.to(self.device))
        return fork
