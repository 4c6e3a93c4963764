"""The memory cap: oversized tries, files, batches and LCS tables fail fast with MemoryError."""

import numpy as np
import pytest
import torch

import pyfastseq as fs
from conftest import run_python

pytestmark = pytest.mark.native


@pytest.fixture
def cap():
    """Set a cap for one test, restoring the previous one after it."""
    before = fs.get_memory_limit()
    yield fs.set_memory_limit
    fs.set_memory_limit(before)


def test_trie_build_over_cap(cap):
    cap(10_000)
    fs.Trie([[1, 2, 3]] * 10)  # well under
    with pytest.raises(MemoryError, match="building a Trie of 20000 tokens.*memory limit of 10,000 bytes"):
        fs.Trie(np.ones((1000, 20), dtype=np.int32))


def test_trie_load_over_cap(cap, tmp_path):
    path = tmp_path / "t.trie"
    fs.Trie(np.arange(4000).reshape(1000, 4)).save(path)
    cap(path.stat().st_size - 1)
    for mmap in (True, False):
        with pytest.raises(MemoryError, match="loading the trie file"):
            fs.Trie.load(path, mmap=mmap)
    cap(path.stat().st_size)
    assert len(fs.Trie.load(path)) == 1000


def test_assignment_over_cap(cap):
    cap(1 << 20)
    fs.linear_sum_assignment(np.ones((50, 50)))
    for cost in (np.ones((40, 60, 60)), np.ones((40, 60, 60), dtype=np.float32), torch.ones(40, 60, 60)):
        with pytest.raises(MemoryError, match=r"linear_sum_assignment on cost of shape \(40, 60, 60\)"):
            fs.linear_sum_assignment(cost)
    with pytest.raises(MemoryError, match="linear_sum_assignment"):
        fs.linear_sum_assignment(np.ones((400, 400)))


def test_lcs_over_cap(cap):
    cap(1 << 20)
    query = np.arange(20_000, dtype=np.int32)  # 20k distinct tokens: a 50 MB match table
    with pytest.raises(MemoryError, match=r"LCS match table of query \(20000 tokens\)"):
        fs.lcs_lengths(query, [[1, 2]])
    with pytest.raises(MemoryError, match="LCS match table of b"):
        fs.lcs_length(np.arange(30_000), query)
    with pytest.raises(MemoryError, match="LCS match table of query_tokens"):
        fs.LCSLookahead(query)
    # Per-item queries, each small, count together: 200 tables of 2800 tokens are about 200 KiB each.
    with pytest.raises(MemoryError, match=r"LCS match tables of query_tokens \(200 queries, 560000 tokens\)"):
        fs.LCSLookahead(np.tile(np.arange(2800, dtype=np.int32), (200, 1)))
    cap(64 << 10)  # a table under 1 MiB is taken at its bound, and checked against the cap too
    with pytest.raises(MemoryError, match=r"LCS match table of query_tokens \(2800 tokens\)"):
        fs.LCSLookahead(np.arange(2800))
    cap(1 << 20)
    assert fs.lcs_lengths(np.zeros(20_000, dtype=np.int32), [[0, 1]]).tolist() == [1]  # one distinct token: small
    with pytest.raises(MemoryError, match="lcs_lengths over 500000 candidates"):
        fs.lcs_lengths([1], np.zeros(500_000, dtype=np.int32), np.arange(500_001))


def test_mask_copy_over_cap(cap):
    trie = fs.Trie([[1, 2]])
    logits = torch.zeros(64, 2048)[:, ::2]  # strided columns: masked through a contiguous copy
    cap(logits.numel() * 4 - 1)
    with pytest.raises(MemoryError, match="mask_logits"):
        trie.mask_logits(logits, [0] * 64)
    trie.mask_logits(torch.zeros(64, 1024), [0] * 64)  # in place: nothing to allocate


@pytest.mark.parametrize("decoder", ["beam", "trie_beam", "sampler"])
def test_search_buffers_over_cap(cap, decoder):
    # [rows, max_length] token buffers: 2 x 2 rows x 10**6 tokens is over 1 MB before any step runs.
    calls = []

    def step(tokens, beam_idx):
        calls.append(None)
        return torch.zeros(len(beam_idx), 8)

    make = {"beam": lambda n: fs.BeamSearch(1, num_beams=2, max_length=n),
            "trie_beam": lambda n: fs.TrieBeamSearch(fs.Trie([[3, 4]], eos_id=1), num_beams=2, max_length=n),
            "sampler": lambda n: fs.Sampler(eos_id=1, max_length=n)}[decoder]
    cap(1 << 20)
    with pytest.raises(MemoryError, match=r"a search of 4 rows \(batch_size \* num_\w+\) x max_length 1,000,000"):
        make(10**6).search(step, 2, **({"num_samples": 2} if decoder == "sampler" else {}))
    assert not calls
    make(1000).search(step, 2)


@pytest.mark.parametrize("kwargs,match", [(dict(max_length=2**31), "max_length must be at most 2\\*\\*31 - 1"),
                                          (dict(num_beams=2**40), "num_beams must be at most")])
def test_search_counts_beyond_int32__raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fs.BeamSearch(1, **kwargs)
    with pytest.raises(ValueError, match=r"batch_size \* num_beams must be at most 2\*\*31 - 1 rows"):
        fs.BeamSearch(1, num_beams=2**16).search(lambda t, b: torch.zeros(len(b), 8), 2**16)
    with pytest.raises(ValueError, match="batch_size must be at most"):
        fs.Sampler().search(lambda t, b: torch.zeros(len(b), 8), 2**40)


def test_set_memory_limit_arguments(cap):
    with pytest.raises(TypeError, match="nbytes must be an int or None"):
        cap(1.5)
    with pytest.raises(ValueError, match="nbytes must be positive"):
        cap(0)
    cap(None)
    assert fs.get_memory_limit() is None
    cap(np.int64(1 << 30))  # NumPy integers are integers
    assert fs.get_memory_limit() == 1 << 30 and type(fs.get_memory_limit()) is int


@pytest.mark.parametrize("value, expected", [("2g", 2 << 30), ("", None)])
def test_environment_variable(value, expected):
    out = run_python("import pyfastseq; print(pyfastseq.get_memory_limit())", PYFASTSEQ_MEMORY_LIMIT=value)
    assert out.returncode == 0 and out.stdout.strip() == str(expected), out.stderr


def test_environment_variable_invalid():
    out = run_python("import pyfastseq", PYFASTSEQ_MEMORY_LIMIT="lots")
    assert out.returncode != 0 and "PYFASTSEQ_MEMORY_LIMIT must be a byte count" in out.stderr
