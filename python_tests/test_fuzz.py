"""Property fuzzing of every entry point that takes untrusted data.

Each property feeds adversarial input (odd shapes, strides and dtypes, ids at and past the int32
and int64 limits, NaN/inf, damaged trie files) and requires one of two outcomes: the call works and
agrees with the reference, or it raises ``ValueError``/``TypeError`` whose message names the
argument. Any other exception fails the property; a crash or an out-of-bounds access kills the run
(or, under the ASan build CI also runs, is reported). The same properties drive the coverage-guided
atheris harness in ``fuzz/`` through ``fuzz_one_input``; :data:`TARGETS` is its entry-point table.
"""

from __future__ import annotations

import collections
import os
import re
import struct
import tempfile
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pyfastseq as fs
from pyfastseq.reference.lcs import lcs_length
from pyfastseq.reference.trie import DictTrie, mask_logits

pytestmark = pytest.mark.native

# Calls made and rejections by class ("ValueError: offsets must be non-decreasing ..."), for fuzz/run.py.
CALLS: collections.Counter = collections.Counter()
REJECTED: collections.Counter = collections.Counter()
# Numbers (not those in "1-D" or "float32") vary by input: a class is a message without them.
NUMBER = re.compile(r"(?<![\w.*])-?[0-9]+(?![\w*-])")

EDGE_INTS = [-(2**63), -(2**31) - 1, -(2**31), -1, 0, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64]
small_token = st.integers(0, 40)
token = st.one_of(small_token, small_token, st.sampled_from(EDGE_INTS))
junk = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=2), st.binary(max_size=2))


def outcome(call, *names):
    """``call()``'s result, or None when it was rejected with an error naming one of ``names``."""
    CALLS["calls"] += 1
    try:
        return call()
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert any(name in message for name in names), f"{type(exc).__name__} names none of {names}: {message}"
        REJECTED[f"{type(exc).__name__}: {NUMBER.sub('N', message)[:80]}"] += 1
        return None


# -- Trie(...) ------------------------------------------------------------------------------------

sequence_lists = st.lists(st.lists(token, max_size=6), max_size=8)
ragged_junk = st.lists(st.one_of(st.lists(token, max_size=3), token, junk, st.lists(st.lists(small_token))), max_size=4)



def arrays_of(base: type, elements, dtypes: list, max_dims: int):
    """0-D to ``max_dims``-D arrays of ``base`` ``elements``, cast to any of ``dtypes``."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=5)
    return st.tuples(hnp.arrays(base, shapes, elements=elements), st.sampled_from(dtypes)).map(_cast)


def _cast(pair):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        return pair[0].astype(pair[1])


INT_DTYPES = [np.int64, np.int8, np.int32, np.uint32, np.uint64, np.float32, np.bool_]
int_arrays = arrays_of(np.int64, st.integers(0, 40), INT_DTYPES, 3)


@given(
    sequences=st.one_of(sequence_lists, ragged_junk, int_arrays, junk),
    eos_id=st.one_of(st.none(), token, junk),
    offsets=st.one_of(st.none(), st.none(), st.lists(st.integers(-2, 12), max_size=6), int_arrays),
)
def test_trie_build(sequences, eos_id, offsets):
    trie = outcome(lambda: fs.Trie(sequences, eos_id, offsets=offsets), "sequences", "offsets", "eos_id")
    if trie is None or offsets is not None or not isinstance(sequences, list):
        return
    expected = DictTrie(sequences, eos_id).sequences()
    assert len(trie) == len(expected)
    assert all(trie.contains(seq) for seq in expected)


# -- Trie.load ------------------------------------------------------------------------------------

HEADER_FIELDS = [(8, "<I"), (12, "<I"), (16, "<Q"), (24, "<Q"), (32, "<i"), (36, "<i"), (40, "<Q"), (48, "<Q")]
M32, M64 = (1 << 32) - 1, (1 << 64) - 1


def payload_checksum(payload: bytes) -> int:
    """The file format's payload hash (trie_io.cpp), so mutations can get past the checksum."""
    h = 0x9E3779B97F4A7C15 ^ len(payload)
    for (word,) in struct.iter_unpack("<Q", payload):
        h ^= (word * 0xC2B2AE3D27D4EB4F) & M64
        h = ((((h << 31) | (h >> 33)) & M64) * 0x9E3779B97F4A7C15) & M64
    return h ^ (h >> 29)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("field"), st.sampled_from(HEADER_FIELDS), st.sampled_from([0, 1, 2, 63, 64, 2**31 - 1, M32])),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.none()),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16), st.none()),
)


