import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyfastseq as fs
from pyfastseq.reference.lcs import lcs_length, lookahead_deltas, lookahead_reshape, segment
from pyfastseq.reference.trie import DictTrie

pytestmark = pytest.mark.native

EOS = 9
SEP = 1


def random_catalogue(rng, num, alphabet, max_len):
    return [[rng.randint(0, alphabet) for _ in range(rng.randint(1, max_len))] for _ in range(num)]


def all_prefixes(dict_trie):
    """Every proper prefix of every stored sequence (the nodes a beam can stand on), deduplicated."""
    return sorted({tuple(s[:k]) for s in dict_trie.sequences() for k in range(len(s))}, key=lambda p: (len(p), p))


def rows_of(trie, prefixes, batch):
    """nodes, generated and batch_index for rows standing on `prefixes` (all of one length) in `batch`."""
    nodes = np.array([trie.walk(list(p)) for p in prefixes], dtype=np.int32)
    generated = np.array([list(p) for p in prefixes], dtype=np.int32).reshape(len(prefixes), -1)
    return nodes, generated, np.array(batch, dtype=np.int64)


def check_against_brute_force(seqs, eos, queries, start_after, per_item=True, max_nodes=None):
    trie, dict_trie = fs.Trie(seqs, eos_id=eos), DictTrie(seqs, eos_id=eos)
    lookahead = fs.LCSLookahead(queries if per_item else queries[0], start_after=start_after, max_nodes=max_nodes)
    by_length = {}
    for p in all_prefixes(dict_trie):
        by_length.setdefault(len(p), []).append(p)
    for prefixes in by_length.values():
        rows = [(p, b) for p in prefixes for b in range(len(queries) if per_item else 1)]
        nodes, generated, batch = rows_of(trie, [p for p, _ in rows], [b for _, b in rows])
        row_offsets, deltas = lookahead.deltas(trie, nodes, generated, batch)
        assert row_offsets.dtype == np.int64 and deltas.dtype == np.int32
        for r, (p, b) in enumerate(rows):
            got = deltas[row_offsets[r] : row_offsets[r + 1]].tolist()
            assert got == lookahead_deltas(dict_trie, p, queries[b], start_after), (p, b)
    assert lookahead.last_truncated == 0


@pytest.mark.parametrize("start_after", [None, SEP])
@pytest.mark.parametrize("eos", [None, EOS])
@pytest.mark.parametrize("seed", range(12))
def test_deltas__seed__eos__start_after_match_brute_force(seed, eos, start_after):
    rng = random.Random(seed)
    seqs = random_catalogue(rng, rng.randint(1, 14), alphabet=5, max_len=8)
    queries = [
        [rng.randint(0, 6) for _ in range(rng.randint(0, 9))] + ([EOS] if rng.random() < 0.4 else []) for _ in range(3)
    ]
    check_against_brute_force(seqs, eos, queries, start_after)
    check_against_brute_force(seqs, eos, queries, start_after, per_item=False)


@pytest.mark.parametrize("query_len", [63, 64, 65, 128, 129, 300])
def test_deltas__long_queries__match_brute_force(query_len):
    rng = random.Random(query_len)
    seqs = random_catalogue(rng, 12, alphabet=30, max_len=24)
    queries = [[rng.randint(0, 40) for _ in range(query_len)] for _ in range(2)]
    check_against_brute_force(seqs, EOS, queries, None)


def test_deltas__deeper_than_255__height_bound_stays_exact():
    rng = random.Random(5)
    stem = [rng.randint(2, 6) for _ in range(270)]
    seqs = [stem + [7, 3, 4], stem + [8], stem[:100] + [5, 5], [3] * 5]
    query = [3, 4, 5, 5, 7, 8, 3]
    trie, dict_trie = fs.Trie(seqs), DictTrie(seqs)
    for cut in (0, 100, 270):
        prefix = stem[:cut]
        nodes, generated, batch = rows_of(trie, [prefix], [0])
        row_offsets, deltas = fs.LCSLookahead(query, max_nodes=None).deltas(trie, nodes, generated, batch)
        assert deltas.tolist() == lookahead_deltas(dict_trie, prefix, query)



