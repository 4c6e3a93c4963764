"""fs.Sampler: empirical distributions against the reference (chi-square), the seed's top-p example,
greedy, reproducibility, trie constraints, min_ends, model log-prob scores, and bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import pyfastseq as fs
from pyfastseq.reference.sampling import sampling_probs

from beam_models import PrefixModel, ShiftedModel

pytestmark = pytest.mark.native


def draw_once(logits: torch.Tensor, rows: int, **kw) -> np.ndarray:
    """One token per row, every row seeing the same [V] logits."""
    batch = logits.expand(rows, -1)
    out = fs.Sampler(max_length=1, **kw).search(lambda tokens, beam_idx: batch, rows)
    return np.array([item[0][0] for item in out.sequences])


def assert_matches(tokens: np.ndarray, probs: torch.Tensor):
    """Chi-square goodness of fit on the target's support; nothing drawn outside it."""
    counts = np.bincount(tokens, minlength=probs.numel())
    support = (probs > 0).numpy()
    assert counts[~support].sum() == 0
    if support.sum() > 1:
        expected = probs.numpy()[support] * len(tokens)
        assert stats.chisquare(counts[support], expected).pvalue > 1e-3


@pytest.mark.parametrize(
    "top_k,top_p,temperature",
    [(0, 1.0, 1.0), (5, 1.0, 1.0), (0, 0.7, 1.0), (8, 0.9, 0.7), (3, 0.5, 2.0), (0, 1.0, 0.5), (40, 0.95, 1.3)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_empirical_distribution__topk__topp__temperature__dtype(top_k, top_p, temperature, dtype):
    logits = (torch.randn(37) * 1.5).to(dtype)
    tokens = draw_once(logits, 20000, top_k=top_k, top_p=top_p, temperature=temperature, seed=11)
    assert_matches(tokens, sampling_probs(logits.float()[None], top_k, top_p, temperature)[0])


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_over_a_large_vocabulary(top_p):
    # The whole-vocabulary top-p cut bins weights by magnitude: exact support, right frequencies
    # (the 30 likeliest tokens one by one, the rest of the support lumped together).
    logits = torch.randn(5000) * 2
    probs = sampling_probs(logits[None], top_p=top_p)[0]
    tokens = draw_once(logits, 20000, top_p=top_p, seed=4)
    counts = np.bincount(tokens, minlength=5000)
    support = (probs > 0).numpy()
    assert counts[~support].sum() == 0
    order = torch.argsort(probs, descending=True).numpy()[: min(30, support.sum())]
    observed = np.append(counts[order], len(tokens) - counts[order].sum())
    expected = np.append(probs.numpy()[order], 1 - probs.numpy()[order].sum()) * len(tokens)
    keep = expected > 0
    assert stats.chisquare(observed[keep], expected[keep] * observed.sum() / expected[keep].sum()).pvalue > 1e-3


@pytest.mark.parametrize("top_p,support", [(0.8, {0, 1}), (0.5, {0}), (0.0, {0}), (0.95, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_seed_worked_example(top_p, support):
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    probs = sampling_probs(logits[None], top_p=top_p)[0]
    assert set(torch.nonzero(probs).flatten().tolist()) == support
    tokens = draw_once(logits, 4000, top_p=top_p, seed=3)
    assert set(tokens.tolist()) == support
    assert_matches(tokens, probs)


def test_top_k_then_top_p_renormalises_the_top_k():
    # Top-2 renormalised is [.625, .375]: top_p=.6 keeps one token (the seed's order); on the full
    # distribution .5 < .6 would need two.
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert set(draw_once(logits, 500, top_k=2, top_p=0.6, seed=1).tolist()) == {0}


@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_top_k_1_is_greedy(temperature):
    logits = torch.randn(64, 1000)
    out = fs.Sampler(top_k=1, temperature=temperature, max_length=1).search(lambda t, b: logits, 64)
    assert [item[0][0] for item in out.sequences] == logits.argmax(-1).tolist()


def test_greedy_generate_equals_beam_search_with_one_beam():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=50, n_positions=32, n_layer=2, n_embd=32, n_head=2)
    ).eval()
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
    sampled = fs.Sampler(top_k=1, eos_id=3, max_length=6).generate(model, prompts, num_samples=2)
    greedy = fs.BeamSearch(3, num_beams=1, max_length=6).generate(model, prompts)
    assert sampled.sequences == [[greedy.sequences[b][0]] * 2 for b in range(2)]
    np.testing.assert_allclose([s[0] for s in sampled.scores],
                               [g[0] * len(seq[0]) for g, seq in zip(greedy.scores, greedy.sequences)], rtol=1e-5)


def test_reproducible_with_seed():
    model = PrefixModel(30, seed=4)
    run = lambda **kw: fs.Sampler(top_k=10, top_p=0.9, eos_id=0, max_length=12, **kw).search(model, 3, num_samples=4)
    first = run(seed=123)
    assert run(seed=123) == first
    assert run(seed=124).sequences != first.sequences
    torch.manual_seed(7)
    unseeded = run()
    torch.manual_seed(7)
    assert run() == unseeded


def test_scores_are_model_log_probs_and_rows_end_at_eos():
    model = PrefixModel(12, seed=1)
    out = fs.Sampler(top_k=4, temperature=0.8, eos_id=2, max_length=9, seed=5).search(model, 2, num_samples=3)
    for item, scores, finished in zip(out.sequences, out.scores, out.finished):
        for seq, score, done in zip(item, scores, finished):
            expected = sum(float(torch.log_softmax(model.logprobs(seq[:t]), -1)[tok]) for t, tok in enumerate(seq))
            assert score == pytest.approx(expected, rel=1e-5, abs=1e-5)
            assert done == (seq[-1] == 2) and seq.count(2) == int(done)
            assert done or len(seq) == 9


@pytest.mark.parametrize("offset", [1e4, 1e6, 3e8])
@pytest.mark.parametrize("cut", ["none", "top_k", "top_p", "trie"])
def test_scores_of_logits_far_from_zero__match_float64_log_softmax(cut, offset):
    # A token's log-prob is (x - max) - log(sum(exp(x - max))), exact for x near the max however large
    # the logits; x - logsumexp, the logsumexp rounded to float32 first, is off by up to half its ulp
    # (every log-prob 0 at 3e8). Each cut draws by its own path; all report the same log-prob.
    vocab = 1003
    model = ShiftedModel(vocab, 3, offset)
    kw = {"top_k": dict(top_k=5), "top_p": dict(top_p=0.9), "none": {},
          "trie": dict(trie=fs.Trie([[t, 2] for t in range(3, vocab, 7)], eos_id=2))}[cut]
    out = fs.Sampler(eos_id=2, max_length=3, seed=5, **kw).search(model, 2, num_samples=2)
    for seq, score in zip(sum(out.sequences, []), sum(out.scores, [])):
        logprobs = [torch.log_softmax(model.logprobs(seq[:t]).double(), -1)[token] for t, token in enumerate(seq)]
        assert score == pytest.approx(float(sum(logprobs)), abs=1e-5)


def test_min_ends_two():
    # eos is likely, so rows pick it twice; they end at the second one.
    class EosHeavy(PrefixModel):
        def logprobs(self, prefix):
            logits = super().logprobs(prefix)
            logits[1] = logits.max() + 1.0
            return logits

    out = fs.Sampler(eos_id=1, min_ends=2, max_length=40, seed=2).search(EosHeavy(8), 4, num_samples=5)
    for item, finished in zip(out.sequences, out.finished):
        for seq, done in zip(item, finished):
            assert done and seq[-1] == 1 and seq.count(1) == 2


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (2, 1.0), (0, 0.6)])
def test_constrained_first_step_distribution(top_k, top_p):
    trie = fs.Trie([[3, 1], [5, 1], [9, 1], [11, 2, 1], [20, 1]], eos_id=1)
    logits = torch.randn(25)
    tokens = draw_once(logits, 20000, top_k=top_k, top_p=top_p, trie=trie, seed=9)
    allowed = torch.zeros(25, dtype=torch.bool)
    allowed[[3, 5, 9, 11, 20]] = True
    assert_matches(tokens, sampling_probs(logits[None], top_k, top_p, allowed=allowed[None])[0])


@given(
    entries=st.lists(st.lists(st.integers(2, 15), min_size=1, max_size=6), min_size=1, max_size=25),
    top_k=st.integers(0, 4),
    top_p=st.sampled_from([1.0, 0.9, 0.5]),
    seed=st.integers(0, 2**64 - 1),
)
def test_constrained_samples_are_trie_entries(entries, top_k, top_p, seed):
    trie = fs.Trie(entries, eos_id=1)
    tries = [trie, fs.Trie(entries[::-1] + [[7]], eos_id=1)]
    for t in (trie, tries):
        sampler = fs.Sampler(top_k=top_k, top_p=top_p, seed=seed, max_length=trie.depth + 1, trie=t)
        out = sampler.search(PrefixModel(16, seed=seed % 97), 2, num_samples=3)
        for b, item in enumerate(out.sequences):
            owner = t if isinstance(t, fs.Trie) else t[b]
            for seq, done in zip(item, out.finished[b]):
                assert done and owner.contains(seq)


@pytest.mark.parametrize("kwargs", [dict(top_p=0.0), dict(top_p=0), dict(top_p=1e-300), dict(top_p=1e-7),
                                    dict(top_p=1e-6), dict(top_p=1e-7, top_k=5),
                                    dict(temperature=1e-40), dict(temperature=1e-46), dict(temperature=1e-300),
                                    dict(temperature=1e-300, top_k=5)])
def test_vanishing_top_p_or_temperature_is_greedy(kwargs):
    # top_p within the 1e-6 slack of 0 (or 0, as transformers allows) keeps only the best token; so does a temperature whose
    # reciprocal overflows float32 (or that float32 flushes to 0).
    steps = torch.randn(4, 6, 40, generator=torch.Generator().manual_seed(5))
    calls = []

    def step(tokens, beam_idx):
        calls.append(None)
        return steps[len(calls) - 1]

    out = fs.Sampler(seed=3, max_length=4, **kwargs).search(step, 3, num_samples=2)
    greedy = steps.argmax(-1).T.tolist()  # [rows, steps]
    assert [seq for item in out.sequences for seq in item] == greedy


def test_top_k_keeps_every_logit_tied_with_the_kth_as_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper

    rng = np.random.default_rng(4)
    logits = torch.from_numpy(np.round(rng.normal(0, 2, 8000))).float()  # integers: many ties
    for top_k in (5, 50, 300):
        kept = torch.isfinite(TopKLogitsWarper(top_k=top_k)(None, logits[None].clone())[0])
        assert kept.sum() > top_k  # the k-th logit is tied
        probs = sampling_probs(logits[None], top_k=top_k)[0]
        assert torch.equal(probs > 0, kept)
        assert_matches(draw_once(logits, 20000, top_k=top_k, seed=top_k), probs)
    trie = fs.Trie([[t] for t in range(8000)])
    probs = sampling_probs(logits[None], top_k=50)[0]
    assert_matches(draw_once(logits, 20000, top_k=50, seed=2, trie=trie), probs)


@pytest.mark.parametrize("temperature", [1e-3, 1.0, 1e7, 1e12])
def test_top_k_over_a_row_masked_with_a_finite_fill(temperature):
    # Fewer live tokens than top_k: the k-th logit ties the whole masked rest, which weighs nothing at
    # usual temperatures and nearly as much as the live tokens at huge ones.
    logits = torch.full((300,), -1e9)
    logits[:10] = torch.randn(10, generator=torch.Generator().manual_seed(5)) * 3
    probs = sampling_probs(logits[None], top_k=50, temperature=temperature)[0]
    assert_matches(draw_once(logits, 20000, top_k=50, temperature=temperature, seed=6), probs)


@pytest.mark.parametrize("fill", [0.0, -1e9, 3e4])
def test_top_k_1_over_a_row_of_equal_logits_draws_all_of_them(fill):
    logits = torch.full((64,), fill)
    probs = sampling_probs(logits[None], top_k=1)[0]
    assert (probs > 0).all()
    assert_matches(draw_once(logits, 20000, top_k=1, seed=7), probs)


def test_whole_row_draw_reaches_the_tail_and_never_a_masked_token():
    # One token of weight 1 and 65,534 below half a float32 ulp of it: a float32 running sum beside
    # the 1 drops that tail's mass, which would leave the last tokens out of reach. Token V - 2 has
    # probability 2e-4; token V - 1 is masked.
    V = 65536
    logits = torch.full((V,), math.log(5.5e-8))
    logits[0], logits[V - 2], logits[V - 1] = 0.0, math.log(2e-4), -float("inf")
    tokens = draw_once(logits, 40000, seed=3)
    assert (tokens == V - 1).sum() == 0
    expected = 40000 * float(sampling_probs(logits[None])[0, V - 2])  # about 8
    assert 1 <= (tokens == V - 2).sum() <= 3 * expected
    tail = (tokens >= V // 2).sum()  # the second half of the tail: about 7 draws in 1,000
    assert stats.binomtest(int(tail), 40000, float(sampling_probs(logits[None])[0, V // 2:].sum())).pvalue > 1e-3


def test_numpy_scalars_are_numbers():
    sampler = fs.Sampler(top_k=np.int64(3), top_p=np.float32(0.5), temperature=np.float64(0.7))
    assert (sampler.top_k, sampler.top_p, sampler.temperature) == (3, float(np.float32(0.5)), 0.7)


def test_nan_and_bad_logits():
    sampler = fs.Sampler(max_length=2)
    nan = torch.zeros(2, 5)
    nan[1, 3] = float("nan")
    with pytest.raises(ValueError, match="logits row 1 contains NaN"):
        sampler.search(lambda t, b: nan, 2)
    with pytest.raises(ValueError, match="no finite logit"):
        sampler.search(lambda t, b: torch.full((2, 5), float("-inf")), 2)
    with pytest.raises(ValueError, match=r"shape \[batch_size \* num_samples = 6"):
        sampler.search(lambda t, b: torch.zeros(2, 5), 2, num_samples=3)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        sampler.search(lambda t, b: torch.zeros(2, 5, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="meta device"):
        sampler.search(lambda t, b: torch.zeros(2, 5, device="meta"), 2)
    with pytest.raises(TypeError, match="logits returned by step_fn must be a dense"):
        sampler.search(lambda t, b: torch.zeros(2, 5).to_sparse(), 2)
    trie = fs.Trie([[7, 8]])
    with pytest.raises(ValueError, match="trie holds token id 8"):
        fs.Sampler(trie=trie).search(lambda t, b: torch.zeros(1, 5), 1)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(top_k=-1), ValueError, "top_k must be >= 0"),
        (dict(top_k=1.5), TypeError, "top_k must be an int"),
        (dict(top_p=-0.1), ValueError, r"top_p must be a number in \[0, 1\]"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(temperature=0.0), ValueError, r"temperature must be a number in \(0, 3.403e\+38\]"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=1e39), ValueError, "temperature"),  # past float32: inf in the kernel
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(seed=-1), ValueError, "seed must be None or an int"),
        (dict(eos_id=-2), ValueError, "eos_id"),
        (dict(max_length=0), ValueError, "max_length must be >= 1"),
        (dict(min_ends=0), ValueError, "min_ends must be >= 1"),
        (dict(trie="abc"), TypeError, "trie must be None"),
        (dict(trie=[[1, 2]]), TypeError, "trie must be None"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fs.Sampler(**kwargs)


def test_bad_search_arguments():
    trie = fs.Trie([[1, 2]], eos_id=3)
    with pytest.raises(ValueError, match="min_ends must be 1 with a trie"):
        fs.Sampler(trie=trie, min_ends=2)
    with pytest.raises(ValueError, match="trie holds 2 tries but batch_size is 3"):
        fs.Sampler(trie=[trie, trie]).search(lambda t, b: torch.zeros(3, 5), 3)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        fs.Sampler().search(lambda t, b: torch.zeros(1, 5), 1, num_samples=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        fs.Sampler().search(lambda t, b: torch.zeros(1, 5), "1")
    with pytest.raises(TypeError, match="step_fn must be callable as step_fn.tokens, beam_idx. -> logits, got NoneType"):
        fs.Sampler().search(None, 1)
