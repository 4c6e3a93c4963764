"""The CUDA beam step against the CPU fused step, and searches on CUDA logits against CPU logits.

Each test runs on a GPU (skipped without one) and on the CUDA emulator, which runs the same kernels
on the CPU (cuda_emulator/emulator.h) behind the same dispatch, with CPU tensors standing for device
ones. test_beam_dispatch.py checks the search loop's CUDA route itself.
"""

from __future__ import annotations

import random
from unittest import mock

import numpy as np
import pytest
import torch

import pyfastseq as fs
import pyfastseq.search as search
from pyfastseq import _backend
from beam_models import PrefixModel

pytestmark = pytest.mark.native

EOS = 1


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.cuda), "emulated"])
def device(request):
    """A GPU, or the CPU under the CUDA emulator."""
    if request.param == "cuda":
        return torch.device("cuda")
    request.getfixturevalue("on_cuda_emulator")
    return torch.device("cpu")


def cpu_route():
    """Keeps a search on the CPU step (under the emulator every tensor counts as a GPU one)."""
    return mock.patch.object(_backend, "on_gpu", lambda tensor: False)


def random_trie(rng: random.Random, vocab: int, count: int, max_len: int) -> fs.Trie:
    entries = {tuple(rng.randrange(2, vocab) for _ in range(rng.randint(1, max_len))) + (EOS,) for _ in range(count)}
    return fs.Trie([list(e) for e in sorted(entries)], eos_id=EOS)


def step_inputs(batch, beams, vocab, dtype, trie, seed):
    gen = torch.Generator().manual_seed(seed)
    rows = batch * beams
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    scores = -torch.rand(rows, generator=gen) * 5
    scores[1::3] = -float("inf")  # dead rows
    scores[0] = 0.0
    nodes = None
    if trie is not None:
        rng = random.Random(seed)
        internal = [n for n in range(trie.num_nodes) if len(trie.children(n)[0])]
        nodes = torch.tensor([rng.choice(internal) for _ in range(rows)], dtype=torch.int32)
        nodes[2::5] = -2  # ended hypotheses: eos only
    return logits, scores, nodes


def assert_same_candidates(got, want, atol):
    np.testing.assert_array_equal(got["count"], want["count"])
    for b, n in enumerate(want["count"].tolist()):
        gs, ws = got["score"][b, :n], want["score"][b, :n]
        torch.testing.assert_close(gs, ws, rtol=0, atol=atol)
        # Identity must agree wherever the score is not tied (within atol) with another candidate.
        for i in range(n):
            others = torch.cat([ws[:i], ws[i + 1:]])
            if len(others) and torch.isclose(others, ws[i], rtol=0, atol=atol).any():
                continue
            for name in ("token", "parent", "node"):
                assert int(got[name][b, i]) == int(want[name][b, i]), (name, b, i)
            torch.testing.assert_close(got["logprob"][b, i], want["logprob"][b, i], rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("constrained,normalize", [(False, "full"), (True, "full"), (True, "allowed")])
@pytest.mark.parametrize("beams", [1, 4, 16, 64])
def test_cuda_step__matches_cpu_step(beams, constrained, normalize, dtype, device):
    batch, vocab = 3, 3001
    trie = random_trie(random.Random(beams), vocab, 60 * beams, 4) if constrained else None
    logits, scores, nodes = step_inputs(batch, beams, vocab, dtype, trie, seed=beams)
    want = search._beam_step(logits, scores, beams, trie, nodes, normalize)
    got = search._beam_step_cuda(logits.to(device), scores, beams, trie, nodes, normalize)
    assert_same_candidates(got, want, atol=1e-5)


@pytest.mark.parametrize("beams", [256, 1024])
def test_cuda_step__widest_beams_dense(beams, device):
    logits, scores, _ = step_inputs(1, beams, 4099, torch.bfloat16, None, seed=7)
    want = search._beam_step(logits, scores, beams)
    got = search._beam_step_cuda(logits.to(device), scores, beams)
    assert_same_candidates(got, want, atol=1e-5)


def test_cuda_step__strided_rows_and_neg_inf_logits(device):
    logits, scores, _ = step_inputs(2, 4, 257, torch.float32, None, seed=3)
    wide = torch.full((8, 301), 7.0)  # rows start off 16-byte alignment
    wide[:, :257] = logits
    wide[:, 5:200] = -float("inf")  # never candidates (the CPU heap admits only > -inf)
    view = wide[:, :257]
    want = search._beam_step(view, scores, 4)
    got = search._beam_step_cuda(wide.to(device)[:, :257], scores, 4)
    assert_same_candidates(got, want, atol=1e-5)


@pytest.mark.parametrize("vocab", [700, 3001])
def test_cuda_step__all_equal_logits__lowest_tokens(vocab, device):
    # Every logit ties: the candidates are the lowest tokens of the lowest beams, as torch.topk orders them.
    logits, scores = torch.zeros(8, vocab), torch.zeros(8)
    want = search._beam_step(logits, scores, 4)
    got = search._beam_step_cuda(logits.to(device), scores, 4)
    for name in ("score", "token", "parent", "count"):
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("constrained", [False, True])
def test_cuda_search__same_as_cpu_logits(constrained, dtype, device):
    vocab, beams = 50, 8
    if constrained:
        trie = random_trie(random.Random(5), vocab, 300, 6)
        make = lambda: fs.TrieBeamSearch(trie, num_beams=beams, max_length=trie.depth, num_return_sequences=4,  # noqa: E731
                                         min_length=2, output_token_scores=True)
    else:
        make = lambda: fs.BeamSearch(EOS, num_beams=beams, max_length=7, num_return_sequences=4,  # noqa: E731
                                     early_stopping="never", min_length=2, output_token_scores=True)
    with cpu_route():
        want = make().search(PrefixModel(vocab, 2, dtype), batch_size=3)
    cpu_model = PrefixModel(vocab, 2, dtype)
    got = make().search(lambda t, b: cpu_model(t, b).to(device), batch_size=3)
    assert got.sequences == want.sequences
    assert got.finished == want.finished
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", ["full", "allowed"])
def test_cuda_search__per_item_tries_and_prefix(normalize, device):
    vocab = 30
    tries = [random_trie(random.Random(seed), vocab, 80, 5) for seed in (1, 2)]
    make = lambda: fs.TrieBeamSearch(tries, num_beams=5, max_length=6, num_return_sequences=3,  # noqa: E731
                                     normalize=normalize, early_stopping=False)
    with cpu_route():
        want = make().search(PrefixModel(vocab, 9), batch_size=2)
    cpu_model = PrefixModel(vocab, 9)
    got = make().search(lambda t, b: cpu_model(t, b).to(device), batch_size=2)
    assert got.sequences == want.sequences
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)


def test_cuda_step__nan_and_leaf_rows_raise(device):
    trie = fs.Trie([[2, 3]])
    leaf = trie.walk([2, 3])
    with pytest.raises(ValueError, match="no children"):
        search._beam_step_cuda(torch.zeros(2, 5, device=device), torch.zeros(2), 2, trie,
                               torch.tensor([0, leaf], dtype=torch.int32))
    logits = torch.zeros(2, 5, device=device)
    logits[1, 4] = float("nan")
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        search._beam_step_cuda(logits, torch.zeros(2), 2)
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        fs.BeamSearch(EOS, num_beams=2, max_length=3).search(lambda t, b: logits, batch_size=1)
