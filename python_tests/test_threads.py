"""Kernels release the GIL: 8 threads sharing the same objects must reproduce a serial run."""

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


def results_equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(results_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("jobs", [trie_jobs], ids=lambda f: f.__name__)
def test_concurrent_equals_serial(jobs):
    work = jobs() * 4
    serial = [job() for job in work]
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda job: job(), work))
    assert all(results_equal(a, b) for a, b in zip(serial, concurrent))
