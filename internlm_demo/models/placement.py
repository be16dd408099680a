"""Spread a model over several GPUs: a balanced, contiguous split of its blocks."""

from __future__ import annotations

from torch import nn

from .transformers_compat import ROTARY_MODULE

GIB = 1024**3


def model_blocks(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, bytes) in forward order: embeddings, each layer, final norm and head."""
    def size(module: nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    inner = model.model
    blocks = [("model.embed_tokens", size(inner.embed_tokens)), (ROTARY_MODULE, 0)]
    blocks += [(f"model.layers.{i}", size(layer)) for i, layer in enumerate(inner.layers)]
    blocks += [("model.norm", size(inner.norm)), ("lm_head", size(model.lm_head))]
    return blocks


def plan_device_map(blocks: list[tuple[str, int]], num_gpus: int, capacity_bytes: int | None = None) -> dict[str, int]:
    """Assign consecutive blocks to GPUs 0..n-1 so that the fullest GPU holds as little as possible.

    Raises ValueError when the blocks cannot fit ``capacity_bytes`` per GPU.
    """
    if num_gpus < 1:
        raise ValueError("num_gpus must be at least 1")
    sizes = [b for _, b in blocks]

    def split(limit: int) -> list[int] | None:
        owners, gpu, load = [], 0, 0
        for block_size in sizes:
            if load + block_size > limit and load > 0:
                gpu, load = gpu + 1, 0
            if gpu >= num_gpus or block_size > limit:
                return None
            owners.append(gpu)
            load += block_size
        return owners

    low, high = max(sizes), sum(sizes)
    while low < high:
        middle = (low + high) // 2
        if split(middle) is None:
            low = middle + 1
        else:
            high = middle
    if capacity_bytes is not None and low > capacity_bytes:
        raise ValueError(
            f"the model needs {low / GIB:.1f} GiB on its fullest GPU when split over {num_gpus}, "
            f"more than the {capacity_bytes / GIB:.1f} GiB available; use more GPUs or a smaller dtype"
        )
    return dict(zip((name for name, _ in blocks), split(low)))


def balanced_device_map(model: nn.Module, num_gpus: int, capacity_bytes: int | None = None) -> dict[str, str]:
    """Device map (module name → ``cuda:N``) for ``model`` over ``num_gpus`` GPUs."""
    plan = plan_device_map(model_blocks(model), num_gpus, capacity_bytes)
    return {name: f"cuda:{gpu}" for name, gpu in plan.items()}


def dispatch(model: nn.Module, device_map: dict) -> None:
    """Attach hooks that move activations between GPUs; weights are already in place."""
    from accelerate import dispatch_model

    dispatch_model(model, device_map=device_map)
