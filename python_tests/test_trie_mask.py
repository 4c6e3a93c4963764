"""Trie.mask_logits against a masked_fill reference, over dtypes, strides, devices and bad input."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import devices, torch_device
from hypothesis import given
from hypothesis import strategies as st

import pyfastseq as fs
from pyfastseq.reference.trie import DictTrie, mask_logits as reference_mask

pytestmark = pytest.mark.native

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_trie(rng, vocab, num_seqs, max_len, eos_id=None):
    seqs = [rng.integers(0, vocab, size=rng.integers(1, max_len + 1)).tolist() for _ in range(num_seqs)]
    return seqs, fs.Trie(seqs, eos_id=eos_id), DictTrie(seqs, eos_id=eos_id)


def rows_for(trie, ref, rng, num_rows):
    """Random (node, allowed tokens) rows: nodes reached by walking stored prefixes, plus -1 rows."""
    stored = ref.sequences()
    nodes, allowed = [], []
    for _ in range(num_rows):
        if rng.random() < 0.1:
            nodes.append(-1)
            allowed.append([])
            continue
        seq = stored[rng.integers(len(stored))]
        prefix = seq[: rng.integers(0, len(seq) + 1)]
        nodes.append(trie.walk(prefix))
        allowed.append(ref.children(prefix))
    return nodes, allowed


@pytest.mark.parametrize("device", devices(emulated=True))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows__vocab", [(1, 1), (7, 37), (64, 1000), (33, 4099), (9, 37001), (0, 50), (5, 0)])
def test_matches_masked_fill(device, dtype, rows__vocab, request):
    device = torch_device(device, request)
    rows, vocab = rows__vocab
    rng = np.random.default_rng(rows * 7 + vocab)
    vocab_for_trie = max(vocab, 1)
    seqs, trie, ref = random_trie(rng, vocab_for_trie, num_seqs=50, max_len=5, eos_id=0)
    nodes, allowed = rows_for(trie, ref, rng, rows)
    logits = torch.randn(rows, vocab, dtype=dtype, device=device)
    if vocab == 0:
        with pytest.raises(ValueError, match="columns"):
            trie.mask_logits(logits, nodes)
        return
    expected = reference_mask(logits.cpu(), allowed)
    out = trie.mask_logits(logits, nodes)
    assert out is logits
    torch.testing.assert_close(logits.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", devices(emulated=True))
@pytest.mark.parametrize("layout", ["row_slice", "transposed", "column_slice", "shifted"])
def test_non_contiguous_logits(device, layout, request):
    device = torch_device(device, request)
    rng = np.random.default_rng(1)
    _, trie, ref = random_trie(rng, 40, 30, 4)
    nodes, allowed = rows_for(trie, ref, rng, 12)
    if layout == "row_slice":
        base = torch.randn(12, 64, device=device)
        logits = base[:, :48]
    elif layout == "transposed":
        base = torch.randn(48, 12, device=device)
        logits = base.t()
    elif layout == "column_slice":
        base = torch.randn(24, 48, device=device)
        logits = base[::2]
    else:  # rows that start off a 16-byte boundary
        base = torch.randn(12, 64, device=device)
        logits = base[:, 1:49]
    expected = reference_mask(logits.cpu(), allowed)
    before = base.clone()
    trie.mask_logits(logits, nodes)
    torch.testing.assert_close(logits.cpu(), expected, rtol=0, atol=0)
    untouched = torch.ones_like(base, dtype=torch.bool)
    if layout == "row_slice":
        untouched[:, :48] = False
    elif layout == "transposed":
        untouched[:] = False
    elif layout == "column_slice":
        untouched[::2] = False
    else:
        untouched[:, 1:49] = False
    assert torch.equal(base[untouched], before[untouched])


@pytest.mark.parametrize("device", devices(emulated=True))
@pytest.mark.parametrize("dtype", DTYPES)
def test_high_fan_out_nodes(device, dtype, request):
    # Nodes whose children fill much of the vocabulary (a title trie's root), runs of adjacent
    # children, and children at both ends of the vocabulary.
    device = torch_device(device, request)
    rng = np.random.default_rng(5)
    vocab = 6151
    seqs = [[t] for t in rng.choice(vocab, 2500, replace=False).tolist()] + [[0], [vocab - 1]]
    seqs += [[7, t] for t in range(1000, 1700)] + [[vocab - 1, t] for t in range(vocab - 300, vocab)]
    trie, ref = fs.Trie(seqs, eos_id=None), DictTrie(seqs, eos_id=None)
    prefixes = [[], [7], [vocab - 1], [], [7]]
    nodes = [trie.walk(prefix) for prefix in prefixes]
    logits = torch.randn(len(nodes), vocab, dtype=dtype, device=device)
    expected = reference_mask(logits.cpu(), [ref.children(prefix) for prefix in prefixes])
    trie.mask_logits(logits, nodes)
    torch.testing.assert_close(logits.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", devices(emulated=True))
@pytest.mark.parametrize("dtype", DTYPES)
def test_children_at_store_boundaries(device, dtype, request):
    # Children on either side of every boundary the CUDA kernel's stores meet: 16-byte chunks (4 or 8
    # columns), a warp's 8 KB span (2048 or 4096 columns), a block's 64 KB (16384 fp32 columns);
    # rows starting at every offset from a 16-byte boundary, so the boundaries shift against the
    # columns.
    device = torch_device(device, request)
    vocab = 16500
    edges = [0, 4, 8, 1024, 2048, 4096, 8192, 16384]
    children = sorted({c + d for c in edges for d in (-1, 0, 1) if 0 <= c + d < vocab} | {vocab - 1})
    trie = fs.Trie([[c] for c in children], eos_id=None)
    shifts = range(16 // torch.empty(0, dtype=dtype).element_size())
    base = torch.randn(len(shifts), vocab + 8, dtype=dtype, device=device)
    for shift in shifts:
        row = base[shift:shift + 1, shift:shift + vocab]
        expected = reference_mask(row.cpu(), [children])
        trie.mask_logits(row, [0])
        torch.testing.assert_close(row.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("fill", [-1e4, 0.0, float("inf")])
def test_custom_fill(fill):
    trie = fs.Trie([[2, 3], [4]])
    logits = torch.arange(1.0, 13.0).view(2, 6)  # no entry equals any fill
    expected = torch.full((2, 6), fill)
    expected[0, [2, 4]] = logits[0, [2, 4]]
    expected[1, 3] = logits[1, 3]
    trie.mask_logits(logits, torch.tensor([0, trie.walk([2])]), fill=fill)
    assert torch.equal(logits, expected)


def test_zero_fills_keep_their_sign():
    trie = fs.Trie([[1]])
    for fill in (0.0, -0.0, 0.0):  # equal as numbers, not as bits
        logits = torch.ones(1, 3)
        trie.mask_logits(logits, [0], fill=fill)
        assert torch.signbit(logits[0, [0, 2]]).tolist() == [math.copysign(1.0, fill) < 0] * 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_off_their_element_alignment(dtype):
    # A view of a byte buffer at an odd offset: rows long enough for the streaming stores (64 KiB).
    rng = np.random.default_rng(9)
    vocab = 40_000
    _, trie, ref = random_trie(rng, vocab, 50, 4)
    nodes, allowed = rows_for(trie, ref, rng, 3)
    size = torch.finfo(dtype).bits // 8
    logits = torch.frombuffer(bytearray(3 * vocab * size + 1), dtype=dtype, offset=1, count=3 * vocab).view(3, vocab)
    assert logits.data_ptr() % size
    logits.copy_(torch.randn(3, vocab))
    expected = reference_mask(logits.clone(), allowed)
    assert trie.mask_logits(logits, nodes) is logits
    assert torch.equal(logits, expected)


@given(st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=5), min_size=1, max_size=25), st.data())
def test_hypothesis_masks(sequences, data):
    trie, ref = fs.Trie(sequences), DictTrie(sequences)
    prefixes = [s[: data.draw(st.integers(0, len(s)))] for s in sequences]
    logits = torch.randn(len(prefixes), 31)
    expected = reference_mask(logits, [ref.children(p) for p in prefixes])
    trie.mask_logits(logits, [trie.walk(p) for p in prefixes])
    assert torch.equal(logits, expected)


def test_large_batch_uses_every_row():
    """Big enough to take the multi-threaded path."""
    rng = np.random.default_rng(2)
    _, trie, ref = random_trie(rng, 5000, 400, 6)
    nodes, allowed = rows_for(trie, ref, rng, 300)
    logits = torch.randn(300, 5000)
    expected = reference_mask(logits, allowed)
    trie.mask_logits(logits, nodes)
    assert torch.equal(logits, expected)


def test_composes_with_torch_compile():
    trie = fs.Trie([[1, 2], [3]])
    nodes = torch.tensor([0, 1], dtype=torch.int32)

    def masked_softmax(x):
        return torch.softmax(trie.mask_logits(x.clone() * 2, nodes), dim=-1)

    x = torch.randn(2, 5)
    compiled = torch.compile(masked_softmax, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), masked_softmax(x))


def test_bad_arguments():
    trie = fs.Trie([[1, 2], [3]])
    logits = torch.zeros(2, 5)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        trie.mask_logits(np.zeros((2, 5), dtype=np.float32), [0, 0])
    with pytest.raises(TypeError, match="logits must be float32, float16 or bfloat16"):
        trie.mask_logits(torch.zeros(2, 5, dtype=torch.float64), [0, 0])
    with pytest.raises(ValueError, match="logits must be 2-D"):
        trie.mask_logits(torch.zeros(5), [0])
    with pytest.raises(ValueError, match=r"trie holds token id 3 but logits has only 3 columns"):
        trie.mask_logits(torch.zeros(2, 3), [0, 0])
    with pytest.raises(ValueError, match=r"nodes must be 1-D with one node per logits row \(2\)"):
        trie.mask_logits(logits, [0])
    with pytest.raises(ValueError, match=r"nodes\[1\] must be -1 or a node id in \[0, 4\), got 4"):
        trie.mask_logits(logits, [0, 4])
    with pytest.raises(ValueError, match=r"nodes\[0\] must be -1 or a node id"):
        trie.mask_logits(logits, [-2, 0])
    for dtype in (torch.float32, torch.bool, torch.uint32, torch.uint64):
        with pytest.raises(TypeError, match="nodes must be an integer tensor"):
            trie.mask_logits(logits, torch.zeros(2, dtype=dtype))
    with pytest.raises(TypeError, match="nodes must hold integers"):
        trie.mask_logits(logits, [0.0, 1.0])
    with pytest.raises(ValueError, match="nodes is on the meta device"):
        trie.mask_logits(logits, torch.zeros(2, dtype=torch.int32, device="meta"))
    with pytest.raises(TypeError, match=r"logits must be a dense \(strided\) tensor, got layout torch.sparse_coo"):
        trie.mask_logits(logits.to_sparse(), [0, 0])
    with pytest.raises(TypeError, match="fill must be a number"):
        trie.mask_logits(logits, [0, 0], fill="x")
    with pytest.raises(TypeError, match="fill must be a number"):
        trie.mask_logits(logits, [0, 0], fill=torch.zeros(2))
    with pytest.raises(TypeError, match="fill must be a number"):
        trie.mask_logits(logits, [0, 0], fill=np.array([True]))
    with pytest.raises(ValueError, match="fill must be a number a float can hold, got 1000000000000"):
        trie.mask_logits(logits, [0, 0], fill=10**400)
    assert torch.equal(logits, torch.zeros(2, 5))  # nothing written on any failure


@pytest.mark.parametrize("fill", [np.float32(-7.0), np.array(-7.0), np.array([-7]), torch.tensor([-7.0]), -7])
def test_fill_of_any_one_number_form(fill):
    trie = fs.Trie([[1, 2], [3]])
    nodes = [trie.root, trie.walk([1])]
    got = trie.mask_logits(torch.zeros(2, 5), nodes, fill=fill)
    assert torch.equal(got, reference_mask(torch.zeros(2, 5), [[1, 3], [2]], -7.0))


def test_mask_op_called_directly__takes_only_a_live_tries_arrays():
    # The op trusts the CSR arrays it masks with: anything else is refused, never read.
    trie = fs.Trie([[5, 10**6]])
    begin, tokens = trie._arrays_on(torch.device("cpu"))
    nodes = torch.tensor([trie.walk([5])], dtype=torch.int32)
    op = torch.ops.pyfastseq.trie_mask_
    with pytest.raises(ValueError, match="trie holds token id 1000000 but logits has only 8 columns"):
        op(torch.zeros(1, 8), nodes, begin, tokens, float("-inf"))
    forged = torch.tensor([0, 10**9, 10**9 + 1, 10**9 + 2], dtype=torch.int32)
    with pytest.raises(ValueError, match="child_begin and child_token must be a Trie's own arrays"):
        op(torch.zeros(1, 8), nodes, forged, tokens, float("-inf"))
    wide = torch.zeros(3, 10**6 + 1)
    # Each wrong in one way only: dtype, length, stride (the kernel reads nodes by raw pointer).
    for bad in (torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int32),
                torch.zeros(6, dtype=torch.int32)[::2]):
        with pytest.raises(ValueError, match=r"nodes must be a contiguous int32 \[3\] tensor"):
            op(wide, bad, begin, tokens, float("-inf"))
    op(wide[:1], nodes, begin, tokens, float("-inf"))
    assert torch.isinf(wide[0]).sum() == wide.shape[1] - 1 and wide[0, 10**6] == 0


def test_mask_op_forgets_a_trie_that_is_gone():
    from pyfastseq import trie as trie_module

    def registered(tries):
        return sum(trie_module._arrays_key(*t._arrays_on(torch.device("cpu"))) in trie_module._MASKABLE for t in tries)

    tries = [fs.Trie([[1, i]]) for i in range(50)]
    keys = [trie_module._arrays_key(*t._arrays_on(torch.device("cpu"))) for t in tries]
    assert registered(tries) == 50
    copies = [copy.copy(t) for t in tries]  # a copy shares its original's arrays
    del tries
    assert registered(copies) == 50
    for i, c in enumerate(copies):
        assert c.mask_logits(torch.zeros(1, 51), [c.walk([1])]).argmax().item() == i
    del copies, c
    assert not any(key in trie_module._MASKABLE for key in keys)


@pytest.mark.parametrize("node", [2**31, 2**32, 2**32 + 1, 2**40, -(2**32) + 1, -(2**31) - 1])
def test_node_ids_beyond_int32__raise_rather_than_wrap(node):
    # 2**32 + 1 would wrap to node 1 (a valid one) in an int32 cast.
    trie = fs.Trie([[1, 2], [3]])
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"nodes\[1\] must be -1 or a node id in \[0, 4\), got -2147483648 or a value beyond the int32"):
        trie.mask_logits(logits, torch.tensor([0, node], dtype=torch.int64))
    assert torch.equal(logits, torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"nodes\[0\] must be -1 or a node id in \[0, 4\), got -5"):
        trie.mask_logits(logits, torch.tensor([-5, 0], dtype=torch.int64))
    assert torch.equal(trie.mask_logits(logits.clone(), [0, -1], fill=torch.tensor(-7.0)),
                       trie.mask_logits(logits.clone(), [0, -1], fill=-7.0))


def test_logits_requiring_grad__raise_and_the_additive_mask_differentiates():
    # An in-place mask would leave the graph's gradient unmasked; the additive form is exact.
    trie = fs.Trie([[1, 2], [3]])
    nodes = torch.tensor([0, trie.walk([1])])
    x = torch.randn(2, 5, requires_grad=True)
    for logits in (x, x * 2, torch.nn.Parameter(torch.randn(2, 5))):
        with pytest.raises(ValueError, match="logits requires grad"):
            trie.mask_logits(logits, nodes)
    with torch.no_grad():
        trie.mask_logits(x.detach().clone().requires_grad_(), nodes)
    allowed = torch.tensor([[False, True, False, True, False], [False, False, True, False, False]])
    weights = torch.randn(2, 5)
    (torch.log_softmax(x + trie.mask_logits(torch.zeros_like(x), nodes), -1).exp() * weights).sum().backward()
    got, x.grad = x.grad, None
    (torch.log_softmax(x.masked_fill(~allowed, float("-inf")), -1).exp() * weights).sum().backward()
    torch.testing.assert_close(got, x.grad)


def rows_with_nan(rng, allowed, vocab, where, dtype, layout):
    """Random logits with NaN in a row that has children: at one of them (``where="allowed"``), or
    at a token it does not allow and across every row of node -1 (``"disallowed"``); the NaN row."""
    base = torch.randn(len(allowed), vocab).to(dtype)
    logits = base if layout == "contiguous" else base.t().contiguous().t()  # column stride != 1: copied
    row = next(r for r in range(len(allowed)) if allowed[r] and r > 0)
    if where == "allowed":
        logits[row, allowed[row][-1]] = float("nan")
    else:
        logits[row, rng.choice(sorted(set(range(vocab)) - set(allowed[row])))] = float("nan")
        logits[[r for r in range(len(allowed)) if not allowed[r]]] = float("nan")
    return logits, row


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("where", ["allowed", "disallowed"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_logits__raise_where_the_mask_keeps_them__dtype__where__layout(dtype, where, layout):
    rng = np.random.default_rng(21)
    _, trie, ref = random_trie(rng, 60, 40, 4, eos_id=0)
    nodes, allowed = rows_for(trie, ref, rng, 24)
    assert -1 in nodes
    logits, row = rows_with_nan(rng, allowed, 60, where, dtype, layout)
    before = logits.clone()
    if where == "allowed":
        with pytest.raises(ValueError, match=rf"^logits row {row} holds NaN at a token its trie node allows"):
            trie.mask_logits(logits, nodes)
        torch.testing.assert_close(logits, before, rtol=0, atol=0, equal_nan=True)  # nothing written
    else:  # NaN the mask overwrites is no error
        assert trie.mask_logits(logits, nodes) is logits
        torch.testing.assert_close(logits, reference_mask(before, allowed), rtol=0, atol=0)
        assert not logits.isnan().any()


def test_nan_logits__the_first_row_is_named_on_the_threaded_path():
    rng = np.random.default_rng(3)
    _, trie, ref = random_trie(rng, 5000, 400, 6)
    children = ref.children([])
    assert 600 * len(children) >= 2**17  # the NaN check's rows run on threads
    logits = torch.randn(600, 5000)
    logits[[450, 100, 599], [children[0], children[-1], children[1]]] = float("nan")
    before = logits.clone()
    with pytest.raises(ValueError, match="logits row 100 holds NaN"):
        trie.mask_logits(logits, [trie.root] * 600)
    torch.testing.assert_close(logits, before, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda), "emulated"])
def test_nan_logits_on_a_gpu_are_not_read_back(device, request):
    # Validating them would synchronise the stream: the CUDA mask keeps a NaN it is given.
    device = torch_device(device, request)
    trie = fs.Trie([[1, 2], [3]])
    logits = torch.zeros(2, 5, device=device)
    logits[0, 3] = float("nan")
    trie.mask_logits(logits, [trie.root, trie.walk([1])])
    expected = reference_mask(torch.zeros(2, 5), [[1, 3], [2]])
    expected[0, 3] = float("nan")
    torch.testing.assert_close(logits.cpu(), expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("logits, error, match", [
    (torch.empty(2, 64, device="meta"), ValueError, "logits is on the meta device, which holds no values"),
    (torch.zeros(2, 64).to_sparse(), TypeError, r"logits must be a dense \(strided\) tensor"),
], ids=["meta", "sparse"])
def test_logits_holding_no_values__raise_before_nodes_are_read(logits, error, match):
    # Node 99 is out of range: a check of the nodes would name it instead.
    with pytest.raises(error, match=match):
        fs.Trie([[1, 2], [3]]).mask_logits(logits, [0, 99])
