"""GPU kernels vs. their peers on the same GPU, same run (skipped without CUDA).

- Mask apply: ``Trie.mask_logits`` (the CUDA trie mask, no V-wide mask built) vs. xgrammar's
  ``apply_token_bitmask_inplace`` (when importable) with the equivalent int32 bitmask, and torch
  ``masked_fill_`` with a precomputed bool mask. 4,096 rows x 128k vocab; rows sit at semantic-ID
  trie nodes (256 children each).
- Sparse constrained step: the CUDA beam step (``pyfastseq._cuda_search.CudaStep``) at 2 x 70 rows (batch 2,
  70 beams) and 2,048 rows (batch 32, 64 beams) on 1M / 10M-item semantic-ID tries, rows at depth 2;
  vs. torch ``log_softmax`` + ``masked_fill`` (precomputed mask) + add + ``topk``.
- Wide nodes: the same step at 2,048 rows on a title trie's widest nodes (the root, first tokens
  with thousands of children), read as bitmaps; vs. torch and vs. the same step gathering them.
- Dense step: V = 152,064 bf16, B*K in {256, 1024}; vs. torch ``log_softmax`` + add + ``topk``.
- Whole ``TrieBeamSearch.generate()`` on the GPU (the device search) vs. transformers' ``generate`` with
  ``prefix_allowed_tokens_fn``: bench_beam.py's GPT-2 and 1M-item catalogues, beams 16 and 64.
- The same search with an ``LCSLookahead`` on the GPU (the host computes each step's deltas while
  the model runs) vs. the same search with the logits copied to the host at every step.

"kernel" times (``kernel_s``, the ratios, GB/s) are the GPU's alone: each side's launches are
captured once in a CUDA graph, and the graph is replayed back to back between two CUDA events, so
neither the host's Python nor launch latency counts, for pyfastseq or for its peers. ``call_s`` is
the public call, by CUDA events around it (its argument checks, uploads and host syncs included),
and ``step_with_copy_s`` the search loop's step with the candidates' copy to the host. The sparse
step also records ``step_with_bookkeeping_s``: the device search's whole step (the candidates, then
transformers' bookkeeping of finished hypotheses and the next beams), timed as ``kernel_s`` is. GB/s counts
the logits' bytes once (rows x V x element size): every kernel here must read (step) or write (mask)
each of them at least once. % of peak is against the HBM bandwidth of the device (H100 SXM 3.35
TB/s, H200 4.8 TB/s).
"""

from __future__ import annotations

import copy
import functools
import os
import random

import numpy as np
import pytest
import torch

import datasets
import pyfastseq as fs
from bench_beam import GENERATE_CASES, catalogue, check_and_time_generate, small_gpt2
from pyfastseq import _cuda_search
from pyfastseq._generate import model_step_fn
from pyfastseq.trie import launch_trie_mask_cuda
from timing import best_time, stat

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

HBM_PEAK = {"H100": 3.35e12, "H200": 4.8e12}
ITEMS = [int(n) for n in os.environ.get("PYFASTSEQ_BENCH_CUDA_ITEMS", "1000000,10000000").split(",")]


def peak_bandwidth() -> float | None:
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in HBM_PEAK.items() if key in name), None)


