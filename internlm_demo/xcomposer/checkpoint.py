"""Original XComposer v1 tensor names → the native modules, with the LoRA deltas merged in.

Pure functions over ``(name, tensor)`` streams; reading files and placing tensors happen in ``loading``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import ModelFolderError

LLM_PREFIX = "internlm_model."
# Original names → ImageEncoder names. A key starting with "." is replaced anywhere, otherwise as a prefix.
IMAGE_RENAMES = (
    ("visual_encoder.cls_token", "visual_encoder.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "visual_encoder.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.", "visual_encoder.embeddings.patch_embedding."),
    ("visual_encoder.blocks.", "visual_encoder.encoder.layers."),
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    (".attn.qkv.", ".self_attn.qkv."),
    (".attn.proj.", ".self_attn.projection."),
    ("Qformer.bert.embeddings.LayerNorm.", "qformer.layernorm."),
    ("Qformer.bert.encoder.layer.", "qformer.encoder.layer."),
    (".attention.self.", ".attention.attention."),
    (".crossattention.self.", ".crossattention.attention."),
)
# Buffers the original keeps but never uses (the Q-Former has no text input).
UNUSED_TENSORS = ("Qformer.bert.embeddings.position_ids",)
# ``learn_param`` entries of the LoRA config and the InternLM projections they adapt.
LORA_TARGETS = {
    "q": ("self_attn.q_proj",),
    "k": ("self_attn.k_proj",),
    "v": ("self_attn.v_proj",),
    "o": ("self_attn.o_proj",),
    "ffn": ("mlp.up_proj", "mlp.down_proj"),
}
LORA_PARTS = {".lora_A.weight": "A", ".lora_B.weight": "B", ".weight": "W"}


@dataclass(frozen=True)
class LoraSpec:
    """Which projections carry LoRA deltas and how they are scaled (``lora_alpha / lora_r``)."""

    targets: tuple[str, ...]
    scaling: float


def lora_spec_for(config: dict) -> LoraSpec | None:
    """The LoRA layout of an original ``config.json``, or None when it has none."""
    lora = config.get("internlm_lora") or config.get("lora_cfg")
    if not lora:
        return None
    try:
        targets = tuple(t for param in lora["learn_param"] for t in LORA_TARGETS[param])
        return LoraSpec(targets=targets, scaling=lora["lora_alpha"] / lora["lora_r"])
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        raise ModelFolderError("lora_config", {"error": repr(exc), "targets": ", ".join(LORA_TARGETS)}) from exc


def rename(name: str, renames) -> str:
    for old, new in renames:
        if old.startswith("."):
            name = name.replace(old, new)
        elif name.startswith(old):
            name = new + name[len(old) :]
    return name


def llm_tensors(tensors) -> Iterator[tuple[str, torch.Tensor]]:
    """The language model's tensors under Llama names (InternLM v1 already uses them, minus the prefix)."""
    for name, tensor in tensors:
        if name.startswith(LLM_PREFIX):
            yield name[len(LLM_PREFIX) :], tensor


def image_tensors(tensors) -> Iterator[tuple[str, torch.Tensor]]:
    """The image side's tensors under ImageEncoder names; EVA's q_bias/v_bias become one fused qkv bias."""
    pending_biases: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        if name.startswith(LLM_PREFIX) or name in UNUSED_TENSORS:
            continue
        if name.endswith((".attn.q_bias", ".attn.v_bias")):
            block, _, which = name.rpartition(".")
            biases = pending_biases.setdefault(block, {})
            biases[which] = tensor
            if len(biases) == 2:
                del pending_biases[block]
                fused = torch.cat([biases["q_bias"], torch.zeros_like(biases["q_bias"]), biases["v_bias"]])
                yield rename(f"{block}.qkv.bias", IMAGE_RENAMES), fused
            continue
        yield rename(name, IMAGE_RENAMES), tensor
    if pending_biases:
        block = next(iter(pending_biases))
        raise ModelFolderError("half_bias", {"block": block})


def lora_part(name: str, spec: LoraSpec) -> tuple[str, str] | None:
    """(module, "W" | "A" | "B") when ``name`` is a piece of a LoRA-adapted projection, else None."""
    for suffix, part in LORA_PARTS.items():
        if name.endswith(suffix):
            module = name[: -len(suffix)]
            if module.endswith(spec.targets):
                return module, part
            if part != "W":
                raise ModelFolderError("lora_unlisted", {"module": module})
            return None
    return None


def merge_lora(
    tensors, spec: LoraSpec | None, device_of: Callable[[str], torch.device | str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Fold each ``lora_B @ lora_A * scaling`` into its base weight, as the original's forward adds it.

    The merge runs in float32 on the device the weight will live on; base biases are untouched.
    """
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        if spec is None and ".lora_" in name:
            raise ModelFolderError("lora_unconfigured", {"name": name})
        piece = lora_part(name, spec) if spec else None
        if piece is None:
            yield name, tensor
            continue
        module, part = piece
        parts = pending.setdefault(module, {})
        parts[part] = tensor
        if len(parts) == 3:
            del pending[module]
            device = device_of(module)
            weight, down, up = (parts[p].to(device=device, dtype=torch.float32) for p in ("W", "A", "B"))
            yield f"{module}.weight", weight + (up @ down) * spec.scaling
    if pending:
        module, parts = next(iter(pending.items()))
        missing = sorted({"W": "weight", "A": "lora_A", "B": "lora_B"}[p] for p in {"W", "A", "B"} - set(parts))
        raise ModelFolderError("lora_incomplete", {"module": LLM_PREFIX + module, "missing": ", ".join(missing)})