def mutate(data: bytearray, op: tuple) -> bytearray:
    kind, where, value = op
    if kind == "flip" and data:
        data[where % len(data)] ^= 1 << value
    elif kind == "byte" and data:
        data[where % len(data)] = value
    elif kind == "field":
        offset, fmt = where
        if len(data) >= offset + struct.calcsize(fmt):
            value = value if fmt[1] != "i" else value - (1 << 32) * (value >= 2**31)
            struct.pack_into(fmt, data, offset, value)
    elif kind == "truncate":
        del data[where % (len(data) + 1) :]
    elif kind == "append":
        data += where
    return data


@given(
    sequences=st.lists(st.lists(small_token, min_size=1, max_size=5), min_size=1, max_size=8),
    mutations=st.lists(mutation, min_size=1, max_size=3),
    fix_checksum=st.booleans(),
    mmap=st.booleans(),
)
def test_trie_load(sequences, mutations, fix_checksum, mmap):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.trie")
        fs.Trie(sequences, eos_id=0).save(path)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        for op in mutations:
            data = mutate(data, op)
        if fix_checksum and len(data) >= 64 and len(data) % 8 == 0:
            struct.pack_into("<Q", data, 48, payload_checksum(bytes(data[64:])))
        with open(path, "wb") as f:
            f.write(data)
        trie = outcome(lambda: fs.Trie.load(path, mmap=mmap), "trie file", "path")
    if trie is None:
        return
    # A file that loads must be safe to use everywhere: visit every node and mask with all of them.
    for node in range(trie.num_nodes):
        tokens, children = trie.children(node)
        assert np.all(children > node) and np.all(np.diff(tokens) > 0)
    nodes = torch.arange(-1, trie.num_nodes, dtype=torch.int32)
    trie.mask_logits(torch.zeros(len(nodes), trie.max_token + 1), nodes)


# -- Trie.mask_logits -----------------------------------------------------------------------------

LOGIT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.bool]
LAYOUTS = ["contiguous", "transposed", "column_step", "row_step", "offset", "expanded", "3-D", "1-D", "numpy"]
MASK_TRIE = fs.Trie([[3, 1, 4], [3, 1, 5], [9], [2, 6, 5, 3], [0]], eos_id=7)


def make_logits(layout: str, rows: int, vocab: int, dtype: torch.dtype):
    base = torch.arange(rows * vocab * 2, dtype=torch.float64).reshape(2 * rows, vocab).to(dtype)
    return {
        "contiguous": lambda: base[:rows],
        "transposed": lambda: base[:rows].t().contiguous().t(),
        "column_step": lambda: base.reshape(rows, 2 * vocab)[:, ::2] if rows else base[:0],
        "row_step": lambda: base[::2],
        "offset": lambda: base[1 : rows + 1],
        "expanded": lambda: base[:1].expand(rows, vocab),
        "3-D": lambda: base.reshape(2, rows, vocab),
        "1-D": lambda: base.reshape(-1),
        "numpy": lambda: base[:rows].float().numpy(),
    }[layout]()


node_ids = st.integers(-3, MASK_TRIE.num_nodes + 2)


@given(
    layout=st.sampled_from(LAYOUTS),
    rows=st.integers(0, 5),
    vocab=st.sampled_from([0, 1, 9, 10, 11, 64, 65]),
    dtype=st.sampled_from(LOGIT_DTYPES),
    nodes=st.one_of(
        st.lists(node_ids, max_size=6),
        st.lists(node_ids, max_size=6).map(lambda n: torch.tensor(n, dtype=torch.int64)),
        st.lists(node_ids, max_size=6).map(lambda n: torch.tensor(n, dtype=torch.float32)),
        st.lists(st.sampled_from(EDGE_INTS), max_size=6),
        int_arrays,
        junk,
    ),
    fill=st.one_of(st.floats(), st.sampled_from([float("-inf"), 1e300, -1e-45])),
)
def test_mask_logits(layout, rows, vocab, dtype, nodes, fill):
    logits = make_logits(layout, rows, vocab, dtype)
    before = logits.clone() if isinstance(logits, torch.Tensor) else None
    out = outcome(lambda: MASK_TRIE.mask_logits(logits, nodes, fill), "logits", "nodes", "fill")
    if out is None:
        if before is not None:
            assert torch.equal(logits, before), "a rejected call must leave logits untouched"
        return
    allowed = [[] if int(n) < 0 else MASK_TRIE.children(int(n))[0].tolist() for n in torch.as_tensor(nodes)]
    expected = mask_logits(before, allowed, torch.tensor(fill, dtype=before.dtype))  # 1e300 -> inf in half
    assert out is logits and torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(0.0), expected.nan_to_num(0.0))


def test_mask_rejects_rows_sharing_memory():
    logits = torch.zeros(1, 12).expand(3, 12)
    with pytest.raises(ValueError, match="logits must not be an expanded or self-overlapping view"):
        MASK_TRIE.mask_logits(logits, [0, 1, 2])


# -- linear_sum_assignment ------------------------------------------------------------------------

