"""LCS of one 32-token query against 10k candidates of 4-20 tokens (ids up to 21,128): pyfastseq vs
rapidfuzz in the same run. rapidfuzz's fastest path is ``process.cdist`` on str (ids mapped to
characters); int lists are what a user holding token ids would pass it.

    PYTHONPATH=$PWD pytest benchmarks/bench_lcs.py --benchmark-json=lcs.json
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD pytest benchmarks/bench_lcs.py   # single-thread figures
"""

from __future__ import annotations

import numpy as np
import pytest
from rapidfuzz import process
from rapidfuzz.distance import LCSseq
from timing import stat

import pyfastseq as fs

NUM, VOCAB, QUERY_LEN = 10_000, 21_128, 32
GROUP = "lcs-32-token-query-x-10k"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    query = rng.integers(0, VOCAB, QUERY_LEN).astype(np.int32)
    offsets = np.zeros(NUM + 1, dtype=np.int64)
    np.cumsum(rng.integers(4, 21, NUM), out=offsets[1:])
    tokens = rng.integers(0, VOCAB, int(offsets[-1])).astype(np.int32)
    shared = rng.random(tokens.size) < 0.3  # candidates share words with the question
    tokens[shared] = rng.choice(query, int(shared.sum()))
    lists = [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(NUM)]
    return {
        "query": query,
        "tokens": tokens,
        "offsets": offsets,
        "lists": lists,
        "query_str": "".join(map(chr, query.tolist())),
        "strs": ["".join(map(chr, c)) for c in lists],
        "expected": [LCSseq.similarity(query.tolist(), c) for c in lists],
    }


def record(benchmark, **info):
    benchmark.extra_info.update(pairs=NUM, ns_per_pair_median=stat(benchmark, "median") / NUM * 1e9, **info)


@pytest.mark.benchmark(group=GROUP)
def test_pyfastseq_flat_buffer(benchmark, data):
    assert fs.lcs_lengths(data["query"], data["tokens"], data["offsets"]).tolist() == data["expected"]
    benchmark(fs.lcs_lengths, data["query"], data["tokens"], data["offsets"])
    record(benchmark, impl="pyfastseq", input="flat int32 + offsets")


@pytest.mark.benchmark(group=GROUP)
def test_pyfastseq_int_lists(benchmark, data):
    assert fs.lcs_lengths(data["query"], data["lists"]).tolist() == data["expected"]
    benchmark(fs.lcs_lengths, data["query"], data["lists"])
    record(benchmark, impl="pyfastseq", input="list of int lists")


@pytest.mark.parametrize("workers", [1, -1])
@pytest.mark.benchmark(group=GROUP)
def test_rapidfuzz_cdist_str(benchmark, data, workers):
    def run():
        return process.cdist([data["query_str"]], data["strs"], scorer=LCSseq.similarity, workers=workers)

    assert run()[0].tolist() == data["expected"]
    benchmark(run)
    record(benchmark, impl="rapidfuzz", input="str", workers=workers)


@pytest.mark.benchmark(group=GROUP)
def test_rapidfuzz_cdist_int_lists(benchmark, data):
    def run():
        return process.cdist([data["query"].tolist()], data["lists"], scorer=LCSseq.similarity)

    assert run()[0].tolist() == data["expected"]
    benchmark(run)
    record(benchmark, impl="rapidfuzz", input="int lists", workers=1)
