"""The CUDA beam step against the CPU fused step, and searches on CUDA logits against CPU logits.

Each test runs on a GPU (skipped without one) and on the CUDA emulator, which runs the same kernels
on the CPU (cuda_emulator/emulator.h) behind the same dispatch, with CPU tensors standing for device
ones. test_beam_dispatch.py checks the search loop's CUDA route itself.
"""

from __future__ import annotations

import random
import re
from unittest import mock

import numpy as np
import pytest
import torch

import pyfastseq as fs
import pyfastseq.search as search
from pyfastseq import _backend
from pyfastseq._validate import as_eos_id
from beam_models import ImpossibleAfter, PrefixModel

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


@pytest.mark.parametrize("one_live_row", [False, True])
@pytest.mark.parametrize("beams,vocab", [(160, 20011), (256, 4099), (1024, 4099)])
def test_cuda_step__widest_beams_dense(beams, vocab, one_live_row, device):
    # Over 128 beams a row's selection is bounded by all the logits its threads kept (up to 384
    # beams), else by radix passes over the row. With one live row, every candidate is that row's.
    logits, scores, _ = step_inputs(1, beams, vocab, torch.bfloat16, None, seed=7)
    if one_live_row:
        scores[1:] = -float("inf")
    want = search._beam_step(logits, scores, beams)
    got = search._beam_step_cuda(logits.to(device), scores, beams)
    assert_same_candidates(got, want, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_step__long_rows(offset, constrained, dtype, device):
    # Rows of 20k columns: the normaliser pass's batched loads (several 16-byte words per thread in
    # flight) and the remainder after them, on rows at and off 16-byte alignment. Constrained rows
    # sit at nodes with thousands of children, which the step reads as bitmaps over the row. One
    # live row per item: every candidate of the item is that row's.
    batch, beams, vocab = 2, 4, 20011
    trie = random_trie(random.Random(11), vocab, 6000, 2) if constrained else None
    logits, scores, nodes = step_inputs(batch, beams, vocab, dtype, trie, seed=11)
    scores.view(batch, beams)[:, 1:] = -float("inf")
    if constrained:
        nodes[:] = 0  # the root: about 5,000 children
    wide = torch.zeros(batch * beams, vocab + 8, dtype=dtype)
    wide[:, offset:offset + vocab] = logits
    want = search._beam_step(logits, scores, beams, trie, nodes)
    got = search._beam_step_cuda(wide.to(device)[:, offset:offset + vocab], scores, beams, trie, nodes)
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


@pytest.mark.parametrize("beams,vocab", [(4, 700), (4, 3001), (64, 700), (256, 700)])
def test_cuda_step__all_equal_logits__lowest_tokens(beams, vocab, device):
    # Every logit ties: the candidates are the lowest tokens of the lowest beams, as torch.topk orders
    # them. Every beam's list ties with the others' from its first entry to its last: all are read
    # past their heads, and at 256 beams their entries overflow the staging area.
    logits, scores = torch.zeros(2 * beams, vocab), torch.zeros(2 * beams)
    want = search._beam_step(logits, scores, beams)
    got = search._beam_step_cuda(logits.to(device), scores, beams)
    for name in ("score", "token", "parent", "count"):
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


def forced_candidates(trie, scores, nodes, beams, item):
    """transformers' fallback where no live beam of ``item`` has a finite allowed token: the live
    beams by score (ties to the lower), each with its allowed tokens ascending at log-prob 0."""
    rows = sorted((r for r in range(item * beams, (item + 1) * beams) if scores[r] != -float("inf")),
                  key=lambda r: (-float(scores[r]), r))
    out = []
    for r in rows:
        if int(nodes[r]) == -2:  # an ended hypothesis: eos alone
            out.append((float(scores[r]), EOS, r, -2))
        else:
            tokens, children = trie.children(int(nodes[r]))
            out += [(float(scores[r]), int(t), r, int(c)) for t, c in zip(tokens, children)]
    return out[:2 * beams]


@pytest.mark.parametrize("beams", [4, 300])
def test_cuda_step__no_finite_allowed_token__allowed_tokens_forced(beams, device):
    # Item 0's rows have every allowed token at -inf (token 0, in no entry, keeps the normaliser
    # finite); item 1 is an ordinary step. Beam scores tie, so the beams' order is tested too; 300
    # beams are more than one per thread.
    vocab = 700
    trie = random_trie(random.Random(beams), vocab, 40 * beams, 4)
    logits, scores, nodes = step_inputs(2, beams, vocab, torch.float32, trie, seed=beams)
    logits[:beams, 1:] = -float("inf")
    scores[:beams] = scores[:beams].round()
    want = search._beam_step(logits, scores, beams, trie, nodes)
    got = search._beam_step_cuda(logits.to(device), scores, beams, trie, nodes)
    expected = forced_candidates(trie, scores, nodes, beams, 0)
    for result in (want, got):
        n = int(result["count"][0])
        assert n == len(expected)
        assert list(zip(result["score"][0, :n].tolist(), result["token"][0, :n].tolist(),
                        result["parent"][0, :n].tolist(), result["node"][0, :n].tolist())) == expected
        assert result["logprob"][0, :n].eq(0).all()
    assert_same_candidates(got, want, atol=1e-5)


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
    got = make().search(lambda t, b: cpu_model(t.cpu(), b.cpu()).to(device), batch_size=3)
    assert got.sequences == want.sequences
    assert got.finished == want.finished
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)


