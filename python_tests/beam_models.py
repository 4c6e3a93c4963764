"""Toy step functions for beam-search tests: logits that depend only on a row's generated prefix."""

from __future__ import annotations

import zlib

import torch


def prefix_logits(prefix: tuple[int, ...], vocab: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    """Deterministic random logits [vocab] for a generated prefix."""
    key = zlib.crc32(repr((seed, vocab) + tuple(prefix)).encode())
    gen = torch.Generator().manual_seed(key)
    return torch.randn(vocab, generator=gen) * scale


class PrefixModel:
    """A step_fn that tracks each row's prefix through beam_idx, like a KV cache would."""

    def __init__(self, vocab: int, seed: int = 0, dtype: torch.dtype = torch.float32):
        self.vocab, self.seed, self.dtype = vocab, seed, dtype
        self.rows: list[tuple[int, ...]] = []
        self.calls = 0

    def __call__(self, tokens: torch.Tensor, beam_idx: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if tokens.shape[1] == 0:
            self.rows = [()] * len(beam_idx)
        else:
            self.rows = [self.rows[int(p)] + (int(t),) for p, t in zip(beam_idx, tokens[:, 0])]
        return torch.stack([self.logprobs(r) for r in self.rows]).to(self.dtype)

    def logprobs(self, prefix) -> torch.Tensor:
        return prefix_logits(tuple(prefix), self.vocab, self.seed)


class ImpossibleAfter(PrefixModel):
    """A PrefixModel whose row after ``prefix`` is -inf at ``tokens`` (every column when None): no
    continuation of ``prefix`` through them is possible."""

    def __init__(self, vocab: int, seed: int, prefix, tokens=None):
        super().__init__(vocab, seed)
        self.prefix, self.tokens = tuple(prefix), tokens

    def logprobs(self, prefix) -> torch.Tensor:
        row = super().logprobs(prefix)
        if tuple(prefix) == self.prefix:
            row[slice(None) if self.tokens is None else list(self.tokens)] = -float("inf")
        return row


class ShiftedModel(PrefixModel):
    """A PrefixModel with every logit moved by ``offset`` and rounded to float32: in exact arithmetic
    the same log-probs, from logits far from zero."""

    def __init__(self, vocab: int, seed: int, offset: float):
        super().__init__(vocab, seed)
        self.offset = offset

    def logprobs(self, prefix) -> torch.Tensor:
        return super().logprobs(prefix) + self.offset
