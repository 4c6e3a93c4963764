"""TrieBeamSearch / BeamSearch against brute force on tiny vocabularies and tries."""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pytest
import torch

import pyfastseq as fs
from pyfastseq.reference.lcs import lookahead_reshape
from beam_models import ImpossibleAfter, PrefixModel, ShiftedModel, prefix_logits

pytestmark = pytest.mark.native

EOS = 1


def random_entries(rng: random.Random, vocab: int, count: int, min_len: int, max_len: int) -> list[list[int]]:
    entries = set()
    while len(entries) < count:
        entries.add(tuple(rng.randrange(2, vocab) for _ in range(rng.randint(min_len, max_len))))
    return [list(e) for e in sorted(entries)]


def entry_logprob(entry, vocab, seed, allowed_of=None, deltas_of=None, renormalise=False):
    """Sum of the log-probs a beam adds along ``entry``: full log-softmax, renormalised over the
    allowed tokens with ``renormalise``, reshaped by lookahead deltas as the reference rule says."""
    total, token_scores = 0.0, []
    for t, token in enumerate(entry):
        logp = torch.log_softmax(prefix_logits(tuple(entry[:t]), vocab, seed), -1)
        if allowed_of is not None:
            allowed = allowed_of(entry[:t])
            sub = logp[allowed]
            if deltas_of is not None:
                sub = lookahead_reshape(logp, allowed, deltas_of(entry[:t], allowed))
            if renormalise:
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
    # Even early_stopping=False (transformers' heuristic) finds the optimum here: with more beams
    # than entries the finished list never fills, so the heuristic never stops the search.
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


def float64_token_scores(model, seq, allowed_of=None):
    """The log-probs a beam adds along ``seq``: log_softmax in float64 of the model's float32 logits,
    over the allowed tokens alone with ``allowed_of``."""
    scores = []
    for t, token in enumerate(seq):
        logits = model.logprobs(seq[:t]).double()
        if allowed_of is None:
            scores.append(float(torch.log_softmax(logits, -1)[token]))
        else:
            allowed = allowed_of(seq[:t])
            scores.append(float(torch.log_softmax(logits[allowed], -1)[allowed.index(token)]))
    return scores


@pytest.mark.parametrize("offset", [1e4, 1e6, 3e8])
@pytest.mark.parametrize("normalize", [None, "full", "allowed"])  # None: BeamSearch, unconstrained
def test_search__logits_far_from_zero__scores_match_float64_log_softmax(normalize, offset):
    # A log-prob is (x - max) - log(sum(exp(x - max))), as torch's log_softmax takes it: exact for x
    # near the max however large the logits. x - logsumexp, the logsumexp rounded to float32 first,
    # is off by up to half its ulp: 5e-4 at 1e4, 0.03 at 1e6, every log-prob 0 at 3e8 (where the
    # float32 logits all round to 3e8). 1003 columns: whole vectors and a tail.
    vocab = 1003
    model = ShiftedModel(vocab, 2, offset)
    allowed_of = None
    if normalize is None:
        searcher = fs.BeamSearch(EOS, num_beams=3, max_length=3, num_return_sequences=3, output_token_scores=True)
    else:
        trie = fs.Trie(random_entries(random.Random(2), vocab, 60, 1, 3), eos_id=EOS)
        searcher = fs.TrieBeamSearch(trie, num_beams=3, max_length=trie.depth, normalize=normalize,
                                     num_return_sequences=3, output_token_scores=True)
        if normalize == "allowed":
            allowed_of = lambda prefix: trie.children(trie.walk(prefix))[0].tolist()  # noqa: E731
    out = searcher.search(model, batch_size=2)
    for seq, score, token_scores in zip(sum(out.sequences, []), sum(out.scores, []), sum(out.token_scores, [])):
        want = float64_token_scores(model, seq, allowed_of)
        np.testing.assert_allclose(token_scores, want, rtol=0, atol=1e-5)
        assert score == pytest.approx(sum(want) / len(seq), abs=1e-5)


class FakeLookahead:
    """Chosen deltas: a function of the row's prefix and the child token. With empty_zero_rows, a row
    whose deltas are all 0 gets an empty slice instead (also "unchanged")."""

    def __init__(self, empty_zero_rows=False):
        self.calls = []
        self.empty_zero_rows = empty_zero_rows

    @staticmethod
    def delta(prefix, token) -> int:
        return (token * 7 + 3 * len(prefix)) % 3

    def deltas(self, trie, nodes, generated, batch_index):
        assert nodes.dtype == torch.int32 and generated.dtype == torch.int32 and batch_index.dtype == torch.int64
        self.calls.append(generated.shape[1])
        offsets, values = [0], []
        for r, node in enumerate(nodes.tolist()):
            if node >= 0:
                row = [self.delta(generated[r].tolist(), t) for t in trie.children(node)[0].tolist()]
                values += [] if self.empty_zero_rows and not any(row) else row
            offsets.append(len(values))
        return torch.tensor(offsets), torch.tensor(values, dtype=torch.int32)