def test_deltas__gain_further_than_255_tokens_down__stays_exact():
    # The second sequence reaches its 300-token gain only after 300 tokens that match nothing: a
    # subtree height read as 255 would prune it below the first sequence's 255.
    query = list(range(100, 400))
    seqs = [[5] + query[:255], [5] + list(range(1000, 1300)) + query, [6], [5] + query[:40] + [7] * 400]
    trie, dict_trie = fs.Trie(seqs), DictTrie(seqs)
    for prefix in ([], [5], [5, 1000]):
        nodes, generated, batch = rows_of(trie, [prefix], [0])
        row_offsets, deltas = fs.LCSLookahead(query, max_nodes=None).deltas(trie, nodes, generated, batch)
        assert deltas.tolist() == lookahead_deltas(dict_trie, prefix, query)


@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=6), min_size=1, max_size=10),
       st.lists(st.integers(0, 5), max_size=8), st.sampled_from([None, 0, 1]))
def test_deltas__hypothesis(seqs, query, start_after):
    check_against_brute_force(seqs, None, [query], start_after, per_item=False)


def title_trie():
    """Subject [SEP] predicate [SEP] object entries, with shared subjects and predicates."""
    rng = random.Random(0)
    seqs = []
    for subject in ([20, 21], [20, 22], [23]):
        for _ in range(6):
            predicate = [rng.randint(30, 36) for _ in range(rng.randint(1, 4))]
            obj = [rng.randint(40, 60) for _ in range(rng.randint(1, 12))]
            seqs.append(subject + [SEP] + predicate + [SEP] + obj)
    return seqs


def test_deltas__rows_before_start_after_and_single_child_rows_are_zero():
    seqs = title_trie()
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    query = [20, 21, 30, 31, 32, 33, 34, 35, 36, 40, 41, 42]  # matches everywhere
    lookahead = fs.LCSLookahead(query, start_after=SEP, max_nodes=None)
    for prefix in [(), (20,), (23,)]:  # the subject, before the first [SEP]: untouched
        nodes, generated, batch = rows_of(trie, [prefix], [0])
        row_offsets, deltas = lookahead.deltas(trie, nodes, generated, batch)
        assert len(deltas) == len(dict_trie.children(prefix)) and not deltas.any()
        if len(deltas) >= 2:  # the same rows without start_after do get gains
            assert fs.LCSLookahead(query, max_nodes=None).deltas(trie, nodes, generated, batch)[1].any()
    single = [p for p in all_prefixes(dict_trie) if len(dict_trie.children(p)) == 1 and SEP in p]
    assert single
    for prefix in single:
        nodes, generated, batch = rows_of(trie, [prefix], [0])
        assert lookahead.deltas(trie, nodes, generated, batch)[1].tolist() == [0]


def test_deltas__query_disjoint_from_catalogue__all_zero():
    seqs = title_trie()
    trie = fs.Trie(seqs, eos_id=EOS)
    prefixes = [p for p in all_prefixes(DictTrie(seqs, eos_id=EOS)) if len(p) == 4]
    nodes, generated, batch = rows_of(trie, prefixes, [0] * len(prefixes))
    row_offsets, deltas = fs.LCSLookahead([100, 101, 102], start_after=SEP).deltas(trie, nodes, generated, batch)
    assert row_offsets[-1] > len(prefixes) and not deltas.any()