def random_search(seed: int):
    """A searcher and vocabulary drawn from every setting the bookkeeping depends on: unconstrained
    (with and without eos), tries ending in eos or at leaves, cut at max_length or not; and how much
    to favour eos, so that hypotheses finish early and often."""
    rng = random.Random(seed)
    vocab, beams = rng.choice([4, 6, 12, 40]), rng.choice([1, 2, 3, 5, 8, 16])
    # Every hypothesis kept is compared, most of the time: early stopping decides which ones those are.
    settings = dict(num_beams=beams, length_penalty=rng.choice([0.0, 1.0, 2.0, -0.5]),
                    early_stopping=rng.choice([True, False, "never"]),
                    num_return_sequences=beams if rng.random() < 0.7 else rng.randint(1, beams),
                    output_token_scores=rng.random() < 0.5)
    kind = seed % 3
    if kind == 0:
        max_length = rng.randint(1, 10)
        searcher = fs.BeamSearch(rng.choice([EOS, None]), max_length=max_length,
                                 min_length=rng.randint(0, max_length), **settings)
    else:
        entries = sorted({tuple(rng.randrange(2, vocab) for _ in range(rng.randint(1, 8)))
                          for _ in range(rng.choice([5, 60, 400]))})
        # kind 2 has no eos: hypotheses end at leaves
        trie = fs.Trie([e + (EOS,) for e in entries], eos_id=EOS) if kind == 1 else fs.Trie(entries)
        max_length = rng.choice([trie.depth, max(1, trie.depth - 2)])
        searcher = fs.TrieBeamSearch(trie, max_length=max_length, min_length=rng.randint(0, min(2, max_length)),
                                     normalize=rng.choice(["full", "allowed"]), **settings)
    return searcher, vocab, rng.choice([0.0, 2.0, 4.0])


def eos_favoured(model, bias, device):
    def step_fn(tokens, beam_idx):
        logits = model(tokens.cpu(), beam_idx.cpu())
        logits[:, EOS] += bias
        return logits.to(device)
    return step_fn


# Beyond the first twelve, seeds whose searches reach the rarer paths of the bookkeeping: a hypothesis
# that enters only by beating a free slot's -1e9 (40), early_stopping="never" with a positive length
# penalty (79), an item stopped early once full (58, 82, 97), continuations of ended beams (82, 97).
@pytest.mark.parametrize("seed", [*range(12), 40, 58, 79, 82, 97])
def test_device_search__same_as_cpu_search(seed, device):
    searcher, vocab, bias = random_search(seed)
    batch = 1 + seed % 3
    with cpu_route():
        want = searcher.search(eos_favoured(PrefixModel(vocab, seed), bias, "cpu"), batch_size=batch)
    got = searcher.search(eos_favoured(PrefixModel(vocab, seed), bias, device), batch_size=batch)
    assert got.sequences == want.sequences
    assert got.finished == want.finished
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)
    if searcher.output_token_scores:
        for g, w in zip(sum(got.token_scores, []), sum(want.token_scores, [])):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_device_search__wide_vocabulary__same_as_cpu_search(seed, device):
    # Wider than the CPU step's candidate buffer (the best 2K and 128 more), so each row's scan
    # compacts it several times; eos favoured but held back by min_length; bf16 logits for ties.
    rng = random.Random(seed)
    vocab, dtype = rng.choice([700, 3001]), (torch.bfloat16 if seed % 2 else torch.float32)
    searcher = fs.BeamSearch(EOS, num_beams=rng.choice([2, 8, 16]), max_length=6, min_length=3,
                             early_stopping=rng.choice([True, "never"]), num_return_sequences=2,
                             output_token_scores=True)
    with cpu_route():
        want = searcher.search(eos_favoured(PrefixModel(vocab, seed, dtype), 4.0, "cpu"), batch_size=2)
    got = searcher.search(eos_favoured(PrefixModel(vocab, seed, dtype), 4.0, device), batch_size=2)
    assert got.sequences == want.sequences
    assert all(len(s) >= 3 for s in sum(want.sequences, []))
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)


