"""TrieBeamSearch / BeamSearch against brute force on tiny vocabularies and tries."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

import pyfastseq as fs
from beam_models import PrefixModel, prefix_logits

pytestmark = pytest.mark.native

EOS = 1


def random_entries(rng: random.Random, vocab: int, count: int, min_len: int, max_len: int) -> list[list[int]]:
    entries = set()
    while len(entries) < count:
        entries.add(tuple(rng.randrange(2, vocab) for _ in range(rng.randint(min_len, max_len))))
    return [list(e) for e in sorted(entries)]


def entry_logprob(entry, vocab, seed, allowed_of=None, deltas_of=None, renormalise=False):
    """Sum of the log-probs a beam adds along ``entry``: full log-softmax, renormalised over the
    allowed tokens with ``renormalise``, reshaped by lookahead deltas where some delta is positive."""
    total, token_scores = 0.0, []
    for t, token in enumerate(entry):
        logp = torch.log_softmax(prefix_logits(tuple(entry[:t]), vocab, seed), -1)
        if allowed_of is not None:
            allowed = allowed_of(entry[:t])
            sub = logp[allowed]
            if deltas_of is not None:
                d = torch.tensor(deltas_of(entry[:t], allowed), dtype=torch.float32)
                if len(allowed) > 1 and bool((d > 0).any()):
                    sub = torch.log_softmax(sub / (d + 1), -1)
                elif renormalise:
                    sub = torch.log_softmax(sub, -1)
            elif renormalise:
                sub = torch.log_softmax(sub, -1)
            step = float(sub[allowed.index(token)])
        else:
            step = float(logp[token])
        total += step
        token_scores.append(step)
    return total, token_scores


def ranked(entries, vocab, seed, lp, **kw):
    scored = [(entry_logprob(e, vocab, seed, **kw)[0] / len(e) ** lp, e) for e in entries]
    return sorted(scored, key=lambda x: -x[0])


@pytest.mark.parametrize("lp,early", [(0.0, "never"), (1.0, "never"), (2.0, "never"), (0.0, True), (1.0, False)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trie_beam__enough_beams__global_optimum(lp, early, seed):
    rng = random.Random(seed)
    vocab = 9
    entries = [e + [EOS] for e in random_entries(rng, vocab, 7, 1, 4)]
    trie = fs.Trie(entries, eos_id=EOS)
    searcher = fs.TrieBeamSearch(trie, num_beams=8, max_length=trie.depth, length_penalty=lp, early_stopping=early,
                                 num_return_sequences=3)
    out = searcher.search(PrefixModel(vocab, seed), batch_size=1)
    best = ranked(entries, vocab, seed, lp)
    if early is not False:  # transformers' default heuristic may stop before a longer, better entry
        assert out.sequences[0] == [e for _, e in best[:3]]
        np.testing.assert_allclose(out.scores[0], [s for s, _ in best[:3]], rtol=1e-5, atol=1e-5)
    assert all(trie.contains(s) for s in out.sequences[0])
    assert out.finished[0] == [True] * 3


@pytest.mark.parametrize("seed", range(6))
def test_trie_beam__one_beam__greedy(seed):
    rng = random.Random(seed)
    vocab = 12
    trie = fs.Trie(random_entries(rng, vocab, 20, 1, 6), eos_id=EOS)
    out = fs.TrieBeamSearch(trie, num_beams=1, max_length=5, length_penalty=1.0).search(PrefixModel(vocab, seed), 1)
    prefix: list[int] = []
    while len(prefix) < 5:
        allowed = trie.children(trie.walk(prefix))[0].tolist()
        prefix.append(max(allowed, key=lambda t: float(prefix_logits(tuple(prefix), vocab, seed)[t])))
        if prefix[-1] == EOS:
            break
    assert out.sequences[0] == [prefix]
    assert out.finished[0] == [prefix[-1] == EOS]
    total, _ = entry_logprob(prefix, vocab, seed)
    assert out.scores[0][0] == pytest.approx(total / len(prefix), abs=1e-5)


@pytest.mark.parametrize("num_beams", [2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_trie_beam__outputs_are_entries__token_scores_add_up(num_beams, seed):
    rng = random.Random(seed)
    vocab = 30
    trie = fs.Trie(random_entries(rng, vocab, 200, 2, 7), eos_id=EOS)
    searcher = fs.TrieBeamSearch(trie, num_beams=num_beams, max_length=trie.depth, length_penalty=1.5,
                                 num_return_sequences=2, output_token_scores=True)
    out = searcher.search(PrefixModel(vocab, seed), batch_size=3)
    for seqs, scores, token_scores in zip(out.sequences, out.scores, out.token_scores):
        assert scores == sorted(scores, reverse=True)
        for seq, score, ts in zip(seqs, scores, token_scores):
            assert trie.contains(seq)
            expected, expected_ts = entry_logprob(seq, vocab, seed)
            np.testing.assert_allclose(ts, expected_ts, atol=1e-5)
            assert score == pytest.approx(sum(ts) / len(seq) ** 1.5, abs=1e-5)


def test_trie_beam__equal_length_trie_without_eos__leaves_finish():
    rng = random.Random(3)
    vocab = 7
    entries = random_entries(rng, vocab, 10, 3, 3)
    trie = fs.Trie(entries)
    out = fs.TrieBeamSearch(trie, num_beams=10, max_length=10, length_penalty=0.0,
                            num_return_sequences=4).search(PrefixModel(vocab, 3), 1)
    best = ranked(entries, vocab, 3, 0.0)
    assert out.sequences[0] == [e for _, e in best[:4]]
    assert out.finished[0] == [True] * 4


def test_trie_beam__normalize_allowed__optimum_over_renormalised_probs():
    rng = random.Random(5)
    vocab = 10
    entries = [e + [EOS] for e in random_entries(rng, vocab, 6, 1, 3)]
    trie = fs.Trie(entries, eos_id=EOS)
    allowed_of = lambda prefix: trie.children(trie.walk(prefix))[0].tolist()  # noqa: E731
    out = fs.TrieBeamSearch(trie, num_beams=6, max_length=trie.depth, length_penalty=0.0, early_stopping="never",
                            normalize="allowed").search(PrefixModel(vocab, 5), 1)
    best = ranked(entries, vocab, 5, 0.0, allowed_of=allowed_of, renormalise=True)
    assert out.sequences[0] == [best[0][1]]
    assert out.scores[0][0] == pytest.approx(best[0][0], abs=1e-5)


class FakeLookahead:
    """Chosen deltas: a function of the row's prefix and the child token."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def delta(prefix, token) -> int:
        return (token * 7 + 3 * len(prefix)) % 3

    def deltas(self, trie, nodes, generated, batch_index):
        assert nodes.dtype == torch.int32 and generated.dtype == torch.int32 and batch_index.dtype == torch.int64
        self.calls.append(generated.shape[1])
        offsets, values = [0], []
        for r, node in enumerate(nodes.tolist()):
            if node >= 0:
                values += [self.delta(generated[r].tolist(), t) for t in trie.children(node)[0].tolist()]
            offsets.append(len(values))
        return torch.tensor(offsets), torch.tensor(values, dtype=torch.int32)


