"""``fs.UniLM(model)``: train a BERT-like encoder as a seq2seq model with the UniLM mask, and decode
it incrementally (seeds 000 and 003).

A pair (source, target) becomes one row ``source + target`` with segment ids 0 then 1; the
source attends bidirectionally within itself, the target to the source and causally to itself
(:func:`pyfastseq.unilm_attention`). Pass token ids that already carry the tokenizer's specials,
e.g. ``[CLS] source [SEP]`` and ``target [SEP]``.
"""

from __future__ import annotations

import copy
import inspect
import numbers
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ._hf_cache import cache_kwarg
from ._validate import INT32_MAX, as_token_array, check_holds_values, check_integer_dtype
from .attention import hf

__all__ = ["UniLM", "UniLMStep"]

Pair = tuple[Sequence[int], Sequence[int]]


class UniLM(torch.nn.Module):
    """Seq2seq view of a transformers encoder: a base model (``BertModel``, ...) or one with an LM
    head (``BertForMaskedLM``, ``BertForPreTraining``, ...).

    Switches the model to ``attn_implementation="unilm"``. Logits come from the model's LM head when
    it has one, else from the hidden states times the input embedding matrix (tied projection).
    The model's attention-probability dropout applies in training, as with its own attention.
    The model must take ``token_type_ids`` with at least two segments (``type_vocab_size`` >= 2),
    and its attention must be one transformers can switch (its ``AttentionInterface``: BERT, RoBERTa,
    ELECTRA, ALBERT, ...); :meth:`step_fn` decodes only models that keep a KV cache (not ALBERT).
    RoBERTa-style models, whose positions start past their padding index, decode at the positions
    they train at. ``pad_id`` fills the batch past each row's end (those positions are masked out).
    """

    def __init__(self, model: torch.nn.Module, pad_id: int = 0):
        super().__init__()
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config") \
                or not hasattr(model, "get_input_embeddings"):
            raise TypeError(f"model must be a transformers model (BertModel, BertForMaskedLM, ...), "
                            f"got {type(model).__name__}")
        config = model.config
        if "token_type_ids" not in inspect.signature(model.forward).parameters:
            raise ValueError(f"UniLM needs a model that takes token_type_ids (segment ids); "
                             f"{type(model).__name__} does not")
        if getattr(config, "type_vocab_size", 2) < 2:
            raise ValueError(f"UniLM needs two segment embeddings (source 0, target 1); the model's "
                             f"config.type_vocab_size is {config.type_vocab_size}")
        hf.register()
        model.set_attn_implementation(hf.NAME)
        # Models whose attention does not go through transformers' AttentionInterface only warn and
        # keep their own, bidirectional attention: trained so, targets would see the tokens after them.
        if getattr(config, "_attn_implementation", None) != hf.NAME:
            raise ValueError(f"{type(model).__name__} does not take pluggable attention implementations "
                             f"(its attention stays {getattr(config, '_attn_implementation', None)!r}), so it "
                             "cannot run the UniLM mask")
        self.model = model
        if isinstance(pad_id, bool) or not isinstance(pad_id, numbers.Integral) or not 0 <= pad_id < self.vocab_size:
            raise ValueError(f"pad_id must be a token id in [0, {self.vocab_size}), got {pad_id!r}")
        self.pad_id = int(pad_id)
        self.has_head = model.get_output_embeddings() is not None
        if not self.has_head and getattr(model, "base_model", model) is not model:
            raise ValueError(f"{type(model).__name__} has a head other than an LM head: give UniLM the base model "
                             f"or the ...ForMaskedLM class")
        width, hidden = model.get_input_embeddings().embedding_dim, getattr(config, "hidden_size", None)
        if not self.has_head and hidden is not None and hidden != width:
            raise ValueError(f"{type(model).__name__} has no LM head, and its hidden states ({hidden} wide) cannot "
                             f"be projected onto its {width}-wide embeddings: use the model with its LM head "
                             "(a ...ForMaskedLM class)")
        # RoBERTa numbers real tokens from its padding index + 1 when it is not given position ids.
        embeddings = getattr(model.base_model, "embeddings", None)
        padding_idx = getattr(embeddings, "padding_idx", None)
        numbered_past_padding = hasattr(embeddings, "create_position_ids_from_input_ids")
        self.first_position = padding_idx + 1 if numbered_past_padding and isinstance(padding_idx, int) else 0
        max_positions = getattr(config, "max_position_embeddings", None)
        self.max_tokens = None if max_positions is None else max_positions - self.first_position

    def batch(self, pairs: Sequence[Pair], device=None) -> dict:
        """Right-padded ``input_ids``, ``token_type_ids``, ``prefix_lens``, ``seq_lens`` (all int64).

        Each pair holds integer token ids in ``[0, vocab_size)``, a non-empty source and at most the
        model's ``max_position_embeddings`` tokens.
        """
        return self._encode(self._pairs(pairs), device, "pairs")

    def _pairs(self, pairs: Sequence[Pair]) -> list[tuple[list[int], list[int]]]:
        """(source ids, target ids) of each pair, checked."""
        rows = []
        for i, pair in enumerate(_nonempty_list(pairs, "pairs", "(source, target) pair")):
            try:
                source, target = pair
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"pairs[{i}] must be a (source, target) pair") from None
            rows.append((self._token_ids(source, f"pairs[{i}][0]"), self._token_ids(target, f"pairs[{i}][1]")))
        return rows

    def _token_ids(self, values: Any, name: str) -> list[int]:
        ids = as_token_array(values, name)
        if ids.size and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"{name} holds token id {int(ids.max())} outside [0, {self.vocab_size})")
        return ids.tolist()

    def _encode(self, rows: list[tuple[list[int], list[int]]], device, name: str) -> dict:
        """:meth:`batch` of checked (source, target) id lists; ``name[b]`` labels row ``b`` in messages."""
        for b, (source, target) in enumerate(rows):
            if not source:
                raise ValueError(f"{name}[{b}] has an empty source")
            if self.max_tokens is not None and len(source) + len(target) > self.max_tokens:
                raise ValueError(f"{name}[{b}] has {len(source) + len(target)} tokens, more than the model's "
                                 f"max_position_embeddings allows ({self.max_tokens})")
        L = max(len(s) + len(t) for s, t in rows)
        input_ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(rows), L), dtype=torch.long)
        for b, (source, target) in enumerate(rows):
            input_ids[b, : len(source) + len(target)] = torch.tensor(source + target, dtype=torch.long)
            token_type_ids[b, len(source): len(source) + len(target)] = 1
        out = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "prefix_lens": torch.tensor([len(s) for s, _ in rows]),
            "seq_lens": torch.tensor([len(s) + len(t) for s, t in rows]),
        }
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def logits(self, outputs) -> torch.Tensor:
        """[..., V] logits from a model output."""
        if self.has_head:
            return _head_logits(outputs)
        return outputs.last_hidden_state @ self.model.get_input_embeddings().weight.T

    def forward(self, input_ids, token_type_ids, prefix_lens, seq_lens, **kwargs) -> torch.Tensor:
        """[B, L, V] logits; position ``p`` predicts the token at ``p + 1``."""
        outputs = self.model(input_ids=input_ids, token_type_ids=token_type_ids, prefix_lens=prefix_lens,
                             seq_lens=seq_lens, **{"position_ids": self._position_ids(input_ids), **kwargs})
        return self.logits(outputs)

    def _position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[1, L] position ids as the incremental decode numbers them: a RoBERTa-style model left to
        itself would skip every occurrence of its padding id, in the source and target too."""
        return torch.arange(input_ids.shape[1], device=input_ids.device)[None] + self.first_position

    def loss(self, pairs: Sequence[Pair]) -> torch.Tensor:
        """Mean cross-entropy over the target tokens (each predicted from the position before it).

        Only target positions are projected onto the vocabulary: with a tied 30k-word projection that
        product, not the encoder, dominates a training step on short pairs. Pairs with no target
        token at all raise ``ValueError``.
        """
        rows = self._pairs(pairs)
        # cross_entropy over no targets is NaN (0 / 0), which would poison the weights; a 0 with no
        # gradient would read as a perfect fit and still step the optimizer (momentum, weight decay).
        if not any(target for _, target in rows):
            raise ValueError("pairs hold no target tokens: there is nothing to compute a loss over")
        device = self.model.get_input_embeddings().weight.device
        enc = self._encode(rows, device, "pairs")
        outputs = self.model(**enc, position_ids=self._position_ids(enc["input_ids"]))
        L = enc["input_ids"].shape[1]
        pos = torch.arange(1, L, device=device)
        is_target = (pos >= enc["prefix_lens"][:, None]) & (pos < enc["seq_lens"][:, None])  # [B, L-1]
        if self.has_head:
            logits = _head_logits(outputs)[:, :-1][is_target]  # [T, V]
        else:
            logits = outputs.last_hidden_state[:, :-1][is_target] @ self.model.get_input_embeddings().weight.T
        return F.cross_entropy(logits, enc["input_ids"][:, 1:][is_target])

    def step_fn(self, sources: Sequence[Sequence[int]], num_beams: int = 1) -> "UniLMStep":
        """A step function (DESIGN "Step protocol") decoding targets for ``sources`` with a KV cache."""
        return UniLMStep(self, sources, num_beams)


class UniLMStep:
    """``step(tokens, beam_idx) -> logits [N, V]`` with ``N = len(sources) * num_beams``, rows
    batch-major. The first call (``tokens`` [N, 0]) encodes the sources once; each later call feeds
    the one token per row just chosen, after reordering the cache by ``beam_idx``.

    The cache holds the right-padded sources (``S`` = longest) followed by the target tokens; a new
    target token of row ``b`` sits at position id ``s_b + t`` and sees its source and the target so far.
    """

    def __init__(self, unilm: UniLM, sources: Sequence[Sequence[int]], num_beams: int):
        if isinstance(num_beams, bool) or not isinstance(num_beams, numbers.Integral):
            raise TypeError(f"num_beams must be an int, got {type(num_beams).__name__}")
        if not 1 <= num_beams <= INT32_MAX:
            raise ValueError(f"num_beams must lie in [1, 2**31 - 1], got {num_beams}")
        sources = _nonempty_list(sources, "sources", "token sequence")
        rows = [(unilm._token_ids(s, f"sources[{i}]"), []) for i, s in enumerate(sources)]
        self.unilm = unilm
        self.device = unilm.model.get_input_embeddings().weight.device
        self.encoded = unilm._encode(rows, self.device, "sources")
        self.num_beams = int(num_beams)
        self._restart_rows()
        self.cache, self.cache_name = None, cache_kwarg(unilm.model)
        self.steps = 0

    def __call__(self, tokens: torch.Tensor, beam_idx: torch.Tensor) -> torch.Tensor:
        _check_ids(tokens, "tokens", self.unilm.vocab_size)
        if tokens.dim() != 2 or tokens.shape[0] != self.num_rows or tokens.shape[1] > 1:
            raise ValueError(f"tokens must be [{self.num_rows}, 1] (or [{self.num_rows}, 0] at the first call), "
                             f"got {tuple(tokens.shape)}")
        _check_ids(beam_idx, "beam_idx", self.num_rows)
        if beam_idx.shape != (self.num_rows,):
            raise ValueError(f"beam_idx must have shape ({self.num_rows},), got {tuple(beam_idx.shape)}")
        if tokens.shape[1] == 0:
            return self.prefill()
        if self.cache is None:
            raise ValueError("the first call must pass tokens of shape [N, 0]")
        unilm = self.unilm
        if unilm.max_tokens is not None and self.longest_source + self.steps >= unilm.max_tokens:
            raise ValueError(f"tokens would take position {unilm.first_position + self.longest_source + self.steps}, "
                             f"past the model's max_position_embeddings ({unilm.first_position + unilm.max_tokens})")
        beam_idx = beam_idx.to(self.device, torch.long)
        self.cache.reorder_cache(beam_idx)
        self.source_lens = self.source_lens[beam_idx]  # a row may continue one of another item
        return self.extend(tokens)

    def fork(self, index: torch.Tensor) -> "UniLMStep":
        """A copy whose row ``i`` continues row ``index[i]`` (its own cache); ``self`` is unchanged."""
        if self.cache is None:
            raise ValueError("a step function can be forked only after its first call")
        _check_ids(index, "index", self.num_rows)
        if index.dim() != 1:
            raise ValueError(f"index must be 1-D (one source row per row of the fork), got shape {tuple(index.shape)}")
        index = index.to(self.device, torch.long)
        fork = copy.copy(self)
        fork.cache = copy.deepcopy(self.cache)
        fork.cache.reorder_cache(index)
        fork.source_lens = self.source_lens[index]
        fork.longest_source = int(fork.source_lens.max()) if index.numel() else 0
        fork.num_rows = index.numel()
        return fork

    def _restart_rows(self) -> None:
        """Rows batch-major, ``num_beams`` per source, each with its own source's length."""
        source_lens = self.encoded["prefix_lens"]
        self.source_lens = source_lens.repeat_interleave(self.num_beams)  # [N]
        self.num_rows = self.source_lens.numel()
        self.longest_source = int(source_lens.max())

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Encode the sources into a fresh cache; [N, V] logits for the first target token."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.unilm.model.config)
        self.steps = 0
        self._restart_rows()  # a search before this one may have moved rows across items
        logits = self.unilm(**self.encoded, **{self.cache_name: self.cache})  # [B, S, V]
        if self.cache.get_seq_length() == 0:
            raise ValueError(f"{type(self.unilm.model).__name__} keeps no KV cache: UniLM can train it, "
                             "but not decode it incrementally")
        last = self.encoded["prefix_lens"] - 1
        logits = logits[torch.arange(logits.shape[0], device=self.device), last]  # [B, V]
        self.cache.batch_repeat_interleave(self.num_beams)
        return logits.repeat_interleave(self.num_beams, dim=0)

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ([N, 1]) to the cache as it stands; [N, V] logits."""
        S = self.encoded["input_ids"].shape[1]
        keys = torch.arange(S + self.steps + 1, device=self.device)
        visible = (keys[None, :] < self.source_lens[:, None]) | (keys[None, :] >= S)  # [N, Lk]
        outputs = self.unilm.model(
            input_ids=tokens.to(self.device, torch.long),
            token_type_ids=torch.ones_like(tokens, dtype=torch.long, device=self.device),
            position_ids=(self.unilm.first_position + self.source_lens + self.steps)[:, None],
            attention_mask=visible[:, None, None, :],
            **{self.cache_name: self.cache},
        )
        self.steps += 1
        return self.unilm.logits(outputs)[:, -1]


def _head_logits(outputs) -> torch.Tensor:
    """The LM head's logits: ``logits``, or ``prediction_logits`` for a pre-training model (MLM + NSP)."""
    return outputs["logits"] if "logits" in outputs else outputs["prediction_logits"]


def _nonempty_list(values: Any, name: str, item: str) -> list:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of {item}s, got {type(values).__name__}")
    values = list(values)
    if not values:
        raise ValueError(f"{name} must hold at least one {item}")
    return values


def _check_ids(values: Any, name: str, bound: int) -> None:
    """``values`` must be an integer tensor with entries in ``[0, bound)``. Values on a GPU are not read
    back: the searches keep them there so that no step waits for the host."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    check_integer_dtype(values.dtype, name)
    check_holds_values(values, name)
    if values.device.type == "cpu" and values.numel():
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= bound:
            raise ValueError(f"{name} must lie in [0, {bound}), got {lo if lo < 0 else hi}")