def gpu_time(fn, iters: int = 50) -> float:
    """Median seconds per call, by CUDA events, after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def graph_time(fn, replays: int = 50) -> float:
    """Median seconds of GPU work per call of ``fn``: captured once in a CUDA graph, replayed
    ``replays`` times back to back between two events."""
    fn()  # lazy initialisation and allocations, outside the capture
    torch.cuda.synchronize()
    graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    # By hand rather than torch.cuda.graph: should fn fail to capture, the current stream is restored.
    with torch.cuda.stream(side):
        graph.capture_begin()
        try:
            fn()
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / replays)
    return float(np.median(times))


def record(benchmark, call, launches, nbytes: int, peers: dict, **info):
    """pytest-benchmark times ``call`` (the public call); ``launches`` (ours) and each of
    ``peers`` (name: its launches) are timed by graph_time, and the ratios compare those."""
    benchmark.pedantic(lambda: (call(), torch.cuda.synchronize()), rounds=20, iterations=1, warmup_rounds=2)
    ours, call_s = graph_time(launches), gpu_time(call)
    peer_s, timing = {}, {}
    for name, fn in peers.items():
        try:
            peer_s[name] = graph_time(fn)
        except RuntimeError as error:  # a peer whose launches cannot be captured: events around each call
            timing[f"{name}_timing"] = f"CUDA events around each call (capture failed: {error})"
            peer_s[name] = gpu_time(fn)
    peak = peak_bandwidth()
    benchmark.extra_info.update(
        info, **timing, device=torch.cuda.get_device_name(), kernel_s=ours, call_s=call_s,
        gbps=nbytes / ours / 1e9, pct_of_peak=None if peak is None else 100 * nbytes / ours / peak,
        **{f"{name}_s": s for name, s in peer_s.items()}, **{f"ratio_vs_{name}": s / ours for name, s in peer_s.items()},
    )


@functools.cache
def semantic_trie(items: int) -> fs.Trie:
    tokens, offsets = datasets.semantic_ids(items)
    return fs.Trie(tokens, offsets=offsets)


def rows_at_depth(trie: fs.Trie, items: int, rows: int, depth: int) -> torch.Tensor:
    tokens, offsets = datasets.semantic_ids(items)
    rng = random.Random(0)
    picks = [rng.randrange(items) for _ in range(rows)]
    return torch.tensor([trie.walk(tokens[offsets[i]: offsets[i] + depth].tolist()) for i in picks], dtype=torch.int32)


def allowed_mask(trie: fs.Trie, nodes: torch.Tensor, vocab: int) -> torch.Tensor:
    keep = torch.zeros(len(nodes), vocab, dtype=torch.bool)
    for r, n in enumerate(nodes.tolist()):
        keep[r, torch.from_numpy(trie.children(n)[0]).long()] = True
    return keep


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mask_apply(benchmark, dtype):
    rows, vocab = 4096, 128_000
    trie = semantic_trie(ITEMS[0])
    nodes = rows_at_depth(trie, ITEMS[0], rows, depth=1)
    keep = allowed_mask(trie, nodes, vocab).cuda()
    base = torch.randn(rows, vocab, device="cuda").to(dtype)
    logits, nodes_dev = base.clone(), nodes.cuda()
    want = base.masked_fill(~keep, -float("inf"))
    torch.testing.assert_close(trie.mask_logits(logits, nodes_dev), want, rtol=0, atol=0)

    peers = {"torch_masked_fill": lambda: logits.masked_fill_(~keep, -float("inf"))}
    try:
        import xgrammar
    except ImportError:
        xgrammar = None
    if xgrammar is not None:
        words = (vocab + 31) // 32
        padded = torch.zeros(rows, words * 32, dtype=torch.bool, device="cuda")
        padded[:, :vocab] = keep
        weights = (1 << torch.arange(32, device="cuda", dtype=torch.int64))
        bitmask = (padded.view(rows, words, 32).long() * weights).sum(-1).to(torch.int64)
        bitmask = torch.where(bitmask >= 2**31, bitmask - 2**32, bitmask).to(torch.int32)
        check = base.clone()
        xgrammar.apply_token_bitmask_inplace(check, bitmask)
        torch.testing.assert_close(check, want, rtol=0, atol=0)
        peers["xgrammar"] = lambda: xgrammar.apply_token_bitmask_inplace(logits, bitmask)
    child_begin, child_token = trie._arrays_on(logits.device)
    record(benchmark, lambda: trie.mask_logits(logits, nodes_dev),
           lambda: launch_trie_mask_cuda(logits, nodes_dev, child_begin, child_token, -float("inf")),
           rows * vocab * base.element_size(), peers, kernel="trie mask", shape=f"{rows}x{vocab} {dtype}")


def torch_step(logits, scores, keep, batch, beams, allowed=False):
    if allowed:  # log-softmax over the allowed tokens
        logp = torch.log_softmax(logits.float().masked_fill(~keep, -float("inf")), -1)
    else:
        logp = torch.log_softmax(logits.float(), -1)
        if keep is not None:
            logp = logp.masked_fill(~keep, -float("inf"))
    acc = (logp + scores[:, None]).view(batch, -1)
    return torch.topk(acc, 2 * beams)


def check_and_time(benchmark, step, logits, scores, nodes, keep, batch, beams, allowed=False, other_steps=None,
                   **info):
    """Times ``step`` against the torch sequence, and against each of ``other_steps`` (name: another
    CudaStep for the same rows), after checking that all of them find the same candidates."""
    scores_dev = scores.cuda()
    host_scores, host_nodes = scores.numpy(), None if nodes is None else nodes.numpy()
    peer = lambda: torch_step(logits, scores_dev, keep, batch, beams, allowed)  # noqa: E731
    want = peer()
    for candidate in [step, *(other_steps or {}).values()]:
        candidate.launch(logits, host_scores, host_nodes)
        got = candidate.read(logits.shape[1])
        for b in range(batch):
            n = int(got[5][b])
            finite = int(torch.isfinite(want.values[b]).sum())
            assert n == finite
            np.testing.assert_allclose(got[0][b, :n], want.values[b, :n].cpu().numpy(), rtol=0, atol=1e-4)

    def kernels(cuda_step):
        """launch_at from the beams launch() uploaded: the device search's own way in, no upload."""
        return lambda: cuda_step.launch_at(logits, *cuda_step.uploaded_beams(nodes is not None), 0)

    peers = {"torch": peer, **{name: kernels(other) for name, other in (other_steps or {}).items()}}
    step_s = gpu_time(lambda: (step.launch(logits, host_scores, host_nodes), step.read(logits.shape[1])))
    record(benchmark, lambda: step.launch(logits, host_scores, host_nodes), kernels(step),
           logits.shape[0] * logits.shape[1] * logits.element_size(), peers, step_with_copy_s=step_s, **info)