@pytest.mark.parametrize("as_items", [lambda q: list(torch.tensor(q)), lambda q: [np.array(t) for t in q]])
def test_query_as_a_list_of_0d_tensors_or_arrays(as_items):
    # list(input_ids[0]) holds 0-d tensors: one query, as the plain ints would be.
    seqs = title_trie()
    trie = fs.Trie(seqs, eos_id=EOS)
    prefixes = [p for p in all_prefixes(DictTrie(seqs, eos_id=EOS)) if len(p) == 4]
    nodes, generated, batch = rows_of(trie, prefixes, [0] * len(prefixes))
    query = [20, 32, 33, 41]
    expected = fs.LCSLookahead(query, start_after=SEP).deltas(trie, nodes, generated, batch)
    got = fs.LCSLookahead(as_items(query), start_after=SEP).deltas(trie, nodes, generated, batch)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
    assert np.asarray(expected[1]).any()


def test_deltas__dead_rows_duplicates_and_row_order():
    seqs = title_trie()
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    prefixes = [p for p in all_prefixes(dict_trie) if len(p) == 4]
    queries = [[20, 32, 33, 41], [23, 30, 31, 50, 51, 52]]
    rows = [(p, b) for p in prefixes for b in (0, 1)] * 2
    random.Random(3).shuffle(rows)
    nodes, generated, batch = rows_of(trie, [p for p, _ in rows], [b for _, b in rows])
    nodes[::5] = -1
    row_offsets, deltas = fs.LCSLookahead(queries, start_after=SEP).deltas(trie, nodes, generated, batch)
    for r, (p, b) in enumerate(rows):
        got = deltas[row_offsets[r] : row_offsets[r + 1]].tolist()
        assert got == ([] if nodes[r] < 0 else lookahead_deltas(dict_trie, p, queries[b], SEP))


def test_deltas__torch_in_torch_out_and_empty_batch():
    seqs = title_trie()
    trie = fs.Trie(seqs, eos_id=EOS)
    lookahead = fs.LCSLookahead([20, 30, 31])
    nodes = torch.tensor([0, -1], dtype=torch.int32)
    row_offsets, deltas = lookahead.deltas(trie, nodes, torch.zeros(2, 0, dtype=torch.int32), torch.zeros(2, dtype=torch.int64))
    assert isinstance(deltas, torch.Tensor) and deltas.dtype == torch.int32 and row_offsets.dtype == torch.int64
    assert row_offsets.tolist() == [0, 2, 2]  # the subjects 20 and 23; the dead row has none
    row_offsets, deltas = lookahead.deltas(trie, np.zeros(0, np.int32), np.zeros((0, 3), np.int32))
    assert row_offsets.tolist() == [0] and deltas.size == 0


def budget_case():
    """One row at the root with two children, each over a chain of 50 tokens that all match."""
    query = list(range(10, 60))
    seqs = [[1] + query, [2] + query[:25]]
    return fs.Trie(seqs), query, np.array([0], np.int32), np.zeros((1, 0), np.int32)


def test_max_nodes__zero_gives_one_token_gain():
    trie, query, nodes, generated = budget_case()
    lookahead = fs.LCSLookahead(query + [2], max_nodes=0)
    assert lookahead.deltas(trie, nodes, generated)[1].tolist() == [0, 1]
    assert lookahead.last_truncated == 2 and lookahead.last_visited == 0


def test_max_nodes__cap_splits_evenly_and_returns_lower_bounds():
    trie, query, nodes, generated = budget_case()
    exact = fs.LCSLookahead(query, max_nodes=None)
    assert exact.deltas(trie, nodes, generated)[1].tolist() == [50, 25]
    assert exact.last_truncated == 0 and exact.last_visited == 50 + 25  # every node below the two children
    capped = fs.LCSLookahead(query, max_nodes=20)
    assert capped.deltas(trie, nodes, generated)[1].tolist() == [10, 10]  # 10 visits each
    assert capped.last_truncated == 2 and capped.last_visited == 20
    # Leftovers pass on: the second child gets what the first did not use.
    lopsided = fs.Trie([[1, 10, 11], [2] + query])
    capped = fs.LCSLookahead(query, max_nodes=40)
    assert capped.deltas(lopsided, nodes, generated)[1].tolist() == [2, 40 - 2]
    assert capped.last_truncated == 1 and capped.last_visited == 40


