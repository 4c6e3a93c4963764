"""UniLM attention on a GPU: pyfastseq's Triton kernels vs. FlexAttention and SDPA with a dense mask.

Every case draws random prefixes and 0-25% padding per row, checks each implementation against an
fp32 dense-mask reference, then times it. Peers:

* ``flex_cached``  - compiled ``flex_attention`` with the BlockMask built once, outside the timing
* ``flex_rebuilt`` - the same, with ``create_block_mask`` inside the timing (lengths change per batch)
* ``sdpa_mask``    - ``scaled_dot_product_attention`` with a dense boolean [B, 1, L, L] mask

pytest-benchmark times each call with a host sync after it: host time included, which at L = 512
is most of a call. ``extra_info`` also records ``device_s``, the GPU's own time per call (its kernels'
durations, by the CUDA profiler), the TFLOP/s on each time counting only unmasked (query, key) pairs
(forward 4·D flops per pair, backward 10·D), and the mask density. Regenerate with

    PYTHONPATH=$PWD pytest benchmarks/bench_attention.py --benchmark-json=bench_attention.json
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import pyfastseq as fs
from pyfastseq.attention import unilm_attention_reference
from timing import device_time, stat

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark (needs CUDA)")

BATCH, HEADS = 8, 16  # B*H = 128
LENGTHS = (512, 1024, 2048)
HEAD_DIMS = (64, 128)
IMPLS = ("pyfastseq", "flex_cached", "flex_rebuilt", "sdpa_mask")
STEP_LAYERS = 12


def random_lengths(B: int, L: int, gen: torch.Generator):
    """prefix_lens, seq_lens (int32, CUDA): 0-25% padding, prefix uniform in [1, seq_len]."""
    seq = L - torch.randint(0, L // 4 + 1, (B,), generator=gen)
    prefix = 1 + (torch.rand(B, generator=gen) * seq).long().clamp(max=L - 1)
    return prefix.int().cuda(), seq.int().cuda()


def make_inputs(L: int, D: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(BATCH, HEADS, L, D, generator=gen).to("cuda", torch.bfloat16) for _ in range(4))
    prefix, seq = random_lengths(BATCH, L, gen)
    return q, k, v, do, prefix, seq


def unmasked_pairs(prefix, seq, L: int) -> int:
    return int(fs.unilm_mask(prefix, seq, L).sum()) * HEADS


# ---- implementations: build(prefix, seq, L) -> metadata; run(q, k, v, metadata) -> out ----------

@functools.cache
def _flex():
    import torch._functorch.config as functorch_config
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # The backward benchmark replays one graph (retain_graph=True), which compiled autograd's donated
    # buffers forbid; they save memory, not time.
    functorch_config.donated_buffer = False
    return create_block_mask, torch.compile(flex_attention)


def _flex_block_mask(prefix, seq, L):
    create_block_mask, _ = _flex()

    def unilm(b, h, q_idx, kv_idx):
        n, s = seq[b], prefix[b]
        return (q_idx < n) & (kv_idx < n) & ((kv_idx < s) | (kv_idx <= q_idx))

    return create_block_mask(unilm, prefix.shape[0], None, L, L, device="cuda")


def _sdpa_mask(prefix, seq, L):
    mask = fs.unilm_mask(prefix, seq, L)  # [B, L, L]
    # Padded query rows see nothing; let them see everything so SDPA returns no NaN (outputs unused).
    return (mask | ~mask.any(-1, keepdim=True))[:, None]


def build(impl: str, prefix, seq, L: int):
    if impl == "pyfastseq":
        return prefix, seq
    if impl.startswith("flex"):
        return _flex_block_mask(prefix, seq, L)
    return _sdpa_mask(prefix, seq, L)


def run(impl: str, q, k, v, meta, dropout_p: float = 0.0):
    if impl == "pyfastseq":
        return fs.unilm_attention(q, k, v, *meta, dropout_p=dropout_p)
    if impl.startswith("flex"):  # FlexAttention has no dropout
        return _flex()[1](q, k, v, block_mask=meta)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=meta, dropout_p=dropout_p)


def attention(impl: str, q, k, v, prefix, seq, meta=None):
    """One call; ``flex_rebuilt`` builds its BlockMask inside, the others take ``meta`` prebuilt."""
    if impl == "flex_rebuilt" or meta is None:
        meta = build(impl, prefix, seq, q.shape[2])
    return run(impl, q, k, v, meta)


def check(impl, q, k, v, prefix, seq):
    """Forward and gradients on the real rows within bf16 tolerance of the fp32 reference."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention(impl, *leaves, prefix, seq)
    ref_leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = unilm_attention_reference(*ref_leaves, prefix, seq)
    real = fs.unilm_mask(prefix, seq, q.shape[2]).any(-1)[:, None, :, None]  # [B, 1, L, 1]
    do = torch.randn_like(out) * real
    out.backward(do)
    ref.backward(do.float())
    for got, want in [(out, ref)] + [(a.grad, b.grad) for a, b in zip(leaves, ref_leaves)]:
        err = ((got.float() - want) * real).abs().max().item()
        assert err < 0.1 * max(1.0, want.abs().max().item()), f"{impl}: error {err}"


