"""UniLM attention: Triton kernels (interpreter on CPU, compiled on CUDA) vs. the dense-mask reference."""

import os
import re
import sys

import numpy as np
import pytest
import torch

# The Triton interpreter must be chosen before Triton is first imported; on a GPU machine the
# kernels run compiled on CUDA tensors instead.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pyfastseq as fs
from pyfastseq.attention import UniLMAttention, backend_for, dropout, unilm_attention_reference

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

if HAS_TRITON:
    from pyfastseq.attention.tiles import dropout_keep

    @triton.jit
    def _dropout_keep_tiles(SEED, OUT, BH0, L, start, drop_threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """``tiles.dropout_keep``'s tiles, written to a [H, L, L] int8 tensor."""
        pid_bh = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        for start_n in range(start, L, BLOCK_N):
            keep = dropout_keep(tl.load(SEED), BH0 + pid_bh, rows, start_n, L, drop_threshold, BLOCK_N)
            cols = start_n + tl.arange(0, BLOCK_N)
            tl.store(OUT + pid_bh * L * L + rows[:, None] * L + cols[None, :], keep.to(tl.int8),
                     mask=(rows[:, None] < L) & (cols[None, :] < L))

CPU_KERNEL = HAS_TRITON and backend_for(torch.device("cpu")) == "triton"
needs_cpu_kernel = pytest.mark.skipif(not CPU_KERNEL, reason="Triton interpreter not active (needs triton and TRITON_INTERPRET=1)")


def needs_cuda_triton(test):
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_TRITON, reason="needs triton")(test))


def make_lengths(kind, B, L, padded, gen):
    """(prefix_lens, seq_lens) int64 [B]: prefix kind "0", "1", "L" (whole row) or "random"."""
    seq = torch.randint(max(1, L // 2), L + 1, (B,), generator=gen) if padded else torch.full((B,), L)
    if padded:
        seq[0] = L  # keep one full row so every kernel block is exercised
    if kind == "random":
        prefix = (torch.rand(B, generator=gen) * (seq + 1)).long().clamp(max=L)
    else:
        prefix = {"0": torch.zeros(B, dtype=torch.long), "1": torch.ones(B, dtype=torch.long), "L": seq.clone()}[kind]
    return prefix, seq


def make_qkv(B, H, L, D, dtype, device, gen):
    return [torch.randn(B, H, L, D, generator=gen).to(device=device, dtype=dtype) for _ in range(3)]


def run_and_grads(fn, q, k, v, prefix, seq, do):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, prefix, seq)
    out.backward(do)
    return [out.detach()] + [t.grad for t in leaves]


def with_dropout(dropout_p, device, rng_seed=1234, attention=None):
    """(call, reference): ``attention`` (default ``fs.unilm_attention`` with ``dropout_p``) under a
    fixed RNG state, and :func:`unilm_attention_reference` dropping by the seed that call draws."""
    attention = attention or (lambda *args: fs.unilm_attention(*args, dropout_p=dropout_p))
    devices = [torch.device(device)] if device == "cuda" else []

    def call(*args):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(rng_seed)
            return attention(*args)

    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rng_seed)
        seed = dropout.draw_seed(torch.device(device))
    return call, lambda *args: unilm_attention_reference(*args, dropout_p=dropout_p, seed=seed)


