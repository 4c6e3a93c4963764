"""Constrained decoding of KB keys, exact match, and the side-by-side timing against transformers."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from ..lookahead import LCSLookahead
from ..search import TrieBeamSearch
from ..trie import Trie
from ..unilm import UniLM
from .kb import Fact, Question
from .model import Codec

Key = tuple[str, str]  # (subject, predicate)


def key_trie(codec: Codec, facts: Sequence[Fact]) -> tuple[Trie, dict[tuple[int, ...], Key]]:
    """The trie over every key ``subject [SEP] predicate [END]`` and the key each path spells."""
    keys = {tuple(codec.target(f)): (f.subject, f.predicate) for f in facts}
    return Trie(list(keys), eos_id=codec.end), keys


def decode(unilm: UniLM, codec: Codec, trie: Trie, questions: Sequence[Question], num_beams: int,
           lookahead: bool, max_length: int, batch_size: int = 64) -> list[list[int]]:
    """Best key token sequence per question, decoded with pyfastseq's TrieBeamSearch."""
    best = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        step = unilm.step_fn([codec.source(q.text) for q in chunk], num_beams=num_beams)
        rescoring = LCSLookahead([codec.words(q.text) for q in chunk], start_after=codec.sep) if lookahead else None
        searcher = TrieBeamSearch(trie, num_beams=num_beams, max_length=max_length, lookahead=rescoring)
        best += [hyps[0] for hyps in searcher.search(step, batch_size=len(chunk)).sequences]
    return best


def exact_match(predictions: Sequence[list[int]], questions: Sequence[Question], keys: dict) -> float:
    """Share of questions whose decoded key is the gold (subject, predicate)."""
    hits = sum(keys.get(tuple(p)) == (q.fact.subject, q.fact.predicate) for p, q in zip(predictions, questions))
    return hits / max(len(questions), 1)


def decode_with_transformers(unilm: UniLM, codec: Codec, trie: Trie, questions: Sequence[Question],
                             num_beams: int, max_length: int, batch_size: int = 64) -> list[list[int]]:
    """The same decode through transformers' ``generate(prefix_allowed_tokens_fn=...)``."""
    from .hf_peer import UniLMForGeneration

    generator = UniLMForGeneration(unilm).eval()
    best = []
    for start in range(0, len(questions), batch_size):
        sources = [codec.source(q.text) for q in questions[start : start + batch_size]]
        width = max(map(len, sources))
        input_ids = torch.tensor([[codec.tokenizer.pad_token_id] * (width - len(s)) + s for s in sources])

        def allowed(batch_id, sent, width=width):
            # The trie's children; past the end of a key (beams that already finished, which
            # transformers keeps running at -1e9) only [END], the trie semantics of TrieBeamSearch.
            # Allowing every token there instead changes the search: such a beam then rarely picks
            # [END] again, so it never takes a hypothesis slot, and early stopping comes later.
            node = trie.walk(sent[width:].tolist())
            tokens = trie.children(node)[0].tolist() if node >= 0 else []
            return tokens or [codec.end]

        out = generator.generate(
            input_ids, attention_mask=(input_ids != codec.tokenizer.pad_token_id).long(), num_beams=num_beams,
            max_new_tokens=max_length, prefix_allowed_tokens_fn=allowed, eos_token_id=codec.end,
            pad_token_id=codec.tokenizer.pad_token_id, do_sample=False, early_stopping=True,
        )
        for row in out[:, width:].tolist():
            best.append(row[: row.index(codec.end) + 1] if codec.end in row else row)
    return best


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
