"""Device maps for num_gpus = 1…8 over simulated GPU sizes, for the real 7B and 20B shapes."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from internlm_demo.models.placement import GIB, balanced_device_map, model_blocks, plan_device_map

REAL_SHAPES = {
    "internlm-chat-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                             vocab_size=103168, attention_bias=True),
    "internlm-chat-20b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=60, num_attention_heads=40,
                              vocab_size=103168, attention_bias=False),
}


def meta_model(shape: dict) -> LlamaForCausalLM:
    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**shape, torch_dtype=torch.float16)).to(torch.float16)


def best_max_load(sizes: list[int], parts: int) -> int:
    """The smallest possible fullest-GPU load over every contiguous split (exhaustive)."""
    best = sum(sizes)
    for cuts in itertools.combinations(range(1, len(sizes)), min(parts, len(sizes)) - 1):
        bounds = (0, *cuts, len(sizes))
        best = min(best, max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_plan_is_optimal_on_small_random_models(seed):
    rng = random.Random(seed)
    blocks = [(f"b{i}", rng.randint(1, 100)) for i in range(rng.randint(3, 9))]
    parts = rng.randint(1, 4)
    plan = plan_device_map(blocks, parts)
    owners = [plan[name] for name, _ in blocks]
    assert owners == sorted(owners) and owners[0] == 0 and max(owners) < parts, "contiguous, in order"
    loads = [sum(size for (name, size) in blocks if plan[name] == gpu) for gpu in range(parts)]
    assert max(loads) == best_max_load([size for _, size in blocks], parts)


@pytest.mark.parametrize("model_id", REAL_SHAPES)
@pytest.mark.parametrize("num_gpus", range(1, 9))
def test_real_shapes_balance(model_id, num_gpus):
    model = meta_model(REAL_SHAPES[model_id])
    blocks = model_blocks(model)
    total = sum(size for _, size in blocks)
    assert total == sum(p.numel() * 2 for p in model.parameters())
    device_map = balanced_device_map(model, num_gpus)
    assert device_map["model.embed_tokens"] == "cuda:0"
    assert device_map["lm_head"] == f"cuda:{num_gpus - 1}"
    loads = [sum(size for name, size in blocks if device_map[name] == f"cuda:{gpu}") for gpu in range(num_gpus)]
    largest_block = max(size for _, size in blocks)
    assert max(loads) <= total / num_gpus + largest_block
    print(f"{model_id} over {num_gpus}: " + ", ".join(f"{load / GIB:.2f}" for load in loads) + " GiB")


@pytest.mark.parametrize(("model_id", "gpu_gib", "fits_on"), [
    ("internlm-chat-7b", 24, 1), ("internlm-chat-7b", 40, 1), ("internlm-chat-7b", 80, 1),
    ("internlm-chat-20b", 24, 2), ("internlm-chat-20b", 40, 1), ("internlm-chat-20b", 32, 2),
])
def test_fewest_gpus_that_fit_simulated_sizes(model_id, gpu_gib, fits_on):
    model = meta_model(REAL_SHAPES[model_id])
    blocks = model_blocks(model)
    if fits_on > 1:
        with pytest.raises(ValueError, match="more than the"):
            plan_device_map(blocks, fits_on - 1, capacity_bytes=gpu_gib * GIB)
    plan = plan_device_map(blocks, fits_on, capacity_bytes=gpu_gib * GIB)
    assert set(plan.values()) == set(range(fits_on))