@pytest.mark.parametrize("empty_zero_rows", [False, True])
@pytest.mark.parametrize("normalize", ["full", "allowed"])
def test_trie_beam__lookahead__matches_torch_reshape(normalize, empty_zero_rows):
    rng = random.Random(7)
    vocab = 11
    entries = [e + [EOS] for e in random_entries(rng, vocab, 8, 1, 4)]
    trie = fs.Trie(entries, eos_id=EOS)
    lookahead = FakeLookahead(empty_zero_rows)
    out = fs.TrieBeamSearch(trie, num_beams=8, max_length=trie.depth, length_penalty=1.0, early_stopping="never",
                            lookahead=lookahead, normalize=normalize, num_return_sequences=2,
                            output_token_scores=True).search(PrefixModel(vocab, 7), 1)
    allowed_of = lambda prefix: trie.children(trie.walk(prefix))[0].tolist()  # noqa: E731
    deltas_of = lambda prefix, allowed: [FakeLookahead.delta(prefix, t) for t in allowed]  # noqa: E731
    best = ranked(entries, vocab, 7, 1.0, allowed_of=allowed_of, deltas_of=deltas_of,
                  renormalise=normalize == "allowed")
    assert len(out.sequences[0]) == len(out.scores[0]) == 2
    for (score, entry), seq, got in zip(best, out.sequences[0], out.scores[0]):
        assert seq == entry
        assert got == pytest.approx(score, abs=1e-5)
    assert lookahead.calls[:3] == [0, 1, 2]


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("normalize", ["full", "allowed"])
@pytest.mark.parametrize("masked", ["children", "row"])
def test_trie_beam__node_with_no_possible_child__its_entries_drop_out(masked, normalize, lookahead):
    # Every child of one node has a -inf logit, or its whole row is: the beams there have no
    # continuation (their normaliser may be -inf, never a NaN log-prob), and the search ranks the
    # other entries as though that node's entries did not exist.
    rng = random.Random(3)
    vocab = 9
    entries = [e + [EOS] for e in random_entries(rng, vocab, 8, 2, 4)]
    trie = fs.Trie(entries, eos_id=EOS)
    firsts = [e[0] for e in entries]
    blocked = [max(firsts, key=firsts.count)]  # a node with several entries below
    children = trie.children(trie.walk(blocked))[0].tolist()
    reachable = [e for e in entries if e[:1] != blocked]
    assert 0 < len(reachable) < len(entries) - 1
    model = ImpossibleAfter(vocab, 3, blocked, children if masked == "children" else None)
    # A beam for each entry left, and one for the blocked node itself (a beam in the first step): the
    # search must find every entry left, so no beam may go to a child that cannot follow.
    out = fs.TrieBeamSearch(trie, num_beams=len(reachable) + 1, max_length=trie.depth, length_penalty=1.0,
                            early_stopping="never", normalize=normalize, num_return_sequences=len(reachable),
                            lookahead=FakeLookahead() if lookahead else None).search(model, 1)
    allowed_of = lambda prefix: trie.children(trie.walk(prefix))[0].tolist()  # noqa: E731
    deltas_of = lambda prefix, allowed: [FakeLookahead.delta(prefix, t) for t in allowed]  # noqa: E731
    best = ranked(reachable, vocab, 3, 1.0, allowed_of=allowed_of, deltas_of=deltas_of if lookahead else None,
                  renormalise=normalize == "allowed")
    assert out.sequences[0] == [e for _, e in best]
    np.testing.assert_allclose(out.scores[0], [s for s, _ in best], rtol=1e-5, atol=1e-5)


def every_sequence(length: int) -> list[list[int]]:
    """Every sequence over tokens 0, 2, 3 that ends with eos or reaches ``length`` tokens."""
    every = [list(p) + ([EOS] if len(p) < length else []) for n in range(length + 1)
             for p in itertools.product([0, 2, 3], repeat=n)]
    return [s for s in every if s]


@pytest.mark.parametrize("lp", [0.0, 1.0])
def test_beam_search__unconstrained__global_optimum(lp):
    vocab, length = 4, 3
    every = every_sequence(length)
    out = fs.BeamSearch(EOS, num_beams=len(every), max_length=length, length_penalty=lp, early_stopping="never",
                        num_return_sequences=5).search(PrefixModel(vocab, 11), 1)
    best = ranked(every, vocab, 11, lp)
    assert out.sequences[0] == [e for _, e in best[:5]]
    np.testing.assert_allclose(out.scores[0], [s for s, _ in best[:5]], atol=1e-5)
    assert out.finished[0] == [e[-1] == EOS for _, e in best[:5]]