@pytest.mark.parametrize("max_nodes", [0, 1, 3, 7, 15, 40])
def test_max_nodes__between_one_token_gain_and_exact(max_nodes):
    rng = random.Random(max_nodes)
    seqs = random_catalogue(rng, 40, alphabet=6, max_len=10)
    trie, dict_trie = fs.Trie(seqs, eos_id=EOS), DictTrie(seqs, eos_id=EOS)
    query = [rng.randint(0, 6) for _ in range(8)]
    prefixes = [p for p in all_prefixes(dict_trie) if len(p) == 1]
    nodes, generated, batch = rows_of(trie, prefixes, [0] * len(prefixes))
    lookahead = fs.LCSLookahead(query, max_nodes=max_nodes)
    row_offsets, deltas = lookahead.deltas(trie, nodes, generated, batch)
    assert lookahead.last_visited <= max_nodes
    for r, p in enumerate(prefixes):
        got = deltas[row_offsets[r] : row_offsets[r + 1]].tolist()
        if len(got) < 2:
            continue
        exact = lookahead_deltas(dict_trie, p, query)
        base = lcs_length(list(p), query)
        one_token = [lcs_length(list(p) + [c], query) - base for c in dict_trie.children(p)]
        assert all(lo <= g <= hi for lo, g, hi in zip(one_token, got, exact))
    assert lookahead.deltas(trie, nodes, generated, batch)[1].tolist() == deltas.tolist()  # deterministic


def test_reshape__zero_deltas_unchanged_and_matches_seed_rule():
    logprobs = torch.log_softmax(torch.randn(50, dtype=torch.float64), 0)
    allowed = [3, 17, 8, 40]
    assert torch.equal(lookahead_reshape(logprobs, allowed, [0, 0, 0, 0]), logprobs[allowed])
    deltas = [0, 2, 1, 0]
    new = lookahead_reshape(logprobs, allowed, deltas)
    p = logprobs[allowed].exp()
    seed = torch.stack([p[i] ** (1 / (d + 1)) for i, d in enumerate(deltas)])
    seed = seed / seed.sum()  # the seed renormalises over the allowed tokens
    assert torch.allclose(new.exp() / new.exp().sum(), seed)
    assert math.isclose(new.exp().sum().item(), p.sum().item())  # the row keeps its allowed mass
    assert new[1] - logprobs[17] > new[0] - logprobs[3]  # a gain raises a token relative to the rest


