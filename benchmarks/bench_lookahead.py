"""Cost of LCSLookahead.deltas() on a 1M-entry knowledge-base trie (seed 001's KgCLUE setting).

Entries are ``subject [SEP] predicate [SEP] object [EOS]`` over a 21,128-token vocabulary; popular
subjects carry many triples, so the subtree below ``subject [SEP]`` (the predicate choice, where the
rule starts to apply) ranges from one entry to thousands. Each row is one batch item with its own
question: the subject, words of the predicate, filler. Timed inside a whole TrieBeamSearch with and
without the lookahead (beams 8-64, precomputed logits), alone at the predicate's first token (the
largest subtrees) for 8-64 rows, and, as a worst case, with no ``start_after`` from the root, where
``max_nodes`` bounds the walk.

    PYTHONPATH=$PWD pytest benchmarks/bench_lookahead.py --benchmark-json=lookahead.json
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timing import stat

import pyfastseq as fs

VOCAB, SEP, EOS = 21_128, 102, 103
NUM_ITEMS, NUM_SUBJECTS, NUM_PREDICATES = 1_000_000, 150_000, 3_000
ROWS = [8, 16, 32, 64]


def _ragged(rng, count, low, high):
    """(flat int32 tokens, int64 offsets) of `count` random phrases of low..high tokens."""
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(rng.integers(low, high + 1, count), out=offsets[1:])
    tokens = (rng.zipf(1.2, int(offsets[-1])) % (VOCAB - 200) + 200).astype(np.int32)  # ids < 200: specials
    return tokens, offsets


def _gather(tokens, offsets, ids):
    """The phrases `ids`, concatenated, and their lengths."""
    lengths = offsets[ids + 1] - offsets[ids]
    starts = np.repeat(offsets[ids] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return tokens[starts + np.arange(int(lengths.sum()))], lengths


def _place(out, item_starts, at, values, lengths):
    """Write each item's phrase at offset `at` inside the item."""
    within = np.arange(int(lengths.sum())) - np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    out[np.repeat(item_starts + at, lengths) + within] = values


def build_kb():
    rng = np.random.default_rng(0)
    subjects = _ragged(rng, NUM_SUBJECTS, 2, 6)
    predicates = _ragged(rng, NUM_PREDICATES, 1, 4)
    # Popular subjects hold up to a few thousand triples, most a handful (KgCLUE-like).
    popularity = rng.lognormal(0.0, 1.5, NUM_SUBJECTS)
    subject_of = rng.choice(NUM_SUBJECTS, NUM_ITEMS, p=popularity / popularity.sum())
    predicate_of = (rng.zipf(1.3, NUM_ITEMS) - 1) % NUM_PREDICATES
    s_tokens, s_len = _gather(*subjects, subject_of)
    p_tokens, p_len = _gather(*predicates, predicate_of)
    o_tokens, o_offsets = _ragged(rng, NUM_ITEMS, 1, 12)
    o_len = np.diff(o_offsets)
    lengths = s_len + p_len + o_len + 2
    offsets = np.zeros(NUM_ITEMS + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=np.int32)
    starts = offsets[:-1]
    _place(tokens, starts, 0, s_tokens, s_len)
    tokens[starts + s_len] = SEP
    _place(tokens, starts, s_len + 1, p_tokens, p_len)
    tokens[starts + s_len + 1 + p_len] = SEP
    _place(tokens, starts, s_len + p_len + 2, o_tokens, o_len)
    trie = fs.Trie(tokens, eos_id=EOS, offsets=offsets)
    return {"trie": trie, "tokens": tokens, "offsets": offsets, "subject_len": s_len, "predicate_len": p_len}


@pytest.fixture(scope="module")
def kb():
    return build_kb()


def pick(kb, rows, subject_len=3):
    """`rows` entries of distinct subjects (of one length, so a batch has one step count), popular
    subjects first, each with a question about itself: the subject, words of the predicate, filler."""
    rng = np.random.default_rng(rows)
    candidates = np.flatnonzero(kb["subject_len"] == subject_len)
    picked, seen = [], set()
    for item in candidates[rng.permutation(len(candidates))]:
        start = kb["offsets"][item]
        subject = tuple(kb["tokens"][start : start + subject_len].tolist())
        if subject not in seen:
            seen.add(subject)
            picked.append(item)
        if len(picked) == rows:
            break
    entries, queries = [], []
    for item in picked:
        start = kb["offsets"][item]
        entry = kb["tokens"][start : kb["offsets"][item + 1]].tolist()
        entries.append(entry)
        predicate = entry[subject_len + 1 : subject_len + 1 + int(kb["predicate_len"][item])]
        filler = rng.integers(200, VOCAB, 24 - len(predicate) - subject_len).tolist()
        queries.append(entry[:subject_len] + filler[:12] + predicate + filler[12:])
    return entries, queries