def test_beam_search__row_of_minus_inf__no_continuation():
    # The row after [2] is -inf everywhere: its normaliser is -inf, and no sequence goes on from [2].
    vocab, length = 4, 3
    every = every_sequence(length)
    reachable = [s for s in every if s[0] != 2]
    # A beam for each sequence left, and one for [2] itself: none may go to a token after [2].
    out = fs.BeamSearch(EOS, num_beams=len(reachable) + 1, max_length=length, length_penalty=1.0,
                        early_stopping="never", num_return_sequences=len(reachable)
                        ).search(ImpossibleAfter(vocab, 11, [2]), 1)
    best = ranked(reachable, vocab, 11, 1.0)
    assert out.sequences[0] == [e for _, e in best]
    np.testing.assert_allclose(out.scores[0], [s for s, _ in best], rtol=1e-5, atol=1e-5)


def test_beam_search__one_beam__greedy_until_max_length():
    model = PrefixModel(6, 2)
    out = fs.BeamSearch(None, num_beams=1, max_length=4, length_penalty=0.0).search(model, 2)
    prefix: list[int] = []
    for _ in range(4):
        prefix.append(int(prefix_logits(tuple(prefix), 6, 2).argmax()))
    assert out.sequences == [[prefix], [prefix]] and out.finished == [[False], [False]]
    assert model.calls == 4


def test_beam_search__past_the_first_buffer_width__matches_reference():
    # 150 steps: the token buffers start 64 wide and double to 128, then to max_length.
    vocab, seed, K, length = 6, 3, 3, 150
    out = fs.BeamSearch(None, num_beams=K, max_length=length, length_penalty=0.0, num_return_sequences=K,
                        output_token_scores=True).search(PrefixModel(vocab, seed), 1)
    beams = [((), 0.0, ())]
    for _ in range(length):
        cands = [(p + (t,), s + float(lp[t]), ts + (float(lp[t]),)) for p, s, ts in beams
                 for lp in [torch.log_softmax(prefix_logits(p, vocab, seed).double(), -1)] for t in range(vocab)]
        beams = sorted(cands, key=lambda c: -c[1])[:K]
    assert out.sequences == [[list(p) for p, _, _ in beams]]
    np.testing.assert_allclose(out.scores[0], [s for _, s, _ in beams], rtol=1e-4)
    np.testing.assert_allclose(out.token_scores[0], [ts for _, _, ts in beams], atol=1e-5)


class EosAfter(PrefixModel):
    """A PrefixModel whose rows all but rule token 0 out until ``steps`` tokens are in, and favour it
    overwhelmingly from then on."""

    def __init__(self, vocab: int, seed: int, steps: int):
        super().__init__(vocab, seed)
        self.steps = steps

    def logprobs(self, prefix) -> torch.Tensor:
        row = super().logprobs(prefix)
        row[0] += 100.0 if len(prefix) >= self.steps else -100.0
        return row


@pytest.mark.parametrize("searcher", ["beam", "sampler"])
def test_max_length_bounds_a_search_without_sizing_it(searcher):
    # transformers allocates as it goes: a huge max_length with an eos that comes is an ordinary search.
    def run(max_length):
        if searcher == "beam":
            return fs.BeamSearch(0, num_beams=4, max_length=max_length, num_return_sequences=4).search(
                EosAfter(7, 1, 70), 2)
        return fs.Sampler(eos_id=0, max_length=max_length, seed=5).search(EosAfter(7, 1, 70), 2, num_samples=3)

    huge, bounded = run(2**31 - 1), run(80)
    assert huge.sequences == bounded.sequences and huge.scores == bounded.scores
    assert all(f for item in huge.finished for f in item)
    assert max(len(s) for item in huge.sequences for s in item) > 64  # past the buffers' first width


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_trie_beam__half_logits__same_as_upcast(dtype):
    rng = random.Random(9)
    vocab = 40
    trie = fs.Trie(random_entries(rng, vocab, 300, 2, 6), eos_id=EOS)

    class Rounded(PrefixModel):
        def logprobs(self, prefix):
            return super().logprobs(prefix).to(dtype).float()

    searcher = fs.TrieBeamSearch(trie, num_beams=4, max_length=6, num_return_sequences=2)
    half = searcher.search(Rounded(vocab, 9, dtype=dtype), 2)
    full = searcher.search(Rounded(vocab, 9), 2)
    assert half.sequences == full.sequences
    np.testing.assert_allclose(np.array(half.scores), np.array(full.scores), atol=1e-5)


