"""TrieBeamSearch with the real LCSLookahead against brute force: every stored sequence scored by
the reference Δ (enumerating completions) and the reference reshaping, step by step."""

import random

import pytest
import torch
from beam_models import PrefixModel, prefix_logits

import pyfastseq as fs
from pyfastseq.reference.lcs import lookahead_deltas, lookahead_reshape
from pyfastseq.reference.trie import DictTrie

pytestmark = pytest.mark.native

EOS, SEP, VOCAB = 0, 1, 14


def kb_entries(rng):
    """(subject [SEP] predicate) keys: the shape seed 001 decodes."""
    entries = set()
    while len(entries) < 10:
        subject = tuple(rng.randrange(2, 7) for _ in range(rng.randint(1, 2)))
        predicate = tuple(rng.randrange(7, VOCAB) for _ in range(rng.randint(1, 3)))
        entries.add(subject + (SEP,) + predicate)
    return [list(e) for e in sorted(entries)]


def brute_force_best(ref, query, seed, normalize, prefix=()):
    """The best entry below ``prefix`` (which the search consumes before decoding; the model sees
    only the tokens after it), the lookahead's Δ taken over each entry's whole path."""
    best = None
    for entry in ref.sequences():
        if tuple(entry[: len(prefix)]) != tuple(prefix):
            continue
        total = 0.0
        for t in range(len(prefix), len(entry)):
            token = entry[t]
            logp = torch.log_softmax(prefix_logits(tuple(entry[len(prefix):t]), VOCAB, seed), -1)
            allowed = ref.children(entry[:t])
            sub = lookahead_reshape(logp, allowed, lookahead_deltas(ref, entry[:t], query, SEP))
            if normalize == "allowed":
                sub = torch.log_softmax(sub, -1)
            total += float(sub[allowed.index(token)])
        if best is None or total > best[0]:
            best = (total, entry[len(prefix):])
    return best


@pytest.mark.parametrize("prefix_through", [None, "subject", "separator"])
@pytest.mark.parametrize("normalize", ["full", "allowed"])
@pytest.mark.parametrize("seed", range(6))
def test_lookahead_beam_finds_brute_force_optimum(seed, normalize, prefix_through):
    # With TrieBeamSearch(prefix=...) the prefix is part of each row's path: through the separator,
    # the rule is on from the first generated token.
    rng = random.Random(seed)
    entries = kb_entries(rng)
    trie, ref = fs.Trie(entries, eos_id=EOS), DictTrie(entries, eos_id=EOS)
    query = [rng.randrange(2, VOCAB) for _ in range(5)]
    entry = rng.choice(entries)
    prefix = [] if prefix_through is None else entry[: entry.index(SEP) + (prefix_through == "separator")]
    searcher = fs.TrieBeamSearch(trie, num_beams=len(entries), max_length=trie.depth, length_penalty=0.0,
                                 early_stopping="never", normalize=normalize, prefix=prefix,
                                 lookahead=fs.LCSLookahead(query, start_after=SEP))
    out = searcher.search(PrefixModel(VOCAB, seed), 1)
    score, best = brute_force_best(ref, query, seed, normalize, prefix)
    assert out.sequences[0][0] == best
    assert out.scores[0][0] == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_query_sharing_nothing_leaves_decoding_unchanged(seed):
    rng = random.Random(seed)
    trie = fs.Trie(kb_entries(rng), eos_id=EOS)
    kwargs = dict(num_beams=4, max_length=trie.depth, num_return_sequences=3)
    plain = fs.TrieBeamSearch(trie, **kwargs).search(PrefixModel(VOCAB, seed), 2)
    unrelated = fs.LCSLookahead([[VOCAB + 5, VOCAB + 6], [VOCAB + 7]], start_after=SEP)
    rescored = fs.TrieBeamSearch(trie, lookahead=unrelated, **kwargs).search(PrefixModel(VOCAB, seed), 2)
    assert rescored.sequences == plain.sequences
    for got, expected in zip(rescored.scores, plain.scores):
        assert got == pytest.approx(expected, abs=1e-6)