def batch(kb, rows, subject_len=3):
    """`rows` rows at the first predicate token of `pick`'s entries, with their questions."""
    entries, queries = pick(kb, rows, subject_len)
    generated = np.array([entry[: subject_len + 1] for entry in entries], dtype=np.int32)
    nodes = np.array([kb["trie"].walk(g) for g in generated], dtype=np.int32)
    return nodes, generated, np.arange(rows, dtype=np.int64), queries


def subtree_sizes(kb, nodes):
    child_begin = kb["trie"]._native.arrays()[0].astype(np.int64)
    sizes = []
    for node in nodes.tolist():
        lo = hi = node
        count = 0
        while lo <= hi:  # breadth-first numbering: each level of a subtree is one id range
            count += hi - lo + 1
            lo, hi = child_begin[lo] + 1, child_begin[hi + 1]
        sizes.append(count - 1)
    return sizes


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.benchmark(group="lookahead-predicate-start")
def test_deltas_at_predicate_start(benchmark, kb, rows):
    nodes, generated, batch_index, queries = batch(kb, rows)
    lookahead = fs.LCSLookahead(queries, start_after=SEP)
    row_offsets, deltas = lookahead.deltas(kb["trie"], nodes, generated, batch_index)
    assert lookahead.last_truncated == 0 and row_offsets[-1] == len(deltas) and deltas.max() > 0
    benchmark(lookahead.deltas, kb["trie"], nodes, generated, batch_index)
    sizes = subtree_sizes(kb, nodes)
    benchmark.extra_info.update(
        rows=rows, children=int(row_offsets[-1]), visited=lookahead.last_visited,
        subtree_nodes=int(sum(sizes)), largest_subtree=int(max(sizes)),
        us_median=stat(benchmark, "median") * 1e6,
    )


@pytest.mark.parametrize("max_nodes", [10_000, 100_000, 1_000_000])
@pytest.mark.benchmark(group="lookahead-root-capped")
def test_deltas_from_root_capped(benchmark, kb, max_nodes):
    """Worst case: no start_after, 8 rows at the root, the whole trie below; max_nodes bounds it."""
    nodes = np.zeros(8, dtype=np.int32)
    generated = np.zeros((8, 0), dtype=np.int32)
    _, _, _, queries = batch(kb, 8)
    lookahead = fs.LCSLookahead(queries, max_nodes=max_nodes)
    benchmark(lookahead.deltas, kb["trie"], nodes, generated, np.arange(8))
    assert lookahead.last_visited <= max_nodes
    benchmark.extra_info.update(
        max_nodes=max_nodes, visited=lookahead.last_visited, truncated=lookahead.last_truncated,
        us_median=stat(benchmark, "median") * 1e6,
    )


def guided_step_fn(entries, num_beams, steps):
    """A stand-in model over precomputed logits: noise plus a boost to each batch item's own entry
    at every position, so the beams follow their subject into its predicate subtree."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(steps, len(entries) * num_beams, VOCAB, generator=generator) * 2
    for b, entry in enumerate(entries):
        for t, token in enumerate(entry[:steps]):
            logits[t, b * num_beams : (b + 1) * num_beams, token] += 6
    calls = [0]

    def step_fn(tokens, beam_idx):
        calls[0] += 1
        return logits[min(calls[0], steps) - 1]

    def restart():
        """Start over; returns the number of steps the last search took."""
        steps_taken, calls[0] = calls[0], 0
        return steps_taken

    return step_fn, restart


SEARCH_BATCH, SEARCH_STEPS = 4, 16


@pytest.mark.parametrize("with_lookahead", [False, True], ids=["without", "with"])
@pytest.mark.parametrize("num_beams", [8, 16, 32, 64])
@pytest.mark.benchmark(group="search-lookahead-overhead")
def test_search_lookahead_overhead(benchmark, kb, num_beams, with_lookahead):
    """A whole TrieBeamSearch (4 questions, up to 16 steps, precomputed logits) with and without the
    lookahead. The lookahead changes which hypotheses survive, hence the number of steps, so its
    share is the with/without ratio of the median time per step, minus one."""
    entries, queries = pick(kb, SEARCH_BATCH)
    step_fn, restart = guided_step_fn(entries, num_beams, SEARCH_STEPS)
    lookahead = fs.LCSLookahead(queries, start_after=SEP) if with_lookahead else None
    searcher = fs.TrieBeamSearch(kb["trie"], num_beams=num_beams, max_length=SEARCH_STEPS, lookahead=lookahead)

    def search():
        restart()
        return searcher.search(step_fn, SEARCH_BATCH)

    out = search()
    assert all(kb["trie"].walk(seq) >= 0 for hyps in out.sequences for seq in hyps)  # max_length may cut
    steps = restart()
    benchmark(search)
    benchmark.extra_info.update(num_beams=num_beams, batch=SEARCH_BATCH, rows=SEARCH_BATCH * num_beams,
                                lookahead=with_lookahead, steps=steps, ms_median=stat(benchmark, "median") * 1e3,
                                us_per_step_median=stat(benchmark, "median") / steps * 1e6)
