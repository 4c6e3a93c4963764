"""Beam search vs transformers: the decode step outside the model, and generate() end to end.

- Step: precomputed logits for 80 / 800 rows (num_beams 8) whose prefixes sit at depth 2 of a
  catalogue trie; pyfastseq's fused step (log-softmax normaliser + allowed children + top 2K) vs.
  transformers' ``log_softmax`` -> ``PrefixConstrainedLogitsProcessor`` (a dict trie) -> add beam
  scores -> ``topk``. Catalogue: 1M semantic IDs (vocab 32k) and ~1M titles (vocab 50k);
  ``PYFASTSEQ_BENCH_ITEMS`` sets the number of items (building the dict tries takes a while).
- Generate: a small random GPT-2 (vocabulary of the catalogue) constrained to the semantic-ID or the
  title trie, 16 and 64 beams, ``TrieBeamSearch.generate`` vs.
  ``model.generate(prefix_allowed_tokens_fn=...)``.

Each test asserts equal results first, times pyfastseq with pytest-benchmark and the peer in the same
test, and records ``peer_min_s`` and ``speedup`` (fastest run vs. fastest run, the stable figure on a
shared machine) in ``extra_info``.
"""

from __future__ import annotations

import copy
import functools
import os
import random

import pytest
import torch

import datasets
from timing import best_time, stat
import pyfastseq as fs
from pyfastseq._generate import model_step_fn
from pyfastseq.reference.trie import DictTrie
from pyfastseq.search import _beam_step

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor  # noqa: E402

ITEMS = int(os.environ.get("PYFASTSEQ_BENCH_ITEMS", 1_000_000))
NUM_BEAMS = 8
DEPTH = 2


@functools.cache
def catalogue(kind: str):
    """(Trie, DictTrie, vocab, entries as lists) for a catalogue kind."""
    if kind == "semantic":
        tokens, offsets = datasets.semantic_ids(ITEMS)
        vocab, eos = datasets.SEMANTIC_VOCAB, None
    else:
        tokens, offsets = datasets.titles(ITEMS)
        vocab, eos = datasets.TITLE_VOCAB, datasets.EOS
    entries = datasets.as_lists(tokens, offsets)
    return fs.Trie(tokens, eos_id=eos, offsets=offsets), DictTrie(entries, eos_id=eos), vocab, entries


def dict_trie_fn(dict_trie: DictTrie, prompt_len: int):
    """The usual prefix_allowed_tokens_fn over a nested-dict trie (GENRE style)."""

    def fn(batch_id, sent):
        node = dict_trie.node(sent[prompt_len:].tolist())
        allowed = [t for t in node if t >= 0] if node else []
        return allowed or [datasets.EOS]

    return fn


@pytest.mark.parametrize("rows", [80, 800])
@pytest.mark.parametrize("kind", ["semantic", "titles"])
@pytest.mark.parametrize("normalize", ["full", "allowed"])
def test_step(benchmark, kind, rows, normalize):
    trie, dict_trie, vocab, entries = catalogue(kind)
    rng = random.Random(0)
    prefixes = [e[:DEPTH] for e in rng.sample([e for e in entries[:200_000] if len(e) > DEPTH], rows)]
    nodes = torch.tensor([trie.walk(p) for p in prefixes], dtype=torch.int32)
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))
    running = -torch.rand(rows, generator=torch.Generator().manual_seed(1)) * 10
    batch = rows // NUM_BEAMS
    processor = PrefixConstrainedLogitsProcessor(dict_trie_fn(dict_trie, 0), NUM_BEAMS)
    input_ids = torch.tensor(prefixes)

    def peer():
        log_probs = processor(input_ids, torch.log_softmax(logits, -1))
        if normalize == "allowed":
            log_probs = torch.log_softmax(log_probs, -1)
        accumulated = (log_probs.view(batch, NUM_BEAMS, vocab) + running.view(batch, NUM_BEAMS, 1)).view(batch, -1)
        return torch.topk(accumulated, 2 * NUM_BEAMS)

    def ours():
        return _beam_step(logits, running, NUM_BEAMS, trie, nodes, normalize=normalize)

    want, got = peer(), ours()
    for b in range(batch):  # near a trie's leaves an item may have fewer than 2K candidates
        n = int(got["count"][b])
        assert n == int(torch.isfinite(want.values[b]).sum())
        torch.testing.assert_close(got["score"][b, :n], want.values[b, :n], rtol=0, atol=1e-4)
    peer_s = best_time(peer, rounds=5 if rows == 800 else 10)
    benchmark.pedantic(ours, rounds=20, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        kind=kind, rows=rows, num_beams=NUM_BEAMS, vocab=vocab, items=len(trie), normalize=normalize,
        peer="transformers log_softmax + PrefixConstrainedLogitsProcessor(dict trie) + topk",
        peer_min_s=peer_s, speedup=peer_s / stat(benchmark, "min"),
    )


