"""Triton forward kernel of UniLM attention (FlashAttention-2 style online softmax).

One program computes ``BLOCK_M`` query rows of one (batch, head). The mask comes from two int32
scalars per batch row (prefix length ``s``, length ``n``), so no mask tensor is read and new lengths
never recompile. Key blocks past ``min(n, max(s, last query + 1))`` are empty for every row of the
program and are never visited; blocks wholly inside the visible region skip the mask arithmetic.
Plain pointer arithmetic (no block pointers) keeps it portable across Triton 3.6 to 3.9 and the
interpreter.
"""

import triton
import triton.language as tl

from .tiles import dot, dropout_keep, dropout_seed, head_lengths as _head_lengths, last_first_block
from .tiles import load_rows as _load_rows, visible

@triton.jit
def _attend_block(acc, m_i, l_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d, s, n,
                  stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, seed, stream_bh, L, drop_threshold,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr):
    cols = start_n + offs_n
    kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                 mask=cols[None, :] < n, other=0.0)  # [D, BLOCK_N]
    v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=cols[:, None] < n, other=0.0)  # [BLOCK_N, D]
    qk = dot(q, kt, IEEE) * qk_scale  # log2 domain
    if MASKED:
        qk = tl.where(visible(offs_m[:, None], cols[None, :], s, n), qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    # A row that has seen no key yet (m_new = -inf) shifts by 0, so that its p and alpha are
    # exp2(-inf) = 0 rather than exp2(-inf + inf) = NaN; a finite floor instead of -inf would
    # zero rows whose every score lies below it.
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(qk - shift[:, None])
    alpha = tl.exp2(m_i - shift)
    l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts dropped entries too
    if DROPOUT:  # survivors' scale is applied once, to the output
        p = tl.where(dropout_keep(seed, stream_bh, offs_m, start_n, L, drop_threshold, BLOCK_N), p, 0.0)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=["BH0", "drop_threshold"])
def unilm_fwd_kernel(
    Q, K, V, O, LSE, PREFIX, SEQ, SEED,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    BH0, H, L, qk_scale, drop_threshold, keep_scale, L_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
):
    """O[b, h] = dropout(softmax(mask(Q K^T * scale))) V; LSE[b, h] = log2-sum-exp2 of the scaled
    scores (before dropout).

    ``qk_scale`` is ``scale * log2(e)``; ``L_BUCKET`` only keys the autotuner. LSE is [B, H, L] fp32.
    With ``DROPOUT``, entries under ``drop_threshold`` in the stream seeded by ``SEED[0]`` are dropped
    and survivors scaled by ``keep_scale`` (:mod:`pyfastseq.attention.dropout`); a launch over a slice
    of the batch starts at (batch, head) ``BH0`` of the whole batch's stream.
    """
    pid_bh, b64, h64, s, n = _head_lengths(PREFIX, SEQ, H, L)
    seed, stream_bh = dropout_seed(SEED, DROPOUT), BH0 + pid_bh  # dropout's key and row of the stream
    start_m = last_first_block(BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh
    row_valid = offs_m < n
    q = _load_rows(Q + b64 * stride_qb + h64 * stride_qh, offs_m, stride_qm, stride_qd, row_valid, HEAD_DIM)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Keys every row of this block sees: j < n and (j < s or j <= start_m).
    full_end = tl.minimum(n, tl.maximum(s, start_m + 1))
    full_end = tl.where(start_m < n, full_end, 0)
    full_end = (full_end // BLOCK_N) * BLOCK_N
    # Keys no row of this block sees start at min(n, max(s, last row + 1)).
    hi = tl.minimum(n, tl.maximum(s, start_m + BLOCK_M))
    hi = tl.where(start_m < n, hi, 0)
    for start_n in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d,
                                      s, n, stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                                      seed, stream_bh, L, drop_threshold, BLOCK_N=BLOCK_N, MASKED=False,
                                      DROPOUT=DROPOUT, IEEE=IEEE)
    for start_n in range(full_end, hi, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d,
                                      s, n, stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                                      seed, stream_bh, L, drop_threshold, BLOCK_N=BLOCK_N, MASKED=True,
                                      DROPOUT=DROPOUT, IEEE=IEEE)

    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    norm = l_safe / keep_scale if DROPOUT else l_safe
    out = tl.where(row_valid[:, None] & has_key[:, None], acc / norm[:, None], 0.0)
    in_range = offs_m < L
    o_base = O + b64 * stride_ob + h64 * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=in_range[:, None])
    lse = tl.where(row_valid & has_key, m_i + tl.log2(l_safe), 0.0)
    tl.store(LSE + pid_bh * L + offs_m, lse, mask=in_range)