def test_trie_beam__per_item_tries_and_prefix():
    rng = random.Random(4)
    vocab = 20
    tries = [fs.Trie([[3] + e for e in random_entries(rng, vocab, 30, 1, 4)], eos_id=EOS) for _ in range(3)]
    out = fs.TrieBeamSearch(tries, num_beams=3, max_length=6, prefix=[3], num_return_sequences=3).search(
        PrefixModel(vocab, 4), 3)
    for trie, seqs in zip(tries, out.sequences):
        assert len(seqs) == 3 and all(trie.contains([3] + s) for s in seqs)
    # each item alone gives the same result
    for b, trie in enumerate(tries):
        alone = fs.TrieBeamSearch(trie, num_beams=3, max_length=6, prefix=[3], num_return_sequences=3).search(
            PrefixModel(vocab, 4), 1)
        assert alone.sequences[0] == out.sequences[b]


def test_trie_beam__min_length_blocks_early_finish():
    trie = fs.Trie([[2], [2, 3], [2, 3, 4, 5]], eos_id=EOS)
    out = fs.TrieBeamSearch(trie, num_beams=3, max_length=5, min_length=4, num_return_sequences=3).search(
        PrefixModel(8, 0), 1)
    assert out.sequences[0] == [[2, 3, 4, 5, EOS]]


@pytest.mark.parametrize("lp", [0.0, 1.0])
def test_trie_beam__min_length_past_every_way_on__allowed_tokens_forced(lp):
    # [2] and [3] can only end (eos is blocked) while [4] goes on: they drop. Then [4, 5] can only end
    # and no beam has another way on, so, as transformers' PrefixConstrainedLogitsProcessor, its
    # allowed tokens (eos) get log-prob 0 and it ends two tokens short of min_length.
    trie = fs.Trie([[2], [3], [4, 5]], eos_id=EOS)
    out = fs.TrieBeamSearch(trie, num_beams=3, max_length=6, min_length=5, length_penalty=lp,
                            num_return_sequences=3, output_token_scores=True).search(PrefixModel(8, 5), 1)
    logprob, token_scores = entry_logprob([4, 5], 8, 5)
    assert out.sequences == [[[4, 5, EOS]]] and out.finished == [[True]]
    assert out.scores[0][0] == pytest.approx(logprob / 3**lp, abs=1e-5)
    np.testing.assert_allclose(out.token_scores[0][0], token_scores + [0.0], atol=1e-5)


@pytest.mark.parametrize("with_eos", [True, False])
@pytest.mark.parametrize("min_length", range(6))
def test_trie_beam__min_length_counts_tokens_before_eos(min_length, with_eos):
    # As transformers' min_new_tokens: eos after at least min_length tokens; without eos an entry
    # ends at its leaf and needs min_length tokens in all. Beams enough for every entry.
    entries = [[2], [2, 3], [4, 5, 6], [4, 5, 6, 7], [6, 2, 3, 4, 5]]
    trie = fs.Trie(entries, eos_id=EOS if with_eos else None)
    out = fs.TrieBeamSearch(trie, num_beams=8, max_length=6, min_length=min_length, num_return_sequences=8,
                            early_stopping="never").search(PrefixModel(9, 3), 1)
    stored = [e + [EOS] for e in entries] if with_eos else [e for e in entries if e not in ([2], [4, 5, 6])]
    want = [e for e in stored if len(e) - with_eos >= min_length]
    assert sorted(out.sequences[0]) == sorted(want)
    assert all(out.finished[0])


def test_trie_beam__fewer_entries_than_return_sequences():
    trie = fs.Trie([[2, 3], [4]], eos_id=EOS)
    out = fs.TrieBeamSearch(trie, num_beams=4, max_length=4, num_return_sequences=4).search(PrefixModel(6, 1), 2)
    assert [sorted(s) for s in out.sequences] == [[[2, 3, EOS], [4, EOS]]] * 2


def test_trie_beam__max_length_cuts_hypotheses():
    trie = fs.Trie([[2, 3, 4, 5, 6]], eos_id=EOS)
    out = fs.TrieBeamSearch(trie, num_beams=2, max_length=3).search(PrefixModel(8, 0), 1)
    assert out.sequences == [[[2, 3, 4]]] and out.finished == [[False]]


# -- bad input -------------------------------------------------------------------------------

