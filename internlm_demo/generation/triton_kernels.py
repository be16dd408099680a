"""Triton kernels for one decode step at batch 1, with the rounding steps of the transformers Llama.

Each kernel does what a few torch ops do in ``engine.TorchDecodeKernels`` (the reference the tests
check them against), in one launch: RMSNorm fused into the matrix-vector product that follows it;
bias, SiLU gate, residual add, or RoPE plus the KV-cache store fused into its epilogue; and a
split-sequence attention that reads only the cache positions in use (its length comes from a device
tensor, so one CUDA graph serves every length).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# (BLOCK_N, BLOCK_K, num_warps, unroll) per weight shape (rows, columns): the fastest of
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
}
SAMPLER_BLOCK = 16384  # one program walks the vocabulary in chunks this large


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
def _qkv_rope_kernel(x_ptr, w_ptr, bias_ptr, norm_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                     eps, cache_head_stride, k_dim: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                     HEAD_DIM: tl.constexpr, PAIRS: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                     UNROLL: tl.constexpr, BLOCK_K: tl.constexpr):
    """q/k/v = RMSNorm(x) @ W^T (+ bias) with RoPE on q and k in the epilogue; q goes to q_ptr, k and v
    into the cache at the current position. A program owns PAIRS dimension pairs (j, j + HEAD_DIM/2) of
    one head, the two halves that rotate_half mixes."""
    dtype = q_ptr.dtype.element_ty
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
    low, high = tl.split(tl.reshape(y.to(dtype), [PAIRS, 2]))  # dimensions j and j + HALF
    dims = first + tl.arange(0, PAIRS)
    position = tl.load(pos_ptr)
    if head < HEADS + KV_HEADS:
        # x * cos + rotate_half(x) * sin, rounding after each op as the float16 torch code does
        cos_low = tl.load(cos_ptr + position * HEAD_DIM + dims).to(tl.float32)
        cos_high = tl.load(cos_ptr + position * HEAD_DIM + HALF + dims).to(tl.float32)
        sin_low = tl.load(sin_ptr + position * HEAD_DIM + dims).to(tl.float32)
        sin_high = tl.load(sin_ptr + position * HEAD_DIM + HALF + dims).to(tl.float32)
        a = low.to(tl.float32)
        b = high.to(tl.float32)
        out_low = ((a * cos_low).to(dtype).to(tl.float32) + (-b * sin_low).to(dtype).to(tl.float32)).to(dtype)
        out_high = ((b * cos_high).to(dtype).to(tl.float32) + (a * sin_high).to(dtype).to(tl.float32)).to(dtype)
        if head < HEADS:
            target = q_ptr + head * HEAD_DIM
        else:
            target = k_cache_ptr + (head - HEADS) * cache_head_stride + position * HEAD_DIM
    else:
        out_low = low
        out_high = high
        target = v_cache_ptr + (head - HEADS - KV_HEADS) * cache_head_stride + position * HEAD_DIM
    tl.store(target + dims, out_low)
    tl.store(target + HALF + dims, out_high)


@triton.jit
def _attention_partial_mha_kernel(q_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, part_out_ptr, part_lse_ptr,
                                  scale, cache_head_stride, num_splits, CHUNK: tl.constexpr,
                                  HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    """One head's attention over one CHUNK of cache positions (multi-head attention: one query per head)."""
    head = tl.program_id(0)
    split = tl.program_id(1)
    length = tl.load(pos_ptr) + 1
    start = split * CHUNK
    if start < length:  # splits past the length do nothing; the reduction skips them
        end = tl.minimum(start + CHUNK, length)
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + head * HEAD_DIM + dims).to(tl.float32) * scale
        best = tl.full([1], float("-inf"), dtype=tl.float32)
        total = tl.zeros([1], dtype=tl.float32)
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        steps = tl.arange(0, BLOCK_T)
        k_base = k_cache_ptr + head * cache_head_stride
        v_base = v_cache_ptr + head * cache_head_stride
        for block in range(0, CHUNK, BLOCK_T):
            t = start + block + steps
            t_ok = t < end
            keys = tl.load(k_base + t[:, None] * HEAD_DIM + dims[None, :], mask=t_ok[:, None], other=0.0)
            scores = tl.where(t_ok, tl.sum(keys.to(tl.float32) * q[None, :], axis=1), float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=0))
            rescale = tl.exp(best - new_best)
            weights = tl.exp(scores - new_best)
            values = tl.load(v_base + t[:, None] * HEAD_DIM + dims[None, :], mask=t_ok[:, None], other=0.0)
            acc = acc * rescale + tl.sum(values.to(tl.float32) * weights[:, None], axis=0)
            total = total * rescale + tl.sum(weights, axis=0)
            best = new_best
        part = head * num_splits + split
        tl.store(part_out_ptr + part * HEAD_DIM + dims, acc / total)
        tl.store(part_lse_ptr + part + tl.arange(0, 1), best + tl.log(total))