def step_with_bookkeeping_s(trie, logits, scores, nodes, batch, beams, normalize, keep) -> float:
    """GPU seconds of the device search's whole step from these beams: the candidates, then the
    bookkeeping (finished hypotheses, length penalty, the next beams and their histories), timed as
    graph_time times the candidates alone, after checking that the next beams are the torch
    sequence's best ``beams`` (no candidate here ends a hypothesis)."""
    searcher = fs.TrieBeamSearch(trie, num_beams=beams, max_length=8, normalize=normalize)
    tries, start_nodes, eos_id, normalize_allowed = searcher._start(batch)
    search = _cuda_search.DeviceSearch(searcher, logits, batch, tries, start_nodes, normalize_allowed, eos_id)
    search.view("scores0", batch, beams).copy_(scores.view(batch, beams))
    search.view("nodes0", batch, beams).copy_(nodes.view(batch, beams))
    search.launch_step(logits, 2, 0)
    want = torch_step(logits, scores.cuda(), keep, batch, beams, normalize == "allowed").values[:, :beams]
    torch.testing.assert_close(search.view("scores1", batch, beams), want, rtol=0, atol=1e-4)
    return graph_time(lambda: search.launch_step(logits, 2, 0))


@pytest.mark.parametrize("items", ITEMS)
@pytest.mark.parametrize("batch,beams", [(2, 70), (32, 64)])
@pytest.mark.parametrize("normalize", ["full", "allowed"])
def test_sparse_step(benchmark, items, batch, beams, normalize):
    trie = semantic_trie(items)
    rows, vocab = batch * beams, datasets.SEMANTIC_VOCAB
    nodes = rows_at_depth(trie, items, rows, depth=2)
    logits = torch.randn(rows, vocab, device="cuda")
    scores = -torch.rand(rows) * 10
    keep = allowed_mask(trie, nodes, vocab).cuda()  # the peer's mask, built outside the timing
    step = _cuda_search.CudaStep(logits, batch, beams, [trie], normalize == "allowed", -1)
    check_and_time(benchmark, step, logits, scores, nodes, keep, batch, beams, allowed=normalize == "allowed",
                   kernel=f"sparse step ({normalize})", shape=f"{rows} rows, {items:,} items, V={vocab}")
    benchmark.extra_info["step_with_bookkeeping_s"] = step_with_bookkeeping_s(trie, logits, scores, nodes, batch,
                                                                              beams, normalize, keep)


@functools.cache
def title_trie() -> fs.Trie:
    tokens, offsets = datasets.titles(min(ITEMS))
    return fs.Trie(tokens, eos_id=datasets.EOS, offsets=offsets)