entries = st.one_of(
    st.floats(-1e3, 1e3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan")]),
)
cost_arrays = arrays_of(np.float64, entries, [np.float64, np.float32, np.int64, np.bool_, np.complex128], 4)
lengths = st.one_of(st.none(), st.none(), st.lists(st.integers(-1, 6), max_size=4), junk)


def scipy_total(matrix: np.ndarray, maximize: bool):
    """The optimal total, or the exception type SciPy raises."""
    try:
        rows, cols = scipy.optimize.linear_sum_assignment(matrix, maximize)
    except (ValueError, TypeError) as exc:
        return type(exc)
    return matrix[rows, cols].sum()


def same_total(got, want) -> bool:
    return bool(got == want or np.isclose(got, want, rtol=1e-9) or (np.isnan(got) and np.isnan(want)))


@given(
    cost=cost_arrays,
    container=st.sampled_from(["numpy", "list", "torch", "transposed"]),
    maximize=st.booleans(),
    row_lens=lengths,
    col_lens=lengths,
)
def test_linear_sum_assignment(cost, container, maximize, row_lens, col_lens):
    if container == "torch":
        assume(cost.dtype != np.complex128)  # torch.from_numpy takes it; SciPy's rule is the reference
        given_cost = torch.from_numpy(cost)
    else:
        given_cost = {"numpy": cost, "list": cost.tolist(), "transposed": cost.T.copy().T}[container]
    got = outcome(
        lambda: fs.linear_sum_assignment(given_cost, maximize, row_lens=row_lens, col_lens=col_lens),
        "cost", "row_lens", "col_lens",
    )
    if container == "list":
        cost = np.asarray(given_cost)  # a list loses empty dimensions ((0, n) reads as (0,)) and dtypes
    if cost.ndim == 2 and row_lens is None and col_lens is None:
        want = scipy_total(cost, maximize)
        if isinstance(want, type):
            assert got is None, f"SciPy raised {want.__name__}, pyfastseq returned {got}"
        else:
            assert got is not None and same_total(cost[got].sum(), want)
    elif got is not None and cost.ndim == 3:
        col_of_row = np.asarray(got)
        rl = np.full(cost.shape[0], cost.shape[1]) if row_lens is None else np.asarray(row_lens)
        cl = np.full(cost.shape[0], cost.shape[2]) if col_lens is None else np.asarray(col_lens)
        for b, matrix in enumerate(cost):
            block = matrix[: rl[b], : cl[b]].astype(np.float64)
            rows = np.flatnonzero(col_of_row[b] >= 0)
            assert same_total(block[rows, col_of_row[b][rows]].sum(), scipy_total(block, maximize))


# -- lcs_lengths ----------------------------------------------------------------------------------


@given(
    query=st.one_of(st.lists(token, max_size=12), int_arrays, junk),
    candidates=st.one_of(st.lists(st.lists(token, max_size=8), max_size=5), ragged_junk, int_arrays, junk),
    offsets=st.one_of(st.none(), st.none(), st.lists(st.integers(-2, 12), max_size=6), int_arrays),
)
def test_lcs_lengths(query, candidates, offsets):
    got = outcome(lambda: fs.lcs_lengths(query, candidates, offsets), "query", "candidates", "offsets")
    if got is None or offsets is not None or not isinstance(candidates, list) or not isinstance(query, list):
        return
    assert got.tolist() == [lcs_length(query, c) for c in candidates]


@pytest.mark.parametrize(
    "query, candidates, offsets, expected",
    [
        ([], [[]], None, [0]),
        ([], np.zeros(0, dtype=np.int32), [0], []),
        (np.zeros(200_000, dtype=np.int32), [[0] * 70_000, [1]], None, [70_000, 0]),  # long query, 1 distinct
        (np.arange(3_000), [np.arange(3_000)[::-1], np.arange(0, 3_000, 2)], None, [1, 1_500]),
        ([5], np.full(2_000_000, 5, dtype=np.int32), np.arange(0, 2_000_001, 2), [1] * 1_000_000),
    ],
    ids=["empty", "no-candidates", "long-query", "many-distinct", "many-candidates"],
)
def test_lcs_lengths_extremes(query, candidates, offsets, expected):
    assert fs.lcs_lengths(query, candidates, offsets).tolist() == expected


def test_lcs_query_too_large_rejected():
    with pytest.raises(ValueError, match="query is too long"):
        fs.lcs_lengths(np.arange(200_000), [[1]])


# The entry points the atheris harness (fuzz/fuzz.py) can target, by name: each is a hypothesis
# property, so fuzz_one_input turns libFuzzer's bytes into its arguments.
TARGETS = {
    "trie_build": test_trie_build,
    "trie_load": test_trie_load,
    "mask": test_mask_logits,
    "assignment": test_linear_sum_assignment,
    "lcs": test_lcs_lengths,
}

