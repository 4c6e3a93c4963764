"""Triton backward kernels of UniLM attention: dQ per query block, dK/dV per key block.

Both recompute the probabilities from the forward's log2-sum-exp2 (``LSE``) and take
``DELTA = rowsum(dO * O)`` (fp32) for each query row. Two ways to launch them:

* split (two launches): the dQ kernel computes DELTA from the rows it loads anyway and stores it,
  then the dK/dV kernel reads it. No work is repeated.
* fused (one launch, :func:`unilm_bwd_kernel`): each program computes the dQ of query block ``p`` and
  the dK/dV of key block ``p``. The dK/dV half recomputes DELTA for each query block it visits, from
  that block's O and dO rows. This costs more GPU work, but where a layer's kernels are shorter than
  the host's time per launch (small batches and short rows) it saves a launch per layer. Early key
  blocks and late query blocks are the heavy ones, so with equal blocks pairing block ``p`` with
  block ``p`` evens out the programs; with unequal ones the programs past the fewer blocks do one
  half only, and autotuning weighs that.

A key block of the target is seen only by queries at or after it, a prefix key block by every real
query; query blocks outside that range are never visited, and blocks the mask leaves whole skip the
mask arithmetic. Padded queries (``i >= n``) get zero dQ and add nothing to dK/dV.

With ``DROPOUT`` both regenerate the forward's dropped entries from its seed (``tiles.dropout_keep``):
dV takes the dropped, rescaled probabilities, and the gradient reaching the probabilities is dO V^T
dropped and rescaled the same way. ``DELTA`` is unchanged in form: rowsum(dO * O) with the dropped O
equals rowsum(P * dP).
"""

import triton
import triton.language as tl

from .tiles import dot as _dot, dropout_keep, dropout_seed, head_lengths as _head_lengths, last_first_block
from .tiles import load_rows as _load_rows, visible as _visible


@triton.jit
def _row_delta(o_base, do, rows, stride_om, stride_od, row_valid, HEAD_DIM: tl.constexpr):
    """DELTA of query ``rows``: rowsum(dO * O) in fp32 from their O and dO (``do``, [rows, D])
    tiles in their own dtype. Padded rows give 0, as dO loads zeros there."""
    o = _load_rows(o_base, rows, stride_om, stride_od, row_valid, HEAD_DIM)
    return tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)


@triton.jit
def _dkdv_block(dk, dv, k, v, start_n, start_m, q_base, do_base, o_base, lse_row, delta_row, s, n, L,
                stride_qm, stride_qd, stride_dom, stride_dod, stride_om, stride_od, qk_scale, seed, stream_bh,
                drop_threshold, keep_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                MASKED: tl.constexpr, DROPOUT: tl.constexpr, DELTA_FROM_O: tl.constexpr, IEEE: tl.constexpr):
    rows = start_m + tl.arange(0, BLOCK_M)
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = rows < n
    qt = tl.load(q_base + rows[None, :] * stride_qm + offs_d[:, None] * stride_qd,
                 mask=row_valid[None, :], other=0.0)  # [D, BLOCK_M]
    do = _load_rows(do_base, rows, stride_dom, stride_dod, row_valid, HEAD_DIM)  # [BLOCK_M, D]
    lse = tl.load(lse_row + rows, mask=row_valid, other=0.0)
    if DELTA_FROM_O:
        delta = _row_delta(o_base, do, rows, stride_om, stride_od, row_valid, HEAD_DIM)
    else:
        delta = tl.load(delta_row + rows, mask=row_valid, other=0.0)
    qkt = _dot(k, qt, IEEE) * qk_scale  # [BLOCK_N, BLOCK_M], log2 domain
    pt = tl.exp2(qkt - lse[None, :])
    if MASKED:
        pt = tl.where(_visible(rows[None, :], cols[:, None], s, n), pt, 0.0)
    if DROPOUT:
        keep = tl.trans(dropout_keep(seed, stream_bh, rows, start_n, L, drop_threshold, BLOCK_N))
        dv += _dot(tl.where(keep, pt * keep_scale, 0.0).to(do.dtype), do, IEEE)
    else:
        dv += _dot(pt.to(do.dtype), do, IEEE)
    dpt = _dot(v, tl.trans(do), IEEE)  # [BLOCK_N, BLOCK_M]: dO V^T, the gradient of the dropped probabilities
    if DROPOUT:
        dpt = tl.where(keep, dpt * keep_scale, 0.0)
    dst = pt * (dpt - delta[None, :])
    dk += _dot(dst.to(qt.dtype), tl.trans(qt), IEEE)
    return dk, dv


