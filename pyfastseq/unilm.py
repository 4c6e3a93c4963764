"""``fs.UniLM(model)``: train a BERT-like encoder as a seq2seq model with the UniLM mask, and decode
it incrementally (seeds 000 and 003).

A pair (source, target) becomes one row ``source + target`` with segment ids 0 then 1; the
source attends bidirectionally within itself, the target to the source and causally to itself
(:func:`pyfastseq.unilm_attention`). Pass token ids that already carry the tokenizer's specials,
e.g. ``[CLS] source [SEP]`` and ``target [SEP]``.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F

from ._hf_cache import cache_kwarg
from .attention import hf

__all__ = ["UniLM", "UniLMStep"]

Pair = tuple[Sequence[int], Sequence[int]]


class UniLM(torch.nn.Module):
    """Seq2seq view of a transformers encoder (``BertModel``, ``BertForMaskedLM``, ...).

    Switches the model to ``attn_implementation="unilm"``. Logits come from the model's LM head when
    it has one, else from the hidden states times the input embedding matrix (tied projection).
    The model's attention-probability dropout must be 0 (the kernels have none).
    """

    def __init__(self, model: torch.nn.Module, pad_id: int = 0):
        super().__init__()
        hf.register()
        model.set_attn_implementation(hf.NAME)
        self.model = model
        self.pad_id = int(pad_id)
        self.has_head = model.get_output_embeddings() is not None

    def batch(self, pairs: Sequence[Pair], device=None) -> dict:
        """Right-padded ``input_ids``, ``token_type_ids``, ``prefix_lens``, ``seq_lens`` (all int64)."""
        if len(pairs) == 0:
            raise ValueError("pairs must hold at least one (source, target) pair")
        rows = []
        for i, pair in enumerate(pairs):
            if len(pair) != 2:
                raise ValueError(f"pairs[{i}] must be a (source, target) pair")
            source, target = (list(map(int, seq)) for seq in pair)
            if not source:
                raise ValueError(f"pairs[{i}] has an empty source")
            rows.append((source, target))
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
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise ValueError(f"pairs hold a token id outside [0, {self.vocab_size})")
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def logits(self, outputs) -> torch.Tensor:
        """[..., V] logits from a model output."""
        if self.has_head:
            return outputs.logits
        return outputs.last_hidden_state @ self.model.get_input_embeddings().weight.T

    def forward(self, input_ids, token_type_ids, prefix_lens, seq_lens, **kwargs) -> torch.Tensor:
        """[B, L, V] logits; position ``p`` predicts the token at ``p + 1``."""
        outputs = self.model(input_ids=input_ids, token_type_ids=token_type_ids, prefix_lens=prefix_lens,
                             seq_lens=seq_lens, **kwargs)
        return self.logits(outputs)

    def loss(self, pairs: Sequence[Pair]) -> torch.Tensor:
        """Mean cross-entropy over the target tokens (each predicted from the position before it).

        Only target positions are projected onto the vocabulary: with a tied 30k-word projection that
        product, not the encoder, dominates a training step on short pairs.
        """
        device = self.model.get_input_embeddings().weight.device
        enc = self.batch(pairs, device)
        outputs = self.model(**enc)
        L = enc["input_ids"].shape[1]
        pos = torch.arange(1, L, device=device)
        is_target = (pos >= enc["prefix_lens"][:, None]) & (pos < enc["seq_lens"][:, None])  # [B, L-1]
        if self.has_head:
            logits = outputs.logits[:, :-1][is_target]  # [T, V]
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
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        self.unilm = unilm
        self.device = unilm.model.get_input_embeddings().weight.device
        self.encoded = unilm.batch([(s, []) for s in sources], self.device)
        self.num_beams = num_beams
        self.source_lens = self.encoded["prefix_lens"].repeat_interleave(num_beams)  # [N]
        self.num_rows = self.source_lens.numel()
        self.cache, self.cache_name = None, cache_kwarg(unilm.model)
        self.steps = 0

    def __call__(self, tokens: torch.Tensor, beam_idx: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[0] != self.num_rows or tokens.shape[1] > 1:
            raise ValueError(f"tokens must be [{self.num_rows}, 1] (or [{self.num_rows}, 0] at the first call), "
                             f"got {tuple(tokens.shape)}")
        if tokens.shape[1] == 0:
            return self.prefill()
        if self.cache is None:
            raise ValueError("the first call must pass tokens of shape [N, 0]")
        self.cache.reorder_cache(beam_idx.to(self.device, torch.long))
        return self.extend(tokens)

    def fork(self, index: torch.Tensor) -> "UniLMStep":
        """A copy whose row ``i`` continues row ``index[i]`` (its own cache); ``self`` is unchanged."""
        if self.cache is None:
            raise ValueError("a step function can be forked only after its first call")
        index = index.to(self.device, torch.long)
        fork = copy.copy(self)
        fork.cache = copy.deepcopy(self.cache)
        fork.cache.reorder_cache(index)
        fork.source_lens = self.source_lens[index]
        fork.num_rows = index.numel()
        return fork

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Encode the sources into a fresh cache; [N, V] logits for the first target token."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.unilm.model.config)
        self.steps = 0
        logits = self.unilm(**self.encoded, **{self.cache_name: self.cache})  # [B, S, V]
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
            position_ids=(self.source_lens + self.steps)[:, None],
            attention_mask=visible[:, None, None, :],
            **{self.cache_name: self.cache},
        )
        self.steps += 1
        return self.unilm.logits(outputs)[:, -1]