@triton.jit
def _attention_partial_kernel(q_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, part_out_ptr, part_lse_ptr,
                              scale, cache_head_stride, num_splits, CHUNK: tl.constexpr,
                              GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                              BLOCK_T: tl.constexpr):
    """The GROUP query heads of one KV head over one CHUNK of cache positions (grouped-query attention)."""
    kv_head = tl.program_id(0)
    split = tl.program_id(1)
    length = tl.load(pos_ptr) + 1
    start = split * CHUNK
    if start < length:  # splits past the length do nothing; the reduction skips them
        end = tl.minimum(start + CHUNK, length)
        groups = tl.arange(0, GROUP_PAD)
        dims = tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + groups
        group_ok = groups < GROUP
        q = tl.load(q_ptr + heads[:, None] * HEAD_DIM + dims[None, :], mask=group_ok[:, None], other=0.0)
        q = q.to(tl.float32) * scale
        best = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
        total = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
        steps = tl.arange(0, BLOCK_T)
        k_base = k_cache_ptr + kv_head * cache_head_stride
        v_base = v_cache_ptr + kv_head * cache_head_stride
        for block in range(0, CHUNK, BLOCK_T):
            t = start + block + steps
            t_ok = t < end
            keys = tl.load(k_base + t[:, None] * HEAD_DIM + dims[None, :], mask=t_ok[:, None], other=0.0)
            scores = tl.sum(q[:, None, :] * keys.to(tl.float32)[None, :, :], axis=2)
            scores = tl.where(t_ok[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=1))
            rescale = tl.exp(best - new_best)
            weights = tl.exp(scores - new_best[:, None])
            values = tl.load(v_base + t[:, None] * HEAD_DIM + dims[None, :], mask=t_ok[:, None], other=0.0)
            acc = acc * rescale[:, None] + tl.sum(weights[:, :, None] * values.to(tl.float32)[None, :, :], axis=1)
            total = total * rescale + tl.sum(weights, axis=1)
            best = new_best
        part = heads * num_splits + split
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc / total[:, None],
                 mask=group_ok[:, None])
        tl.store(part_lse_ptr + part, best + tl.log(total), mask=group_ok)


@triton.jit
def _attention_reduce_kernel(part_out_ptr, part_lse_ptr, pos_ptr, out_ptr, chunk, num_splits,
                             SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    head = tl.program_id(0)
    length = tl.load(pos_ptr) + 1
    active = (length + chunk - 1) // chunk
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    split_ok = splits < active
    lse = tl.load(part_lse_ptr + head * num_splits + splits, mask=split_ok, other=float("-inf"))
    weights = tl.where(split_ok, tl.exp(lse - tl.max(lse, axis=0)), 0.0)
    parts = tl.load(part_out_ptr + (head * num_splits + splits[:, None]) * HEAD_DIM + dims[None, :],
                    mask=split_ok[:, None], other=0.0)
    out = tl.sum(parts * weights[:, None], axis=0) / tl.sum(weights, axis=0)
    tl.store(out_ptr + head * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))


@triton.jit
def _greedy_kernel(logits_ptr, seen_ptr, penalty_ptr, token_ptr, VOCAB: tl.constexpr, PENALIZE: tl.constexpr,
                   BLOCK: tl.constexpr):
    """argmax of the (repetition-penalized) logits into token; the id is marked seen. One program."""
    best_value = tl.full([1], float("-inf"), dtype=tl.float32)
    best_index = tl.zeros([1], dtype=tl.int64)
    for start in range(0, VOCAB, BLOCK):
        ids = start + tl.arange(0, BLOCK)
        scores = tl.load(logits_ptr + ids, mask=ids < VOCAB, other=float("-inf")).to(tl.float32)
        if PENALIZE:
            penalty = tl.load(penalty_ptr)
            seen = tl.load(seen_ptr + ids, mask=ids < VOCAB, other=0) != 0
            scores = tl.where(seen, tl.where(scores < 0, scores * penalty, scores / penalty), scores)
        value, index = tl.max(scores, axis=0, return_indices=True, return_indices_tie_break_left=True)
        better = value > best_value  # strictly: the first maximum wins, as torch.argmax
        best_index = tl.where(better, start + index, best_index)
        best_value = tl.where(better, value, best_value)
    tl.store(token_ptr + tl.arange(0, 1), best_index)
    tl.store(seen_ptr + best_index, tl.full([1], 1, dtype=tl.int1))