def test_device_search__feeds_the_model_on_the_device(device):
    seen = []
    model = PrefixModel(12, 1)

    def step_fn(tokens, beam_idx):
        seen.append((tokens.device, beam_idx.device, tokens.dtype, beam_idx.dtype, tokens.shape, beam_idx.shape))
        return model(tokens.cpu(), beam_idx.cpu()).to(device)

    fs.BeamSearch(EOS, num_beams=3, max_length=4, early_stopping="never").search(step_fn, batch_size=2)
    assert seen[0][:2] == (torch.device("cpu"), torch.device("cpu"))
    # From the second call on, both live where the search does (the emulator's "GPU" is the CPU).
    assert len(seen) == 4 and all(s[0].type == device.type and s[1] == s[0] for s in seen[1:])
    assert all(s[2:] == (torch.int64, torch.int64, (6, 1), (6,)) for s in seen[1:])


@pytest.mark.cuda
def test_device_search__never_waits_for_a_step():
    # Each step's "model" keeps the GPU busy for ~1 ms. A loop that waited for every step would find
    # the stream idle at each call; the device search finds earlier steps' work still queued.
    logits = torch.randn(8, 300, device="cuda")
    queued = []

    def step_fn(tokens, beam_idx):
        queued.append(not torch.cuda.current_stream().query())
        torch.cuda._sleep(2_000_000)
        return logits + tokens.float().sum()  # after the sleep, and reads the fed tokens (none at first: 0)

    out = fs.BeamSearch(None, num_beams=4, max_length=12).search(step_fn, batch_size=2)
    assert len(queued) == 12 and all(len(s) == 12 for s in sum(out.sequences, []))
    assert sum(queued[1:]) >= 9, queued


@pytest.mark.parametrize("normalize", ["full", "allowed"])
def test_cuda_search__per_item_tries_and_prefix(normalize, device):
    vocab = 30
    tries = [random_trie(random.Random(seed), vocab, 80, 5) for seed in (1, 2)]
    make = lambda: fs.TrieBeamSearch(tries, num_beams=5, max_length=6, num_return_sequences=3,  # noqa: E731
                                     normalize=normalize, early_stopping=False)
    with cpu_route():
        want = make().search(PrefixModel(vocab, 9), batch_size=2)
    cpu_model = PrefixModel(vocab, 9)
    got = make().search(lambda t, b: cpu_model(t.cpu(), b.cpu()).to(device), batch_size=2)
    assert got.sequences == want.sequences
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)


def finite_candidates(cands):
    """The candidates with a finite score, per item (a -inf one is no candidate to the bookkeeping)."""
    keep = {name: torch.zeros_like(cands[name]) for name in ("score", "logprob", "token", "parent", "node")}
    count = torch.zeros_like(cands["count"])
    for b, n in enumerate(cands["count"].tolist()):
        finite = torch.isfinite(cands["score"][b, :n])
        count[b] = int(finite.sum())
        for name in keep:
            keep[name][b, :count[b]] = cands[name][b, :n][finite]
    return {**keep, "count": count}


@pytest.mark.parametrize("kind", ["dense", "full", "allowed", "wide", "lookahead-full", "lookahead-allowed"])
def test_cuda_step__rows_where_nothing_can_follow__same_as_dead_rows(kind, device):
    # Some live rows have every child at -inf, others a whole row of -inf (unconstrained, every live
    # row of item 1; constrained, all but one, since an item with no finite allowed token anywhere
    # takes transformers' fallback; and an ended row under "full"): they continue with nothing,
    # exactly as if they were dead, on the CPU and the device.
    batch, beams, vocab = 2, 8, 3001
    trie = nodes = deltas = None
    if kind == "wide":  # every token a child of the root: read as a bitmap on the device
        trie = fs.Trie([[t, EOS] for t in range(2, vocab)], eos_id=EOS)
    elif kind != "dense":
        trie = random_trie(random.Random(4), 14, 400, 4)
    logits, scores, nodes = step_inputs(batch, beams, vocab, torch.float32, trie, seed=4)
    if kind == "wide":
        nodes = torch.zeros(batch * beams, dtype=torch.int32)
    live = [r for r in range(batch * beams) if scores[r] > -float("inf") and (nodes is None or nodes[r] >= 0)]
    first = [r for r in live if r < beams]
    no_children, no_row = first[::3], first[1::3] + [r for r in live if r >= beams][trie is not None:]
    for r in no_children if trie is not None else []:
        logits[r, torch.from_numpy(trie.children(int(nodes[r]))[0]).long()] = -float("inf")
    logits[no_row] = -float("inf")
    impossible = (no_children if trie is not None else []) + no_row
    if kind in ("full", "lookahead-full"):
        ended = [r for r in range(batch * beams) if scores[r] > -float("inf") and nodes[r] == -2][0]
        logits[ended] = -float("inf")
        impossible.append(ended)
    normalize = "allowed" if kind.endswith("allowed") else "full"
    if kind.startswith("lookahead"):
        deltas = random_deltas(random.Random(4), trie, nodes, scores)
    dead = scores.clone()
    dead[impossible] = -float("inf")
    want = finite_candidates(search._beam_step(logits, dead, beams, trie, nodes, normalize, deltas))
    for got in (search._beam_step(logits, scores, beams, trie, nodes, normalize, deltas),
                search._beam_step_cuda(logits.to(device), scores, beams, trie, nodes, normalize, deltas)):
        assert not any(got["score"][b, :n].isnan().any() for b, n in enumerate(got["count"].tolist()))
        finite = finite_candidates(got)
        parents = {int(p) for b, n in enumerate(finite["count"].tolist()) for p in finite["parent"][b, :n]}
        assert parents and not parents & set(impossible)
        assert_same_candidates(finite, want, atol=1e-5)