TRIE = fs.Trie([[2, 3], [4, 5, 6]], eos_id=EOS)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_beams": 0}, ValueError, "num_beams"),
        ({"num_beams": 2.5}, TypeError, "num_beams"),
        ({"max_length": 0}, ValueError, "max_length"),
        ({"num_return_sequences": 5}, ValueError, "num_return_sequences"),
        ({"early_stopping": "sometimes"}, ValueError, "early_stopping"),
        ({"length_penalty": float("nan")}, ValueError, "length_penalty"),
        ({"normalize": "softmax"}, ValueError, "normalize"),
        ({"lookahead": object()}, TypeError, "lookahead"),
        ({"min_length": 100}, ValueError, "min_length"),
        ({"prefix": [9]}, ValueError, "prefix"),
        ({"prefix": [2, 3, EOS]}, ValueError, "prefix"),
    ],
)
def test_trie_beam__bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fs.TrieBeamSearch(TRIE, **kwargs)


def test_trie_beam__numpy_scalars_as_arguments():
    trie = fs.Trie([[2, 3], [4, 5, 6], [4, 7]], eos_id=EOS)
    plain = dict(num_beams=3, max_length=4, length_penalty=0.5, early_stopping=False, num_return_sequences=2)
    numpy = dict(num_beams=np.int64(3), max_length=np.int32(4), length_penalty=np.float32(0.5),
                 early_stopping=np.False_, num_return_sequences=np.int64(2))
    expected = fs.TrieBeamSearch(trie, **plain).search(PrefixModel(8, 0), 2)
    assert fs.TrieBeamSearch(trie, **numpy).search(PrefixModel(8, 0), 2) == expected
    for bad in (np.True_, np.float64(np.inf), 10**400):
        with pytest.raises(ValueError, match="length_penalty"):
            fs.TrieBeamSearch(trie, length_penalty=bad)


def test_trie_beam__bad_trie_argument():
    with pytest.raises(TypeError, match="trie"):
        fs.TrieBeamSearch([[2, 3]])
    with pytest.raises(ValueError, match="trie"):
        fs.TrieBeamSearch([TRIE, TRIE]).search(PrefixModel(8), 3)
    with pytest.raises(ValueError, match="eos_id"):
        fs.TrieBeamSearch([TRIE, fs.Trie([[2]], eos_id=0)])


def step_returning(fn):
    return lambda tokens, beam_idx: fn(len(beam_idx))


@pytest.mark.parametrize(
    "step,error,match",
    [
        (step_returning(lambda n: torch.full((n, 8), float("nan"))), ValueError, "NaN"),
        (step_returning(lambda n: torch.zeros(n, 6)), ValueError, "vocabulary"),
        (step_returning(lambda n: torch.zeros(n + 1, 8)), ValueError, "logits"),
        (step_returning(lambda n: torch.zeros(n, 8, dtype=torch.float64)), TypeError, "float32"),
        (step_returning(lambda n: [[0.0] * 8] * n), TypeError, "torch.Tensor"),
        (step_returning(lambda n: torch.zeros(n, 8, device="meta")), ValueError, "meta device"),
        (step_returning(lambda n: torch.zeros(n, 8).to_sparse()), TypeError, "must be a dense .strided. tensor"),
        (step_returning(lambda n: torch.zeros(n, 8).to_sparse_csr()), TypeError, "must be a dense .strided. tensor"),
        (step_returning(lambda n: torch.zeros(n, 8).index_fill_(1, torch.tensor([6]), float("inf"))), ValueError,
         r"row 0 contains \+inf"),
    ],
)
def test_trie_beam__bad_logits(step, error, match):
    with pytest.raises(error, match=match):
        fs.TrieBeamSearch(TRIE, num_beams=2).search(step, 2)


def test_eos_id_beyond_the_vocabulary__raises():
    step = step_returning(lambda n: torch.zeros(n, 8))
    for decoder in (fs.BeamSearch(8, num_beams=2), fs.Sampler(eos_id=100)):
        with pytest.raises(ValueError, match=r"eos_id is \d+ but logits has only 8 columns"):
            decoder.search(step, 1)
    assert fs.BeamSearch(7, num_beams=2, max_length=2).search(step, 1).sequences


