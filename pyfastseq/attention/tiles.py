"""Tile helpers shared by the forward and backward kernels."""

import triton
import triton.language as tl


@triton.jit
def visible(q_idx, k_idx, s, n):
    """UniLM mask over broadcast query and key index tiles (prefix length s, row length n)."""
    return (q_idx < n) & (k_idx < n) & ((k_idx < s) | (k_idx <= q_idx))


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """tl.dot; fp32 inputs ask for full fp32 products (no TF32) so fp32 matches the reference."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def batch_head(H):
    """This program's (batch, head) (grid axis 1 is batch * H + head): the flat index, batch and
    head, as int64 for addressing."""
    pid_bh = tl.program_id(1)
    return pid_bh.to(tl.int64), (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)


@triton.jit
def head_lengths(PREFIX, SEQ, H, L):
    """:func:`batch_head`, and the row's prefix length s and length n, clamped to [0, L]."""
    pid_bh, b, h = batch_head(H)
    s = tl.minimum(tl.maximum(tl.load(PREFIX + b), 0), L)
    n = tl.minimum(tl.maximum(tl.load(SEQ + b), 0), L)
    return pid_bh, b, h, s, n


@triton.jit
def last_first_block(BLOCK_M: tl.constexpr):
    """The first query row of this program's block, the last block of the row first: later queries
    see more keys (causal targets), so the heaviest programs start first and the grid ends on light
    ones."""
    return (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M


@triton.jit
def load_rows(base, idx, stride_i, stride_d, valid, HEAD_DIM: tl.constexpr):
    """Rows ``idx`` of a [L, HEAD_DIM] slice at ``base`` as a [len(idx), HEAD_DIM] tile; zeros where
    not ``valid``."""
    offs_d = tl.arange(0, HEAD_DIM)
    return tl.load(base + idx[:, None] * stride_i + offs_d[None, :] * stride_d, mask=valid[:, None], other=0.0)


@triton.jit
def dropout_seed(SEED, DROPOUT: tl.constexpr):
    """The call's dropout seed, read once per program (int64 ``SEED[0]``); 0 without dropout, where
    ``SEED`` is a placeholder that must not be read."""
    if DROPOUT:
        return tl.load(SEED)
    else:
        return 0


@triton.jit
def dropout_keep(seed, stream_bh, rows, start_n, L, drop_threshold, BLOCK_N: tl.constexpr):
    """``[len(rows), BLOCK_N]`` bool: which entries (query ``rows``, keys from ``start_n``, a multiple
    of 8) of (batch, head) ``stream_bh`` of the call's whole batch dropout keeps. One Philox call per
    eight keys; the stream and its layout are :mod:`pyfastseq.attention.dropout`'s."""
    groups = start_n // 8 + tl.arange(0, BLOCK_N // 8)
    offsets = (stream_bh * L + rows[:, None]) * tl.cdiv(L, 8) + groups[None, :]  # int64, as stream_bh is
    w0, w1, w2, w3 = tl.randint4x(seed, offsets)
    # join appends its new axis last: these nest to [.., word // 2, word % 2, half], so that the
    # reshape puts key 8 * group + 2 * word + half where the stream has it.
    lows = tl.join(tl.join(w0 & 0xFFFF, w2 & 0xFFFF), tl.join(w1 & 0xFFFF, w3 & 0xFFFF))
    highs = tl.join(tl.join(w0 >> 16, w2 >> 16), tl.join(w1 >> 16, w3 >> 16))
    return tl.reshape(tl.join(lows, highs), [rows.shape[0], BLOCK_N]) >= drop_threshold.to(tl.uint32)