@pytest.mark.parametrize("constrained,masked,normalize", [(False, "row", "full")] + [
    (True, masked, normalize) for masked in ("row", "children") for normalize in ("full", "allowed")])
def test_device_search__no_possible_continuation__same_as_cpu_search(constrained, masked, normalize, device):
    vocab, beams, blocked = 12, 6, [3]
    trie = random_trie(random.Random(8), vocab, 40, 4)
    children = trie.children(trie.walk(blocked))[0].tolist() if constrained else None
    make = (lambda: fs.TrieBeamSearch(trie, num_beams=beams, max_length=trie.depth, normalize=normalize,  # noqa: E731
                                      num_return_sequences=beams, early_stopping="never")) if constrained else (
            lambda: fs.BeamSearch(EOS, num_beams=beams, max_length=5, num_return_sequences=beams))  # noqa: E731
    tokens = children if masked == "children" else None
    with cpu_route():
        want = make().search(ImpossibleAfter(vocab, 8, blocked, tokens), batch_size=2)
    model = ImpossibleAfter(vocab, 8, blocked, tokens)
    got = make().search(lambda t, b: model(t.cpu(), b.cpu()).to(device), batch_size=2)
    assert got.sequences == want.sequences
    assert not any(s[:1] == blocked for s in sum(got.sequences, []))
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)


# -- lookahead deltas ---------------------------------------------------------------------------