@triton.jit
def _dq_block(dq, q, do, lse, delta, rows, start_n, k_base, v_base, s, n, stride_kn, stride_kd, stride_vn, stride_vd,
              qk_scale, seed, stream_bh, L, drop_threshold, keep_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr):
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k = _load_rows(k_base, cols, stride_kn, stride_kd, cols < n, HEAD_DIM)  # [BLOCK_N, D]
    vt = tl.load(v_base + cols[None, :] * stride_vn + offs_d[:, None] * stride_vd,
                 mask=cols[None, :] < n, other=0.0)  # [D, BLOCK_N]
    qk = _dot(q, tl.trans(k), IEEE) * qk_scale
    p = tl.exp2(qk - lse[:, None])
    if MASKED:
        p = tl.where(_visible(rows[:, None], cols[None, :], s, n), p, 0.0)
    dp = _dot(do, vt, IEEE)
    if DROPOUT:
        dp = tl.where(dropout_keep(seed, stream_bh, rows, start_n, L, drop_threshold, BLOCK_N), dp * keep_scale, 0.0)
    ds = p * (dp - delta[:, None])
    dq += _dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit
def _dkdv_program(start_n, q_base, k_base, v_base, o_base, do_base, dk_base, dv_base, lse_row, delta_row, s, n, L,
                  stride_qm, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_om, stride_od,
                  stride_dom, stride_dod, stride_dkn, stride_dkd, stride_dvn, stride_dvd, sm_scale, qk_scale,
                  seed, stream_bh, drop_threshold, keep_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr, DELTA_FROM_O: tl.constexpr, IEEE: tl.constexpr):
    """dK and dV of keys ``start_n`` .. ``start_n + BLOCK_N`` of one (batch, head): loops over the
    query blocks that see them."""
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k = _load_rows(k_base, cols, stride_kn, stride_kd, cols < n, HEAD_DIM)
    v = _load_rows(v_base, cols, stride_vn, stride_vd, cols < n, HEAD_DIM)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # Prefix keys are seen by every query; a target key j only by queries i >= j. Query blocks from
    # `mid` on see every key of this block (when the block is all real keys) and skip the mask;
    # padded queries there load zeros for q and dO and so add nothing.
    lo = tl.where(start_n < s, 0, (start_n // BLOCK_M) * BLOCK_M)
    hi = tl.where(start_n < n, n, 0)
    mid = tl.where(start_n + BLOCK_N <= s, lo, tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M)
    mid = tl.where(start_n + BLOCK_N <= n, tl.minimum(mid, hi), hi)
    for start_m in range(lo, mid, BLOCK_M):
        dk, dv = _dkdv_block(dk, dv, k, v, start_n, start_m, q_base, do_base, o_base, lse_row, delta_row, s, n, L,
                             stride_qm, stride_qd, stride_dom, stride_dod, stride_om, stride_od, qk_scale, seed,
                             stream_bh, drop_threshold, keep_scale, HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M,
                             BLOCK_N=BLOCK_N, MASKED=True, DROPOUT=DROPOUT, DELTA_FROM_O=DELTA_FROM_O, IEEE=IEEE)
    for start_m in range(mid, hi, BLOCK_M):
        dk, dv = _dkdv_block(dk, dv, k, v, start_n, start_m, q_base, do_base, o_base, lse_row, delta_row, s, n, L,
                             stride_qm, stride_qd, stride_dom, stride_dod, stride_om, stride_od, qk_scale, seed,
                             stream_bh, drop_threshold, keep_scale, HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M,
                             BLOCK_N=BLOCK_N, MASKED=False, DROPOUT=DROPOUT, DELTA_FROM_O=DELTA_FROM_O, IEEE=IEEE)
    dk = dk * sm_scale

    in_range = cols < L
    tl.store(dk_base + cols[:, None] * stride_dkn + offs_d[None, :] * stride_dkd, dk.to(dk_base.dtype.element_ty),
             mask=in_range[:, None])
    tl.store(dv_base + cols[:, None] * stride_dvn + offs_d[None, :] * stride_dvd, dv.to(dv_base.dtype.element_ty),
             mask=in_range[:, None])


@triton.jit
def _dq_program(start_m, q_base, k_base, v_base, o_base, do_base, dq_base, lse_row, delta_row, s, n, L,
                stride_qm, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_om, stride_od,
                stride_dom, stride_dod, stride_dqm, stride_dqd, sm_scale, qk_scale, seed, stream_bh,
                drop_threshold, keep_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                DROPOUT: tl.constexpr, STORE_DELTA: tl.constexpr, IEEE: tl.constexpr):
    """dQ of queries ``start_m`` .. ``start_m + BLOCK_M`` of one (batch, head): loops over the key
    blocks they see. Computes their DELTA, and stores it with ``STORE_DELTA``."""
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = rows < n
    q = _load_rows(q_base, rows, stride_qm, stride_qd, row_valid, HEAD_DIM)
    do = _load_rows(do_base, rows, stride_dom, stride_dod, row_valid, HEAD_DIM)
    lse = tl.load(lse_row + rows, mask=row_valid, other=0.0)
    delta = _row_delta(o_base, do, rows, stride_om, stride_od, row_valid, HEAD_DIM)
    if STORE_DELTA:
        tl.store(delta_row + rows, delta, mask=rows < L)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # As in the forward: keys below `full_end` are seen by every real query of the block (padded
    # queries load zeros for dO and add nothing), the rest up to `hi` need the mask.
    full_end = tl.where(start_m < n, tl.minimum(n, tl.maximum(s, start_m + 1)), 0)
    full_end = (full_end // BLOCK_N) * BLOCK_N
    hi = tl.where(start_m < n, tl.minimum(n, tl.maximum(s, start_m + BLOCK_M)), 0)
    for start_n in range(0, full_end, BLOCK_N):
        dq = _dq_block(dq, q, do, lse, delta, rows, start_n, k_base, v_base, s, n, stride_kn, stride_kd,
                       stride_vn, stride_vd, qk_scale, seed, stream_bh, L, drop_threshold, keep_scale,
                       HEAD_DIM=HEAD_DIM, BLOCK_N=BLOCK_N, MASKED=False, DROPOUT=DROPOUT, IEEE=IEEE)
    for start_n in range(full_end, hi, BLOCK_N):
        dq = _dq_block(dq, q, do, lse, delta, rows, start_n, k_base, v_base, s, n, stride_kn, stride_kd,
                       stride_vn, stride_vd, qk_scale, seed, stream_bh, L, drop_threshold, keep_scale,
                       HEAD_DIM=HEAD_DIM, BLOCK_N=BLOCK_N, MASKED=True, DROPOUT=DROPOUT, IEEE=IEEE)
    dq = dq * sm_scale

    tl.store(dq_base + rows[:, None] * stride_dqm + offs_d[None, :] * stride_dqd, dq.to(dq_base.dtype.element_ty),
             mask=(rows < L)[:, None])


@triton.jit(do_not_specialize=["BH0", "drop_threshold"])
def unilm_bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA, PREFIX, SEQ, SEED,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    BH0, H, L, sm_scale, qk_scale, drop_threshold, keep_scale, L_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
):
    """The split backward's first launch. One program: ``BLOCK_M`` queries of one (batch, head), their
    dQ and their DELTA, which it stores for the dK/dV kernel."""
    pid_bh, b64, h64, s, n = _head_lengths(PREFIX, SEQ, H, L)
    seed, stream_bh = dropout_seed(SEED, DROPOUT), BH0 + pid_bh  # dropout's key and row of the stream
    _dq_program(last_first_block(BLOCK_M), Q + b64 * stride_qb + h64 * stride_qh,
                K + b64 * stride_kb + h64 * stride_kh, V + b64 * stride_vb + h64 * stride_vh,
                O + b64 * stride_ob + h64 * stride_oh, DO + b64 * stride_dob + h64 * stride_doh,
                DQ + b64 * stride_dqb + h64 * stride_dqh, LSE + pid_bh * L, DELTA + pid_bh * L, s, n, L,
                stride_qm, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_om, stride_od,
                stride_dom, stride_dod, stride_dqm, stride_dqd, sm_scale, qk_scale, seed, stream_bh,
                drop_threshold, keep_scale, HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, DROPOUT=DROPOUT,
                STORE_DELTA=True, IEEE=IEEE)


@triton.jit(do_not_specialize=["BH0", "drop_threshold"])
def unilm_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, PREFIX, SEQ, SEED,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    BH0, H, L, sm_scale, qk_scale, drop_threshold, keep_scale, L_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
):
    """The split backward's second launch. One program: ``BLOCK_N`` keys of one (batch, head), with
    the DELTA the dQ kernel stored."""
    pid_bh, b64, h64, s, n = _head_lengths(PREFIX, SEQ, H, L)
    seed, stream_bh = dropout_seed(SEED, DROPOUT), BH0 + pid_bh  # dropout's key and row of the stream
    # O is not read (DELTA is stored): Q and its strides stand in for it.
    _dkdv_program(tl.program_id(0) * BLOCK_N, Q + b64 * stride_qb + h64 * stride_qh,
                  K + b64 * stride_kb + h64 * stride_kh, V + b64 * stride_vb + h64 * stride_vh,
                  Q + b64 * stride_qb + h64 * stride_qh, DO + b64 * stride_dob + h64 * stride_doh,
                  DK + b64 * stride_dkb + h64 * stride_dkh, DV + b64 * stride_dvb + h64 * stride_dvh,
                  LSE + pid_bh * L, DELTA + pid_bh * L, s, n, L, stride_qm, stride_qd, stride_kn, stride_kd,
                  stride_vn, stride_vd, stride_qm, stride_qd, stride_dom, stride_dod, stride_dkn, stride_dkd,
                  stride_dvn, stride_dvd, sm_scale, qk_scale, seed, stream_bh, drop_threshold, keep_scale,
                  HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, DROPOUT=DROPOUT, DELTA_FROM_O=False,
                  IEEE=IEEE)


@triton.jit(do_not_specialize=["BH0", "drop_threshold"])
def unilm_bwd_kernel(
    Q, K, V, O, DO, DQ, DK, DV, LSE, PREFIX, SEQ, SEED,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    BH0, H, L, sm_scale, qk_scale, drop_threshold, keep_scale, L_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr,
    IEEE: tl.constexpr,
):
    """The fused backward, one launch. Program ``p`` of one (batch, head): the dQ of query block ``p``
    and the dK/dV of key block ``p``, where the row has them (the grid covers the more numerous)."""
    pid_bh, b64, h64, s, n = _head_lengths(PREFIX, SEQ, H, L)
    seed, stream_bh = dropout_seed(SEED, DROPOUT), BH0 + pid_bh  # dropout's key and row of the stream
    q_base = Q + b64 * stride_qb + h64 * stride_qh
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh
    o_base = O + b64 * stride_ob + h64 * stride_oh
    do_base = DO + b64 * stride_dob + h64 * stride_doh
    start_m = tl.program_id(0) * BLOCK_M
    if start_m < L:
        # No DELTA is stored: LSE's row stands in for its pointer.
        _dq_program(start_m, q_base, k_base, v_base, o_base, do_base, DQ + b64 * stride_dqb + h64 * stride_dqh,
                    LSE + pid_bh * L, LSE + pid_bh * L, s, n, L, stride_qm, stride_qd, stride_kn, stride_kd,
                    stride_vn, stride_vd, stride_om, stride_od, stride_dom, stride_dod, stride_dqm, stride_dqd,
                    sm_scale, qk_scale, seed, stream_bh, drop_threshold, keep_scale, HEAD_DIM=HEAD_DIM,
                    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, DROPOUT=DROPOUT, STORE_DELTA=False, IEEE=IEEE)
    start_n = tl.program_id(0) * BLOCK_N
    if start_n < L:
        _dkdv_program(start_n, q_base, k_base, v_base, o_base, do_base, DK + b64 * stride_dkb + h64 * stride_dkh,
                      DV + b64 * stride_dvb + h64 * stride_dvh, LSE + pid_bh * L, LSE + pid_bh * L, s, n, L,
                      stride_qm, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_om, stride_od,
                      stride_dom, stride_dod, stride_dkn, stride_dkd, stride_dvn, stride_dvd, sm_scale, qk_scale,
                      seed, stream_bh, drop_threshold, keep_scale, HEAD_DIM=HEAD_DIM, BLOCK_M=BLOCK_M,
                      BLOCK_N=BLOCK_N, DROPOUT=DROPOUT, DELTA_FROM_O=True, IEEE=IEEE)
