"""Trie structure and lookups against the dict-of-dicts reference, plus input validation."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyfastseq as fs
from pyfastseq.reference.trie import DictTrie

pytestmark = pytest.mark.native

sequence_sets = st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=7), min_size=1, max_size=40)
eos_ids = st.one_of(st.none(), st.integers(0, 7))


def prefixes(sequences):
    out = {()}
    for seq in sequences:
        for end in range(len(seq) + 1):
            out.add(tuple(seq[:end]))
    return out


def assert_same_structure(trie, ref, probes):
    for probe in probes:
        node = trie.walk(probe)
        ref_node = ref.node(probe)
        assert (node >= 0) == (ref_node is not None), probe
        assert trie.contains(probe) == ref.contains(probe), probe
        if node >= 0:
            tokens, children = trie.children(node)
            assert tokens.tolist() == ref.children(probe)
            assert [trie.walk(list(probe) + [t]) for t in tokens.tolist()] == children.tolist()


@given(sequence_sets, eos_ids)
def test_matches_dict_trie(sequences, eos_id):
    trie = fs.Trie(sequences, eos_id=eos_id)
    ref = DictTrie(sequences, eos_id=eos_id)
    stored = ref.sequences()
    assert len(trie) == len(stored)
    assert trie.depth == max(len(s) for s in stored)
    assert trie.num_nodes == len(prefixes(stored))
    assert all(trie.contains(s) for s in stored)
    probes = prefixes(stored) | {tuple(s) + (9,) for s in sequences} | {(9,), (0, 9, 0)}
    assert_same_structure(trie, ref, probes)


@given(sequence_sets, eos_ids, st.data())
def test_step_matches_walk(sequences, eos_id, data):
    trie = fs.Trie(sequences, eos_id=eos_id)
    nodes = data.draw(st.lists(st.integers(-1, trie.num_nodes - 1), min_size=0, max_size=30))
    tokens = data.draw(st.lists(st.integers(0, 8), min_size=len(nodes), max_size=len(nodes)))
    expected = []
    for node, token in zip(nodes, tokens):
        if node < 0:
            expected.append(-1)
            continue
        child_tokens, child_nodes = trie.children(node)
        hit = np.flatnonzero(child_tokens == token)
        expected.append(int(child_nodes[hit[0]]) if hit.size else -1)
    assert trie.step(np.array(nodes, dtype=np.int64), tokens).tolist() == expected
    stepped = trie.step(torch.tensor(nodes, dtype=torch.int64), torch.tensor(tokens))
    assert isinstance(stepped, torch.Tensor) and stepped.tolist() == expected


def test_step_output_type_follows_nodes():
    trie = fs.Trie([[2, 3], [4]])
    for nodes, tokens in (([0, 0], torch.tensor([2, 4])), (np.array([0, 0]), [2, 4])):
        out = trie.step(nodes, tokens)
        assert isinstance(out, np.ndarray) and out.dtype == np.int32 and out.tolist() == [1, 2]
    out = trie.step(torch.tensor([0, 0]), [2, 4])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32 and out.tolist() == [1, 2]


@pytest.mark.parametrize("eos_id", [None, 7])
def test_few_long_entries_among_many_short_ones(eos_id):
    # Past the short entries' depth only the long ones are live (the builder then refreshes only them).
    rng = np.random.default_rng(3)
    short = [rng.integers(0, 7, rng.integers(1, 4)).tolist() for _ in range(300)]
    stem = rng.integers(0, 7, 20).tolist()
    long = [stem + rng.integers(0, 7, rng.integers(10, 40)).tolist() for _ in range(4)] + [stem[:25]]
    sequences = short + long
    trie, ref = fs.Trie(sequences, eos_id=eos_id), DictTrie(sequences, eos_id=eos_id)
    stored = ref.sequences()
    assert len(trie) == len(stored) and trie.num_nodes == len(prefixes(stored))
    assert trie.depth == max(len(s) for s in stored)
    assert_same_structure(trie, ref, prefixes(stored) | {tuple(s) + (9,) for s in long})


def test_prefix_entries_and_duplicates():
    trie = fs.Trie([[1, 2], [1, 2, 3], [1, 2], [4]])
    assert len(trie) == 3
    assert trie.contains([1, 2]) and trie.contains([1, 2, 3]) and trie.contains([4])
    assert not trie.contains([1])
    assert trie.is_terminal(trie.walk([1, 2])) and not trie.is_terminal(trie.walk([1]))
    assert trie.children(trie.walk([1, 2]))[0].tolist() == [3]


def test_eos_appended_only_where_missing():
    trie = fs.Trie([[5, 2], [5], [6, 2, 7]], eos_id=2)
    assert fs.Trie([[5, 2], [5]], eos_id=2).num_nodes == 3  # [5, 2] twice
    assert trie.contains([5, 2]) and trie.contains([6, 2, 7, 2])
    assert not trie.contains([5]) and not trie.contains([6, 2, 7])
    assert trie.eos_id == 2 and fs.Trie([[5]]).eos_id is None


def test_input_forms_agree():
    seqs = [[3, 1, 4], [1, 5], [9, 2, 6, 5]]
    flat = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5], dtype=np.int32)
    offsets = np.array([0, 3, 5, 9])
    reference = fs.Trie(seqs)
    for trie in (
        fs.Trie(flat, offsets=offsets),
        fs.Trie(torch.from_numpy(flat), offsets=torch.from_numpy(offsets)),
        fs.Trie(np.array(s) for s in seqs),
        fs.Trie(torch.tensor(s) for s in seqs),
    ):
        assert [a.tolist() for a in trie._native.arrays()] == [a.tolist() for a in reference._native.arrays()]
    grid = fs.Trie(np.array([[1, 2], [1, 3], [1, 2]]))
    assert len(grid) == 2 and grid.contains([1, 3])


def test_extreme_ids_and_lengths():
    top = 2**31 - 1
    trie = fs.Trie([[top, 0], [top - 1], [0] * 1000, list(range(1000))])
    assert trie.contains([top, 0]) and trie.contains([top - 1])
    assert trie.contains([0] * 1000) and not trie.contains([0] * 999)
    assert trie.depth == 1000 and trie.max_token == top
    assert trie.walk([2**31]) == -1 and trie.walk([-1]) == -1
    for seq, error, match in (("ab", TypeError, "seq must hold integer token ids, not a string"),
                              ([1.5], TypeError, "seq must hold integer token ids, got dtype float64"),
                              (7, TypeError, "seq must be a sequence of integer token ids, got int"),
                              (None, TypeError, "seq must be a sequence of integer token ids, got NoneType"),
                              (iter([0]), TypeError, "seq must be a sequence of integer token ids, got list_iterator"),
                              ({0}, TypeError, "seq must be a sequence of integer token ids, got set"),
                              ([[0]], ValueError, r"seq must be 1-D, got shape \(1, 1\)"),
                              ([[]], ValueError, r"seq must be 1-D, got shape \(1, 0\)")):
        with pytest.raises(error, match=match):
            trie.walk(seq)
        with pytest.raises(error, match=match):
            seq in trie
    # Integers past int64 (NumPy keeps them as objects) are ids outside the range like any other.
    for seq in ([2**64], [0, 2**64], [-(2**70)], np.array([2**64, 1], dtype=object)):
        assert trie.walk(seq) == -1 and seq not in trie
    with pytest.raises(ValueError, match="sequences holds token id 18446744073709551616 outside"):
        fs.Trie([[1, 2**64]])
    # Object arrays of ids in range (a pandas column's values) are ids like any others.
    assert trie.walk(np.array([top, 0], dtype=object)) == trie.walk([top, 0]) >= 0
    assert fs.lcs_length(np.array([3, 1, 2], dtype=object), [1, 2]) == 2
    assert trie.walk([top, 2**63]) == trie.walk([2**63]) == -1  # past every id, as past int64 alone
    single = fs.Trie([[7]])
    assert single.num_nodes == 2 and single.children(single.root)[0].tolist() == [7]


@pytest.mark.parametrize(
    "sequences, kwargs, error, match",
    [
        ([], {}, ValueError, "sequences is empty"),
        ([[1], []], {}, ValueError, r"sequences\[1\] is empty"),
        ([[1, -2]], {}, ValueError, "sequences holds token id -2"),
        ([[1, 2**31]], {}, ValueError, "sequences holds token id 2147483648"),
        ([[1, 2**63]], {}, ValueError, "sequences holds token id 9223372036854775808"),  # NumPy: float64
        ([[1, 2], [3, 2**63]], {}, ValueError, "sequences holds token id 9223372036854775808"),
        ([[1.5, 2]], {}, TypeError, "sequences must hold integer token ids"),
        (["abc"], {}, TypeError, "sequences must hold sequences of integer token ids"),
        ("abc", {}, TypeError, "sequences must be an iterable"),
        ([1, 2], {}, TypeError, "sequences must be an iterable of integer sequences"),
        ([[1, 2], {3, 1, 2}], {}, TypeError, r"sequences\[1\] is a set, which has no token order"),
        ([{3: 0, 1: 0}], {}, TypeError, r"sequences\[0\] is a dict"),
        ([[1]], {"eos_id": -3}, ValueError, "eos_id must be in"),
        ([[1]], {"eos_id": 1.0}, TypeError, "eos_id must be an int"),
        (np.zeros((2, 2, 2), dtype=np.int32), {}, ValueError, "sequences as an array must be 2-D"),
        (np.array([1, 2, 3], dtype=np.int32), {"offsets": [0, 2]}, ValueError, "offsets must start at 0"),
        (np.array([1, 2, 3], dtype=np.int32), {"offsets": [0, 2, 1, 3]}, ValueError, "offsets must be non-decreasing"),
        (np.array([1, 2, 3], dtype=np.int32), {"offsets": [[0, 3]]}, ValueError, "offsets must be a 1-D"),
    ],
)
def test_bad_sequences(sequences, kwargs, error, match):
    with pytest.raises(error, match=match):
        fs.Trie(sequences, **kwargs)


def test_empty_sequence_with_eos_is_an_entry():
    trie = fs.Trie([[], [4]], eos_id=2)
    assert trie.contains([2]) and trie.contains([4, 2])


def test_bad_lookups():
    trie = fs.Trie([[1, 2]])
    with pytest.raises(ValueError, match=r"node must be a node id in \[0, 3\), got -1"):
        trie.children(-1)
    with pytest.raises(ValueError, match="node must be a node id"):
        trie.children(3)
    with pytest.raises(TypeError, match="node must be an int"):
        trie.children(1.0)
    with pytest.raises(ValueError, match=r"nodes\[1\] must be -1 or a node id"):
        trie.step([0, 5], [1, 1])
    with pytest.raises(ValueError, match=r"tokens\[0\] is negative"):
        trie.step([0], [-1])
    with pytest.raises(ValueError, match="same shape"):
        trie.step([0, 0], [1])
    with pytest.raises(TypeError, match="nodes must hold integers"):
        trie.step([0.5], [1])


@pytest.mark.parametrize("call, name", [
    (lambda trie, x: fs.Trie(x[None]), "sequences"), (lambda trie, x: trie.walk(x), "seq"),
    (lambda trie, x: trie.contains(x), "seq"), (lambda trie, x: trie.step([0, 0], x), "tokens"),
], ids=["Trie", "walk", "contains", "step"])
@pytest.mark.parametrize("tensor, error, match", [
    (torch.tensor([1, 2], dtype=torch.bfloat16), TypeError, "must hold numbers NumPy can hold, got dtype torch.bfloat16"),
    (torch.tensor([1, 2], device="meta"), ValueError, "is on the meta device, which holds no values"),
    (torch.tensor([[1, 2]]).to_sparse()[0], TypeError, r"must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
], ids=["bfloat16", "meta", "sparse"])
def test_tensors_numpy_cannot_read__named_errors(call, name, tensor, error, match):
    with pytest.raises(error, match=f"{name} {match}"):
        call(fs.Trie([[1, 2]]), tensor)


def test_native_stub_lists_every_binding():
    """pyfastseq/_C.pyi must describe the compiled module as built."""
    import ast
    from pathlib import Path

    from pyfastseq import _C

    stub = Path(fs.__file__).with_name("_C.pyi")
    declared = {node.name for node in ast.parse(stub.read_text()).body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    assert declared == {name for name in dir(_C) if not name.startswith("_")}


def test_deep_copies_share_the_immutable_trie():
    import copy

    trie = fs.Trie([[1, 2], [3]], eos_id=0)
    searcher = fs.TrieBeamSearch(trie, num_beams=2)
    assert copy.deepcopy(trie) is trie
    assert copy.deepcopy(searcher).tries[0] is trie


def test_numpy_ids_off_their_element_alignment():
    # Views of a byte buffer at an odd offset: read as aligned copies (the native code indexes them).
    def odd(values, dtype):
        arr = np.asarray(values, dtype=dtype)
        view = np.frombuffer(bytearray(arr.nbytes + 1), dtype=dtype, offset=1, count=arr.size).reshape(arr.shape)
        view[...] = arr
        assert not view.flags.aligned
        return view

    trie = fs.Trie([[1, 2], [1, 3]])
    assert trie.walk(odd([1, 3], np.int32)) == trie.walk([1, 3]) >= 0
    assert fs.Trie(odd([[1, 2], [1, 3]], np.int32)).num_nodes == trie.num_nodes
    assert fs.Trie(odd([1, 2, 1, 3], np.int32), offsets=odd([0, 2, 4], np.int64)).num_nodes == trie.num_nodes
    assert fs.lcs_length(odd([1, 2, 3], np.int32), odd([2, 3], np.int32)) == 2
    assert fs.lcs_lengths(odd([1, 2, 3], np.int32), odd([2, 3, 1], np.int32), odd([0, 2, 3], np.int64)).tolist() == [2, 1]