@pytest.mark.parametrize("where", ["root", "first tokens"])
def test_wide_node_step(benchmark, where):
    # Rows at a title trie's widest nodes: the root (every token a child) and the first tokens with
    # 3k-29k children, which the step reads as bitmaps over the row. "gather" is the same step
    # with the bitmaps withheld: every child gathered through child_token.
    trie, vocab, batch, beams = title_trie(), datasets.TITLE_VOCAB, 32, 64
    rows = batch * beams
    wide = trie._wide_nodes_on(torch.device("cpu"), vocab)[0]
    picks = torch.zeros(rows, dtype=torch.int32) if where == "root" else wide[1:][torch.arange(rows) % (len(wide) - 1)]
    logits = (torch.randn(rows, vocab, device="cuda") * 3).to(torch.bfloat16)
    scores = -torch.rand(rows) * 10
    keep = allowed_mask(trie, picks, vocab).cuda()
    step = _cuda_search.CudaStep(logits, batch, beams, [trie], False, -1)
    gather = _cuda_search.CudaStep(logits, batch, beams, [trie], False, -1)
    gather.wide.zero_()  # no wide nodes: count 0
    check_and_time(benchmark, step, logits, scores, picks, keep, batch, beams, other_steps={"gather": gather},
                   kernel=f"sparse step (full), wide nodes at the {where}", shape=f"{rows} rows, V={vocab} bf16")


@pytest.mark.parametrize("batch,beams", [(4, 64), (16, 16), (4, 256)])
def test_dense_step(benchmark, batch, beams):
    rows, vocab = batch * beams, 152_064
    logits = (torch.randn(rows, vocab, device="cuda") * 3).to(torch.bfloat16)
    scores = -torch.rand(rows) * 10
    step = _cuda_search.CudaStep(logits, batch, beams, [], False, -1)
    check_and_time(benchmark, step, logits, scores, None, None, batch, beams,
                   kernel="dense step", shape=f"{rows} rows x {vocab} bf16, K={beams}")


@pytest.mark.parametrize("num_beams", [16, 64])
@pytest.mark.parametrize("kind", ["semantic", "titles"])
def test_generate(benchmark, kind, num_beams):
    """Whole constrained generate() on the GPU (the device search) vs. transformers' generate with
    prefix_allowed_tokens_fn, same model and catalogue as bench_beam.py's CPU case."""
    check_and_time_generate(benchmark, kind, num_beams, torch.device("cuda"))


@pytest.mark.parametrize("num_beams", [16, 64])
def test_generate_lookahead(benchmark, num_beams):
    """A title-catalogue search with an LCSLookahead, the model on the GPU: the device search vs. the
    CPU search fed the logits copied to the host at every step. Same outputs asserted."""
    trie, _, vocab, _ = catalogue("titles")
    model = copy.deepcopy(small_gpt2(vocab)).cuda()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, vocab, (2, 8), generator=gen).cuda()
    query = torch.randint(2, 200, (24,), generator=gen)  # frequent (low Zipf rank) title tokens
    searcher = fs.TrieBeamSearch(trie, num_beams=num_beams, max_length=GENERATE_CASES["titles"],
                                 lookahead=fs.LCSLookahead(query, max_nodes=100_000))  # walks from the root

    def run(logits_to_host):
        step = model_step_fn(model, prompt, None, num_beams, {})
        step_fn = (lambda t, b: step(t.cuda(), b.cuda()).cpu()) if logits_to_host else step
        with torch.no_grad():
            return searcher.search(step_fn, prompt.shape[0])

    ours, peer = run(False), run(True)
    assert ours.sequences == peer.sequences
    np.testing.assert_allclose(sum(ours.scores, []), sum(peer.scores, []), rtol=1e-5, atol=1e-5)
    peer_s = best_time(lambda: run(True), rounds=5)
    benchmark.pedantic(lambda: run(False), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        kind="titles", num_beams=num_beams, batch=2, items=len(trie), device=torch.cuda.get_device_name(),
        peer="the same search, logits copied to the host every step", peer_min_s=peer_s,
        speedup=peer_s / stat(benchmark, "min"),
    )