@functools.cache
def small_gpt2(vocab: int):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=64, n_layer=2,
                                     n_head=2, bos_token_id=datasets.EOS, eos_token_id=datasets.EOS, pad_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


# (catalogue, new tokens): a semantic ID is 4 codes; a title is up to 15 tokens and its eos.
GENERATE_CASES = {"semantic": 4, "titles": 16}


@pytest.mark.parametrize("num_beams", [16, 64])
@pytest.mark.parametrize("kind", list(GENERATE_CASES))
def test_generate(benchmark, kind, num_beams):
    check_and_time_generate(benchmark, kind, num_beams, torch.device("cpu"))


def check_and_time_generate(benchmark, kind, num_beams, device):
    """``TrieBeamSearch.generate`` vs. transformers' ``generate`` with ``prefix_allowed_tokens_fn``,
    the model and prompt on ``device`` (bench_cuda.py runs this on the GPU)."""
    trie, dict_trie, vocab, _ = catalogue(kind)
    new_tokens = GENERATE_CASES[kind]
    model = copy.deepcopy(small_gpt2(vocab)).to(device)
    prompt = torch.randint(2, vocab, (2, 8), generator=torch.Generator().manual_seed(0)).to(device)
    searcher = fs.TrieBeamSearch(trie, num_beams=num_beams, max_length=new_tokens, early_stopping=True)

    def peer():
        with torch.no_grad():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=num_beams,
                                  max_new_tokens=new_tokens, early_stopping=True, do_sample=False, pad_token_id=0,
                                  prefix_allowed_tokens_fn=dict_trie_fn(dict_trie, prompt.shape[1])).cpu()

    def ours():
        return searcher.generate(model, prompt)

    expected = [[row[: row.index(datasets.EOS) + 1] if datasets.EOS in row else row]
                for row in peer()[:, prompt.shape[1]:].tolist()]
    calls = []
    counting = model.register_forward_pre_hook(lambda module, args: calls.append(None))
    assert ours().sequences == expected
    counting.remove()
    rows = prompt.shape[0] * num_beams

    def model_alone():
        # The model calls ours() made, through the same step function (cache reorders included),
        # with no search: the floor under generate().
        step = model_step_fn(model, prompt, None, num_beams, {})
        with torch.no_grad():
            logits = step(torch.zeros(rows, 0, dtype=torch.long), torch.arange(rows))
            for _ in range(len(calls) - 1):
                logits = step(torch.full((rows, 1), 2, device=device), torch.arange(rows, device=device))
        return logits.cpu()

    peer_s = best_time(peer, rounds=5)
    model_s = best_time(model_alone, rounds=5)
    benchmark.pedantic(ours, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        kind=kind, num_beams=num_beams, batch=2, items=len(trie), new_tokens=new_tokens,
        model=f"GPT-2 2x64, vocab {vocab}", device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        peer="transformers generate + prefix_allowed_tokens_fn (dict trie)",
        peer_min_s=peer_s, speedup=peer_s / stat(benchmark, "min"),
        model_calls=len(calls), model_alone_s=model_s,
    )