@triton.jit
def _scores_kernel(logits_ptr, seen_ptr, penalty_ptr, temperature_ptr, out_ptr, VOCAB: tl.constexpr,
                   PENALIZE: tl.constexpr, BLOCK: tl.constexpr):
    """float32 scores for sampling: repetition penalty, then temperature."""
    ids = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = ids < VOCAB
    scores = tl.load(logits_ptr + ids, mask=ok, other=0.0).to(tl.float32)
    if PENALIZE:
        penalty = tl.load(penalty_ptr)
        seen = tl.load(seen_ptr + ids, mask=ok, other=0) != 0
        scores = tl.where(seen, tl.where(scores < 0, scores * penalty, scores / penalty), scores)
    tl.store(out_ptr + ids, scores / tl.load(temperature_ptr), mask=ok)


@triton.jit
def _sample_sorted_kernel(sorted_ptr, order_ptr, noise_ptr, top_k_ptr, top_p_ptr, token_ptr, seen_ptr,
                          VOCAB: tl.constexpr, BLOCK: tl.constexpr):
    """Top-k, top-p and the draw over scores sorted in descending order (``sampling.filtered_probs`` rules);
    noise is Exp(1) per sorted position. The drawn id goes to token and is marked seen. One program."""
    CHUNKS: tl.constexpr = (VOCAB + BLOCK - 1) // BLOCK
    offsets = tl.arange(0, BLOCK)
    top = tl.load(sorted_ptr)
    k = tl.load(top_k_ptr)
    k = tl.where(k > 0, tl.minimum(k, VOCAB), VOCAB)
    kth = tl.load(sorted_ptr + k - 1)
    weights = tl.zeros([BLOCK], dtype=tl.float32)
    for chunk in range(CHUNKS):
        ids = chunk * BLOCK + offsets
        scores = tl.load(sorted_ptr + ids, mask=ids < VOCAB, other=float("-inf"))
        weights += tl.where(scores >= kth, tl.exp(scores - top), 0.0)
    mass = tl.sum(weights, axis=0)
    # From the smallest score up, the tokens whose cumulative probability stays <= 1 - top_p are dropped:
    # that mass only grows toward the top, so the kept tokens are the first `kept` in sorted order.
    limit = 1.0 - tl.load(top_p_ptr)
    kept = tl.zeros([1], dtype=tl.int32)
    carry = tl.zeros([1], dtype=tl.float32)
    for step in range(CHUNKS):
        ids = (CHUNKS - 1 - step) * BLOCK + offsets
        scores = tl.load(sorted_ptr + ids, mask=ids < VOCAB, other=float("-inf"))
        probs = tl.where(scores >= kth, tl.exp(scores - top), 0.0) / mass
        from_smallest = tl.cumsum(probs, axis=0, reverse=True) + carry
        kept += tl.sum(((from_smallest > limit) & (ids < VOCAB)).to(tl.int32), axis=0)
        carry += tl.sum(probs, axis=0)
    kept = tl.maximum(kept, 1)  # the most likely token is never dropped
    best_value = tl.full([1], -1.0, dtype=tl.float32)
    best_index = tl.zeros([1], dtype=tl.int32)
    for chunk in range(CHUNKS):
        ids = chunk * BLOCK + offsets
        scores = tl.load(sorted_ptr + ids, mask=ids < VOCAB, other=float("-inf"))
        noise = tl.load(noise_ptr + ids, mask=ids < VOCAB, other=1.0)
        race = tl.where(ids < kept, tl.exp(scores - top) / noise, -1.0)  # argmax p/E draws with probability p
        value, index = tl.max(race, axis=0, return_indices=True, return_indices_tie_break_left=True)
        better = value > best_value
        best_index = tl.where(better, chunk * BLOCK + index, best_index)
        best_value = tl.where(better, value, best_value)
    token = tl.load(order_ptr + best_index)
    tl.store(token_ptr + tl.arange(0, 1), token)
    tl.store(seen_ptr + token, tl.full([1], 1, dtype=tl.int1))


def gemv_config(rows: int, cols: int) -> tuple[int, int, int, int]:
    return GEMV_CONFIGS.get((rows, cols), DEFAULT_GEMV_CONFIG)


