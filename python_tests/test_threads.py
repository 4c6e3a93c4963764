"""Kernels release the GIL: 8 threads sharing the same objects must reproduce a serial run.

Each ``*_jobs`` factory builds shared objects once and returns closures that use them; JOB_FAMILIES
lists the factories, run one family at a time and all of them interleaved. A new kernel family
joins by adding its factory to JOB_FAMILIES.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import pyfastseq as fs

pytestmark = pytest.mark.native

THREADS = 8


def trie_jobs():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 3000, size=rng.integers(1, 8)).tolist() for _ in range(3000)]
    trie = fs.Trie(seqs, eos_id=1)
    nodes = torch.tensor([trie.walk(s[: len(s) // 2]) for s in seqs[:256]], dtype=torch.int32)
    logits = torch.randn(256, 3001)

    def mask():
        return trie.mask_logits(logits.clone(), nodes)

    def step():
        return trie.step(nodes.numpy(), rng_tokens)

    def build():
        return fs.Trie(seqs, eos_id=1)._native.arrays()[1].copy()

    rng_tokens = rng.integers(0, 3000, size=256)
    return [mask, step, build]


def assignment_jobs():
    rng = np.random.default_rng(1)
    matrix = rng.random((300, 400))
    batch = rng.integers(0, 50, size=(64, 30, 25)).astype(np.float64)
    row_lens = rng.integers(0, 31, size=64)
    tensor = torch.from_numpy(batch)

    def square():
        return fs.linear_sum_assignment(matrix, maximize=True)

    def batched():
        return fs.linear_sum_assignment(batch, row_lens=row_lens)

    def batched_tensor():
        return fs.linear_sum_assignment(tensor)

    return [square, batched, batched_tensor]


def lcs_jobs():
    rng = np.random.default_rng(2)
    seqs = [rng.integers(2, 400, size=rng.integers(2, 12)).tolist() for _ in range(2000)]
    trie = fs.Trie(seqs, eos_id=1)
    candidates = rng.integers(0, 400, size=200_000).astype(np.int32)
    offsets = np.arange(0, 200_001, 20)
    query = rng.integers(0, 400, size=90)
    # max_nodes small enough that walks are cut: the per-call counts must stay each thread's own.
    lookahead = fs.LCSLookahead(query, max_nodes=500)
    generated = np.array([s[:1] for s in seqs[:128]], dtype=np.int32)  # each row's path from the root
    nodes = np.array([trie.walk(p) for p in generated], dtype=np.int32)

    def lengths():
        return fs.lcs_lengths(query, candidates, offsets)

    def deltas(rows):
        out = lookahead.deltas(trie, nodes[rows], generated[rows])
        return out, lookahead.last_visited, lookahead.last_truncated

    def deltas_uncapped():
        return fs.LCSLookahead(query, max_nodes=None).deltas(trie, nodes, generated)

    return [lengths, lambda: deltas(slice(0, 64)), lambda: deltas(slice(64, None)), deltas_uncapped]


def search_jobs():
    rng = np.random.default_rng(3)
    sep, vocab = 1, 600
    seqs = [[*rng.integers(2, 300, size=2).tolist(), sep, *rng.integers(300, vocab, size=3).tolist()]
            for _ in range(3000)]
    trie = fs.Trie(seqs, eos_id=0)
    table = torch.randn(vocab, vocab)  # logits are a function of the last token: the same model in every thread

    def step_fn(tokens, beam_idx):
        last = tokens[:, -1] if tokens.shape[1] else torch.zeros(len(beam_idx), dtype=torch.long)
        return table[last]

    lookahead = fs.LCSLookahead([rng.integers(2, vocab, size=12).tolist() for _ in range(6)], start_after=sep)
    constrained = fs.TrieBeamSearch(trie, num_beams=8, max_length=trie.depth, num_return_sequences=3,
                                    lookahead=lookahead)
    free = fs.BeamSearch(eos_id=0, num_beams=4, max_length=6)
    sampler = fs.Sampler(top_k=20, top_p=0.9, seed=7, trie=trie, max_length=trie.depth)

    def as_tuple(out):
        return out.sequences, out.scores, out.finished

    return [lambda: as_tuple(constrained.search(step_fn, 6)), lambda: as_tuple(free.search(step_fn, 3)),
            lambda: as_tuple(sampler.search(step_fn, 4, num_samples=3))]


JOB_FAMILIES = [trie_jobs, assignment_jobs, lcs_jobs, search_jobs]


def results_equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(results_equal(x, y) for x, y in zip(a, b))
    return a == b


def all_jobs():
    return [job for family in JOB_FAMILIES for job in family()]


@pytest.mark.parametrize("jobs", JOB_FAMILIES + [all_jobs], ids=lambda f: f.__name__)
def test_concurrent_equals_serial(jobs):
    work = jobs() * 4
    serial = [job() for job in work]
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda job: job(), work))
    assert all(results_equal(a, b) for a, b in zip(serial, concurrent))
