"""Triton kernels for one decode step over B rows, with the rounding steps of the transformers Llama.

Row b of every input belongs to cache slot b. Each kernel does what a few torch ops do in the torch
reference (the tests check them against it), in one launch: RMSNorm fused into the matrix product that
follows it; bias, SiLU gate, residual add, or RoPE plus the KV-cache store fused into its epilogue; a
split-sequence attention that reads only the cache positions each row uses (lengths come from a device
tensor, so one CUDA graph serves every length); and a per-row sampler whose noise is a function of the
row's (seed, step) alone.

Batch 1 runs matrix-vector kernels (CUDA cores, every weight read once). Two rows or more run one
kernel that reads each weight tile once for every row: the rows are padded to ``ROWS`` and multiplied on
the tensor cores. Its block shape depends on the weight shape only, never on B, so a row's result is the
same in every batch of 2..ROWS rows (and in larger batches, which repeat the kernel per ROWS rows).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .torch_kernels import TorchDecodeKernels

# Batch 1: (BLOCK_N, BLOCK_K, num_warps, unroll) per weight shape (rows, columns): the fastest of
# bench/decode.py --sweep on an H200 (q/k/v timed as the fused RoPE kernel). unroll=1 unrolls the
# K loop, so every load of a program is issued up front. Other shapes use DEFAULT_GEMV_CONFIG.
DEFAULT_GEMV_CONFIG = (4, 1024, 4, 0)
GEMV_CONFIGS: dict[tuple[int, int], tuple[int, int, int, int]] = {
    # InternLM-7B: q/k/v, o, gate/up, down, lm_head
    (12288, 4096): (1, 2048, 2, 1),
    (4096, 4096): (4, 2048, 4, 1),
    (22016, 4096): (2, 2048, 4, 1),
    (4096, 11008): (4, 2048, 8, 1),
    (103168, 4096): (2, 2048, 4, 1),
    # InternLM-20B
    (15360, 5120): (4, 2048, 4, 1),
    (5120, 5120): (4, 1024, 4, 0),
    (27648, 5120): (2, 1024, 2, 1),
    (5120, 13824): (4, 1024, 4, 1),
    (103168, 5120): (16, 512, 4, 0),
    # InternLM2/2.5-7B (q/k/v 32+2*8 heads), InternLM2-20B (48+2*8), InternLM3-8B (32+2*2): bench/step.py --sweep
    (6144, 4096): (4, 2048, 4, 1),
    (28672, 4096): (2, 2048, 4, 1),
    (4096, 14336): (4, 1024, 4, 0),
    (92544, 4096): (4, 2048, 4, 1),
    (8192, 6144): (4, 2048, 4, 1),
    (6144, 6144): (4, 2048, 4, 1),
    (32768, 6144): (4, 1024, 4, 0),
    (6144, 16384): (2, 2048, 4, 1),
    (92544, 6144): (4, 2048, 4, 1),
    (4608, 4096): (2, 2048, 4, 1),
    (20480, 4096): (2, 2048, 4, 1),
    (4096, 10240): (4, 1024, 4, 0),
    (128512, 4096): (4, 2048, 4, 1),
}
# Two rows or more: (BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K]) per weight shape, one entry for
# every batch size (so a row's result does not depend on B). BLOCK_N >= 16: the tensor cores' smallest
# tile. SPLIT_K (default 1) sums K in that many programs and adds them up in a second kernel, which keeps
# the GPU full for weights with few rows; the q/k/v + RoPE kernel never splits.
ROWS = 16
GEMV_FOR_ONE_ROW = True
DEFAULT_ROWS_CONFIG = (32, 256, 4, 3)
# The best worst case over 4 and 16 rows of bench/step.py --sweep on an H200 (results/2026-11-30-step2-sweep.json;
# the 7-8B shapes again with split K in results/2026-11-30-r3-step-sweep.json); the order follows the batch-1
# table: InternLM-7B, InternLM-20B, InternLM2/2.5-7B, InternLM2-20B, InternLM3-8B.
ROWS_CONFIGS: dict[tuple[int, int], tuple[int, ...]] = {
    (12288, 4096): (64, 128, 4, 4),
    (4096, 4096): (32, 256, 4, 3, 2),
    (22016, 4096): (32, 512, 4, 3),
    (4096, 11008): (32, 256, 4, 3, 2),
    (103168, 4096): (64, 128, 4, 4),
    (15360, 5120): (128, 256, 8, 3),
    (5120, 5120): (64, 256, 4, 3),
    (27648, 5120): (128, 128, 4, 3),
    (5120, 13824): (64, 256, 4, 3),
    (103168, 5120): (64, 128, 4, 4),
    (6144, 4096): (64, 256, 4, 3),
    (28672, 4096): (128, 128, 4, 3),
    (4096, 14336): (32, 256, 4, 3, 2),
    (92544, 4096): (128, 128, 4, 3),
    (8192, 6144): (64, 256, 4, 3),
    (6144, 6144): (64, 256, 4, 3),
    (32768, 6144): (32, 256, 4, 3),
    (6144, 16384): (32, 512, 4, 3),
    (92544, 6144): (128, 128, 4, 3),
    (4608, 4096): (64, 256, 4, 3),
    (20480, 4096): (32, 512, 4, 3),
    (4096, 10240): (32, 256, 4, 3, 2),
    (128512, 4096): (128, 128, 4, 3),
}
ATTENTION_CHUNK = 64  # cache positions per step of an attention program
ATTENTION_SPLITS = 16  # attention programs per row and head (the reduction combines as many)
SAMPLER_BLOCK = 16384  # a greedy pick walks the vocabulary in chunks this large
# A draw's passes over the sorted scores read the first SAMPLER_HEAD (top-k and top-p usually keep fewer), then
# go on in chunks of SAMPLER_TAIL only as far as they must (larger ones spill registers at 16 warps).
SAMPLER_HEAD, SAMPLER_TAIL = 2048, 4096


@triton.jit
def _gemv_block(x_ptr, w_ptr, norm_ptr, rows, row_ok, cols, acc, acc_up, rstd, up_offset, k_dim: tl.constexpr,
                HAS_NORM: tl.constexpr, GATED: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
    """Accumulate one BLOCK_K slice of the rows' dot products with x (normalized first when HAS_NORM)."""
    dtype = x_ptr.dtype.element_ty
    w_offsets = rows[:, None] * k_dim + cols[None, :]
    w_mask = row_ok[:, None] & (cols < k_dim)[None, :]
    if EVEN_K:
        xs = tl.load(x_ptr + cols)
    else:
        xs = tl.load(x_ptr + cols, mask=cols < k_dim, other=0.0)
    if HAS_NORM:
        norm_w = tl.load(norm_ptr + cols, mask=cols < k_dim, other=0.0)
        xs = (norm_w.to(tl.float32) * (xs.to(tl.float32) * rstd).to(dtype).to(tl.float32)).to(dtype)
    xf = xs.to(tl.float32)[None, :]
    if EVEN_K and EVEN_N:
        w = tl.load(w_ptr + w_offsets)
    else:
        w = tl.load(w_ptr + w_offsets, mask=w_mask, other=0.0)
    acc += w.to(tl.float32) * xf
    if GATED:
        if EVEN_K and EVEN_N:
            w_up = tl.load(w_ptr + up_offset * k_dim + w_offsets)
        else:
            w_up = tl.load(w_ptr + up_offset * k_dim + w_offsets, mask=w_mask, other=0.0)
        acc_up += w_up.to(tl.float32) * xf
    return acc, acc_up


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, norm_ptr, res_ptr, out_ptr, n_out, eps, up_offset, k_dim: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                 GATED: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, UNROLL: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    dtype = out_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_out
    offsets = tl.arange(0, BLOCK_K)
    rstd = 1.0
    if HAS_NORM:
        # The row is a few KiB and sits in L2: every program recomputes its RMS instead of a separate launch.
        squares = tl.zeros([BLOCK_K], dtype=tl.float32)
        for start in range(0, k_dim, BLOCK_K):
            cols = start + offsets
            xs = tl.load(x_ptr + cols, mask=cols < k_dim, other=0.0).to(tl.float32)
            squares += xs * xs
        rstd = tl.rsqrt(tl.sum(squares, axis=0) / k_dim + eps)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    if UNROLL:  # every load of the program issued up front
        for start in tl.static_range(0, k_dim, BLOCK_K):
            acc, acc_up = _gemv_block(x_ptr, w_ptr, norm_ptr, rows, row_ok, start + offsets, acc, acc_up, rstd,
                                      up_offset, k_dim, HAS_NORM, GATED, EVEN_K, EVEN_N)
    else:
        for start in range(0, k_dim, BLOCK_K):
            acc, acc_up = _gemv_block(x_ptr, w_ptr, norm_ptr, rows, row_ok, start + offsets, acc, acc_up, rstd,
                                      up_offset, k_dim, HAS_NORM, GATED, EVEN_K, EVEN_N)
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    y = y.to(dtype)
    if GATED:
        up = tl.sum(acc_up, axis=1)
        if HAS_BIAS:
            up += tl.load(bias_ptr + up_offset + rows, mask=row_ok, other=0.0).to(tl.float32)
        gate = y.to(tl.float32)
        activated = (gate / (1.0 + tl.exp(-gate))).to(dtype)
        y = (activated.to(tl.float32) * up.to(dtype).to(tl.float32)).to(dtype)
    if HAS_RESIDUAL:
        residual = tl.load(res_ptr + rows, mask=row_ok, other=0.0)
        y = (residual.to(tl.float32) + y.to(tl.float32)).to(dtype)
    tl.store(out_ptr + rows, y, mask=row_ok)


