"""fs.hf.TrieLogitsProcessor vs. transformers' PrefixConstrainedLogitsProcessor over a dict trie.

1M-item semantic-ID catalogue (4 x 256 codes + eos, vocabulary 32,000), CPU. Two figures per row
count: the processor alone on one decoding step, and whole ``model.generate()`` calls with a small
random GPT-2 (the rest of each step, transformers' beam step included, is the same for both).
PYFASTSEQ_BENCH_HF_ITEMS overrides the catalogue size (building the dict trie takes ~7 s per 1M).

    PYTHONPATH=$PWD pytest benchmarks/bench_hf.py --benchmark-json=bench_hf.json
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from datasets import EOS, SEMANTIC_VOCAB, as_lists, semantic_ids
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

import pyfastseq as fs
from pyfastseq.reference.trie import DictTrie

ITEMS = int(os.environ.get("PYFASTSEQ_BENCH_HF_ITEMS", 1_000_000))
PROMPT = 8
NUM_BEAMS = 8
PAD = 0


@pytest.fixture(scope="module")
def catalogue():
    tokens, offsets = semantic_ids(ITEMS)
    return fs.Trie(tokens, eos_id=EOS, offsets=offsets), DictTrie(as_lists(tokens, offsets), eos_id=EOS)


def allowed_fn(dict_trie, start):
    """The prefix_allowed_tokens_fn users write: the trie's children, every token where none."""
    everything = list(range(SEMANTIC_VOCAB))
    return lambda batch_id, sent: dict_trie.children(sent[start:].tolist()) or everything


def median_seconds(fn, rounds):
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def record(benchmark, peer_seconds, **info):
    ours = benchmark.stats.stats.median
    benchmark.extra_info.update(info, peer="transformers PrefixConstrainedLogitsProcessor + dict trie",
                                peer_median_s=peer_seconds, ratio=peer_seconds / ours, items=ITEMS,
                                machine=f"{os.cpu_count()}-core CPU", torch_threads=torch.get_num_threads())


@pytest.mark.parametrize("rows", [80, 800])
@pytest.mark.parametrize("depth", [0, 2])
def test_processor_step__rows__depth(benchmark, catalogue, rows, depth):
    trie, dict_trie = catalogue
    tokens, offsets = semantic_ids(ITEMS)
    rng = np.random.default_rng(rows + depth)
    items = rng.integers(0, ITEMS, size=rows)
    generated = tokens[offsets[items][:, None] + np.arange(depth)]
    input_ids = torch.from_numpy(np.hstack([rng.integers(2, SEMANTIC_VOCAB, (rows, PROMPT)), generated]).astype(np.int64))
    scores = torch.log_softmax(torch.randn(rows, SEMANTIC_VOCAB), dim=-1)

    peer = PrefixConstrainedLogitsProcessor(allowed_fn(dict_trie, PROMPT), NUM_BEAMS)
    ours = fs.hf.TrieLogitsProcessor(trie, prompt_len=PROMPT, num_beams=NUM_BEAMS)
    assert torch.equal(ours(input_ids, scores), peer(input_ids, scores))

    peer_seconds = median_seconds(lambda: peer(input_ids, scores), rounds=7)
    benchmark(ours, input_ids, scores)
    record(benchmark, peer_seconds, rows=rows, depth=depth, vocab=SEMANTIC_VOCAB)


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=SEMANTIC_VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                        eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("rows", [80, 800])
def test_generate__rows(benchmark, catalogue, gpt2, rows):
    trie, dict_trie = catalogue
    batch = rows // NUM_BEAMS
    input_ids = torch.randint(2, SEMANTIC_VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(rows))
    kwargs = dict(attention_mask=torch.ones_like(input_ids), max_new_tokens=5, num_beams=NUM_BEAMS,
                  num_return_sequences=2, pad_token_id=PAD, eos_token_id=EOS, return_dict_in_generate=True,
                  output_scores=True)

    def peer():
        return gpt2.generate(input_ids, prefix_allowed_tokens_fn=allowed_fn(dict_trie, PROMPT), **kwargs)

    def ours():
        processor = fs.hf.TrieLogitsProcessor(trie, prompt_len="auto", num_beams=NUM_BEAMS)
        return gpt2.generate(input_ids, logits_processor=[processor], **kwargs)

    with torch.inference_mode():
        expected, got = peer(), ours()
        assert torch.equal(got.sequences, expected.sequences)
        assert torch.equal(got.sequences_scores, expected.sequences_scores)
        for row in got.sequences[:, PROMPT:].tolist():
            assert dict_trie.contains(row[: row.index(EOS) + 1])
        peer_seconds = median_seconds(peer, rounds=3)
        benchmark.pedantic(ours, rounds=3, iterations=1)
    record(benchmark, peer_seconds, rows=rows, new_tokens=5, model="GPT-2 2x64, vocab 32k")