@pytest.mark.parametrize("value,match", [(float("nan"), "row 0 contains NaN"), (float("inf"), r"row 0 contains \+inf")])
def test_beam_search__nan_or_plus_inf_logits_unconstrained(value, match):
    with pytest.raises(ValueError, match=match):
        fs.BeamSearch(EOS).search(step_returning(lambda n: torch.zeros(n, 8).index_fill_(1, torch.tensor([3]), value)), 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("at", [0, 2100, 3 * 2048 + 3])
def test_beam_step__plus_inf_logit__raises_where_the_normaliser_reads_it(dtype, at):
    # A +inf logit leaves no log-prob of its row defined (log_softmax gives NaN): the full normaliser
    # reads every logit, the allowed one only the trie's children.
    from pyfastseq.search import _beam_step

    vocab = 3 * 2048 + 5
    clean = torch.randn(2, vocab, generator=torch.Generator().manual_seed(at)).to(dtype)
    logits = clean.clone()
    logits[1, at] = float("inf")
    trie, nodes = fs.Trie([[1], [7]]), torch.zeros(2, dtype=torch.int32)  # the root's children: 1 and 7
    for args in [(), (trie, nodes)]:
        with pytest.raises(ValueError, match=r"row 1 contains \+inf"):
            _beam_step(logits, torch.zeros(2), 1, *args)
    got = _beam_step(logits, torch.zeros(2), 1, trie, nodes, normalize="allowed")
    want = _beam_step(clean, torch.zeros(2), 1, trie, nodes, normalize="allowed")
    assert all(torch.equal(got[name], want[name]) for name in want)
    logits[1, 7] = float("inf")
    with pytest.raises(ValueError, match=r"row 1 contains \+inf"):
        _beam_step(logits, torch.zeros(2), 1, trie, nodes, normalize="allowed")


def test_trie_beam__bad_lookahead_deltas():
    class Wrong:
        def deltas(self, trie, nodes, generated, batch_index):
            return torch.arange(len(nodes) + 1), torch.zeros(len(nodes), dtype=torch.int32)

    class Negative:
        def deltas(self, trie, nodes, generated, batch_index):
            counts = [len(trie.children(n)[0]) if n >= 0 else 0 for n in nodes.tolist()]
            return np.concatenate([[0], np.cumsum(counts)]), -np.ones(sum(counts), dtype=np.int32)

    with pytest.raises(ValueError, match="lookahead.deltas"):
        fs.TrieBeamSearch(TRIE, num_beams=2, lookahead=Wrong()).search(PrefixModel(8), 1)
    with pytest.raises(ValueError, match="negative"):
        fs.TrieBeamSearch(TRIE, num_beams=2, lookahead=Negative()).search(PrefixModel(8), 1)
    for huge in (2**31, 2**32 + 1, 2**40, -(2**31) - 1):  # would wrap to a valid int32 delta
        class Huge:
            def deltas(self, trie, nodes, generated, batch_index, huge=huge):
                counts = [len(trie.children(n)[0]) if n >= 0 else 0 for n in nodes.tolist()]
                return np.concatenate([[0], np.cumsum(counts)]), np.full(sum(counts), huge, dtype=np.int64)

        with pytest.raises(ValueError, match=f"delta of {huge}, beyond the int32 range"):
            fs.TrieBeamSearch(TRIE, num_beams=2, lookahead=Huge()).search(PrefixModel(8), 1)
    with pytest.raises(TypeError, match="lookahead.deltas"):
        fs.TrieBeamSearch(TRIE, num_beams=2, lookahead=type("L", (), {"deltas": lambda *a: None})()).search(
            PrefixModel(8), 1)
    meta = type("L", (), {"deltas": lambda self, trie, nodes, generated, batch_index: (
        torch.zeros(len(nodes) + 1, dtype=torch.long, device="meta"), torch.zeros(0, dtype=torch.int32, device="meta"))})
    with pytest.raises(ValueError, match="lookahead.deltas row_offsets is on the meta device"):
        fs.TrieBeamSearch(TRIE, num_beams=2, lookahead=meta()).search(PrefixModel(8), 1)


def test_search__bad_batch_size_or_step_fn():
    with pytest.raises(ValueError, match="batch_size"):
        fs.BeamSearch(EOS).search(PrefixModel(8), 0)
    for step_fn in (None, "model", TRIE):
        with pytest.raises(TypeError, match=f"step_fn must be callable .* got {type(step_fn).__name__}"):
            fs.BeamSearch(EOS).search(step_fn, 1)


# -- the fused step alone, against log_softmax + dense mask + topk ------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("batch,beams,vocab", [(1, 1, 7), (3, 4, 59), (2, 8, 1025)])
def test_beam_step__matches_torch_topk(batch, beams, vocab, constrained, dtype):
    from pyfastseq.search import _beam_step

    gen = torch.Generator().manual_seed(batch * vocab)
    rows = batch * beams
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    scores = -torch.rand(rows, generator=gen) * 5
    scores[1::3] = -float("inf")  # dead rows
    scores[0] = 0.0
    logp = torch.log_softmax(logits.float(), -1)
    nodes = trie = None
    if constrained:
        rng = random.Random(vocab)
        trie = fs.Trie(random_entries(rng, vocab, 40 * beams, 1, 4))
        internal = [n for n in range(trie.num_nodes) if len(trie.children(n)[0])]
        nodes = torch.tensor([rng.choice(internal) for _ in range(rows)], dtype=torch.int32)
        keep = torch.zeros(rows, vocab, dtype=torch.bool)
        for r, n in enumerate(nodes.tolist()):
            keep[r, trie.children(n)[0]] = True
        logp = logp.masked_fill(~keep, -float("inf"))
    got = _beam_step(logits, scores, beams, trie, nodes)
    acc = (logp + scores[:, None]).view(batch, -1)
    want = torch.topk(acc, min(2 * beams, acc.shape[1]))
    for b in range(batch):
        n = int(got["count"][b])
        finite = int(torch.isfinite(want.values[b]).sum())
        assert n == finite
        torch.testing.assert_close(got["score"][b, :n], want.values[b, :n], rtol=0, atol=1e-5)
        # ties (frequent in bf16) may be ordered differently: check each candidate's own score
        parent, token = got["parent"][b, :n].long(), got["token"][b, :n].long()
        torch.testing.assert_close(got["score"][b, :n], acc[b, (parent - b * beams) * vocab + token], rtol=0, atol=1e-5)
        assert len(set(zip(parent.tolist(), token.tolist()))) == n
        if constrained:
            assert got["node"][b, :n].tolist() == trie.step(nodes[parent], token).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("vocab", [2047, 3 * 2048 + 5, 50257])
def test_beam_step__normaliser_of_long_rows__matches_log_softmax(vocab, dtype):
    # Rows whose maximum rises from block to block (the running sum is rescaled each time), sits in
    # the tail past the last whole vector, or stands alone among -inf; spread wide and narrow.
    from pyfastseq.search import _beam_step

    gen = torch.Generator().manual_seed(vocab)
    ramp = torch.linspace(-30, 12, vocab)
    tail_max = torch.randn(vocab, generator=gen)
    tail_max[-1] = 9.0
    lonely = torch.full((vocab,), -float("inf"))
    lonely[vocab // 2] = 1.0
    rows = [ramp, tail_max, lonely, torch.randn(vocab, generator=gen) * 8, torch.randn(vocab, generator=gen) * 0.1]
    logits = torch.stack(rows).to(dtype)
    got = _beam_step(logits, torch.zeros(len(rows)), 1)
    want = torch.log_softmax(logits.float(), -1).max(-1)
    torch.testing.assert_close(got["score"][:, 0], want.values, rtol=0, atol=2e-5)
    assert got["token"][:, 0].tolist() == want.indices.tolist()


@pytest.mark.parametrize("vocab", [300, 5000])
def test_beam_step__ties_in_wide_rows__lowest_token_first(vocab):
    # Logits drawn from 40 values, a fifth of them -inf: the candidates are decided by ties, and
    # rows wider than the step's candidate buffer are compacted several times on the way. Beam
    # scores far apart keep ties within a row.
    from pyfastseq.search import _beam_step

    gen = torch.Generator().manual_seed(vocab)
    batch, beams = 3, 4
    logits = torch.randint(0, 40, (batch * beams, vocab), generator=gen).float()
    logits[torch.rand(logits.shape, generator=gen) < 0.2] = -float("inf")
    scores = -100.0 * (torch.arange(batch * beams) % beams).float()
    got = _beam_step(logits, scores, beams)
    for b in range(batch):
        rows = slice(b * beams, (b + 1) * beams)
        acc = (logits[rows] + scores[rows, None]).flatten().tolist()
        order = sorted(range(len(acc)), key=lambda i: (-acc[i], i))[: 2 * beams]
        assert got["token"][b].tolist() == [i % vocab for i in order]
        assert got["parent"][b].tolist() == [b * beams + i // vocab for i in order]


_NAN_BITS = {torch.float32: (torch.int32, [0x7FC00000, 0x7F800001, -0x00400000, 0x7FFFFFFF]),
             torch.float16: (torch.int16, [0x7E00, 0x7C01, -0x0200, 0x7FFF]),
             torch.bfloat16: (torch.int16, [0x7FC0, 0x7F81, -0x0040, 0x7FFF])}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["first", "middle", "tail", "among_minus_inf", "before_plus_inf", "after_plus_inf"])
@pytest.mark.parametrize("payload", range(4))
def test_beam_step__nan_anywhere_in_a_row__raises(dtype, case, payload):
    # Quiet and signalling NaNs, either sign, in a block that is summed, one that is not (every other
    # logit -inf, or the row already +inf) and the tail past the last whole vector.
    from pyfastseq.search import _beam_step

    vocab = 3 * 2048 + 5
    row = torch.randn(vocab, generator=torch.Generator().manual_seed(payload))
    at = {"first": 0, "middle": 3000, "tail": vocab - 2, "among_minus_inf": 100,
          "before_plus_inf": 10, "after_plus_inf": 5000}[case]
    if case == "among_minus_inf":
        row[:2048] = -float("inf")
    if case in ("before_plus_inf", "after_plus_inf"):
        row[2100] = float("inf")
    logits = torch.stack([torch.zeros(vocab), row]).to(dtype)
    int_dtype, patterns = _NAN_BITS[dtype]
    logits[1, at] = torch.tensor([patterns[payload]], dtype=int_dtype).view(dtype)[0]
    assert logits[1, at].isnan()
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        _beam_step(logits, torch.zeros(2), 1)
    trie = fs.Trie([[1], [7]])
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        _beam_step(logits, torch.zeros(2), 1, trie, torch.zeros(2, dtype=torch.int32))


def test_beam_step__live_row_at_leaf_or_bad_node__raises():
    from pyfastseq.search import _beam_step

    trie = fs.Trie([[2, 3]])
    leaf = trie.walk([2, 3])
    with pytest.raises(ValueError, match="no children"):
        _beam_step(torch.zeros(2, 5), torch.zeros(2), 2, trie, torch.tensor([0, leaf], dtype=torch.int32))
    with pytest.raises(ValueError, match="out of range"):
        _beam_step(torch.zeros(2, 5), torch.zeros(2), 2, trie, torch.tensor([0, 99], dtype=torch.int32))
    # a dead row (-inf score) is never looked at
    out = _beam_step(torch.zeros(2, 5), torch.tensor([0.0, -float("inf")]), 2, trie,
                     torch.tensor([0, 99], dtype=torch.int32))
    assert out["count"].tolist() == [1] and out["token"][0, 0] == 2


def test_trie_beam__lookahead_with_per_item_tries__same_as_shared():
    rng = random.Random(8)
    vocab = 11
    trie = fs.Trie([e + [EOS] for e in random_entries(rng, vocab, 12, 1, 4)], eos_id=EOS)
    kwargs = dict(num_beams=3, max_length=trie.depth, num_return_sequences=2, output_token_scores=True)
    shared = fs.TrieBeamSearch(trie, lookahead=FakeLookahead(), **kwargs).search(PrefixModel(vocab, 8), 2)
    per_item = fs.TrieBeamSearch([trie, trie], lookahead=FakeLookahead(), **kwargs).search(PrefixModel(vocab, 8), 2)
    assert per_item == shared


@pytest.mark.parametrize("entries,path", [([[5, 3, 6], [7, 8]], [5, 3]), ([[5, 3], [5, 3, 6]], [5, 3]),
                                          ([[7], [2, 9, 3, 3]], [2, 9, 3])])
def test_trie_with_eos_inside_an_entry__raises(entries, path):
    # A hypothesis ends when it picks eos, so [5, 3] would be returned from [5, 3, 6, 3]: not an entry.
    trie = fs.Trie(entries, eos_id=3)
    with pytest.raises(ValueError, match=re.escape(f"trie holds eos_id 3 inside an entry: more tokens follow the path {path}.")):
        fs.TrieBeamSearch(trie)
    with pytest.raises(ValueError, match="eos_id 3 inside an entry"):
        fs.TrieBeamSearch([fs.Trie([[1]], eos_id=3), trie])
    with pytest.raises(ValueError, match="eos_id 3 inside an entry"):
        fs.Sampler(trie=trie)
    fs.TrieBeamSearch(fs.Trie(entries))  # no eos: rows end at leaves only
    fs.Sampler(trie=trie, eos_id=4)  # the sampler ends rows at its own eos
    with pytest.raises(ValueError, match=re.escape("eos_id 6 inside an entry: more tokens follow the path [5, 3, 6]")):
        fs.Sampler(trie=fs.Trie([[5, 3, 6, 1]], eos_id=3), eos_id=6)


def test_trie_with_eos_in_its_prefix__decodes_below_it():
    # GENRE with BART: the decoder start token is eos and starts every entry; the search starts below it.
    trie = fs.Trie([[2, 0, 10, 11, 2], [2, 0, 12, 2], [4, 2, 5]], eos_id=2)  # [4, 2, 5, 2] is out of reach
    out = fs.TrieBeamSearch(trie, num_beams=2, max_length=8, prefix=[2], num_return_sequences=2).search(
        step_returning(lambda n: torch.zeros(n, 16)), 1)
    assert sorted(out.sequences[0]) == [[0, 10, 11, 2], [0, 12, 2]]
    below = fs.Trie([[2, 0, 2, 5], [2, 7]], eos_id=2)
    with pytest.raises(ValueError, match=re.escape("more tokens follow the path [2, 0, 2]")):
        fs.TrieBeamSearch(below, prefix=[2])
    with pytest.raises(ValueError, match=re.escape("more tokens follow the path [2]")):
        fs.TrieBeamSearch(trie)
