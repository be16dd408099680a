"""The decode-step operations on plain torch ops: the CPU path and the reference for the Triton kernels.

The interface (``DecodeKernels``) is what the engine calls inside one decode step. Every batched
tensor is indexed by row b, and row b belongs to cache slot b; B (the bucket size) is at most S (the
slots in the cache). A row's result never depends on B or on the other rows, so a request decodes to
the same tokens whatever runs beside it: here each matrix product runs row by row, because a batched
GEMM may round differently from the one-row product.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .sampling import penalize_repeats, sample_filtered


class DecodeKernels(Protocol):
    """The operations of one decode step over B rows (row b ↔ cache slot b)."""

    name: str

    def norm_linear(self, x, norm_weight, eps, weight, bias) -> torch.Tensor:
        """RMSNorm then linear: x [B, K] → [B, N]."""

    def norm_gated_linear(self, x, norm_weight, eps, weight, bias) -> torch.Tensor:
        """RMSNorm, linear to [gate rows; up rows] ([2I, K]), silu(gate) * up → [B, I]."""

    def linear_add(self, x, weight, bias, residual) -> None:
        """residual [B, N] += linear(x [B, K]), in place."""

    def norm_linear_rope_store(self, x, norm_weight, eps, weight, bias, cos_table, sin_table, k_cache, v_cache,
                               positions, heads, kv_heads) -> torch.Tensor:
        """q/k/v of each row; RoPE with table rows ``positions[b]`` on q and k; k and v stored into slot b of
        the caches [S, KV heads, C, D] at ``positions[b]``. Returns q [B, H, D]."""

    def attention(self, q, k_cache, v_cache, positions, scale) -> torch.Tensor:
        """Row b's query over slot b's cache positions 0..positions[b] → [B, H * D]; a row at the scratch
        position (the cache's last, where an idle slot's row writes) attends only that position."""

    def choose(self, logits, seen, penalty, temperature, top_k, top_p, seed, step, token, sample: bool,
               penalize: bool) -> None:
        """Next id per row into ``token`` [B] and marked in ``seen`` [B, V].

        Repetition penalty when ``penalize`` (1.0 changes nothing); greedy for every row unless
        ``sample``, then greedy for rows with temperature ≤ 0 and a draw under the rules of
        ``sampling`` for the others, with Exp(1) noise that depends only on (seed[b], step[b]).
        """


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, with its float32 statistics and rounding back to the input dtype."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps)).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, as transformers' apply_rotary_pos_emb."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, kv_heads, T, D] → [B, kv_heads * groups, T, D] (grouped-query attention)."""
    if groups == 1:
        return x
    batch, kv_heads, length, dim = x.shape
    return x[:, :, None].expand(batch, kv_heads, groups, length, dim).reshape(batch, kv_heads * groups, length, dim)


def _logical_shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _as_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_as_int64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def exponential_noise(seed: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) noise [B, V] that is a pure function of (seed[b], step[b], column): splitmix64 of a counter.

    Integer ops only, so it is reproducible on any device and can be captured in a CUDA graph.
    """
    columns = torch.arange(vocab, device=seed.device, dtype=torch.int64)
    x = (seed[:, None] * _GOLDEN + step[:, None]) * _MIX1 + columns[None, :] * _GOLDEN
    x = (x ^ _logical_shift(x, 30)) * _MIX1
    x = (x ^ _logical_shift(x, 27)) * _MIX2
    x = x ^ _logical_shift(x, 31)
    # 23 bits: (k + 1/2) / 2^23 is exact in float32, so the uniform stays below 1 (24 bits rounded the
    # largest to 1.0, whose noise -log(1) = -0.0 made a dropped token win the race)
    uniform = (_logical_shift(x, 41).float() + 0.5) * 2.0**-23
    return -torch.log(uniform)


class TorchDecodeKernels:
    """``DecodeKernels`` on plain torch ops, each matrix product one row at a time."""

    name = "torch"

    @staticmethod
    def _rows(fn, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(x[row:row + 1]) for row in range(x.shape[0])])

    def norm_linear(self, x, norm_weight, eps, weight, bias):
        return self._rows(lambda row: F.linear(rms_norm(row, norm_weight, eps), weight, bias), x)

    def norm_gated_linear(self, x, norm_weight, eps, weight, bias):
        gate, up = self.norm_linear(x, norm_weight, eps, weight, bias).chunk(2, dim=-1)
        return F.silu(gate) * up

    def linear_add(self, x, weight, bias, residual):
        residual.add_(self._rows(lambda row: F.linear(row, weight, bias), x))

    def norm_linear_rope_store(self, x, norm_weight, eps, weight, bias, cos_table, sin_table, k_cache, v_cache,
                               positions, heads, kv_heads):
        batch, head_dim = x.shape[0], k_cache.shape[-1]
        qkv = self.norm_linear(x, norm_weight, eps, weight, bias)
        q, k, v = qkv.view(batch, heads + 2 * kv_heads, head_dim).split([heads, kv_heads, kv_heads], dim=1)
        cos, sin = cos_table[positions][:, None], sin_table[positions][:, None]
        slots = torch.arange(batch, device=x.device)
        k_cache[slots, :, positions] = apply_rope(k, cos, sin)
        v_cache[slots, :, positions] = v
        return apply_rope(q, cos, sin)

    def attention(self, q, k_cache, v_cache, positions, scale):
        batch, heads, head_dim = q.shape
        groups = heads // k_cache.shape[1]
        # On a GPU a mask over the whole cache keeps the shapes static for CUDA graphs; the CPU reads
        # only the positions in use.
        capacity = length = k_cache.shape[2]
        steps = torch.arange(length, device=q.device)
        rows = []
        for row in range(batch):
            if not q.is_cuda:
                length = int(positions[row]) + 1
            keys, values = k_cache[row:row + 1, :, :length], v_cache[row:row + 1, :, :length]
            idle = positions[row] >= capacity - 1  # an idle slot's row attends only its scratch position
            visible = (steps[:length] <= positions[row]) & (~idle | (steps[:length] == positions[row]))
            rows.append(F.scaled_dot_product_attention(
                q[row:row + 1, :, None], repeat_kv(keys, groups), repeat_kv(values, groups),
                attn_mask=visible[None, None, None], scale=scale,
            ).reshape(1, heads * head_dim))
        return torch.cat(rows)

    def choose(self, logits, seen, penalty, temperature, top_k, top_p, seed, step, token, sample: bool,
               penalize: bool):
        scores = logits.float()
        if penalize:
            scores = penalize_repeats(scores, seen, penalty)
        chosen = scores.argmax(-1)
        if sample:
            noise = exponential_noise(seed, step, scores.shape[-1])
            drawn = torch.cat([
                sample_filtered(scores[row:row + 1], temperature[row:row + 1].clamp(min=1e-30), top_k[row:row + 1],
                                top_p[row:row + 1], noise[row:row + 1])
                for row in range(scores.shape[0])
            ])
            chosen = torch.where(temperature[:, 0] > 0, drawn, chosen)
        token.copy_(chosen)
        seen.scatter_(1, chosen[:, None], True)