class TritonDecodeKernels:
    """The decode-step operations of ``engine.TorchDecodeKernels`` as single Triton launches (one row)."""

    name = "triton"

    def __init__(self, configs: dict[tuple[int, int], tuple[int, int, int, int]] | None = None):
        self.configs = configs

    def _gemv(self, x, weight, bias, out, norm_weight=None, eps=0.0, residual=None, gated=False):
        rows, cols = weight.shape
        n_out = rows // 2 if gated else rows
        block_n, block_k, warps, unroll = (self.configs or {}).get((rows, cols)) or gemv_config(rows, cols)
        _gemv_kernel[(triton.cdiv(n_out, block_n),)](
            x, weight, bias if bias is not None else weight, norm_weight if norm_weight is not None else x,
            residual if residual is not None else out, out, n_out, eps, n_out, cols,
            HAS_BIAS=bias is not None, HAS_NORM=norm_weight is not None, HAS_RESIDUAL=residual is not None,
            GATED=gated, EVEN_K=cols % block_k == 0, EVEN_N=n_out % block_n == 0, UNROLL=bool(unroll),
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=1,
        )
        return out

    def norm_linear(self, x, norm_weight, eps, weight, bias):
        out = torch.empty((1, weight.shape[0]), dtype=x.dtype, device=x.device)
        return self._gemv(x, weight, bias, out, norm_weight, eps)

    def norm_gated_linear(self, x, norm_weight, eps, weight, bias):
        out = torch.empty((1, weight.shape[0] // 2), dtype=x.dtype, device=x.device)
        return self._gemv(x, weight, bias, out, norm_weight, eps, gated=True)

    def linear_add(self, x, weight, bias, residual):
        self._gemv(x, weight, bias, residual, residual=residual)

    def norm_linear_rope_store(self, x, norm_weight, eps, weight, bias, cos_table, sin_table, k_cache, v_cache,
                               position, heads, kv_heads):
        rows, cols = weight.shape
        head_dim = k_cache.shape[-1]
        block_n, block_k, warps, unroll = (self.configs or {}).get((rows, cols)) or gemv_config(rows, cols)
        pairs = max(1, min(block_n // 2, head_dim // 2))
        q = torch.empty((1, heads, head_dim), dtype=x.dtype, device=x.device)
        _qkv_rope_kernel[(rows // (2 * pairs),)](
            x, weight, bias if bias is not None else weight, norm_weight, cos_table, sin_table, position, q,
            k_cache, v_cache, eps, k_cache.stride(1), cols, HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim,
            PAIRS=pairs, HAS_BIAS=bias is not None, EVEN_K=cols % block_k == 0, UNROLL=bool(unroll),
            BLOCK_K=block_k, num_warps=warps, num_stages=1,
        )
        return q

    def choose(self, logits, seen, penalty, temperature, top_k, top_p, noise, token, sample: bool, penalize: bool):
        """Pick the next id on the device into ``token`` (greedy, or a draw with ``noise``); mark it seen."""
        vocab = logits.shape[-1]
        if not sample:
            _greedy_kernel[(1,)](logits, seen, penalty, token, VOCAB=vocab, PENALIZE=penalize, BLOCK=SAMPLER_BLOCK,
                                 num_warps=16)
            return
        scores = torch.empty((1, vocab), dtype=torch.float32, device=logits.device)
        _scores_kernel[(triton.cdiv(vocab, 4096),)](logits, seen, penalty, temperature, scores, VOCAB=vocab,
                                                    PENALIZE=penalize, BLOCK=4096, num_warps=8)
        ordered, order = scores.sort(dim=-1, descending=True)
        _sample_sorted_kernel[(1,)](ordered, order, noise, top_k, top_p, token, seen, VOCAB=vocab,
                                    BLOCK=SAMPLER_BLOCK, num_warps=16)

    def attention(self, q, k_cache, v_cache, position, scale):
        _, heads, head_dim = q.shape
        kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
        group = heads // kv_heads
        group_pad = triton.next_power_of_2(group)
        # Up to 64 splits of at least 128 positions: enough programs to fill the GPU at any length
        # (256-position splits measured slower at a 1k context: fewer programs per head).
        chunk = max(128, triton.next_power_of_2(triton.cdiv(capacity, 64)))
        splits = triton.cdiv(capacity, chunk)
        part_out = torch.empty((heads, splits, head_dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((heads, splits), dtype=torch.float32, device=q.device)
        if group == 1:
            _attention_partial_mha_kernel[(heads, splits)](
                q, k_cache, v_cache, position, part_out, part_lse, scale, k_cache.stride(1), splits, CHUNK=chunk,
                HEAD_DIM=head_dim, BLOCK_T=64, num_warps=4,
            )
        else:
            _attention_partial_kernel[(kv_heads, splits)](
                q, k_cache, v_cache, position, part_out, part_lse, scale, k_cache.stride(1), splits, CHUNK=chunk,
                GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, BLOCK_T=max(16, 64 // group_pad), num_warps=4,
            )
        out = torch.empty((1, heads * head_dim), dtype=q.dtype, device=q.device)
        _attention_reduce_kernel[(heads,)](
            part_out, part_lse, position, out, chunk, splits,
            SPLITS_PAD=triton.next_power_of_2(splits), HEAD_DIM=head_dim, num_warps=4,
        )
        return out
