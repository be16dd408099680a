"""The transformers internals this project relies on, in one place.

Everything else uses transformers' public classes (``LlamaConfig``, ``LlamaForCausalLM``, BLIP-2 parts).
What is here is not a documented API: the rotary module's buffers and counters, the name of the KV-cache
argument, the rope keys of a config. ``tests/test_transformers_compat.py`` checks each of them and
names this module when a release changes one; ``requirements.txt`` states the range that passed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

# The rotary embedding is one module shared by all layers (not a buffer per layer, as in the originals).
ROTARY_MODULE = "model.rotary_emb"
# transformers renamed ``past_key_values`` to ``cache`` in 5.2x; accept either generation.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def llama_config(rope: dict, **fields) -> LlamaConfig:
    """A LlamaConfig with rope settings given as ``{"rope_type", "rope_theta", "factor"?}``."""
    return LlamaConfig(rope_parameters=rope, **fields)


def rope_parameters(config: LlamaConfig) -> dict:
    """The config's rope settings: ``rope_type`` ("default" or "dynamic"), ``rope_theta``, ``factor``."""
    return config.rope_parameters


def new_cache(config: LlamaConfig) -> DynamicCache:
    """An empty KV cache for one generation; pass it as ``**{CACHE_ARGUMENT: cache}``."""
    return DynamicCache(config=config)


def rebuild_rotary(model: LlamaForCausalLM, device, inv_freq: torch.Tensor | None = None) -> None:
    """Replace the rotary module (built on the meta device) with a real one on ``device``.

    ``inv_freq``: frequencies to use instead of the computed ones (the originals stored them rounded).
    """
    rotary = type(model.model.rotary_emb)(model.config).to(device)
    if inv_freq is not None:
        inv_freq = inv_freq.to(device=device, dtype=torch.float32)
        rotary.inv_freq.copy_(inv_freq)
        rotary.original_inv_freq.copy_(inv_freq)
    model.model.rotary_emb = rotary


def reset_dynamic_rope(model: LlamaForCausalLM) -> None:
    """Forget frequencies a dynamic-NTK rope rescaled for an earlier, longer sequence.

    transformers (like the original code) keeps them, so a reply would depend on what the
    model generated before; each generation starts as on a freshly loaded model instead.
    """
    rotary = model.model.rotary_emb
    if "dynamic" in str(rotary.rope_type) and rotary.max_seq_len_cached != rotary.original_max_seq_len:
        rotary.register_buffer("inv_freq", rotary.original_inv_freq.clone(), persistent=False)
        rotary.max_seq_len_cached = rotary.original_max_seq_len


@dataclass(frozen=True)
class RopeInputs:
    """What an engine needs to compute cos/sin itself as transformers does."""

    original_inv_freq: torch.Tensor  # [head_dim / 2], float32, before any dynamic rescaling
    attention_scaling: float  # cos and sin are multiplied by it
    parameters: dict  # rope_parameters: rope_type, rope_theta, factor


def rope_inputs(model: LlamaForCausalLM) -> RopeInputs:
    rotary = model.model.rotary_emb
    return RopeInputs(rotary.original_inv_freq.float(), float(rotary.attention_scaling), rope_parameters(model.config))