def test_reference_segment():
    assert segment([5, 1, 6, 1, 7], 1) == [6, 1, 7]
    assert segment([5, 6], 1) is None and segment([5, 6], None) == [5, 6]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: fs.LCSLookahead("abc"), TypeError, r"query_tokens must hold integer"),
        (lambda: fs.LCSLookahead([[1, 2], [3, -1]]), ValueError, r"query_tokens\[1\] holds token id -1"),
        (lambda: fs.LCSLookahead([1], start_after=-1), ValueError, r"start_after must be in"),
        (lambda: fs.LCSLookahead([1], max_nodes=-5), ValueError, r"max_nodes must be in"),
        (lambda: fs.LCSLookahead([1], max_nodes=2.5), TypeError, r"max_nodes must be an int"),
        (lambda: fs.LCSLookahead(None), TypeError, r"query_tokens must be a sequence"),
        (lambda: fs.LCSLookahead(7), TypeError, r"query_tokens must be a sequence"),
        (lambda: fs.LCSLookahead({4, 5}), TypeError, r"query_tokens must be a sequence"),
        (lambda: fs.LCSLookahead([1.5]), TypeError, r"query_tokens must hold integer token ids, got dtype float64"),
        (lambda: fs.LCSLookahead([4, 2.5]), TypeError, r"query_tokens must hold integer token ids"),
        (lambda: fs.LCSLookahead([[4], "ab"]), TypeError, r"query_tokens\[1\] must hold integer token ids, not a"),
    ],
    ids=["string", "negative_query", "start_after", "max_nodes", "max_nodes_float", "none", "int", "set", "float",
         "mixed", "string_query"],
)
def test_bad_construction__raises_naming_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "args, error, match",
    [
        (([5000], [[1]], [0]), ValueError, r"nodes\[0\] must be -1 or a node id in \[0, \d+\), got 5000"),
        (([1], [[1]], [2]), ValueError, r"batch_index\[0\] must be in \[0, 2\)"),
        (([0], [[1]], None), ValueError, r"batch_index is required"),
        (([0], [1], [0]), ValueError, r"generated must be 2-D"),
        (([0, 0], [[1]], [0, 0]), ValueError, r"generated must have one row per node"),
        (([0], [[1]], [0, 1]), ValueError, r"batch_index must have one entry per row"),
        (([0.5], [[1]], [0]), TypeError, r"nodes must hold integers"),
        (([0], [[2**40]], [0]), ValueError, r"generated holds a value outside the int32 range"),
        (([0, 1], [[1], [3]], [0, 1]), ValueError, r"generated\[0\] leads from the root to trie node 1, not to "
                                                  r"nodes\[0\] = 0"),
        (([1], [[-7]], [0]), ValueError, r"generated\[0\] leads from the root to trie node -1, not to nodes\[0\] = 1"),
    ],
    ids=["node_range", "batch_range", "batch_missing", "generated_1d", "generated_rows", "batch_rows", "nodes_float",
         "generated_range", "generated_path", "generated_negative"],
)
def test_bad_deltas_call__raises_naming_argument(args, error, match):
    trie = fs.Trie([[1, 2], [1, 3]])
    nodes, generated, batch = args
    with pytest.raises(error, match=match):
        fs.LCSLookahead([[1], [2]]).deltas(trie, nodes, generated, batch)


def test_bad_trie__type_error():
    with pytest.raises(TypeError, match="trie must be a pyfastseq.Trie"):
        fs.LCSLookahead([1]).deltas(DictTrie([[1]]), [0], [[]])


def test_max_nodes__water_filling_gives_small_rows_what_they_need():
    query = list(range(10, 40))
    seqs = [[1, 5] + query, [1, 6] + query[:20], [2, 7, 8], [2, 9, 8]]
    trie = fs.Trie(seqs)
    nodes = np.array([trie.walk([1]), trie.walk([2])], dtype=np.int32)
    generated = np.array([[1], [2]], dtype=np.int32)
    exact = fs.LCSLookahead(query, max_nodes=None).deltas(trie, nodes, generated)[1].tolist()
    assert exact == [30, 20, 0, 0]
    # Below the children: 30 + 20 nodes for the first row, 2 for the second. An even split (26
    # each) would cut the first row; water-filling hands it the 50 the second row leaves.
    lookahead = fs.LCSLookahead(query, max_nodes=52)
    assert lookahead.deltas(trie, nodes, generated)[1].tolist() == exact
    assert lookahead.last_truncated == 0 and lookahead.last_visited == 52
    lookahead = fs.LCSLookahead(query, max_nodes=51)  # 49 for the first row: 20 levels of 2, 9 of 1
    assert lookahead.deltas(trie, nodes, generated)[1].tolist() == [29, 20, 0, 0]
    assert lookahead.last_truncated == 1 and lookahead.last_visited == 51


def test_per_item_queries_must_match_the_batch():
    trie = fs.Trie([[5, 1, 6], [5, 1, 7]], eos_id=0)
    lookahead = fs.LCSLookahead([[6], [7], [6, 7]], start_after=1)
    searcher = fs.TrieBeamSearch(trie, num_beams=2, max_length=4, lookahead=lookahead)
    with pytest.raises(ValueError, match=r"lookahead holds 3 queries \(one per batch item\) but batch_size is 2"):
        searcher.search(lambda tokens, beam_idx: torch.zeros(len(beam_idx), 8), 2)
    assert len(searcher.search(lambda tokens, beam_idx: torch.zeros(len(beam_idx), 8), 3).sequences) == 3