@triton.jit
def _rms_norm_rows_kernel(x_ptr, norm_ptr, out_ptr, eps, k_dim: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[row] = RMSNorm(x[row]), rounded as LlamaRMSNorm rounds: the batched kernels read it once."""
    dtype = out_ptr.dtype.element_ty
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_K)
    squares = tl.zeros([BLOCK_K], dtype=tl.float32)
    for start in range(0, k_dim, BLOCK_K):
        cols = start + offsets
        xs = tl.load(x_ptr + row * k_dim + cols, mask=cols < k_dim, other=0.0).to(tl.float32)
        squares += xs * xs
    rstd = tl.rsqrt(tl.sum(squares, axis=0) / k_dim + eps)
    for start in range(0, k_dim, BLOCK_K):
        cols = start + offsets
        xs = tl.load(x_ptr + row * k_dim + cols, mask=cols < k_dim, other=0.0).to(tl.float32)
        norm_w = tl.load(norm_ptr + cols, mask=cols < k_dim, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * k_dim + cols, (norm_w * (xs * rstd).to(dtype).to(tl.float32)).to(dtype),
                 mask=cols < k_dim)


@triton.jit
def _rows_block(x_ptr, w_ptr, rows, row_ok, batch, batch_ok, cols, acc, acc_up, up_offset, k_dim: tl.constexpr,
                GATED: tl.constexpr):
    """Accumulate one BLOCK_K slice of W[rows] @ x^T ([BLOCK_N, ROWS]) on the tensor cores: the weight
    rows are the matrix unit's long side (float32 in full precision, not TF32)."""
    dtype = x_ptr.dtype.element_ty
    PRECISION: tl.constexpr = "ieee" if dtype == tl.float32 else "tf32"
    col_ok = cols < k_dim
    xs = tl.load(x_ptr + batch[:, None] * k_dim + cols[None, :], mask=batch_ok[:, None] & col_ok[None, :], other=0.0)
    xt = tl.trans(xs)
    w_offsets = rows[:, None] * k_dim + cols[None, :]
    w_mask = row_ok[:, None] & col_ok[None, :]
    w = tl.load(w_ptr + w_offsets, mask=w_mask, other=0.0)
    acc = tl.dot(w, xt, acc, input_precision=PRECISION)
    if GATED:
        w_up = tl.load(w_ptr + up_offset * k_dim + w_offsets, mask=w_mask, other=0.0)
        acc_up = tl.dot(w_up, xt, acc_up, input_precision=PRECISION)
    return acc, acc_up


@triton.jit
def _rows_epilogue(acc, acc_up, rows, row_ok, batch, batch_ok, bias_ptr, res_ptr, out_ptr, n_out, up_offset,
                   HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GATED: tl.constexpr):
    """out[batch, rows] = bias, SiLU gate and residual applied to the float32 sums [ROWS, BLOCK_N]."""
    dtype = out_ptr.dtype.element_ty
    y = acc
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    y = y.to(dtype)
    if GATED:
        up = acc_up
        if HAS_BIAS:
            up += tl.load(bias_ptr + up_offset + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
        gate = y.to(tl.float32)
        activated = (gate / (1.0 + tl.exp(-gate))).to(dtype)
        y = (activated.to(tl.float32) * up.to(dtype).to(tl.float32)).to(dtype)
    offsets = batch[:, None] * n_out + rows[None, :]
    mask = batch_ok[:, None] & row_ok[None, :]
    if HAS_RESIDUAL:
        residual = tl.load(res_ptr + offsets, mask=mask, other=0.0)
        y = (residual.to(tl.float32) + y.to(tl.float32)).to(dtype)
    tl.store(out_ptr + offsets, y, mask=mask)


@triton.jit
def _rows_kernel(x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, part_ptr, n_batch, n_out, up_offset,
                 k_dim: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GATED: tl.constexpr,
                 ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """out [B, n_out] = epilogue(x @ W^T): ROWS rows of x against BLOCK_N rows of W per program. With
    SPLIT_K > 1 each program sums one of SPLIT_K column ranges into ``part`` [SPLIT_K, (2,) B, n_out]
    instead, and ``_rows_split_epilogue_kernel`` adds them up in a fixed order and applies the epilogue."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_out
    batch = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    batch_ok = batch < n_batch
    split = tl.program_id(2)
    K_SPLIT: tl.constexpr = (k_dim + SPLIT_K * BLOCK_K - 1) // (SPLIT_K * BLOCK_K) * BLOCK_K
    acc = tl.zeros([BLOCK_N, ROWS], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N, ROWS], dtype=tl.float32)
    for start in range(0, K_SPLIT, BLOCK_K):
        acc, acc_up = _rows_block(x_ptr, w_ptr, rows, row_ok, batch, batch_ok,
                                  split * K_SPLIT + start + tl.arange(0, BLOCK_K), acc, acc_up, up_offset, k_dim,
                                  GATED)
    if SPLIT_K == 1:
        _rows_epilogue(tl.trans(acc), tl.trans(acc_up), rows, row_ok, batch, batch_ok, bias_ptr, res_ptr, out_ptr,
                       n_out, up_offset, HAS_BIAS, HAS_RESIDUAL, GATED)
    else:
        parts = 2 if GATED else 1
        offsets = (split * parts * n_batch + batch[None, :]) * n_out + rows[:, None]
        mask = row_ok[:, None] & batch_ok[None, :]
        tl.store(part_ptr + offsets, acc, mask=mask)
        if GATED:
            tl.store(part_ptr + offsets + n_batch * n_out, acc_up, mask=mask)


@triton.jit
def _rows_split_epilogue_kernel(part_ptr, bias_ptr, res_ptr, out_ptr, n_batch, n_out, up_offset,
                                HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GATED: tl.constexpr,
                                SPLIT_K: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """The SPLIT_K partial sums of ``_rows_kernel`` added in order, then its epilogue."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_out
    batch = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    batch_ok = batch < n_batch
    parts = 2 if GATED else 1
    offsets = batch[:, None] * n_out + rows[None, :]
    mask = batch_ok[:, None] & row_ok[None, :]
    acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    for split in range(SPLIT_K):
        acc += tl.load(part_ptr + split * parts * n_batch * n_out + offsets, mask=mask, other=0.0)
        if GATED:
            acc_up += tl.load(part_ptr + (split * parts + 1) * n_batch * n_out + offsets, mask=mask, other=0.0)
    _rows_epilogue(acc, acc_up, rows, row_ok, batch, batch_ok, bias_ptr, res_ptr, out_ptr, n_out, up_offset,
                   HAS_BIAS, HAS_RESIDUAL, GATED)


@triton.jit
def _rope_store(low, high, dims, position, head, target_q, k_base, v_base, cos_ptr, sin_ptr, mask,
                HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """RoPE on a q or k head (dimensions j and j + HEAD_DIM/2 in low/high), then store it: q to target_q,
    k and v into the cache at ``position`` (pointers to position 0 of the row's slot and head)."""
    dtype = target_q.dtype.element_ty
    HALF: tl.constexpr = HEAD_DIM // 2
    if head < HEADS + KV_HEADS:
        # x * cos + rotate_half(x) * sin, rounding after each op as the float16 torch code does
        cos_low = tl.load(cos_ptr + position * HEAD_DIM + dims, mask=mask, other=0.0).to(tl.float32)
        cos_high = tl.load(cos_ptr + position * HEAD_DIM + HALF + dims, mask=mask, other=0.0).to(tl.float32)
        sin_low = tl.load(sin_ptr + position * HEAD_DIM + dims, mask=mask, other=0.0).to(tl.float32)
        sin_high = tl.load(sin_ptr + position * HEAD_DIM + HALF + dims, mask=mask, other=0.0).to(tl.float32)
        a = low.to(tl.float32)
        b = high.to(tl.float32)
        out_low = ((a * cos_low).to(dtype).to(tl.float32) + (-b * sin_low).to(dtype).to(tl.float32)).to(dtype)
        out_high = ((b * cos_high).to(dtype).to(tl.float32) + (a * sin_high).to(dtype).to(tl.float32)).to(dtype)
        if head < HEADS:
            target = target_q
        else:
            target = k_base + position * HEAD_DIM
    else:
        out_low = low
        out_high = high
        target = v_base + position * HEAD_DIM
    tl.store(target + dims, out_low, mask=mask)
    tl.store(target + HALF + dims, out_high, mask=mask)


@triton.jit
def _qkv_rope_kernel(x_ptr, w_ptr, bias_ptr, norm_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                     eps, cache_head_stride, k_dim: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                     HEAD_DIM: tl.constexpr, PAIRS: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                     UNROLL: tl.constexpr, BLOCK_K: tl.constexpr):
    """Batch 1: q/k/v = RMSNorm(x) @ W^T (+ bias) with RoPE on q and k in the epilogue; q goes to q_ptr, k
    and v into slot 0 of the cache at the row's position. A program owns PAIRS dimension pairs
    (j, j + HEAD_DIM/2) of one head, the two halves that rotate_half mixes."""
    HALF: tl.constexpr = HEAD_DIM // 2
    program = tl.program_id(0)
    head = program // (HALF // PAIRS)
    first = (program % (HALF // PAIRS)) * PAIRS
    index = tl.arange(0, 2 * PAIRS)
    rows = head * HEAD_DIM + first + index // 2 + (index % 2) * HALF  # interleaved: j, j + HALF, j + 1, ...
    row_ok = rows >= 0
    offsets = tl.arange(0, BLOCK_K)
    squares = tl.zeros([BLOCK_K], dtype=tl.float32)
    for start in range(0, k_dim, BLOCK_K):
        cols = start + offsets
        xs = tl.load(x_ptr + cols, mask=cols < k_dim, other=0.0).to(tl.float32)
        squares += xs * xs
    rstd = tl.rsqrt(tl.sum(squares, axis=0) / k_dim + eps)
    acc = tl.zeros([2 * PAIRS, BLOCK_K], dtype=tl.float32)
    if UNROLL:
        for start in tl.static_range(0, k_dim, BLOCK_K):
            acc, _ = _gemv_block(x_ptr, w_ptr, norm_ptr, rows, row_ok, start + offsets, acc, acc, rstd, 0,
                                 k_dim, True, False, EVEN_K, True)
    else:
        for start in range(0, k_dim, BLOCK_K):
            acc, _ = _gemv_block(x_ptr, w_ptr, norm_ptr, rows, row_ok, start + offsets, acc, acc, rstd, 0,
                                 k_dim, True, False, EVEN_K, True)
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows).to(tl.float32)
    low, high = tl.split(tl.reshape(y.to(q_ptr.dtype.element_ty), [PAIRS, 2]))  # dimensions j and j + HALF
    dims = first + tl.arange(0, PAIRS)
    position = tl.load(pos_ptr)
    kv_head = tl.where(head < HEADS + KV_HEADS, head - HEADS, head - HEADS - KV_HEADS)
    _rope_store(low, high, dims, position, head, q_ptr + head * HEAD_DIM, k_cache_ptr + kv_head * cache_head_stride,
                v_cache_ptr + kv_head * cache_head_stride, cos_ptr, sin_ptr, dims >= 0, HEADS, KV_HEADS, HEAD_DIM)


@triton.jit
def _qkv_rope_rows_kernel(x_ptr, w_ptr, bias_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                          n_batch, cache_slot_stride, cache_head_stride, k_dim: tl.constexpr, HEADS: tl.constexpr,
                          KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, PAIRS: tl.constexpr, HAS_BIAS: tl.constexpr,
                          ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Two rows or more: the q/k/v + RoPE + cache store of ``_qkv_rope_kernel`` for ROWS rows (normalized
    already) per program, on the tensor cores; row b writes slot b of the cache at its own position."""
    dtype = q_ptr.dtype.element_ty
    HALF: tl.constexpr = HEAD_DIM // 2
    program = tl.program_id(0)
    head = program // (HALF // PAIRS)
    first = (program % (HALF // PAIRS)) * PAIRS
    index = tl.arange(0, 2 * PAIRS)
    rows = head * HEAD_DIM + first + index // 2 + (index % 2) * HALF  # interleaved: j, j + HALF, j + 1, ...
    row_ok = rows >= 0
    batch = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    batch_ok = batch < n_batch
    acc = tl.zeros([2 * PAIRS, ROWS], dtype=tl.float32)
    for start in range(0, k_dim, BLOCK_K):
        acc, _ = _rows_block(x_ptr, w_ptr, rows, row_ok, batch, batch_ok, start + tl.arange(0, BLOCK_K), acc, acc,
                             0, k_dim, False)
    y = tl.trans(acc)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows).to(tl.float32)[None, :]
    low, high = tl.split(tl.reshape(y.to(dtype), [ROWS, PAIRS, 2]))  # [ROWS, PAIRS]: dimensions j and j + HALF
    dims = (first + tl.arange(0, PAIRS))[None, :]
    position = tl.load(pos_ptr + batch, mask=batch_ok, other=0)[:, None]
    kv_head = tl.where(head < HEADS + KV_HEADS, head - HEADS, head - HEADS - KV_HEADS)
    cache_offset = batch[:, None].to(tl.int64) * cache_slot_stride + kv_head * cache_head_stride
    _rope_store(low, high, dims, position, head, q_ptr + batch[:, None] * (HEADS * HEAD_DIM) + head * HEAD_DIM,
                k_cache_ptr + cache_offset, v_cache_ptr + cache_offset, cos_ptr, sin_ptr,
                batch_ok[:, None] & (dims >= 0), HEADS, KV_HEADS, HEAD_DIM)


@triton.jit
def _attended_span(pos_ptr, row, capacity):
    """(first position, length) a row attends: 0..position, or only the scratch position of an idle row."""
    position = tl.load(pos_ptr + row)
    return position * (position >= capacity - 1).to(position.dtype), position + 1


@triton.jit
def _attention_partial_mha_kernel(q_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, part_out_ptr, part_lse_ptr,
                                  scale, capacity, cache_slot_stride, cache_head_stride, HEADS: tl.constexpr,
                                  CHUNK: tl.constexpr, SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr,
                                  BLOCK_T: tl.constexpr):
    """One row's head over the CHUNKs split, split + SPLITS, ... of its positions (multi-head attention)."""
    head = tl.program_id(0)
    split = tl.program_id(1)
    row = tl.program_id(2)
    first, length = _attended_span(pos_ptr, row, capacity)
    chunk0 = first // CHUNK + split
    if chunk0 * CHUNK < length:  # a split with no chunk does nothing; the reduction skips it
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + (row * HEADS + head) * HEAD_DIM + dims).to(tl.float32) * scale
        best = tl.full([1], float("-inf"), dtype=tl.float32)
        total = tl.zeros([1], dtype=tl.float32)
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        steps = tl.arange(0, BLOCK_T)
        k_base = k_cache_ptr + row.to(tl.int64) * cache_slot_stride + head * cache_head_stride
        v_base = v_cache_ptr + row.to(tl.int64) * cache_slot_stride + head * cache_head_stride
        start = tl.maximum(chunk0 * CHUNK, first - first % BLOCK_T)  # a first block holds a position in use
        while start < length:
            for block in range(0, CHUNK, BLOCK_T):
                t = start + block + steps
                t_ok = (t < length) & (t >= first)
                keys = tl.load(k_base + t[:, None] * HEAD_DIM + dims[None, :], mask=t_ok[:, None], other=0.0)
                scores = tl.where(t_ok, tl.sum(keys.to(tl.float32) * q[None, :], axis=1), float("-inf"))
                new_best = tl.maximum(best, tl.max(scores, axis=0))
                rescale = tl.exp(best - new_best)
                weights = tl.exp(scores - new_best)
                values = tl.load(v_base + t[:, None] * HEAD_DIM + dims[None, :], mask=t_ok[:, None], other=0.0)
                acc = acc * rescale + tl.sum(values.to(tl.float32) * weights[:, None], axis=0)
                total = total * rescale + tl.sum(weights, axis=0)
                best = new_best
            start += SPLITS * CHUNK
        part = (row * HEADS + head) * SPLITS + split
        tl.store(part_out_ptr + part * HEAD_DIM + dims, acc / total)
        tl.store(part_lse_ptr + part + tl.arange(0, 1), best + tl.log(total))


@triton.jit
def _attention_partial_kernel(q_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, part_out_ptr, part_lse_ptr,
                              scale, capacity, cache_slot_stride, cache_head_stride, HEADS: tl.constexpr,
                              CHUNK: tl.constexpr, SPLITS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                              HEAD_DIM: tl.constexpr):
    """The GROUP query heads of one KV head of one row over the CHUNKs split, split + SPLITS, ... of its
    positions (grouped-query attention): both products on the tensor cores, the heads padded to GROUP_PAD
    rows, the softmax in float32 with its weights rounded to the cache dtype for the second product."""
    dtype = k_cache_ptr.dtype.element_ty
    PRECISION: tl.constexpr = "ieee" if dtype == tl.float32 else "tf32"
    kv_head = tl.program_id(0)
    split = tl.program_id(1)
    row = tl.program_id(2)
    first, length = _attended_span(pos_ptr, row, capacity)
    start = (first // CHUNK + split) * CHUNK
    if start < length:  # a split with no chunk does nothing; the reduction skips it
        groups = tl.arange(0, GROUP_PAD)
        dims = tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + groups
        group_ok = groups < GROUP
        q = tl.load(q_ptr + (row * HEADS + heads[:, None]) * HEAD_DIM + dims[None, :], mask=group_ok[:, None],
                    other=0.0)
        best = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
        total = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
        steps = tl.arange(0, CHUNK)
        k_base = k_cache_ptr + row.to(tl.int64) * cache_slot_stride + kv_head * cache_head_stride
        v_base = v_cache_ptr + row.to(tl.int64) * cache_slot_stride + kv_head * cache_head_stride
        while start < length:  # the first chunk always holds a position in use, so ``best`` turns finite
            t = start + steps
            t_ok = (t < length) & (t >= first)
            keys = tl.load(k_base + t[:, None] * HEAD_DIM + dims[None, :], mask=t_ok[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(keys), input_precision=PRECISION) * scale  # [GROUP_PAD, CHUNK]
            scores = tl.where(t_ok[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=1))
            rescale = tl.exp(best - new_best)
            weights = tl.exp(scores - new_best[:, None])
            values = tl.load(v_base + t[:, None] * HEAD_DIM + dims[None, :], mask=t_ok[:, None], other=0.0)
            acc = acc * rescale[:, None] + tl.dot(weights.to(dtype), values, input_precision=PRECISION)
            total = total * rescale + tl.sum(weights, axis=1)
            best = new_best
            start += SPLITS * CHUNK
        part = (row * HEADS + heads) * SPLITS + split
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc / total[:, None],
                 mask=group_ok[:, None])
        tl.store(part_lse_ptr + part, best + tl.log(total), mask=group_ok)


@triton.jit
def _attention_reduce_kernel(part_out_ptr, part_lse_ptr, pos_ptr, out_ptr, capacity, HEADS: tl.constexpr,
                             CHUNK: tl.constexpr, SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """One row's head: the splits' partial results combined by their log-sum-exp weights."""
    head = tl.program_id(0)
    row = tl.program_id(1)
    first, length = _attended_span(pos_ptr, row, capacity)
    active = (length + CHUNK - 1) // CHUNK - first // CHUNK  # chunks in use; split s holds chunk s first
    dims = tl.arange(0, HEAD_DIM)
    splits = tl.arange(0, SPLITS)
    split_ok = splits < active
    part = (row * HEADS + head) * SPLITS
    lse = tl.load(part_lse_ptr + part + splits, mask=split_ok, other=float("-inf"))
    weights = tl.where(split_ok, tl.exp(lse - tl.max(lse, axis=0)), 0.0)
    parts = tl.load(part_out_ptr + (part + splits[:, None]) * HEAD_DIM + dims[None, :], mask=split_ok[:, None],
                    other=0.0)
    out = tl.sum(parts * weights[:, None], axis=0) / tl.sum(weights, axis=0)
    tl.store(out_ptr + (row * HEADS + head) * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))


@triton.jit
def _penalized(logits_ptr, seen_ptr, penalty, ids, ok, PENALIZE: tl.constexpr):
    scores = tl.load(logits_ptr + ids, mask=ok, other=float("-inf")).to(tl.float32)
    if PENALIZE:
        seen = tl.load(seen_ptr + ids, mask=ok, other=0) != 0
        scores = tl.where(seen, tl.where(scores < 0, scores * penalty, scores / penalty), scores)
    return scores


# The engine picks a newcomer's first id on a one-row slice at its slot: specialized on alignment, every
# alignment of those pointers would compile another variant of the kernel while other streams wait.
ROW_SLICE_ARGS = ["logits_ptr", "seen_ptr", "penalty_ptr", "temperature_ptr", "top_k_ptr", "top_p_ptr", "seed_ptr",
                  "step_ptr", "token_ptr", "sorted_ptr", "order_ptr", "out_ptr"]


def _row_slice_jit(fn):
    names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    return triton.jit(fn, do_not_specialize_on_alignment=[name for name in names if name in ROW_SLICE_ARGS])


@_row_slice_jit
def _greedy_kernel(logits_ptr, seen_ptr, penalty_ptr, token_ptr, VOCAB: tl.constexpr, PENALIZE: tl.constexpr,
                   BLOCK: tl.constexpr):
    """argmax of one row's (repetition-penalized) logits into token[row]; the id is marked seen."""
    row = tl.program_id(0)
    logits_ptr += row.to(tl.int64) * VOCAB
    seen_ptr += row.to(tl.int64) * VOCAB
    penalty = tl.load(penalty_ptr + row)
    best_value = tl.full([1], float("-inf"), dtype=tl.float32)
    best_index = tl.zeros([1], dtype=tl.int64)
    for start in range(0, VOCAB, BLOCK):
        ids = start + tl.arange(0, BLOCK)
        scores = _penalized(logits_ptr, seen_ptr, penalty, ids, ids < VOCAB, PENALIZE)
        value, index = tl.max(scores, axis=0, return_indices=True, return_indices_tie_break_left=True)
        better = value > best_value  # strictly: the first maximum wins, as torch.argmax
        best_index = tl.where(better, start + index, best_index)
        best_value = tl.where(better, value, best_value)
    tl.store(token_ptr + row + tl.arange(0, 1), best_index)
    tl.store(seen_ptr + best_index, tl.full([1], 1, dtype=tl.int1))


@_row_slice_jit
def _scores_kernel(logits_ptr, seen_ptr, penalty_ptr, out_ptr, VOCAB: tl.constexpr, PENALIZE: tl.constexpr,
                   BLOCK: tl.constexpr):
    """float32 scores of one row for sampling, repetition penalty applied."""
    row = tl.program_id(1)
    ids = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = ids < VOCAB
    scores = _penalized(logits_ptr + row.to(tl.int64) * VOCAB, seen_ptr + row.to(tl.int64) * VOCAB,
                        tl.load(penalty_ptr + row), ids, ok, PENALIZE)
    tl.store(out_ptr + row.to(tl.int64) * VOCAB + ids, scores, mask=ok)


@triton.jit
def _exponential_noise(seed, step, columns):
    """Exp(1) noise of ``columns`` for one row: splitmix64 of a (seed, step, column) counter, bit for bit
    the uniforms of ``torch_kernels.exponential_noise``."""
    x = (seed.to(tl.uint64) * 0x9E3779B97F4A7C15 + step.to(tl.uint64)) * 0xBF58476D1CE4E5B9
    x = x + columns.to(tl.uint64) * 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    uniform = ((x >> 41).to(tl.float32) + 0.5) * (2.0 ** -23)
    return -tl.log(uniform)


@triton.jit
def _weights(scores, kth, top, inverse):
    """exp((s - top) / T) of the scores s >= kth (the top-k), else 0, in float64 for the top-p sums."""
    return tl.where(scores >= kth, tl.exp((scores - top) * inverse), 0.0).to(tl.float64)


@triton.jit
def _kept_mass(sorted_ptr, start, end, kth, top, inverse, mass, count, BLOCK: tl.constexpr):
    """Go on summing the weights of the sorted scores >= kth and counting them from ``start`` in chunks of
    BLOCK below ``end``, while every score so far was >= kth (they descend: the kept ones are the first)."""
    while (start < end) & (count == start):
        ids = start + tl.arange(0, BLOCK)
        scores = tl.load(sorted_ptr + ids, mask=ids < end, other=float("-inf"))
        mass += tl.sum(_weights(scores, kth, top, inverse), axis=0)
        count += tl.sum((scores >= kth).to(tl.int32), axis=0)
        start += BLOCK
    return start, mass, count


@triton.jit
def _top_p_cut(sorted_ptr, start, end, kth, top, inverse, mass, limit, kept, above, BLOCK: tl.constexpr):
    """Go on looking for the top-p cut from ``start`` in chunks of BLOCK below ``end``: ``kept`` becomes the
    first sorted position whose probability mass from the smallest, (mass - ``above``: the weights before it)
    / mass, is <= limit: summed in float64 (a difference of float32 sums would lose the small masses' digits),
    compared in float32 as the reference compares its cumulative sum."""
    while start < tl.minimum(end, kept):
        ids = start + tl.arange(0, BLOCK)
        scores = tl.load(sorted_ptr + ids, mask=ids < end, other=float("-inf"))
        weights = _weights(scores, kth, top, inverse)
        from_smallest = ((mass - (above + (tl.cumsum(weights, axis=0) - weights))) / mass).to(tl.float32)
        kept = tl.minimum(kept, tl.min(tl.where((from_smallest <= limit) & (ids < end), ids, kept), axis=0))
        above += tl.sum(weights, axis=0)
        start += BLOCK
    return start, kept, above


@triton.jit
def _race(sorted_ptr, start, end, top, inverse, seed, step, best_value, best_index, BLOCK: tl.constexpr):
    """Go on with the draw over sorted positions [start, end) in chunks of BLOCK: the argmax of p / E, E the
    position's Exp(1) noise, is a draw with probabilities p (the first of equal values wins)."""
    while start < end:
        ids = start + tl.arange(0, BLOCK)
        scores = tl.load(sorted_ptr + ids, mask=ids < end, other=float("-inf"))
        race = tl.where(ids < end, tl.exp((scores - top) * inverse) / _exponential_noise(seed, step, ids), -1.0)
        value, index = tl.max(race, axis=0, return_indices=True, return_indices_tie_break_left=True)
        better = value > best_value
        best_index = tl.where(better, start + index, best_index)
        best_value = tl.where(better, value, best_value)
        start += BLOCK
    return best_value, best_index


@_row_slice_jit
def _sample_sorted_kernel(sorted_ptr, order_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr, step_ptr,
                          token_ptr, seen_ptr, VOCAB: tl.constexpr, HEAD: tl.constexpr, BLOCK: tl.constexpr):
    """One row: temperature, top-k, top-p and the draw over its scores sorted in descending order
    (``sampling.filtered_probs`` rules); temperature <= 0 takes the first of the sorted ids (greedy).
    Each pass reads the first HEAD positions, then goes on in chunks of BLOCK only as far as it must: the
    mass to the last score >= the k-th, the top-p cut until it is found, the draw over the kept positions.
    The Exp(1) noise at sorted position j is ``torch_kernels.exponential_noise``'s column j, so a row's draw
    depends on its (seed, step) and scores only, and equals the torch reference's. The id goes to token[row],
    marked seen."""
    row = tl.program_id(0)
    sorted_ptr += row.to(tl.int64) * VOCAB
    order_ptr += row.to(tl.int64) * VOCAB
    temperature = tl.load(temperature_ptr + row)
    best_index = tl.zeros([1], dtype=tl.int32)
    if temperature > 0:
        inverse = 1.0 / temperature
        top = tl.load(sorted_ptr)
        k = tl.load(top_k_ptr + row)
        k = tl.where(k > 0, tl.minimum(k, VOCAB), VOCAB)
        kth = tl.load(sorted_ptr + k - 1)  # every score >= kth is kept (ties included): the first `count`
        zero = tl.zeros([], dtype=tl.int32)
        nothing = tl.zeros([], dtype=tl.float64)
        head_end = zero + min(HEAD, VOCAB)
        rest, mass, count = _kept_mass(sorted_ptr, zero, head_end, kth, top, inverse, nothing, zero, HEAD)
        rest, mass, count = _kept_mass(sorted_ptr, rest, zero + VOCAB, kth, top, inverse, mass, count, BLOCK)
        # From the smallest score up, the tokens whose cumulative probability stays <= 1 - top_p are dropped:
        # that mass only grows toward the top, so the kept tokens are the first `kept` in sorted order.
        limit = 1.0 - tl.load(top_p_ptr + row)
        kept = count
        if limit > 0:  # top_p >= 1 drops none of the top-k
            rest, kept, above = _top_p_cut(sorted_ptr, zero, tl.minimum(head_end, count), kth, top, inverse, mass,
                                            limit, kept, nothing, HEAD)
            rest, kept, above = _top_p_cut(sorted_ptr, rest, count, kth, top, inverse, mass, limit, kept, above,
                                            BLOCK)
            kept = tl.maximum(kept, 1)  # the most likely token is never dropped
        seed = tl.load(seed_ptr + row)
        step = tl.load(step_ptr + row)
        best_value = tl.full([1], -1.0, dtype=tl.float32)
        best_value, best_index = _race(sorted_ptr, zero, tl.minimum(head_end, kept), top, inverse, seed, step,
                                       best_value, best_index, HEAD)
        best_value, best_index = _race(sorted_ptr, head_end, kept, top, inverse, seed, step, best_value, best_index,
                                       BLOCK)
    token = tl.load(order_ptr + best_index)
    tl.store(token_ptr + row + tl.arange(0, 1), token)
    tl.store(seen_ptr + row.to(tl.int64) * VOCAB + token, tl.full([1], 1, dtype=tl.int1))


def gemv_config(rows: int, cols: int) -> tuple[int, int, int, int]:
    """Batch 1's (BLOCK_N, BLOCK_K, num_warps, unroll) for a weight of this shape."""
    return GEMV_CONFIGS.get((rows, cols), DEFAULT_GEMV_CONFIG)


def rows_config(rows: int, cols: int) -> tuple[int, ...]:
    """The (BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K]) of two rows or more for a weight of this shape."""
    return ROWS_CONFIGS.get((rows, cols), DEFAULT_ROWS_CONFIG)


def rope_pairs(block_n: int, head_dim: int, minimum: int) -> int | None:
    """Dimension pairs per program of the q/k/v + RoPE kernels: a power of two that divides half the head
    dimension (every pair (j, j + D/2) of a head is owned by exactly one program), at most ``block_n / 2``
    and at least ``minimum``; None when no such number exists."""
    half = head_dim // 2
    pairs = 1
    while pairs * 2 <= min(max(block_n // 2, minimum), half) and half % (pairs * 2) == 0:
        pairs *= 2
    return pairs if pairs >= minimum and half % pairs == 0 else None


class TritonDecodeKernels:
    """The decode-step operations of the torch reference as Triton launches, for B rows (row b ↔ slot b).

    ``configs``/``rows_configs`` override the block shapes of the tables above per weight shape (the
    sweep and the tests use them); ``gemv_for_one_row``: batch 1 on the matrix-vector kernels (else on
    the batched kernel, so that a row's result is the same at every batch size).
    """

    name = "triton"

    def __init__(self, configs: dict | None = None, rows_configs: dict | None = None,
                 gemv_for_one_row: bool = GEMV_FOR_ONE_ROW):
        self.configs = configs or {}
        self.rows_configs = rows_configs or {}
        self.gemv_for_one_row = gemv_for_one_row

    def _gemv_rows(self, batch: int) -> bool:
        return batch == 1 and self.gemv_for_one_row

    def _config(self, rows: int, cols: int, batch: int) -> tuple[int, ...]:
        if self._gemv_rows(batch):
            return self.configs.get((rows, cols)) or gemv_config(rows, cols)
        return self.rows_configs.get((rows, cols)) or rows_config(rows, cols)

    def _gemv(self, x, weight, bias, out, norm_weight=None, eps=0.0, residual=None, gated=False):
        """out = epilogue(RMSNorm(x) @ W^T) for x [B, K]; ``out`` [B, N] may be ``residual`` itself."""
        rows, cols = weight.shape
        batch = x.shape[0]
        n_out = rows // 2 if gated else rows
        block_n, block_k, warps, fourth, *split = self._config(rows, cols, batch)
        split_k = split[0] if split else 1
        bias_arg = bias if bias is not None else weight
        residual_arg = residual if residual is not None else out
        if self._gemv_rows(batch):
            _gemv_kernel[(triton.cdiv(n_out, block_n),)](
                x, weight, bias_arg, norm_weight if norm_weight is not None else x, residual_arg, out, n_out, eps,
                n_out, cols, HAS_BIAS=bias is not None, HAS_NORM=norm_weight is not None,
                HAS_RESIDUAL=residual is not None, GATED=gated, EVEN_K=cols % block_k == 0,
                EVEN_N=n_out % block_n == 0, UNROLL=bool(fourth), BLOCK_N=block_n, BLOCK_K=block_k,
                num_warps=warps, num_stages=1,
            )
        else:
            if norm_weight is not None:
                x = self._normalized(x, norm_weight, eps)
            flags = dict(HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, GATED=gated)
            grid = (triton.cdiv(n_out, block_n), triton.cdiv(batch, ROWS))
            parts = torch.empty((split_k, 2 if gated else 1, batch, n_out), dtype=torch.float32,
                                device=x.device) if split_k > 1 else out
            _rows_kernel[(*grid, split_k)](
                x, weight, bias_arg, residual_arg, out, parts, batch, n_out, n_out, cols, **flags, ROWS=ROWS,
                BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=warps, num_stages=fourth,
            )
            if split_k > 1:
                _rows_split_epilogue_kernel[(triton.cdiv(n_out, 64), grid[1])](
                    parts, bias_arg, residual_arg, out, batch, n_out, n_out, **flags, SPLIT_K=split_k, ROWS=ROWS,
                    BLOCK_N=64, num_warps=4,
                )
        return out

    @staticmethod
    def _normalized(x, norm_weight, eps):
        """RMSNorm of each row of x, once, for the batched kernels."""
        out = torch.empty_like(x)
        _rms_norm_rows_kernel[(x.shape[0],)](x, norm_weight, out, eps, x.shape[1], BLOCK_K=1024, num_warps=4)
        return out

    def norm_linear(self, x, norm_weight, eps, weight, bias):
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
        return self._gemv(x, weight, bias, out, norm_weight, eps)

    def norm_gated_linear(self, x, norm_weight, eps, weight, bias):
        out = torch.empty((x.shape[0], weight.shape[0] // 2), dtype=x.dtype, device=x.device)
        return self._gemv(x, weight, bias, out, norm_weight, eps, gated=True)

    def linear_add(self, x, weight, bias, residual):
        self._gemv(x, weight, bias, residual, residual=residual)

    def norm_linear_rope_store(self, x, norm_weight, eps, weight, bias, cos_table, sin_table, k_cache, v_cache,
                               positions, heads, kv_heads):
        rows, cols = weight.shape
        batch, head_dim = x.shape[0], k_cache.shape[-1]
        block_n, block_k, warps, fourth, *_ = self._config(rows, cols, batch)  # no split of K here
        q = torch.empty((batch, heads, head_dim), dtype=x.dtype, device=x.device)
        if self._gemv_rows(batch):
            pairs = rope_pairs(block_n, head_dim, minimum=1)
            _qkv_rope_kernel[(rows // (2 * pairs),)](
                x, weight, bias if bias is not None else weight, norm_weight, cos_table, sin_table, positions, q,
                k_cache, v_cache, eps, k_cache.stride(1), cols, HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim,
                PAIRS=pairs, HAS_BIAS=bias is not None, EVEN_K=cols % block_k == 0, UNROLL=bool(fourth),
                BLOCK_K=block_k, num_warps=warps, num_stages=1,
            )
        else:
            pairs = rope_pairs(block_n, head_dim, minimum=8)
            if pairs is None:  # heads too narrow for the tensor-core tile: the reference op, also in a graph
                return TorchDecodeKernels().norm_linear_rope_store(x, norm_weight, eps, weight, bias, cos_table,
                                                                   sin_table, k_cache, v_cache, positions, heads,
                                                                   kv_heads)
            _qkv_rope_rows_kernel[(rows // (2 * pairs), triton.cdiv(batch, ROWS))](
                self._normalized(x, norm_weight, eps), weight, bias if bias is not None else weight, cos_table,
                sin_table, positions, q, k_cache, v_cache, batch, k_cache.stride(0), k_cache.stride(1), cols,
                HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, PAIRS=pairs, HAS_BIAS=bias is not None, ROWS=ROWS,
                BLOCK_K=block_k, num_warps=warps, num_stages=fourth,
            )
        return q

    def choose(self, logits, seen, penalty, temperature, top_k, top_p, seed, step, token, sample: bool,
               penalize: bool):
        """Pick each row's next id on the device into ``token`` and mark it seen: greedy when not ``sample``
        (or where the row's temperature is <= 0), else a draw with the row's (seed, step) noise."""
        batch, vocab = logits.shape
        if not sample:
            _greedy_kernel[(batch,)](logits, seen, penalty, token, VOCAB=vocab, PENALIZE=penalize,
                                     BLOCK=SAMPLER_BLOCK, num_warps=16)
            return
        scores = torch.empty((batch, vocab), dtype=torch.float32, device=logits.device)
        _scores_kernel[(triton.cdiv(vocab, 4096), batch)](logits, seen, penalty, scores, VOCAB=vocab,
                                                          PENALIZE=penalize, BLOCK=4096, num_warps=8)
        ordered, order = scores.sort(dim=-1, descending=True, stable=True)
        _sample_sorted_kernel[(batch,)](ordered, order, temperature, top_k, top_p, seed, step, token, seen,
                                        VOCAB=vocab, HEAD=SAMPLER_HEAD, BLOCK=SAMPLER_TAIL, num_warps=16)

    def attention(self, q, k_cache, v_cache, positions, scale):
        """Row b's query over slot b's cache positions 0..positions[b] ([B, H * D]); a row at the scratch
        position (capacity - 1: an idle slot) attends only that position."""
        batch, heads, head_dim = q.shape
        kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
        group = heads // kv_heads
        # ATTENTION_SPLITS programs per row and head (per KV head with grouped queries) share its chunks of
        # CHUNK positions round-robin, so work follows the length in use (not the capacity) and a short
        # context still has enough programs. A row's result depends on its length only, not the batch.
        if group > 1 and head_dim < 16:  # narrower than the tensor cores' tile: the reference op
            return TorchDecodeKernels().attention(q, k_cache, v_cache, positions, scale)
        part_out = torch.empty((batch, heads, ATTENTION_SPLITS, head_dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((batch, heads, ATTENTION_SPLITS), dtype=torch.float32, device=q.device)
        common = (q, k_cache, v_cache, positions, part_out, part_lse, scale, capacity, k_cache.stride(0),
                  k_cache.stride(1))
        if group == 1:
            _attention_partial_mha_kernel[(heads, ATTENTION_SPLITS, batch)](
                *common, HEADS=heads, CHUNK=ATTENTION_CHUNK, SPLITS=ATTENTION_SPLITS, HEAD_DIM=head_dim,
                BLOCK_T=ATTENTION_CHUNK, num_warps=4,
            )
        else:
            _attention_partial_kernel[(kv_heads, ATTENTION_SPLITS, batch)](
                *common, HEADS=heads, CHUNK=ATTENTION_CHUNK, SPLITS=ATTENTION_SPLITS, GROUP=group,
                GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, num_warps=4,
            )
        out = torch.empty((batch, heads * head_dim), dtype=q.dtype, device=q.device)
        _attention_reduce_kernel[(heads, batch)](
            part_out, part_lse, positions, out, capacity, HEADS=heads, CHUNK=ATTENTION_CHUNK,
            SPLITS=ATTENTION_SPLITS, HEAD_DIM=head_dim, num_warps=4,
        )
        return out