def _sync(fn):
    def timed():
        fn()
        torch.cuda.synchronize()

    return timed


def _record(benchmark, impl, L, D, pairs, flops_per_pair, call):
    median, device_s = stat(benchmark, "median"), device_time(call)
    flops = flops_per_pair * D * pairs
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(), impl=impl, L=L, D=D, B=BATCH, H=HEADS, dtype="bfloat16",
        mask_density=pairs / (HEADS * BATCH * L * L), tflops=flops / median / 1e12, device_s=device_s,
        device_tflops=flops / device_s / 1e12,
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("L", LENGTHS)
def test_forward(benchmark, impl, L, D):
    q, k, v, _, prefix, seq = make_inputs(L, D)
    check(impl, q, k, v, prefix, seq)
    meta = build(impl, prefix, seq, L)
    with torch.no_grad():
        call = _sync(lambda: attention(impl, q, k, v, prefix, seq, meta))
        benchmark(call)
        _record(benchmark, impl, L, D, unmasked_pairs(prefix, seq, L), 4, call)


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "flex_rebuilt"])
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("L", LENGTHS)
def test_backward(benchmark, impl, L, D):
    q, k, v, do, prefix, seq = make_inputs(L, D)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = attention(impl, *leaves, prefix, seq)
    call = _sync(lambda: out.backward(do, retain_graph=True))
    benchmark(call)
    _record(benchmark, impl, L, D, unmasked_pairs(prefix, seq, L), 10, call)


STEP_D = 64


def training_step(impl: str, L: int, sync_each_layer: bool = False, dropout_p: float = 0.0):
    """(step, the batches' lengths): each call takes the next batch's lengths, builds the metadata or
    mask, and runs forward + backward through STEP_LAYERS attention layers, with attention dropout
    ``dropout_p``; with ``sync_each_layer`` the host waits for each forward layer
    (profile_attention.py's comparison)."""
    gen = torch.Generator().manual_seed(1)
    layers = [[t.requires_grad_() for t in make_inputs(L, STEP_D, seed)[:3]] for seed in range(STEP_LAYERS)]
    do = make_inputs(L, STEP_D)[3]
    batches = [random_lengths(BATCH, L, gen) for _ in range(8)]
    counter = iter(range(10**9))

    def step():
        prefix, seq = batches[next(counter) % len(batches)]
        meta = build(impl, prefix, seq, L)
        outs = []
        for q, k, v in layers:
            outs.append(run(impl, q, k, v, meta, dropout_p))
            if sync_each_layer:
                torch.cuda.synchronize()
        torch.autograd.backward(outs, [do] * STEP_LAYERS)

    return step, batches


@pytest.mark.parametrize("impl", ("pyfastseq", "flex_rebuilt", "sdpa_mask"))
@pytest.mark.parametrize("L", (512,))
def test_training_step(benchmark, impl, L):
    """Metadata/mask for new lengths + forward + backward through 12 attention layers."""
    step, batches = training_step(impl, L)
    benchmark(_sync(step))
    pairs = sum(unmasked_pairs(p, s, L) for p, s in batches) / len(batches)
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), impl=impl, L=L, D=STEP_D, layers=STEP_LAYERS,
                                step_tflops=14 * STEP_D * pairs * STEP_LAYERS / stat(benchmark, "median") / 1e12,
                                device_s=device_time(step, calls=5))


@pytest.mark.parametrize("impl", ("pyfastseq", "sdpa_mask"))
@pytest.mark.parametrize("L", (512,))
def test_training_step_dropout(benchmark, impl, L):
    """The training step with BERT's attention dropout (0.1), which FlexAttention cannot apply."""
    step, _ = training_step(impl, L, dropout_p=0.1)
    benchmark(_sync(step))
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), impl=impl, L=L, D=STEP_D, layers=STEP_LAYERS,
                                dropout_p=0.1, device_s=device_time(step, calls=5))
