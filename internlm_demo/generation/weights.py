"""The model's tensors in the layout the engine reads: fused projections (as views) and rotary tables.

At build time each layer's q/k/v and gate/up weights are copied into one fused tensor and the model's
parameters become views into it, so the transformers model and the engine share memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.transformers_compat import RopeInputs


def _adjacent_rows(parts: list[torch.Tensor]) -> bool:
    """Whether ``parts`` already lie back to back in one storage (an engine was built on this model before)."""
    first = parts[0]
    offset = first.storage_offset()
    for part in parts:
        if (not part.is_contiguous() or part.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                or part.storage_offset() != offset):
            return False
        offset += part.numel()
    return True


def fuse_rows(linears: list[nn.Linear], name: str) -> torch.Tensor | None:
    """One tensor holding the ``name`` parameters of ``linears`` stacked by rows; each layer's parameter
    becomes a view into it, so memory is not doubled (the originals are freed)."""
    parts = [getattr(linear, name) for linear in linears]
    if parts[0] is None:
        return None
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    if _adjacent_rows(parts):
        return torch.as_strided(parts[0], shape, torch.empty(shape, device="meta").stride(), parts[0].storage_offset())
    fused = torch.empty(shape, dtype=parts[0].dtype, device=parts[0].device)
    start = 0
    for linear, part in zip(linears, parts):
        rows = part.shape[0]
        fused[start:start + rows].copy_(part)
        linear._parameters[name] = nn.Parameter(fused[start:start + rows], requires_grad=False)
        start += rows
    return fused


@dataclass
class LayerWeights:
    """One decoder layer's tensors in the layout the decode step reads."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # [q rows + k rows + v rows, hidden]
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor  # [2 * intermediate, hidden]: gate rows, then up rows
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


def fuse_layer(layer) -> LayerWeights:
    """Fuse one transformers LlamaDecoderLayer's projections in place and return its weights."""
    attention, mlp = layer.self_attn, layer.mlp
    qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
    gate_up = [mlp.gate_proj, mlp.up_proj]
    return LayerWeights(
        input_norm=layer.input_layernorm.weight,
        post_norm=layer.post_attention_layernorm.weight,
        qkv=fuse_rows(qkv, "weight"),
        qkv_bias=fuse_rows(qkv, "bias"),
        o=attention.o_proj.weight,
        o_bias=attention.o_proj.bias,
        gate_up=fuse_rows(gate_up, "weight"),
        gate_up_bias=fuse_rows(gate_up, "bias"),
        down=mlp.down_proj.weight,
        down_bias=mlp.down_proj.bias,
    )


class RopeTable:
    """cos/sin for given positions, as transformers computes them, dynamic NTK included.

    Dynamic NTK (InternLM2) rescales the base once the sequence outgrows the trained window; transformers
    does so per forward call from ``max(position) + 1``, so a prompt is embedded with the frequencies of
    its own length and each later token with those of its position, which makes a decode step's
    cos/sin a function of its position alone: the engine tabulates them per position.
    """

    def __init__(self, inputs: RopeInputs, config):
        rope = inputs.parameters
        self.original_inv_freq = inputs.original_inv_freq.cpu()  # tables are built on the CPU
        self.scaling = inputs.attention_scaling
        self.dynamic = "dynamic" in str(rope.get("rope_type", ""))
        self.base = float(rope.get("rope_theta", 10000.0))
        self.factor = float(rope.get("factor", 1.0))
        self.window = int(config.max_position_embeddings)
        self.dim = self.original_inv_freq.shape[0] * 2
        self.exponents = torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim

    def inv_freq(self, seq_len: torch.Tensor) -> torch.Tensor:
        """[B, dim/2] frequencies for sequences of ``seq_len`` ([B] int64) tokens."""
        original = self.original_inv_freq.expand(seq_len.shape[0], -1)
        if not self.dynamic:
            return original
        length = torch.clamp(seq_len, min=self.window)
        base = self.base * ((self.factor * length / self.window) - (self.factor - 1)) ** (self.dim / (self.dim - 2))
        scaled = 1.0 / (base[:, None] ** self.exponents)
        return torch.where((seq_len > self.window)[:, None], scaled, original)

    def cos_sin(self, positions: torch.Tensor, seq_len: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [B, T, dim] for ``positions`` [B, T]."""
        freqs = positions[..., None].float() * self.inv_freq(seq_len)[:, None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.scaling).to(dtype), (angles.sin() * self.scaling).to(dtype)