def random_deltas(rng: random.Random, trie: fs.Trie, nodes: torch.Tensor, scores: torch.Tensor):
    """A step's lookahead (row_offsets, deltas): each row at a node gets no slice, all zeros, or
    deltas in 0..3 (row 0 always the last); ended rows none. Dead rows get slices too (both steps
    skip them)."""
    offsets, values = [0], []
    for r, node in enumerate(nodes.tolist()):
        kind = (2 if r == 0 else rng.randrange(3)) if node >= 0 else 0
        n = len(trie.children(node)[0]) if node >= 0 else 0
        values += [0] * n if kind == 1 else [rng.randrange(4) for _ in range(n)] if kind == 2 else []
        offsets.append(len(values))
    return np.array(offsets, dtype=np.int64), np.array(values, dtype=np.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("normalize", ["full", "allowed"])
@pytest.mark.parametrize("beams", [1, 4, 16])
def test_cuda_step__lookahead_deltas__matches_cpu_step(beams, normalize, dtype, device):
    batch, vocab = 3, 3001
    trie = random_trie(random.Random(beams), 14, 60 * beams, 4)  # up to 13 children per node
    logits, scores, nodes = step_inputs(batch, beams, vocab, dtype, trie, seed=beams)
    nodes[0] = 0  # the root: a row with many children, reshaped
    deltas = random_deltas(random.Random(beams), trie, nodes, scores)
    want = search._beam_step(logits, scores, beams, trie, nodes, normalize, deltas)
    plain = search._beam_step(logits, scores, beams, trie, nodes, normalize)
    assert not torch.equal(want["score"][0, :want["count"][0]], plain["score"][0, :plain["count"][0]])
    got = search._beam_step_cuda(logits.to(device), scores, beams, trie, nodes, normalize, deltas)
    assert_same_candidates(got, want, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("normalize", ["full", "allowed"])
@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("hub_children", [3000, 600, 40])
def test_cuda_step__tied_children__matches_cpu_step(hub_children, lookahead, normalize, dtype, device):
    # A root with thousands of children, as a title trie's first tokens have, where the kernel bounds
    # the selection from one pass (over the children, or over the row with the node as a bitmap), and
    # a hub of thousands, hundreds or tens, which the kernel selects from in shared memory. Logits of
    # seven values: children tie by the hundred (or by the few) at the cut, and the lower token must
    # win every tie, as on the CPU. The hub's rows favour tokens outside it, which must not raise the
    # bound.
    rng = random.Random(3)
    vocab, beams = 6007, 16
    hub = 2  # a second-level node
    entries = {(rng.randrange(3, vocab), rng.randrange(2, vocab), EOS) for _ in range(8000)}
    entries |= {(hub, t, EOS) for t in rng.sample(range(2, vocab), hub_children)}
    trie = fs.Trie([list(e) for e in sorted(entries)], eos_id=EOS)
    assert len(trie.children(0)[0]) > 4000
    logits, scores, _ = step_inputs(2, beams, vocab, dtype, None, seed=5)
    logits = torch.randint(-3, 4, logits.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    nodes = torch.tensor([0] * beams + [trie.walk([hub])] * beams, dtype=torch.int32)  # item 0: the root; 1: the hub
    outside = torch.ones(vocab, dtype=torch.bool)
    outside[torch.from_numpy(trie.children(trie.walk([hub]))[0]).long()] = False
    logits[beams:, outside] += 4
    nodes[2::7] = -2
    deltas = random_deltas(rng, trie, nodes, scores) if lookahead else None
    want = search._beam_step(logits, scores, beams, trie, nodes, normalize, deltas)
    got = search._beam_step_cuda(logits.to(device), scores, beams, trie, nodes, normalize, deltas)
    for name in ("token", "parent", "node", "count"):
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(), err_msg=name)
    torch.testing.assert_close(got["score"], want["score"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("constrained", [False, True])
def test_cuda_step__best_logits_in_few_threads_shares__matches_cpu_step(constrained, dtype, device):
    # The kernel reads a row once: each thread keeps its best few logits as it goes, and reads its
    # share again only when it may have dropped some that count. Here the best logits sit where
    # one thread reads (every 1024th/2048th column: 16-byte words strided over 256 threads), many
    # more of them than a thread keeps; odd rows start off 16-byte alignment, which moves them.
    vocab, beams = 20011, 64
    logits, scores, _ = step_inputs(2, beams, vocab, dtype, None, seed=9)
    columns = torch.arange(vocab)
    logits[:, (columns % 1024 < 4) | (columns % 2048 < 8)] += 20
    trie, nodes = None, None
    if constrained:  # every token a child of the root: a wide node, read as a bitmap
        trie = fs.Trie([[t, EOS] for t in range(2, vocab)], eos_id=EOS)
        nodes = torch.zeros(2 * beams, dtype=torch.int32)
    want = search._beam_step(logits, scores, beams, trie, nodes)
    got = search._beam_step_cuda(logits.to(device), scores, beams, trie, nodes)
    for name in ("token", "parent", "node", "count"):
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(), err_msg=name)
    torch.testing.assert_close(got["score"], want["score"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("vocab,count,logits_vocab",
                         [(40, 300, 40), (3001, 2000, 3001), (3001, 2000, 20000), (70, 0, 70)])
def test_wide_nodes__bitmaps_hold_exactly_the_children(vocab, count, logits_vocab):
    trie = random_trie(random.Random(vocab), vocab, count, 4) if count else fs.Trie([[5]])
    nodes, bits, words = trie._wide_nodes_on(torch.device("cpu"), logits_vocab)
    fan = [len(trie.children(n)[0]) for n in range(trie.num_nodes)]
    assert nodes.tolist() == [n for n, f in enumerate(fan) if f and 16 * f >= logits_vocab]
    assert words == (trie.max_token + 32) // 32 and bits.shape == (len(nodes), words)
    for node, row in zip(nodes.tolist(), bits.numpy()):
        set_bits = np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little"))
        np.testing.assert_array_equal(set_bits, trie.children(node)[0])


@pytest.mark.parametrize("row1_node,offsets,deltas", [
    ("[2]", [0, 2, 3], [0, 1, 0]),         # one delta for two children
    ("ended", [0, 2, 3], [0, 1, 0]),       # a delta for an ended row
    ("[2]", [0, 2, 4], [0, 1, -1, -3]),    # negative deltas: the first one is named
])
def test_cuda_step__bad_lookahead_deltas__same_error_as_cpu(row1_node, offsets, deltas, device):
    trie = fs.Trie([[2, 3], [2, 4], [5, 6]])
    nodes = torch.tensor([0, -2 if row1_node == "ended" else trie.walk([2])], dtype=torch.int32)
    args = (torch.zeros(2), 2, trie, nodes, "full", (np.array(offsets), np.array(deltas)))
    with pytest.raises(ValueError, match="lookahead.deltas gave") as on_cpu:
        search._beam_step(torch.zeros(2, 8), *args)
    with pytest.raises(ValueError, match=re.escape(str(on_cpu.value))):
        search._beam_step_cuda(torch.zeros(2, 8, device=device), *args)


def kb_trie(rng: random.Random, vocab: int, sep: int) -> fs.Trie:
    """(subject [SEP] predicate eos) entries: the shape LCSLookahead's seed decodes."""
    entries = {tuple(rng.randrange(3, 9) for _ in range(rng.randint(1, 2))) + (sep,)
               + tuple(rng.randrange(9, vocab) for _ in range(rng.randint(1, 4))) + (EOS,) for _ in range(150)}
    return fs.Trie([list(e) for e in sorted(entries)], eos_id=EOS)


def assert_same_search(got, want):
    assert got.sequences == want.sequences
    assert got.finished == want.finished
    np.testing.assert_allclose(sum(got.scores, []), sum(want.scores, []), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", ["full", "allowed"])
@pytest.mark.parametrize("seed", range(4))
def test_device_search__lcs_lookahead__same_as_cpu_search(seed, normalize, device):
    rng = random.Random(seed)
    vocab, sep = 24, 2
    trie = kb_trie(rng, vocab, sep)
    queries = [[rng.randrange(3, vocab) for _ in range(6)] for _ in range(3)]
    searcher = fs.TrieBeamSearch(trie, num_beams=6, max_length=trie.depth, num_return_sequences=3, normalize=normalize,
                                 lookahead=fs.LCSLookahead(queries, start_after=sep, max_nodes=40 * seed or None))
    with cpu_route():
        want = searcher.search(PrefixModel(vocab, seed), batch_size=3)
    model = PrefixModel(vocab, seed)
    got = searcher.search(lambda t, b: model(t.cpu(), b.cpu()).to(device), batch_size=3)
    assert_same_search(got, want)


class TokenHistoryLookahead:
    """A lookahead of a user's own that reads everything it is given: child c of a row that has
    generated g gets (c + len(g) + sum(g)) % 3, on even batch items only."""

    def __init__(self):
        self.calls = 0

    def deltas(self, trie, nodes, generated, batch_index):
        self.calls += 1
        offsets, values = [0], []
        for node, tokens, item in zip(nodes.tolist(), generated.tolist(), batch_index.tolist()):
            if node >= 0 and item % 2 == 0:
                values += [(c + len(tokens) + sum(tokens)) % 3 for c in trie.children(node)[0].tolist()]
            offsets.append(len(values))
        return torch.tensor(offsets), torch.tensor(values, dtype=torch.int32)


@pytest.mark.cuda
def test_device_search__lookahead_runs_while_the_model_does():
    # Each step's "model" keeps the GPU busy for ~1 ms; the lookahead finds that work still queued
    # when it is asked for the next step's deltas.
    trie = random_trie(random.Random(0), 300, 400, 8)
    logits = torch.randn(8, 300, device="cuda")
    queued = []

    class Probe(TokenHistoryLookahead):
        def deltas(self, trie, nodes, generated, batch_index):
            queued.append(not torch.cuda.current_stream().query())
            return super().deltas(trie, nodes, generated, batch_index)

    def step_fn(tokens, beam_idx):
        torch.cuda._sleep(2_000_000)
        return logits + tokens.float().sum()

    fs.TrieBeamSearch(trie, num_beams=4, max_length=8, early_stopping="never", lookahead=Probe()).search(step_fn, 2)
    assert len(queued) >= 4 and sum(queued[1:]) >= len(queued) - 2, queued


@pytest.mark.parametrize("per_item_tries", [False, True])
def test_device_search__python_lookahead__same_as_cpu_search(per_item_tries, device):
    vocab = 16
    tries = [random_trie(random.Random(seed), vocab, 120, 5) for seed in (3, 4)]

    def run(lookahead, on_device):
        searcher = fs.TrieBeamSearch(tries if per_item_tries else tries[0], num_beams=4, max_length=6,
                                     num_return_sequences=2, early_stopping=False, lookahead=lookahead)
        model = PrefixModel(vocab, 5)
        if not on_device:
            with cpu_route():
                return searcher.search(model, batch_size=2)
        return searcher.search(lambda t, b: model(t.cpu(), b.cpu()).to(device), batch_size=2)

    on_cpu, on_device = TokenHistoryLookahead(), TokenHistoryLookahead()
    want, got = run(on_cpu, False), run(on_device, True)
    assert_same_search(got, want)
    assert on_device.calls == on_cpu.calls  # once per step (per item with per-item tries), none past the end
    assert got.sequences != run(None, True).sequences  # the deltas changed the outcome


@pytest.mark.parametrize("halted", [True, False])
def test_cuda_step__after_a_failed_step__leaves_its_error(halted, device):
    # The device search reads a step's error word one step late, and never clears it: the step
    # launched meanwhile gets the failed step's word as `halted` (beam_select stores it) and must
    # leave the word, and the detail behind it, as that step recorded them.
    logits = torch.zeros(2, 5, device=device)
    logits[1, 4] = float("nan")
    step = search.CudaStep(logits, 1, 2, [], False, -1)
    scores = torch.zeros(2, device=device)
    word = torch.full((1,), -1, dtype=torch.int64, device=device)
    step.launch_at(logits, scores.data_ptr(), None, False, halted_ptr=word.data_ptr())
    word.copy_(step.out[:2].view(torch.int64))
    logits[0, 2] = float("nan")  # the next step would fail at row 0
    step.launch_at(logits, scores.data_ptr(), None, False, halted_ptr=word.data_ptr() if halted else 0)
    with pytest.raises(ValueError, match=f"row {1 if halted else 0} contains NaN"):
        step.read(5)


def test_cuda_step__nan_inf_and_leaf_rows_raise(device):
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
    # +inf: anywhere in a row the full normaliser reads, on a child for the allowed one.
    trie, root = fs.Trie([[1], [3]]), torch.zeros(2, dtype=torch.int32)
    logits[1, 4] = float("inf")
    for args in [(), (trie, root)]:
        with pytest.raises(ValueError, match=r"row 1 contains \+inf"):
            search._beam_step_cuda(logits, torch.zeros(2), 2, *args)
    clean = logits.clone()
    clean[1, 4] = 0.0
    got = search._beam_step_cuda(logits, torch.zeros(2), 2, trie, root, normalize="allowed")
    want = search._beam_step_cuda(clean, torch.zeros(2), 2, trie, root, normalize="allowed")
    assert all(torch.equal(got[name], want[name]) for name in want)
    logits[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"row 1 contains \+inf"):
        search._beam_step_cuda(logits, torch.zeros(2), 2, trie, root, normalize="allowed")
    with pytest.raises(ValueError, match=r"row 1 contains \+inf"):
        fs.BeamSearch(EOS, num_beams=2, max_length=3).search(lambda t, b: logits, batch_size=1)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("values", [
    {700: NAN},                          # among finite logits
    {0: NAN, 700: 1.0},                  # the first column
    {5: -INF, 700: NAN},                 # before the row has a finite logit (all -inf until then)
    {300: INF, 700: NAN},                # after a +inf
    {300: NAN, 700: INF},                # before one
    {300: INF},
    {1001: NAN},                         # the row's tail, past its last 16-byte word
])
def test_cuda_step__nan_or_inf_anywhere_in_a_long_row__same_error_as_cpu(values, dtype, device):
    # Long rows are read 16 bytes at a time, a few values per group: a special value anywhere in a
    # group, or in the tail, is found as the CPU step finds it. In the case with a -inf, the rest of
    # row 1 is -inf too.
    vocab = 1002
    logits = torch.randn(4, vocab).to(dtype)
    if -INF in values.values():
        logits[1] = -INF
    for column, value in values.items():
        logits[1, column] = value
    with pytest.raises(ValueError) as cpu:
        search._beam_step(logits, torch.zeros(4), 2)
    with pytest.raises(ValueError) as gpu:
        search._beam_step_cuda(logits.to(device), torch.zeros(4), 2)
    assert str(gpu.value) == str(cpu.value)


@pytest.mark.parametrize("node", ["gathered", "wide"])
@pytest.mark.parametrize("cells", [{3: INF, 9: NAN}, {9: INF, 3: NAN}, {3: INF, 0: NAN}, {0: INF, 9: NAN}, {0: NAN}],
                         ids=["inf_child_first", "nan_child_first", "inf_child_nan_elsewhere", "inf_elsewhere_nan_child",
                              "nan_elsewhere"])
def test_cuda_step__nan_and_inf_in_a_constrained_row__same_error_as_cpu(cells, node, device):
    # The CPU step reports a row's first bad child in token order, and only then the rest of the row;
    # a wide node's bitmap pass reads the whole row first.
    vocab = 64
    trie = fs.Trie([[3], [7], [9]] if node == "gathered" else [[t] for t in range(2, vocab)])
    logits = torch.zeros(1, vocab)
    for column, value in cells.items():
        logits[0, column] = value
    nodes = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError) as cpu:
        search._beam_step(logits, torch.zeros(1), 1, trie, nodes)
    with pytest.raises(ValueError) as gpu:
        search._beam_step_cuda(logits.to(device), torch.zeros(1), 1, trie, nodes)
    assert str(gpu.value) == str(cpu.value)


@pytest.mark.parametrize("length_penalty", [700.0, -700.0])
def test_device_search__length_penalty_past_floats_range__same_as_cpu_search(length_penalty, device):
    # L ** length_penalty past float's (and double's) range is inf (or 0), as the CPU search's std::pow
    # gives it; hypotheses ended by eos after one token (1 ** lp = 1) keep finite scores.
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    searcher = fs.BeamSearch(int(logits[0].argmax()), num_beams=2, max_length=4, length_penalty=length_penalty,
                             num_return_sequences=2)
    with cpu_route():
        want = searcher.search(lambda tokens, beam_idx: logits, 2)
    got = searcher.search(lambda tokens, beam_idx: logits.to(device), 2)
    assert_same_search(got, want)
    assert any(np.isfinite(score) and score < 0 for item in want.scores for score in item)


def float64_log_probs(logits, trie, nodes, normalize):
    """log_softmax in float64 of each row of float32 logits, -inf outside the row's allowed tokens (a
    trie node's children, eos alone for an ended row), over those tokens alone under "allowed"."""
    want = torch.log_softmax(logits.double(), -1)
    for r, node in enumerate([] if trie is None else nodes.tolist()):
        allowed = [EOS] if node == -2 else trie.children(node)[0].tolist()
        kept = torch.log_softmax(logits[r, allowed].double(), -1) if normalize == "allowed" else want[r, allowed]
        want[r] = -float("inf")
        want[r, allowed] = kept
    return want


@pytest.mark.parametrize("offset", [1e4, 1e6, 3e8])
@pytest.mark.parametrize("kind", ["dense", "full", "allowed", "wide"])
def test_cuda_step__logits_far_from_zero__log_probs_match_float64_log_softmax(kind, offset, device):
    # A log-prob is (x - max) - log(sum(exp(x - max))), exact for x near the max however large the
    # logits; x - logsumexp, the logsumexp rounded to float32 first, is off by up to half its ulp
    # (every log-prob 0 at 3e8). Constrained rows sit at the root, whose children are gathered (31 of
    # them) or, when they are every token, read as a bitmap over the row; ended rows take eos alone.
    batch, beams, vocab = 2, 4, 3001
    trie = None if kind == "dense" else fs.Trie([[t, EOS] for t in range(2, vocab, 1 if kind == "wide" else 97)],
                                                eos_id=EOS)
    logits, scores, nodes = step_inputs(batch, beams, vocab, torch.float32, trie, seed=6)
    logits += offset
    if trie is not None:
        nodes[nodes >= 0] = 0
    normalize = "allowed" if kind == "allowed" else "full"
    want = float64_log_probs(logits, trie, nodes, normalize)
    for got in (search._beam_step(logits, scores, beams, trie, nodes, normalize),
                search._beam_step_cuda(logits.to(device), scores, beams, trie, nodes, normalize)):
        assert got["count"].min() > 0
        for b, n in enumerate(got["count"].tolist()):
            parent, token = got["parent"][b, :n].long(), got["token"][b, :n].long()
            torch.testing.assert_close(got["logprob"][b, :n].double(), want[parent, token], rtol=0, atol=1e-5)
            torch.testing.assert_close(got["score"][b, :n].double(), scores[parent].double() + want[parent, token],
                                       rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", [-1e10, -1e20, "lowest"])
@pytest.mark.parametrize("constrained", [False, True])
def test_cuda_step__logits_masked_with_huge_negatives__matches_cpu_step(constrained, mask, dtype, device):
    # Masking logits with a huge finite negative (-1e10, the dtype's lowest) is common. Threads whose
    # share of a row is all masked sum around a max of that size, where any rounding of the max's
    # own term overflows. Constrained rows sit at the root, read as a bitmap over the row.
    batch, beams, vocab = 2, 4, 3001
    trie = random_trie(random.Random(5), vocab, 2000, 2) if constrained else None
    logits, scores, nodes = step_inputs(batch, beams, vocab, dtype, trie, seed=5)
    fill = torch.finfo(dtype).min if mask == "lowest" else mask
    logits[:, 40:] = fill
    if constrained:
        nodes[:] = 0
    want = search._beam_step(logits, scores, beams, trie, nodes)
    got = search._beam_step_cuda(logits.to(device), scores, beams, trie, nodes)
    assert_same_candidates(got, want, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("constrained", [False, True])
def test_cuda_step__replayed_from_a_cuda_graph(constrained):
    # The step launches on the current stream, with no host sync or allocation: it can be captured in
    # a CUDA graph (with a model's own captured step) and replayed on new logits in the same buffer.
    batch, beams, vocab = 3, 4, 3001
    trie = random_trie(random.Random(3), vocab, 400, 4) if constrained else None
    first, scores, nodes = step_inputs(batch, beams, vocab, torch.float32, trie, seed=3)
    second = step_inputs(batch, beams, vocab, torch.float32, trie, seed=4)[0]
    logits = first.cuda()
    step = search.CudaStep(logits, batch, beams, [trie] if constrained else [], False,
                           as_eos_id(None if trie is None else trie.eos_id))
    step.launch(logits, scores.numpy(), None if nodes is None else nodes.numpy())  # uploads the beams
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step.clear_error()
        step.launch_at(logits, *step.uploaded_beams(nodes is not None), 0)
    for values in (first, second):
        logits.copy_(values)
        step.out.zero_()  # nothing left from an earlier launch
        graph.replay()
        got = dict(zip(search._CANDIDATE_NAMES, map(torch.from_numpy, map(np.array, step.read(vocab)))))
        assert_same_candidates(got, search._beam_step(values, scores, beams, trie, nodes), atol=1e-5)
