import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from rapidfuzz.distance import LCSseq

import pyfastseq as fs
from pyfastseq.reference.lcs import lcs_length as dp_lcs

pytestmark = pytest.mark.native

ALPHABETS = {"binary": 2, "small": 8, "vocab": 21_128, "int32": 2**31 - 1}


def random_tokens(rng, length, alphabet):
    return rng.integers(0, ALPHABETS[alphabet], size=length, endpoint=alphabet == "int32").astype(np.int32)


@pytest.mark.parametrize("alphabet", list(ALPHABETS))
@pytest.mark.parametrize("query_len", [0, 1, 31, 63, 64, 65, 128, 129, 200, 300])
def test_lengths__query_len__alphabet_match_rapidfuzz_and_dp(query_len, alphabet):
    rng = np.random.default_rng(query_len * 7 + len(alphabet))
    query = random_tokens(rng, query_len, alphabet)
    lengths = rng.integers(0, 301, size=40)
    lengths[:3] = [0, 1, 300]
    candidates = [random_tokens(rng, n, alphabet) for n in lengths]
    if alphabet == "int32":  # also share symbols with the query, or every LCS would be 0
        candidates = [np.where(rng.random(len(c)) < 0.5, rng.choice(query, len(c)) if query_len else c, c) for c in candidates]
    got = fs.lcs_lengths(query, candidates)
    assert got.dtype == np.int32 and got.shape == (len(candidates),)
    assert got.tolist() == [LCSseq.similarity(query.tolist(), c.tolist()) for c in candidates]
    for c, value in list(zip(candidates, got))[:4]:  # the DP is slow in Python: a few pairs
        assert value == dp_lcs(query.tolist(), c.tolist())


@pytest.mark.parametrize("words", [1, 2, 3, 4, 5])
def test_lcs_length__word_boundaries__equals_dp(words):
    rng = np.random.default_rng(words)
    for extra in (-1, 0, 1):
        a = random_tokens(rng, 64 * words + extra, "small")
        b = random_tokens(rng, 90, "small")
        assert fs.lcs_length(a, b) == fs.lcs_length(b, a) == dp_lcs(a.tolist(), b.tolist())


def test_lcs_length__identical_and_disjoint():
    seq = list(range(500))
    assert fs.lcs_length(seq, seq) == 500
    assert fs.lcs_length(seq, [i + 1000 for i in seq]) == 0
    assert fs.lcs_length([], seq) == fs.lcs_length(seq, []) == fs.lcs_length([], []) == 0


def test_lcs_lengths__input_forms_agree():
    rng = np.random.default_rng(1)
    query = random_tokens(rng, 32, "small")
    candidates = [random_tokens(rng, n, "small") for n in rng.integers(0, 21, size=50)]
    expected = fs.lcs_lengths(query, [c.tolist() for c in candidates])
    flat = np.concatenate(candidates)
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in candidates])])
    assert fs.lcs_lengths(query, flat, offsets).tolist() == expected.tolist()
    assert fs.lcs_lengths(torch.from_numpy(query), torch.from_numpy(flat), torch.from_numpy(offsets)).tolist() == (
        expected.tolist()
    )
    assert fs.lcs_lengths(query.tolist(), flat.astype(np.int64), offsets.tolist()).tolist() == expected.tolist()
    square = rng.integers(0, 8, size=(6, 9))
    assert fs.lcs_lengths(query, square).tolist() == [LCSseq.similarity(query.tolist(), r.tolist()) for r in square]
    assert fs.lcs_lengths(query, []).tolist() == []


@given(
    st.lists(st.integers(0, 5), max_size=80),
    st.lists(st.lists(st.integers(0, 5), max_size=80), max_size=6),
)
def test_lcs_lengths__hypothesis_small_alphabet(query, candidates):
    got = fs.lcs_lengths(query, candidates).tolist()
    assert got == [dp_lcs(query, c) for c in candidates]


@given(
    st.lists(st.integers(0, 2**31 - 1), min_size=60, max_size=140),
    st.lists(st.integers(0, 2**31 - 1), max_size=150),
    st.randoms(use_true_random=False),
)
def test_lcs_length__hypothesis_large_ids(query, other, random):
    other = [random.choice(query) if random.random() < 0.6 else t for t in other]
    assert fs.lcs_length(query, other) == LCSseq.similarity(query, other)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: fs.lcs_length([1, -2], [1]), ValueError, r"a holds token id -2"),
        (lambda: fs.lcs_length([1], [2**31]), ValueError, r"b holds token id 2147483648"),
        (lambda: fs.lcs_length("abc", [1]), TypeError, r"a must hold integer"),
        (lambda: fs.lcs_length([[1, 2]], [1]), ValueError, r"a must be 1-D"),
        (lambda: fs.lcs_length([[]], [1]), ValueError, r"a must be 1-D, got shape \(1, 0\)"),
        (lambda: fs.lcs_length({1, 2}, [1]), TypeError, r"a must be a sequence of integer token ids, got set"),
        (lambda: fs.lcs_length([1], None), TypeError, r"b must be a sequence of integer token ids, got NoneType"),
        (lambda: fs.lcs_length([1], [2**64]), ValueError, r"b holds token id 18446744073709551616 outside"),
        (lambda: fs.lcs_lengths([1.5], [[1]]), TypeError, r"query must hold integer"),
        (lambda: fs.lcs_lengths([1], [[1], [-3]]), ValueError, r"candidates holds token id -3"),
        (lambda: fs.lcs_lengths([1], np.array([1, -3], np.int32), [0, 1, 2]), ValueError, r"candidates\[1\] holds a negative token id \(-3\)"),
        (lambda: fs.lcs_lengths([1], np.array([1, 2], np.int32), [0, 3]), ValueError, r"offsets must start at 0 and end"),
        (lambda: fs.lcs_lengths([1], np.array([1, 2], np.int32), [0, 2, 1, 2]), ValueError, r"offsets must be non-decreasing"),
        (lambda: fs.lcs_lengths([1], np.array([1, 2], np.int32), []), ValueError, r"offsets must be a 1-D"),
        (lambda: fs.lcs_lengths([1], [1, 2], np.array([0, 2**63 + 5], np.uint64)), ValueError,
         r"offsets must lie in the int64 range, got 9223372036854775813"),
        (lambda: fs.lcs_lengths([1], "ab"), TypeError, r"candidates must be an iterable"),
        (lambda: fs.lcs_lengths(np.arange(40_000), [[1]]), ValueError, r"query is too long"),
        (lambda: fs.lcs_length(np.arange(40_000), np.arange(40_001)), ValueError, r"a is too long \(40000 tokens"),
        (lambda: fs.lcs_length(np.arange(40_001), np.arange(40_000)), ValueError, r"b is too long \(40000 tokens"),
    ],
    ids=["negative", "over_int32", "string", "2d", "2d_empty", "set", "none", "over_int64", "float_query", "negative_list",
         "negative_flat", "offsets_end", "offsets_order", "offsets_empty", "offsets_past_int64", "string_candidates",
         "huge_query",
         "huge_a", "huge_b"],
)
def test_bad_input__raises_naming_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
