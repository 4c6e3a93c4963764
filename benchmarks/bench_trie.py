"""Trie build and masking, measured beside the structures users have today.

Build: pyfastseq.Trie (flat fast path) vs a dict-of-dicts trie (GENRE-style) vs marisa-trie, on 1M
semantic-ID items and ~1M title-like items. Mask: Trie.mask_logits vs transformers'
PrefixConstrainedLogitsProcessor driven by a dict trie, 800 x 32k and 512 x 152k.

    pytest benchmarks/bench_trie.py --benchmark-json=trie.json
    PYFASTSEQ_BENCH_ITEMS=100000 pytest benchmarks/bench_trie.py    # a quicker, smaller run
"""

import gc
import os
import tracemalloc

import numpy as np
import pytest
import torch

import datasets
import pyfastseq as fs
from memory import peak_rss
from timing import stat
from pyfastseq.reference.trie import DictTrie

ITEMS = int(os.environ.get("PYFASTSEQ_BENCH_ITEMS", 1_000_000))
CATALOGUES = {"semantic_ids": datasets.semantic_ids, "titles": datasets.titles}


def catalogue(name):
    return CATALOGUES[name](ITEMS)


def to_marisa_keys(tokens, offsets):
    # One BMP character per token id (ids < 55,296 stay clear of the surrogate range).
    text = "".join(map(chr, (tokens + 0x100).tolist()))
    return [text[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


@pytest.mark.parametrize("name", list(CATALOGUES))
def test_build_pyfastseq(benchmark, name):
    tokens, offsets = catalogue(name)
    trie = benchmark.pedantic(fs.Trie, args=(tokens,), kwargs={"eos_id": datasets.EOS, "offsets": offsets}, rounds=3)
    items = len(offsets) - 1
    assert len(trie) == len(set(map(bytes, np.split(tokens.view(np.uint8), offsets[1:-1] * 4))))
    nbytes, nodes = trie.nbytes, trie.num_nodes
    del trie
    gc.collect()
    _, peak = peak_rss(fs.Trie, tokens, eos_id=datasets.EOS, offsets=offsets)
    benchmark.extra_info.update(
        impl="pyfastseq", items=items, bytes_per_item=nbytes / items, items_per_s=items / stat(benchmark, "median"),
        nodes=nodes, peak_rss_mb=peak / 2**20,
    )


@pytest.mark.parametrize("name", list(CATALOGUES))
def test_build_dicttrie(benchmark, name):
    tokens, offsets = catalogue(name)
    seqs = datasets.as_lists(tokens, offsets)
    benchmark.pedantic(DictTrie, args=(seqs,), kwargs={"eos_id": datasets.EOS}, rounds=1)
    gc.collect()
    tracemalloc.start()
    ref = DictTrie(seqs, eos_id=datasets.EOS)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del ref
    gc.collect()
    _, peak = peak_rss(DictTrie, seqs, eos_id=datasets.EOS)
    items = len(seqs)
    benchmark.extra_info.update(impl="dict-of-dicts trie", items=items, bytes_per_item=size / items,
                                items_per_s=items / stat(benchmark, "median"), peak_rss_mb=peak / 2**20)


@pytest.mark.parametrize("name", list(CATALOGUES))
def test_build_marisa(benchmark, name):
    marisa_trie = pytest.importorskip("marisa_trie")
    tokens, offsets = catalogue(name)
    keys = to_marisa_keys(tokens, offsets)
    trie = benchmark.pedantic(marisa_trie.Trie, args=(keys,), rounds=1)
    items = len(keys)
    nbytes = len(trie.tobytes())
    del trie
    gc.collect()
    _, peak = peak_rss(marisa_trie.Trie, keys)
    benchmark.extra_info.update(
        impl="marisa-trie", items=items, bytes_per_item=nbytes / items,
        items_per_s=items / stat(benchmark, "median"), peak_rss_mb=peak / 2**20,
    )


# -- masking -------------------------------------------------------------------------------------

MASK_CASES = {"800x32k_semantic_ids": ("semantic_ids", 800, 32_000), "512x152k_titles": ("titles", 512, 152_064)}


@pytest.fixture(scope="module")
def mask_inputs():
    cache = {}

    def make(case):
        if case not in cache:
            name, rows, vocab = MASK_CASES[case]
            tokens, offsets = catalogue(name)
            seqs = datasets.as_lists(tokens, offsets)
            rng = np.random.default_rng(0)
            picks = rng.integers(0, len(seqs), size=rows)
            depth = 2  # every row sits two tokens deep: beams mid-way through decoding
            prefixes = [seqs[i][:depth] for i in picks]
            # The dict trie needs only the entries below the sampled prefixes: their nodes' children.
            sampled = {tuple(p) for p in prefixes}
            below = [s for s in seqs if tuple(s[:depth]) in sampled]
            trie, ref = fs.Trie(tokens, eos_id=datasets.EOS, offsets=offsets), DictTrie(below, eos_id=datasets.EOS)
            nodes = torch.tensor([trie.walk(p) for p in prefixes], dtype=torch.int32)
            input_ids = torch.tensor(prefixes)
            logits = torch.randn(rows, vocab)
            cache[case] = (trie, ref, nodes, input_ids, logits)
        return cache[case]

    return make


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_mask_pyfastseq(benchmark, mask_inputs, case):
    trie, ref, nodes, input_ids, logits = mask_inputs(case)
    work = logits.clone()
    expected = _transformers_processor(ref, input_ids.shape[0])(input_ids, logits.clone())
    assert torch.equal(trie.mask_logits(work, nodes), expected)
    benchmark(trie.mask_logits, work, nodes)
    _, peak = peak_rss(trie.mask_logits, work, nodes)
    benchmark.extra_info.update(impl="pyfastseq", rows=logits.shape[0], vocab=logits.shape[1],
                                gb_per_s=logits.numel() * 4 / stat(benchmark, "median") / 1e9,
                                peak_rss_mb=peak / 2**20)


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_mask_transformers(benchmark, mask_inputs, case):
    _, ref, _, input_ids, logits = mask_inputs(case)
    processor = _transformers_processor(ref, input_ids.shape[0])
    benchmark(processor, input_ids, logits)
    _, peak = peak_rss(processor, input_ids, logits)
    benchmark.extra_info.update(impl="transformers PrefixConstrainedLogitsProcessor", rows=logits.shape[0],
                                vocab=logits.shape[1], peak_rss_mb=peak / 2**20)


def _transformers_processor(ref, rows):
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    return PrefixConstrainedLogitsProcessor(lambda batch_id, sent: ref.children(sent.tolist()), num_beams=rows)