def check_against_reference(B, H, L, D, kind, padded, dtype, device, seed=0, dropout_p=0.0):
    """Kernel error (forward, dq, dk, dv) within 2x (+ slack) of the low-precision reference's own
    error, both measured against the fp32 reference (dropping the same entries, with ``dropout_p``)."""
    gen = torch.Generator().manual_seed(seed)
    prefix, seq = make_lengths(kind, B, L, padded, gen)
    q, k, v = make_qkv(B, H, L, D, dtype, device, gen)
    do = torch.randn(B, H, L, D, generator=gen).to(device=device, dtype=dtype)
    call, reference = with_dropout(dropout_p, device) if dropout_p else (fs.unilm_attention, unilm_attention_reference)
    exact = run_and_grads(reference, q.double(), k.double(), v.double(), prefix, seq, do.double())
    got = run_and_grads(call, q, k, v, prefix, seq, do)
    if dtype == torch.float32:
        tol = 1e-4 if device == "cpu" else 2e-3
        for name, g, e in zip(("out", "dq", "dk", "dv"), got, exact):
            torch.testing.assert_close(g.double(), e, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")
    else:
        low = run_and_grads(reference, q, k, v, prefix, seq, do)
        for name, g, lo, e in zip(("out", "dq", "dk", "dv"), got, low, exact):
            err = (g.double() - e).abs().max().item()
            ref_err = (lo.double() - e).abs().max().item()
            assert err <= 2 * ref_err + 1e-3, f"{name}: kernel error {err:.3g} vs reference error {ref_err:.3g}"
    # Padded query rows output zeros and take no gradient; padded keys get none either.
    for b in range(B):
        n = int(seq[b])
        for t in got:
            assert torch.all(t[b, :, n:] == 0)


# (B, H, L, D, prefix kind, padded): odd lengths around the 32-wide interpreter blocks.
GRID = [
    (1, 1, 37, 32, "0", False),
    (2, 2, 37, 64, "1", True),
    (2, 1, 97, 32, "L", False),
    (3, 1, 97, 32, "random", True),
    (2, 1, 129, 64, "random", True),
    (1, 2, 129, 32, "0", True),
]
SLOW_GRID = [
    (2, 2, 129, 64, "1", False),
    (4, 2, 97, 64, "random", True),
    (2, 3, 129, 32, "L", True),
]


def _ids(grid):
    return [f"B{b}_H{h}_L{l}_D{d}_prefix{k}_{'pad' if p else 'full'}" for b, h, l, d, k, p in grid]


@pytest.fixture(params=["fused", "split"])
def backward_launch(request, monkeypatch):
    """Runs a test with each backward: fused (one launch) and split (dQ with DELTA, then dK/dV),
    whatever size the launcher would pick either for."""
    from pyfastseq.attention import launch

    monkeypatch.setattr(launch, "FUSED_BACKWARD_MAX_ENTRIES", 2**62 if request.param == "fused" else -1)
    return request.param


@needs_cpu_kernel
@pytest.mark.parametrize("B,H,L,D,kind,padded", GRID, ids=_ids(GRID))
def test_interpreter_fp32(B, H, L, D, kind, padded, backward_launch):
    check_against_reference(B, H, L, D, kind, padded, torch.float32, "cpu")


@needs_cpu_kernel
@pytest.mark.slow
@pytest.mark.parametrize("B,H,L,D,kind,padded", SLOW_GRID, ids=_ids(SLOW_GRID))
def test_interpreter_fp32_more(B, H, L, D, kind, padded):
    check_against_reference(B, H, L, D, kind, padded, torch.float32, "cpu")


@needs_cpu_kernel
@pytest.mark.parametrize("B,H,L,D,kind,padded", [(2, 1, 37, 32, "random", True), (2, 1, 97, 64, "random", False)],
                         ids=["B2_H1_L37_D32_random_pad", "B2_H1_L97_D64_random_full"])
def test_interpreter_fp16(B, H, L, D, kind, padded, backward_launch):
    check_against_reference(B, H, L, D, kind, padded, torch.float16, "cpu")


@needs_cpu_kernel
@pytest.mark.parametrize("fwd,bwd", [((64, 16), (16, 64)), ((16, 64), (64, 16))], ids=["tall_fwd", "wide_fwd"])
def test_interpreter_unequal_blocks(fwd, bwd, monkeypatch, backward_launch):
    # GPU configurations pair unequal query and key blocks (e.g. 128x64 forward, 32x128 backward).
    from pyfastseq.attention import launch

    monkeypatch.setitem(launch.INTERPRET_BLOCKS, "fwd", dict(BLOCK_M=fwd[0], BLOCK_N=fwd[1]))
    for name in ("dkdv", "dq", "bwd"):
        monkeypatch.setitem(launch.INTERPRET_BLOCKS, name, dict(BLOCK_M=bwd[0], BLOCK_N=bwd[1]))
    check_against_reference(3, 1, 101, 32, "random", True, torch.float32, "cpu", seed=11)


@needs_cpu_kernel
def test_interpreter_strided_inputs_and_empty_rows():
    # [B, L, H, D] projections viewed as [B, H, L, D], as transformers hands them over; row 1 is all padding.
    gen = torch.Generator().manual_seed(3)
    B, H, L, D = 2, 2, 45, 32
    q, k, v = (torch.randn(B, L, H, D, generator=gen).transpose(1, 2) for _ in range(3))
    prefix, seq = torch.tensor([7, 0]), torch.tensor([40, 0])
    out = fs.unilm_attention(q, k, v, prefix, seq, scale=0.3)
    ref = unilm_attention_reference(q, k, v, prefix, seq, scale=0.3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.all(out[1] == 0)


@needs_cpu_kernel
def test_interpreter_length_columns_of_one_tensor():
    # int32 lengths as the columns of one [B, 2] tensor (stride 2): read as lengths, not as its memory.
    gen = torch.Generator().manual_seed(6)
    q, k, v = make_qkv(3, 1, 37, 32, torch.float32, "cpu", gen)
    lengths = torch.tensor([[5, 37], [10, 20], [0, 30]], dtype=torch.int32)
    ref = unilm_attention_reference(q, k, v, lengths[:, 0].long(), lengths[:, 1].long())
    for out in (fs.unilm_attention(q, k, v, lengths[:, 0], lengths[:, 1]),
                UniLMAttention.apply(q, k, v, lengths[:, 0], lengths[:, 1], 32 ** -0.5)[0]):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_cpu_kernel
def test_interpreter_batch_launched_in_slices(monkeypatch, backward_launch):
    # CUDA allows 65,535 blocks on grid axis 1 (batch * head): bigger batches go in slices of whole
    # rows. A limit of 5 with 2 heads makes slices of 2 rows (the last one 1) out of 5.
    from pyfastseq.attention import launch

    monkeypatch.setattr(launch, "MAX_GRID_Y", 5)
    assert [(s.start, s.stop) for s in launch._batch_slices(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    check_against_reference(5, 2, 37, 32, "random", True, torch.float32, "cpu", seed=12)


# ---- dropout ----------------------------------------------------------------------------------------

@needs_cpu_kernel
@pytest.mark.parametrize("B,H,L,p,start", [(2, 3, 37, 0.1, 0), (1, 2, 70, 0.5, 32), (1, 1, 8, 0.9, 0),
                                           (1, 1, 130, 0.3, 64)])
def test_interpreter_dropout_stream_is_the_references(B, H, L, p, start):
    # The kernels' keep tiles (any query rows, keys from any multiple of 8) against the stream
    # written out in PyTorch, for (batch, head) rows offset as a launch over a batch slice has them.
    seed = torch.tensor([dropout.SEED_HIGH - 12345], dtype=torch.int64)
    want = dropout.dropout_keep_mask(seed, B, H, L, p)
    got = torch.full((B, H, L, L), -1, dtype=torch.int8)
    for b in range(B):  # one launch per batch row, each starting at its row's (batch, head)
        _dropout_keep_tiles[(triton.cdiv(L, 16), H)](seed, got[b], b * H, L, start, dropout.threshold(p),
                                                     BLOCK_M=16, BLOCK_N=32)
    assert torch.equal(got[..., start:].bool(), want[..., start:])


@needs_cpu_kernel
@pytest.mark.parametrize("first_bh", [2_000_000_000, 3 * 2**32 // 97])
def test_interpreter_dropout_stream_past_32_bit_counters(first_bh):
    # (batch, head) rows far enough into the stream that the Philox counter's high word is set:
    # the kernels' tiles against the stream's formula written out here.
    L, p, H = 97, 0.4, 2
    seed = torch.tensor([123456789], dtype=torch.int64)
    got = torch.full((H, L, L), -1, dtype=torch.int8)
    _dropout_keep_tiles[(triton.cdiv(L, 16), H)](seed, got, first_bh, L, 0, dropout.threshold(p),
                                                 BLOCK_M=16, BLOCK_N=32)
    groups = (L + 7) // 8
    rows = (first_bh + torch.arange(H)).view(H, 1, 1) * L + torch.arange(L).view(1, L, 1)
    offsets = rows * groups + torch.arange(groups)  # [H, L, groups]
    assert offsets.max() >= 2**32
    words = dropout.philox4x32(seed, offsets)
    j = torch.arange(L)
    word = torch.stack(words, -1)[..., j // 8, (j % 8) // 2]  # [H, L, L]: each key's word
    half = torch.where(j % 2 == 0, word & 0xFFFF, word >> 16)
    assert torch.equal(got.bool(), half >= dropout.threshold(p))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.875])
def test_dropout_stream_statistics(p):
    # Each entry is kept with probability 1 - threshold / 65536 (|p - threshold / 65536| <= 2**-17),
    # the rate is the same across rows, heads and key positions within a Philox call, and the
    # stream depends on the seed.
    B, H, L = 2, 4, 200
    keep = dropout.dropout_keep_mask(torch.tensor([7]), B, H, L, p)
    rate = 1 - dropout.threshold(p) / 65536
    assert abs(dropout.threshold(p) / 65536 - p) <= 2 ** -17
    assert dropout.keep_scale(p) == pytest.approx(1 / rate, rel=1e-12)
    n = keep.numel()
    assert abs(keep.float().mean().item() - rate) < 5 * (rate * (1 - rate) / n) ** 0.5
    for lane in range(8):  # each of the 8 halves of a Philox call
        lane_keep = keep[..., lane::8]
        assert abs(lane_keep.float().mean().item() - rate) < 5 * (rate * (1 - rate) / lane_keep.numel()) ** 0.5
    other = dropout.dropout_keep_mask(torch.tensor([8]), B, H, L, p)
    assert (keep != other).float().mean().item() > rate * (1 - rate)  # independent streams differ
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])


def test_dropout_philox_matches_known_answer():
    # Philox4x32-10's published test vector (Salmon et al., Random123 kat_vectors): counter
    # (0, 0, 0, 0), key (0, 0) -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
    words = dropout.philox4x32(torch.tensor([0]), torch.tensor([0]))
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@needs_cpu_kernel
@pytest.mark.parametrize("B,H,L,D,kind,padded,p", [
    (2, 2, 37, 32, "random", True, 0.1),
    (1, 1, 97, 64, "1", False, 0.5),
    (2, 1, 129, 32, "L", True, 0.25),
])
def test_interpreter_dropout(B, H, L, D, kind, padded, p, backward_launch):
    check_against_reference(B, H, L, D, kind, padded, torch.float32, "cpu", seed=3, dropout_p=p)


@needs_cpu_kernel
def test_interpreter_dropout_fp16_unequal_blocks_and_slices(monkeypatch, backward_launch):
    from pyfastseq.attention import launch

    monkeypatch.setitem(launch.INTERPRET_BLOCKS, "fwd", dict(BLOCK_M=64, BLOCK_N=16))
    for name in ("dkdv", "dq", "bwd"):
        monkeypatch.setitem(launch.INTERPRET_BLOCKS, name, dict(BLOCK_M=16, BLOCK_N=64))
    check_against_reference(2, 1, 77, 32, "random", True, torch.float16, "cpu", seed=4, dropout_p=0.2)
    monkeypatch.setattr(launch, "MAX_GRID_Y", 5)  # slices of 2 rows of 2 heads: the stream goes on across them
    check_against_reference(5, 2, 37, 32, "random", True, torch.float32, "cpu", seed=5, dropout_p=0.3)


def test_torch_backend_dropout_gradients_match_autograd(monkeypatch):
    # The fallback's written-out backward with dropout against autograd through the reference.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    check_against_reference(2, 2, 29, 32, "random", True, torch.float32, "cpu", dropout_p=0.3)


def test_dropout_reproducible_and_unbiased(monkeypatch):
    # The same RNG state gives the same output; new draws give new ones; the mean over draws tends
    # to the undropped attention.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    gen = torch.Generator().manual_seed(6)
    q, k, v = make_qkv(1, 2, 24, 16, torch.float32, "cpu", gen)
    prefix, seq = [5], [20]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first = fs.unilm_attention(q, k, v, prefix, seq, dropout_p=0.5)
        torch.manual_seed(0)
        assert torch.equal(first, fs.unilm_attention(q, k, v, prefix, seq, dropout_p=0.5))
        draws = torch.stack([fs.unilm_attention(q, k, v, prefix, seq, dropout_p=0.5) for _ in range(2000)])
    assert not torch.equal(draws[0], draws[1])
    undropped = fs.unilm_attention(q, k, v, prefix, seq)
    spread = draws.std(0) / 2000 ** 0.5
    assert ((draws.mean(0) - undropped).abs() <= 5 * spread + 1e-12).all()


@pytest.mark.parametrize("p, exc", [(1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                                    (True, TypeError), ("0.1", TypeError), (None, TypeError)])
def test_dropout_p_checked(p, exc):
    with pytest.raises(exc, match="dropout_p must"):
        fs.unilm_attention(*_qkv(), [1, 2], dropout_p=p)


def test_dropout_p_any_real_and_below_the_stream_resolution():
    # A NumPy float is a dropout probability too; one under 2**-17 (threshold 0) drops nothing.
    import numpy as np

    q, k, v = _qkv()
    undropped = fs.unilm_attention(q, k, v, [1, 2])
    assert torch.equal(fs.unilm_attention(q, k, v, [1, 2], dropout_p=1e-6), undropped)
    assert not torch.equal(fs.unilm_attention(q, k, v, [1, 2], dropout_p=np.float32(0.5)), undropped)


@pytest.mark.parametrize("seed, match", [
    (None, "needs seed"), (torch.tensor([1.0]), "needs seed"), (torch.tensor([1, 2]), "needs seed"),
    (torch.tensor([1], device="meta"), "seed must be on q's device"),
])
def test_dropout_seed_checked(seed, match):
    # UniLMAttention and the ops take the seed from their caller: a missing or unreadable one is refused.
    q, k, v = _qkv()
    lengths = torch.tensor([1, 2], dtype=torch.int32)
    with pytest.raises(ValueError, match=match):
        UniLMAttention.apply(q, k, v, lengths, torch.tensor([8, 8], dtype=torch.int32), 0.5, 0.1, seed)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_launch_limits():
    from pyfastseq.attention import launch

    fits = torch.empty(1, 2, 16, 32, device="meta")
    launch.check_launch_limits(fits, fits, fits)
    too_many_heads = torch.empty(1, launch.MAX_GRID_Y + 1, 1, 32, device="meta")
    with pytest.raises(ValueError, match="heads; the Triton kernels take at most 65535"):
        launch.check_launch_limits(too_many_heads, too_many_heads, too_many_heads)
    # Rows 2**26 elements apart (a [B, L, H, D] layout with huge H * D): 32 rows pass int32 offsets.
    wide_rows = torch.empty_strided((1, 1, 33, 32), (0, 0, 2**26, 1), device="meta")
    with pytest.raises(ValueError, match="one head of k spans 2147483680 elements.*make it contiguous"):
        launch.check_launch_limits(fits, wide_rows, fits)


def test_ops_outputs_have_the_strides_of_their_fakes(monkeypatch):
    # torch.compile plans around the fake implementations' strides (those of q, k, v), so the
    # PyTorch fallback must return its outputs laid out the same, e.g. for transposed inputs.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    gen = torch.Generator().manual_seed(7)
    q, k, v, do = (torch.randn(2, 7, 2, 32, generator=gen).transpose(1, 2) for _ in range(4))
    prefix, seq = torch.tensor([3, 5], dtype=torch.int32), torch.tensor([7, 6], dtype=torch.int32)
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.pyfastseq.unilm_attention_fwd.default, (q, k, v, prefix, seq, 0.2),
                          test_utils=tests)
    out, lse = torch.ops.pyfastseq.unilm_attention_fwd(q, k, v, prefix, seq, 0.2)
    torch.library.opcheck(torch.ops.pyfastseq.unilm_attention_bwd.default,
                          (do, q, k, v, out, lse, prefix, seq, 0.2), test_utils=tests)


@needs_cpu_kernel
def test_autograd_function_matches_the_custom_op():
    # Eagerly the autograd.Function calls the ops' implementations directly; the op and its
    # registered autograd formula must give the same outputs and gradients.
    gen = torch.Generator().manual_seed(4)
    q, k, v = make_qkv(2, 1, 37, 32, torch.float32, "cpu", gen)
    prefix, seq = torch.tensor([3, 20], dtype=torch.int32), torch.tensor([37, 30], dtype=torch.int32)
    do = torch.randn(2, 1, 37, 32, generator=gen)
    via_fn = run_and_grads(lambda *a: UniLMAttention.apply(*a, 32 ** -0.5)[0], q, k, v, prefix, seq, do)
    via_op = run_and_grads(lambda *a: torch.ops.pyfastseq.unilm_attention_fwd(*a, 32 ** -0.5)[0],
                           q, k, v, prefix, seq, do)
    via_public = run_and_grads(fs.unilm_attention, q, k, v, prefix, seq, do)
    for a, b, c in zip(via_fn, via_op, via_public):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(c, b, atol=0, rtol=0)


class _NoGradient(torch.autograd.Function):
    """Identity whose backward hands back no gradient (None), as some autograd Functions do."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


@pytest.mark.parametrize("via", ["public", "op"])
def test_backward_given_no_gradient_for_out(via):
    # Autograd still runs the attention's backward, with no gradient for out: q, k and v get none,
    # and a gradient reaching them another way comes through unchanged.
    gen = torch.Generator().manual_seed(6)
    q, k, v = (t.requires_grad_() for t in make_qkv(2, 1, 21, 32, torch.float32, "cpu", gen))
    prefix, seq = torch.tensor([3, 9], dtype=torch.int32), torch.tensor([21, 15], dtype=torch.int32)
    if via == "public":
        out = fs.unilm_attention(q, k, v, prefix, seq)
    else:
        out = torch.ops.pyfastseq.unilm_attention_fwd(q, k, v, prefix, seq, 32 ** -0.5)[0]
    (_NoGradient.apply(out).sum() + 2 * q.sum()).backward()
    assert k.grad is None and v.grad is None
    torch.testing.assert_close(q.grad, torch.full_like(q, 2.0), atol=0, rtol=0)


@pytest.mark.parametrize("upstream", ["squared", "fixed weights"])
@pytest.mark.parametrize("via", ["public", "op"])
def test_double_backward_raises(via, upstream):
    # The backward is not differentiable itself: a second-order gradient must fail, not come out short,
    # whether or not the gradient coming into the attention needs one itself (with fixed weights it
    # does not, and the second-order terms run through q, k and v alone).
    gen = torch.Generator().manual_seed(7)
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 1, 21, 32, torch.float32, "cpu", gen))
    if via == "public":
        out = fs.unilm_attention(q, k, v, [5])
    else:
        out = torch.ops.pyfastseq.unilm_attention_fwd(q, k, v, torch.tensor([5], dtype=torch.int32),
                                                      torch.tensor([21], dtype=torch.int32), 32 ** -0.5)[0]
    loss = out.square().sum() if upstream == "squared" else (out * torch.randn(out.shape, generator=gen)).sum()
    dq, = torch.autograd.grad(loss, q, create_graph=True)
    with pytest.raises(RuntimeError, match="unilm_attention has no double backward"):
        (dq.square().sum() + out.sum()).backward()


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_cpu_kernel), "torch", "autograd"])
def test_nan_in_padding_reaches_nothing(backend, monkeypatch):
    # Padded rows of q, k, v and of the output gradient are never read: NaN there changes nothing.
    gen = torch.Generator().manual_seed(8)
    q, k, v = make_qkv(2, 2, 40, 32, torch.float32, "cpu", gen)
    do = torch.randn(q.shape, generator=gen)
    prefix, seq = torch.tensor([3, 10]), torch.tensor([40, 29])
    poisoned = [t.clone() for t in (q, k, v, do)]
    for t in poisoned:
        t[1, :, 29:] = float("nan")
    if backend == "autograd":
        fn = unilm_attention_reference
    else:
        monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", backend)
        fn = fs.unilm_attention
    got = run_and_grads(fn, *poisoned[:3], prefix, seq, poisoned[3])
    clean = [t.clone() for t in (q, k, v, do)]
    for t in clean:
        t[1, :, 29:] = 0.0
    want = run_and_grads(unilm_attention_reference, *clean[:3], prefix, seq, clean[3])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_cpu_kernel
def test_interpreter_concurrent_calls():
    # The interpreter patches triton.language while a kernel runs: calls from several threads take turns.
    from concurrent.futures import ThreadPoolExecutor

    gen = torch.Generator().manual_seed(9)
    jobs = [make_qkv(2, 1, 37, 32, torch.float32, "cpu", gen) for _ in range(4)]
    prefix, seq = torch.tensor([3, 20]), torch.tensor([37, 30])
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda qkv: fs.unilm_attention(*qkv, prefix, seq), jobs))
    for (q, k, v), out in zip(jobs, outs):
        torch.testing.assert_close(out, unilm_attention_reference(q, k, v, prefix, seq), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not CPU_KERNEL, reason="needs the Triton interpreter"))])
def test_float16_scores_beyond_its_range(backend, monkeypatch):
    # q . k near 40 * 40 * 64 = 102400 is past float16's 65504: the kernels accumulate scores in
    # fp32, and so does the PyTorch attention, rather than turning them into inf and NaN.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", backend)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (40 + torch.rand(2, 1, 21, 64, generator=gen) for _ in range(3))
    prefix, seq = torch.tensor([5, 0]), torch.tensor([21, 17])
    q, k, v = (t.half() for t in (q, k, v))
    do = torch.randn(q.shape, generator=gen).half()
    got = run_and_grads(fs.unilm_attention, q, k, v, prefix, seq, do)
    exact = run_and_grads(unilm_attention_reference, q.double(), k.double(), v.double(), prefix, seq, do.double())
    torch.testing.assert_close(got[0].double(), exact[0], atol=0.05, rtol=2e-3)
    assert all(torch.isfinite(g).all() for g in got[1:])
    if backend == "torch":
        # (The kernels' dq and dk are coarser here: like FlashAttention's, their backward takes
        # rowsum(dO * O) from the float16 output, whose rounding at |O| near 40 the scores amplify.)
        for g, e in zip(got[1:], exact[1:]):
            torch.testing.assert_close(g.double(), e, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not CPU_KERNEL, reason="needs the Triton interpreter"))])
def test_rows_whose_every_score_is_hugely_negative(backend, monkeypatch):
    # Scores near -1e33: a softmax like any other (no floor may mistake such a row for one that sees nothing).
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", backend)
    gen = torch.Generator().manual_seed(4)
    q = torch.rand(1, 2, 40, 32, generator=gen) * 1e16 + 1e16
    k = -torch.rand(1, 2, 40, 32, generator=gen) * 1e16 - 1e16
    v = torch.randn(1, 2, 40, 32, generator=gen)
    prefix, seq = torch.tensor([5]), torch.tensor([33])
    do = torch.randn(v.shape, generator=gen)
    got = run_and_grads(fs.unilm_attention, q, k, v, prefix, seq, do)
    exact = run_and_grads(unilm_attention_reference, q.double(), k.double(), v.double(), prefix, seq, do.double())
    torch.testing.assert_close(got[0].double(), exact[0], atol=1e-5, rtol=1e-5)
    assert (got[0][0, :, :33].abs().sum(-1) > 0).all()
    # dv carries the probabilities; dq and dk, differences of scores whose float32 ulp is near 1e26,
    # hold nothing but rounding at this scale.
    torch.testing.assert_close(got[3].double(), exact[3], atol=1e-4, rtol=1e-4)


def test_cpu_bfloat16_takes_the_reference(monkeypatch):
    # The interpreter's bf16 tl.dot is wrong, so CPU bf16 never goes there, and forcing it is refused.
    assert backend_for(torch.device("cpu"), torch.bfloat16) == "torch"
    check_against_reference(2, 1, 23, 32, "random", True, torch.bfloat16, "cpu")
    if CPU_KERNEL:
        monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "triton")
        with pytest.raises(RuntimeError, match="bfloat16"):
            fs.unilm_attention(*_qkv(dtype=torch.bfloat16), [1, 2])


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("triton_version,numpy_version,usable", [
    ("3.6.0", "2.4.0", False), ("3.6.1+git1a2b", "2.5.1", False), ("3.6.0", "2.3.5", True),
    ("3.7.0", "2.4.0", True), ("3.10.0", "3.0.0", True), ("3.6.0", "1.26.4", True),
])
def test_interpreter_refused_where_it_cannot_run(triton_version, numpy_version, usable, monkeypatch):
    # Triton 3.6's interpreter fails every kernel under NumPy >= 2.4: CPU calls take the reference
    # there, and forcing the kernels says why.
    import numpy
    import triton

    from pyfastseq.attention import op

    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    op._interpreter_unusable.cache_clear()
    try:
        assert backend_for(torch.device("cpu"), torch.float32) == ("triton" if usable else "torch")
        monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "triton")
        if usable:
            assert backend_for(torch.device("cpu"), torch.float32) == "triton"
        else:
            with pytest.raises(RuntimeError, match=f"Triton {re.escape(triton_version)}'s interpreter"):
                backend_for(torch.device("cpu"), torch.float32)
    finally:
        op._interpreter_unusable.cache_clear()


def test_torch_backend_gradients_match_autograd(monkeypatch):
    # The fallback's hand-written backward against autograd through the reference.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    check_against_reference(2, 2, 29, 32, "random", True, torch.float32, "cpu")


@pytest.mark.parametrize("D", [1, 16, 48, 80])
def test_torch_backend_any_head_dim(D, monkeypatch):
    # Only the Triton kernels need a head dim of 32, 64 or 128; the fallback takes any.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    check_against_reference(2, 2, 29, D, "random", True, torch.float32, "cpu")


@pytest.mark.parametrize("D", [16, 48])
@pytest.mark.parametrize("device", [pytest.param("cpu", marks=needs_cpu_kernel),
                                    pytest.param("cuda", marks=pytest.mark.cuda)])
def test_kernel_head_dims(device, D):
    if device == "cuda" and not HAS_TRITON:
        pytest.skip("needs triton")
    with pytest.raises(ValueError, match=r"q's head dim must be one of \(32, 64, 128\) on the Triton kernels, got"):
        fs.unilm_attention(*_qkv((2, 2, 8, D), device=device), [1, 2])


@pytest.mark.parametrize("entry", ["unilm_attention", "UniLMAttention"])
def test_torch_compile_fullgraph(entry, monkeypatch):
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    gen = torch.Generator().manual_seed(5)
    q, k, v = make_qkv(2, 2, 19, 32, torch.float32, "cpu", gen)
    fn = {"unilm_attention": fs.unilm_attention,
          "UniLMAttention": lambda q, k, v, p, s: UniLMAttention.apply(q, k, v, p.int(), s.int(), 32 ** -0.5)[0]}[entry]
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def recorded(gm, example_inputs):
        graphs.append(gm.print_readable(print_output=False))
        return make_boxed_func(gm.forward)

    aot_eager_recorded = aot_autograd(fw_compiler=recorded, bw_compiler=recorded)
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=aot_eager_recorded, fullgraph=True, dynamic=False)
    for prefix in ([3, 0], [19, 5]):  # new lengths: same graph
        p = torch.tensor(prefix)
        s = torch.tensor([19, 12])
        got = run_and_grads(compiled, q, k, v, p, s, torch.ones_like(q))
        want = run_and_grads(unilm_attention_reference, q, k, v, p, s, torch.ones_like(q))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # One forward and one backward graph, where the attention is the custom ops (opaque to the compiler).
    assert len(graphs) == 2
    assert "pyfastseq.unilm_attention_fwd" in graphs[0] and "pyfastseq.unilm_attention_bwd" in graphs[1]


def test_torch_compile_fullgraph_self_attention(monkeypatch):
    # q, k and v one tensor: the compiled call goes through the op, which Dynamo traces with one
    # tensor in several places (an autograd.Function it cannot).
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    x = torch.randn(2, 2, 19, 32, generator=torch.Generator().manual_seed(6))
    p, s = torch.tensor([3, 19]), torch.tensor([19, 12])
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: fs.unilm_attention(t, t, t, p, s), backend="aot_eager", fullgraph=True)
    got, want = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = compiled(got)
    out.backward(torch.ones_like(out))
    expected = unilm_attention_reference(want, want, want, p, s)
    expected.backward(torch.ones_like(expected))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-5)


def test_torch_compile_fullgraph_dropout(monkeypatch):
    # Under torch.compile the seed is drawn in the graph from the same generator: the compiled call
    # drops what the reference drops for that seed, forward and backward.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    gen = torch.Generator().manual_seed(8)
    q, k, v = make_qkv(2, 2, 19, 32, torch.float32, "cpu", gen)
    do = torch.randn(q.shape, generator=gen)
    p, s = torch.tensor([3, 19]), torch.tensor([19, 12])
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: fs.unilm_attention(*a, dropout_p=0.25), backend="aot_eager",
                             fullgraph=True, dynamic=False)
    call, reference = with_dropout(0.25, "cpu", attention=compiled)
    got = run_and_grads(call, q, k, v, p, s, do)
    want = run_and_grads(reference, q, k, v, p, s, do)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.25, 0.5])
def test_torch_compile_dynamic_float_scale(scale, monkeypatch):
    # dynamic=True traces a float scale as a SymFloat (as BERT's `scaling` attribute is): no graph break.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    q, k, v = make_qkv(2, 2, 9, 32, torch.float32, "cpu", torch.Generator().manual_seed(12))
    p, s = torch.tensor([3, 4]), torch.tensor([9, 7])
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, scale: fs.unilm_attention(q, k, v, p, s, scale=scale),
                             backend="aot_eager", fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(q, k, v, scale), unilm_attention_reference(q, k, v, p, s, scale),
                               atol=1e-5, rtol=1e-5)


def test_torch_compile_clamps_lengths_past_int32(monkeypatch):
    # Tensor lengths are not read under torch.compile; clamped into [0, L] rather than wrapped by
    # the kernels' int32 copy: 2**32 + 3 is a prefix past the row (all source), not 3.
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    q, k, v = make_qkv(1, 2, 9, 32, torch.float32, "cpu", torch.Generator().manual_seed(13))
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, p, s: fs.unilm_attention(q, k, v, p, s), backend="aot_eager",
                             fullgraph=True)
    for prefix, clamped in ((2**32 + 3, 9), (-(2**32) + 3, 0), (2**32 - 1, 9)):
        got = compiled(q, k, v, torch.tensor([prefix]), torch.tensor([2**32 + 5]))
        torch.testing.assert_close(got, unilm_attention_reference(q, k, v, torch.tensor([clamped]), torch.tensor([9])), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lengths", [[3, 20], (3, -1), np.array([3, 20])], ids=["list", "tuple", "array"])
def test_torch_compile_checks_host_lengths(lengths, monkeypatch):
    # Lengths the host holds are range-checked under torch.compile too (tensors' values are not read).
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    q, k, v = make_qkv(2, 1, 19, 32, torch.float32, "cpu", torch.Generator().manual_seed(10))
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: fs.unilm_attention(q, k, v, lengths), backend="aot_eager")
    with pytest.raises(ValueError, match=r"prefix_lens must lie in \[0, q.shape\[2\]\] = \[0, 19\]"):
        compiled(q, k, v)


# ---- mask -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 5, 13])
def test_unilm_mask_matches_brute_force(L):
    gen = torch.Generator().manual_seed(L)
    B = 6
    seq = torch.randint(0, L + 1, (B,), generator=gen)
    prefix = torch.randint(0, L + 1, (B,), generator=gen)
    mask = fs.unilm_mask(prefix, seq, L)
    assert mask.shape == (B, L, L) and mask.dtype == torch.bool
    for b in range(B):
        s, n = int(prefix[b]), int(seq[b])
        for i in range(L):
            for j in range(L):
                assert bool(mask[b, i, j]) == (i < n and j < n and (j < s or s <= j <= i)), (b, i, j)


def test_prefix_past_the_row_makes_the_whole_row_source():
    # Both functions treat a prefix longer than its row as the whole row (as the kernels clamp it).
    prefix, seq = torch.tensor([7, 2]), torch.tensor([4, 3])
    assert torch.equal(fs.unilm_mask(prefix, seq, 8), fs.unilm_mask(torch.tensor([4, 2]), seq, 8))
    q, k, v = _qkv()
    torch.testing.assert_close(fs.unilm_attention(q, k, v, prefix, seq),
                               unilm_attention_reference(q, k, v, torch.tensor([4, 2]), seq), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, exc, match", [
    (([2], [9], 8), ValueError, r"seq_lens must lie in \[0, L\] = \[0, 8\], got 9"),
    (([-1], [5], 8), ValueError, r"prefix_lens must lie in \[0, L\] = \[0, 8\], got -1"),
    (([0], [-2], 8), ValueError, r"seq_lens must lie in \[0, L\] = \[0, 8\], got -2"),
    (([1.0], [2], 3), TypeError, "prefix_lens must hold integers"),
    (([1], [2.9], 3), TypeError, "seq_lens must hold integers"),
    ((None, None, 3), TypeError, r"prefix_lens must be a \[B\] tensor or sequence of integers, got None"),
    (("ab", None, 3), TypeError, "prefix_lens must be a"),
    (([[1]], None, 3), ValueError, r"prefix_lens must be 1-D \[B\]"),
    (([1, 2], [1], 3), ValueError, r"seq_lens must have shape \(2,\)"),
    (([1], [1], -1), ValueError, r"L must lie in \[0, 2\*\*31 - 1\], got -1"),
    (([1], [1], 2**31), ValueError, r"L must lie in \[0, 2\*\*31 - 1\], got 2147483648"),
    (([1], [1], 2**64), ValueError, r"L must lie in \[0, 2\*\*31 - 1\], got 18446744073709551616"),
    ((torch.tensor([1]).to_sparse(), None, 3), TypeError, "prefix_lens must be a dense"),
    (([1], [1], 2.0), TypeError, "L must be an int, got float"),
    (([1], [1], "3"), TypeError, "L must be an int, got str"),
    (([1], [1], True), TypeError, "L must be an int, got bool"),
    (([1], torch.tensor([1], device="meta"), 3), ValueError, "seq_lens is on the meta device"),
])
def test_unilm_mask_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        fs.unilm_mask(*args)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.int16, np.uint32])
def test_lengths_of_any_integer_dtype__dtype(dtype):
    prefix, seq = [2, 0], [5, 3]
    as_dtype = (lambda x: np.array(x, dtype=dtype)) if dtype is np.uint32 else (lambda x: torch.tensor(x, dtype=dtype))
    assert torch.equal(fs.unilm_mask(as_dtype(prefix), as_dtype(seq), 6), fs.unilm_mask(prefix, seq, 6))
    q, k, v = _qkv()
    torch.testing.assert_close(fs.unilm_attention(q, k, v, as_dtype(prefix), as_dtype(seq)),
                               unilm_attention_reference(q, k, v, torch.tensor(prefix), torch.tensor(seq)),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"seq_lens must lie in \[0, L\] = \[0, 6\], got 7"):
        fs.unilm_mask(as_dtype(prefix), as_dtype([7, 1]), 6)


def test_unilm_mask_memory_limit():
    before = fs.get_memory_limit()
    fs.set_memory_limit(1 << 20)
    try:
        with pytest.raises(MemoryError, match=r"unilm_mask of shape \(2, 1000000, 1000000\)"):
            fs.unilm_mask([1, 1], None, 10**6)
        assert fs.unilm_mask([1, 1], None, 512).shape == (2, 512, 512)
        # The PyTorch attention's [B, H, L, L] scores count too: 2 * 4 * 256**2 * 4 bytes, three times.
        q = torch.zeros(2, 4, 256, 32)
        with pytest.raises(MemoryError, match=r"the PyTorch UniLM attention on q of shape \(2, 4, 256, 32\)"):
            unilm_attention_reference(q, q, q, torch.tensor([3, 4]))
    finally:
        fs.set_memory_limit(before)


def test_unilm_mask_default_lengths():
    mask = fs.unilm_mask(torch.tensor([2]), None, 4)[0]
    assert mask.tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]


# ---- bad input ------------------------------------------------------------------------------------

def _qkv(shape=(2, 2, 8, 32), dtype=torch.float32, device="cpu"):
    return [torch.randn(shape, dtype=dtype, device=device) for _ in range(3)]


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda a: a.update(q=a["q"][0]), ValueError, "q must be 4-D"),
    (lambda a: a.update(k=a["k"][:, :, :4]), ValueError, "k must have q's shape"),
    (lambda a: a.update(v=a["v"].double()), TypeError, "v must be float16"),
    (lambda a: a.update(q=a["q"].long()), TypeError, "q must be float16"),
    (lambda a: a.update(k=a["k"].half()), TypeError, "k must have q's dtype"),
    (lambda a: a.update(q=[1, 2]), TypeError, "q must be a torch.Tensor"),
    (lambda a: a.update(v=a["v"].to_sparse()), TypeError, "v must be a dense"),
    (lambda a: a.update(seq_lens=torch.tensor([8, 8]).to_sparse()), TypeError, "seq_lens must be a dense"),
    (lambda a: a.update(prefix_lens=[1, 2, 3]), ValueError, r"prefix_lens must have shape \(2,\)"),
    (lambda a: a.update(prefix_lens=[1, 9]), ValueError, r"prefix_lens must lie in \[0, q.shape\[2\]\] = \[0, 8\]"),
    (lambda a: a.update(prefix_lens=[-1, 0]), ValueError, "prefix_lens must lie"),
    (lambda a: a.update(prefix_lens=[0.5, 1.0]), TypeError, "prefix_lens must hold integers"),
    (lambda a: a.update(prefix_lens=None), TypeError, r"prefix_lens must be a \[B\] tensor or sequence of integers"),
    (lambda a: a.update(prefix_lens=[[1], [2, 3]]), TypeError, "prefix_lens must be a"),
    (lambda a: a.update(seq_lens=[8, 10]), ValueError, r"seq_lens must lie in \[0, q.shape\[2\]\] = \[0, 8\]"),
    (lambda a: a.update(seq_lens=[]), ValueError, r"seq_lens must have shape \(2,\)"),
    (lambda a: a.update(seq_lens=torch.tensor([True, False])), TypeError, "seq_lens must hold integers"),
    (lambda a: a.update(scale="big"), TypeError, "scale must be a finite float"),
    (lambda a: a.update(scale=float("nan")), ValueError, "scale must be a finite float"),
    (lambda a: a.update(scale=np.float64(np.inf)), ValueError, "scale must be a finite float"),
    (lambda a: a.update(scale=np.True_), TypeError, "scale must be a finite float"),
    (lambda a: a.update(scale=10**400), ValueError, "scale must be a finite float"),
])
def test_bad_input(mutate, exc, match):
    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v, prefix_lens=[1, 2], seq_lens=None, scale=None)
    mutate(args)
    with pytest.raises(exc, match=match):
        fs.unilm_attention(**args)


def test_numpy_scale_is_a_number():
    q, k, v = _qkv()
    torch.testing.assert_close(fs.unilm_attention(q, k, v, [1, 2], scale=np.float32(0.125)),
                               fs.unilm_attention(q, k, v, [1, 2], scale=0.125), rtol=0, atol=0)


def test_bad_backend_variable(monkeypatch):
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="PYFASTSEQ_ATTENTION_BACKEND"):
        fs.unilm_attention(*_qkv(), [1, 2])


@pytest.mark.parametrize("lengths", [torch.zeros(0, dtype=torch.long), [], ()], ids=["tensor", "list", "tuple"])
def test_empty_batch(lengths):
    # As scaled_dot_product_attention: an empty batch gives an empty output (and gradient).
    q, k, v = (t.requires_grad_() for t in _qkv((0, 2, 8, 32)))
    out = fs.unilm_attention(q, k, v, lengths, lengths)
    assert out.shape == torch.nn.functional.scaled_dot_product_attention(q, k, v).shape == (0, 2, 8, 32)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_empty_head_dim(monkeypatch):
    monkeypatch.setenv("PYFASTSEQ_ATTENTION_BACKEND", "torch")
    q, k, v = _qkv((2, 2, 8, 0))
    assert fs.unilm_attention(q, k, v, [1, 2]).shape == torch.nn.functional.scaled_dot_product_attention(q, k, v).shape


# ---- GPU ------------------------------------------------------------------------------------------

CUDA_GRID = [
    (2, 4, 97, 64, "random", True),
    (3, 2, 129, 128, "random", True),
    (2, 2, 1025, 64, "random", True),
    (1, 3, 59, 32, "0", False),
    (2, 2, 513, 128, "L", True),
]


@pytest.fixture
def one_config(monkeypatch):
    """``use(D, dtype, index=None)``: launch every kernel with one configuration of its autotune list
    (``index``, or the first that fits shared memory at ``D`` and ``dtype``) instead of autotuning,
    which compiles and times every configuration for every new key. Returns False where ``index``
    does not fit."""
    from pyfastseq.attention import launch

    def use(D, dtype, index=None):
        elem = torch.empty(0, dtype=dtype).element_size()
        chosen = {}
        for which, (kernel, configs) in launch._KERNELS.items():
            fitting = [c for c in configs if launch._fits(c, D, elem)]
            config = fitting[0] if index is None else configs[index]
            if config not in fitting:
                return False
            chosen[which] = (kernel, {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages})
        monkeypatch.setattr(launch, "_kernel", chosen.__getitem__)
        return True

    return use


@needs_cuda_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("B,H,L,D,kind,padded", CUDA_GRID, ids=_ids(CUDA_GRID))
def test_cuda(B, H, L, D, kind, padded, dtype, one_config, backward_launch):
    one_config(D, dtype)
    check_against_reference(B, H, L, D, kind, padded, dtype, "cuda")


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("device,dtype", [
    pytest.param("cpu", torch.float32, marks=needs_cpu_kernel, id="cpu-float32"),
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda, id="cuda-float16"),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda, id="cuda-bfloat16"),
])
def test_every_config(device, dtype, D, index, one_config, backward_launch):
    # The autotuner may pick any configuration on some GPU: each must be right, at a length that
    # ends mid-block for every block size.
    if device == "cuda" and not HAS_TRITON:
        pytest.skip("needs triton")
    if not one_config(D, dtype, index):
        pytest.skip("configuration does not fit shared memory at this head dim")
    from triton.runtime.errors import OutOfResources

    try:
        check_against_reference(2, 2, 203, D, "random", True, dtype, device)
    except OutOfResources:  # the autotuner drops such a configuration too
        pytest.skip("configuration needs more shared memory or registers than this GPU has")


@needs_cuda_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_cuda_autotuned(dtype, backward_launch):
    check_against_reference(2, 3, 333, 64, "random", True, dtype, "cuda")


@needs_cuda_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_cuda_dropout(dtype, one_config, backward_launch):
    # The kernels drop what the reference drops for the seed drawn from the CUDA generator.
    one_config(64, dtype)
    check_against_reference(2, 4, 97, 64, "random", True, dtype, "cuda", dropout_p=0.2)


@needs_cuda_triton
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_dropout_autotuned(D):
    # Tuned apart from the undropped kernels: at d = 128 their widest tile does not fit with dropout.
    check_against_reference(2, 3, 333, D, "random", True, torch.bfloat16, "cuda", dropout_p=0.1)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_autotuned_launches_tune_once_per_key(monkeypatch):
    # The first launch for a (head dim, L bucket, dtype, dropout) key goes through the autotuner;
    # later ones for that key go to the kernel with the configuration it chose, and a new key tunes
    # again (dropout's variant needs more shared memory: it may not run the undropped choice).
    import triton
    from pyfastseq.attention import launch

    tuned = launch._Autotuned("fwd")
    calls = []
    configs = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
               triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
               triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
               triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3)]
    choices = iter(configs)

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                calls.append((self.name, grid, kwargs))
                if self.name == "autotuner":
                    self.best_config = next(choices)
            return run

    monkeypatch.setattr(tuned, "autotuner", Recorder("autotuner"))
    monkeypatch.setattr(tuned, "kernel", Recorder("kernel"))
    arg_count = launch._KERNELS["fwd"][0].arg_names.index("HEAD_DIM")  # the arguments before the constexprs

    def launch_with(L_bucket, dtype, drops=False):
        args = [torch.empty(0, dtype=dtype)] + [0] * (arg_count - 1)
        args[tuned.bucket_at] = L_bucket
        tuned["grid"](*args, HEAD_DIM=64, DROPOUT=drops, IEEE=False)

    for key in [(512, torch.bfloat16), (512, torch.bfloat16), (512, torch.float16), (1024, torch.bfloat16),
                (512, torch.bfloat16), (512, torch.float16), (512, torch.bfloat16, True), (512, torch.bfloat16, True)]:
        launch_with(*key)
    assert [name for name, _, _ in calls] == ["autotuner", "kernel", "autotuner", "autotuner", "kernel", "kernel",
                                              "autotuner", "kernel"]
    assert all(grid == "grid" for _, grid, _ in calls)
    for call, config, drops in [(1, configs[0], False), (4, configs[0], False), (5, configs[1], False),
                                (7, configs[3], True)]:
        assert calls[call][2] == {"HEAD_DIM": 64, "DROPOUT": drops, "IEEE": False, **config.all_kwargs()}


@needs_cpu_kernel
def test_interpreter_autotuned_kernel_tunes_then_launches_directly(monkeypatch):
    # The real autotuner, given one configuration (the interpreter cannot time several), picks the
    # forward's configuration on the first launch; the second goes to the kernel with it. Both
    # compute the attention.
    import triton
    from pyfastseq.attention import launch

    configs = [triton.Config(launch.INTERPRET_BLOCKS["fwd"])]
    monkeypatch.setitem(launch._KERNELS, "fwd", (launch._KERNELS["fwd"][0], configs))
    tuned = launch._Autotuned("fwd")
    B, H, L, D = 2, 3, 70, 32
    q, k, v = make_qkv(B, H, L, D, torch.float32, "cpu", torch.Generator().manual_seed(0))
    prefix, seq = torch.tensor([10, 70], dtype=torch.int32), torch.tensor([50, 70], dtype=torch.int32)
    want = unilm_attention_reference(q, k, v, prefix, seq)
    for launches in (1, 2):
        out, lse = torch.full_like(q, float("nan")), torch.empty(B, H, L)
        tuned[lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)](
            q, k, v, out, lse, prefix, seq, prefix, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            0, H, L, D**-0.5 * launch.LOG2E, 0, 1.0, launch._bucket(L), HEAD_DIM=D, DROPOUT=False, IEEE=True)
        assert list(tuned.chosen.values()) == [configs[0].all_kwargs()]
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


@needs_cuda_triton
def test_cuda_lengths_on_device():
    # Lengths that live on the GPU are used without a host round trip; new values every call.
    # New lengths must not compile new kernels (Triton's per-device kernel cache stays the same size).
    from pyfastseq.attention import launch

    def compiled_kernels():
        caches = getattr(launch._autotuned("fwd").kernel, "device_caches", {})
        return sum(len(entry[0]) for entry in caches.values())

    gen = torch.Generator().manual_seed(7)
    q, k, v = make_qkv(4, 2, 200, 64, torch.bfloat16, "cuda", gen)
    sizes = []
    for _ in range(3):
        prefix = torch.randint(0, 201, (4,), generator=gen).cuda()
        seq = torch.randint(100, 201, (4,), generator=gen).cuda()
        out = fs.unilm_attention(q, k, v, prefix, seq)
        ref = unilm_attention_reference(q.float(), k.float(), v.float(), prefix, seq)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
        sizes.append(compiled_kernels())
    assert sizes[0] == sizes[1] == sizes[2]


@needs_cuda_triton
@pytest.mark.parametrize("lengths", ["list", "cpu tensor", "default seq_lens"])
def test_cuda_lengths_from_the_host__queue_behind_the_gpu(lengths):
    # Lengths from the host (a list, a CPU tensor, or seq_lens left out) reach the GPU without the
    # host waiting for the work already queued there: a copy from pageable memory would first
    # synchronise the stream. An event recorded behind a long sleep must still be pending when the
    # call returns.
    gen = torch.Generator().manual_seed(11)
    q, k, v = make_qkv(2, 2, 96, 64, torch.float16, "cuda", gen)
    prefix, seq = [30, 60], [96, 80]
    args = {"list": (prefix, seq), "cpu tensor": (torch.tensor(prefix), torch.tensor(seq)),
            "default seq_lens": (prefix, None)}[lengths]
    fs.unilm_attention(q, k, v, *args)  # compiles and tunes the kernels first
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time
    queued = torch.cuda.Event()
    queued.record()
    out = fs.unilm_attention(q, k, v, *args)
    assert not queued.query(), "the call waited for the GPU's earlier work"
    torch.cuda.synchronize()
    seq_t = torch.tensor([96, 96] if lengths == "default seq_lens" else seq, device="cuda")
    ref = unilm_attention_reference(q.float(), k.float(), v.float(), torch.tensor(prefix, device="cuda"), seq_t)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_benchmark_module_imports(monkeypatch):
    # The GPU benchmark must at least import (and skip) on a CPU-only machine.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as benchmarks/conftest.py puts it for pytest
    spec = importlib.util.spec_from_file_location("bench_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.IMPLS[0] == "pyfastseq" and module.BATCH * module.HEADS >= 128


def test_import_does_not_load_triton():
    from conftest import run_python

    code = "import sys, pyfastseq; assert 'triton' not in sys.modules and 'transformers' not in sys.modules"
    out = run_python(code)
    assert out.returncode == 0, out.stderr
