"""fs.hf.TrieLogitsProcessor vs. transformers' PrefixConstrainedLogitsProcessor over a dict trie.

1M-item semantic-ID catalogue (4 x 256 codes + eos, vocabulary 32,000) and, for generate(), also the
1M-title catalogue (3-15 Zipf tokens + eos, vocabulary 50,000), CPU. Two figures per row count: the
processor alone on one decoding step, and whole ``model.generate()`` calls with a small random GPT-2
(the rest of each step, transformers' beam step included, is the same for both).
PYFASTSEQ_BENCH_HF_ITEMS overrides the catalogue size (building the dict tries takes about a minute
per 1M items).

    PYTHONPATH=$PWD pytest benchmarks/bench_hf.py --benchmark-json=bench_hf.json

On a machine shared with other jobs, OMP_NUM_THREADS=1 keeps thread wake-ups out of both sides'
timings.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
import pytest
import torch
from datasets import EOS, SEMANTIC_VOCAB, TITLE_VOCAB, as_lists, semantic_ids, titles
from timing import stat
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

import pyfastseq as fs
from pyfastseq.reference.trie import DictTrie

ITEMS = int(os.environ.get("PYFASTSEQ_BENCH_HF_ITEMS", 1_000_000))
PROMPT = 8
NUM_BEAMS = 8
PAD = 0


CATALOGUES = {"semantic": (semantic_ids, SEMANTIC_VOCAB), "titles": (titles, TITLE_VOCAB)}


@functools.cache
def load(kind):
    """(Trie, DictTrie, vocabulary) of a catalogue."""
    make, vocab = CATALOGUES[kind]
    tokens, offsets = make(ITEMS)
    return fs.Trie(tokens, eos_id=EOS, offsets=offsets), DictTrie(as_lists(tokens, offsets), eos_id=EOS), vocab


@pytest.fixture(scope="module")
def catalogue():
    return load("semantic")[:2]


def allowed_fn(dict_trie, start, vocab=SEMANTIC_VOCAB):
    """The prefix_allowed_tokens_fn users write: the trie's children, every token where none."""
    everything = list(range(vocab))
    return lambda batch_id, sent: dict_trie.children(sent[start:].tolist()) or everything


def median_seconds(fn, rounds):
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


_peer_seconds: dict = {}


def peer_median(key, fn, rounds):
    """The peer is timed once per configuration, in the same run as both variants of ours."""
    if key not in _peer_seconds:
        _peer_seconds[key] = median_seconds(fn, rounds)
    return _peer_seconds[key]


def record(benchmark, peer_seconds, **info):
    benchmark.extra_info.update(info, peer="transformers PrefixConstrainedLogitsProcessor + dict trie",
                                peer_median_s=peer_seconds, items=ITEMS, machine=f"{os.cpu_count()}-core CPU",
                                torch_threads=torch.get_num_threads())
    benchmark.extra_info["ratio"] = peer_seconds / stat(benchmark, "median")


# How the processor writes its output: a new tensor per call (as transformers' processors do), into
# the scores it is given, or into a buffer of its own rewritten where the allowed sets change.
MODES = {"new": {}, "inplace": {"inplace": True}, "reuse_output": {"reuse_output": True}}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("rows", [80, 800])
def test_processor_step__rows__mode(benchmark, catalogue, rows, mode):
    trie, dict_trie = catalogue
    tokens, offsets = semantic_ids(ITEMS)
    rng = np.random.default_rng(rows)
    steps = []  # two steps' rows at different nodes, so that reuse_output rewrites every row
    for _ in range(2):
        items = rng.integers(0, ITEMS, size=rows)
        generated = tokens[offsets[items][:, None] + np.arange(2)]  # mid-item: 2 of 4 codes decoded
        prompts = rng.integers(2, SEMANTIC_VOCAB, (rows, PROMPT))
        steps.append(torch.from_numpy(np.hstack([prompts, generated]).astype(np.int64)))
    scores = torch.log_softmax(torch.randn(rows, SEMANTIC_VOCAB), dim=-1)

    peer = PrefixConstrainedLogitsProcessor(allowed_fn(dict_trie, PROMPT), NUM_BEAMS)
    ours = fs.hf.TrieLogitsProcessor(trie, prompt_len=PROMPT, num_beams=NUM_BEAMS, **MODES[mode])
    for input_ids in steps + steps:
        assert torch.equal(ours(input_ids, scores.clone()), peer(input_ids, scores))

    peer_seconds = peer_median(("step", rows), lambda: peer(steps[0], scores), rounds=7)
    calls = iter(range(1 << 62))
    benchmark(lambda: ours(steps[next(calls) % 2], scores))
    record(benchmark, peer_seconds, rows=rows, vocab=SEMANTIC_VOCAB, mode=mode)


@functools.cache
def gpt2(vocab):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(config).eval()


# (catalogue, rows, new tokens): a semantic ID is 4 codes + eos, a title up to 15 tokens + eos.
GENERATE_CASES = [("semantic", 80, 5), ("semantic", 800, 5), ("titles", 80, 16)]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind,rows,new_tokens", GENERATE_CASES)
def test_generate__rows__mode(benchmark, kind, rows, new_tokens, mode):
    trie, dict_trie, vocab = load(kind)
    model = gpt2(vocab)
    batch = rows // NUM_BEAMS
    input_ids = torch.randint(2, vocab, (batch, PROMPT), generator=torch.Generator().manual_seed(rows))
    kwargs = dict(attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens, num_beams=NUM_BEAMS,
                  num_return_sequences=2, pad_token_id=PAD, eos_token_id=EOS, return_dict_in_generate=True,
                  output_scores=True)

    def peer():
        return model.generate(input_ids, prefix_allowed_tokens_fn=allowed_fn(dict_trie, PROMPT, vocab), **kwargs)

    def ours():
        processor = fs.hf.TrieLogitsProcessor(trie, prompt_len="auto", num_beams=NUM_BEAMS, **MODES[mode])
        return model.generate(input_ids, logits_processor=[processor], **kwargs)

    with torch.inference_mode():
        expected, got = peer(), ours()
        assert torch.equal(got.sequences, expected.sequences)
        assert torch.equal(got.sequences_scores, expected.sequences_scores)
        for row in got.sequences[:, PROMPT:].tolist():
            assert dict_trie.contains(row[: row.index(EOS) + 1])
        peer_seconds = peer_median(("generate", kind, rows), peer, rounds=3)
        # The same generate() with no constraint: what the model and transformers' beam step cost,
        # the floor under any processor (the best possible ratio is peer / floor).
        floor_seconds = peer_median(("unconstrained", kind, rows), lambda: model.generate(input_ids, **kwargs), rounds=3)
        benchmark.pedantic(ours, rounds=3, iterations=1)
    record(benchmark, peer_seconds, kind=kind, rows=rows, mode=mode, new_tokens=new_tokens,
           model=f"GPT-2 2 layers x 64, vocab {vocab}", unconstrained_median_s=floor_seconds,
           best_possible_ratio=peer_seconds / floor_seconds)