@pytest.mark.parametrize("normalize", ["full", "allowed"])
def test_trie_beam__lookahead__matches_torch_reshape(normalize):
    rng = random.Random(7)
    vocab = 11
    entries = [e + [EOS] for e in random_entries(rng, vocab, 8, 1, 4)]
    trie = fs.Trie(entries, eos_id=EOS)
    lookahead = FakeLookahead()
    out = fs.TrieBeamSearch(trie, num_beams=8, max_length=trie.depth, length_penalty=1.0, early_stopping="never",
                            lookahead=lookahead, normalize=normalize, num_return_sequences=2,
                            output_token_scores=True).search(PrefixModel(vocab, 7), 1)
    allowed_of = lambda prefix: trie.children(trie.walk(prefix))[0].tolist()  # noqa: E731
    deltas_of = lambda prefix, allowed: [FakeLookahead.delta(prefix, t) for t in allowed]  # noqa: E731
    best = ranked(entries, vocab, 7, 1.0, allowed_of=allowed_of, deltas_of=deltas_of,
                  renormalise=normalize == "allowed")
    for (score, entry), seq, got in zip(best, out.sequences[0], out.scores[0]):
        assert seq == entry
        assert got == pytest.approx(score, abs=1e-5)
    assert lookahead.calls[:3] == [0, 1, 2]
