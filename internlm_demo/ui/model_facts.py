"""What the model panel shows: identity, placement, GPU memory and the speed of the last reply."""

from __future__ import annotations

from ..generation.params import GenerationStats
from ..serving.backend import ChatBackend


def model_facts(model: ChatBackend, stats: GenerationStats | None) -> dict:
    """What the model panel shows: identity, placement, memory per GPU, speed of the last reply."""
    info = model.info
    return {
        "served_by": served_by(model),
        "model_id": info.model_id,
        "family": info.family,
        "dtype": info.dtype,
        "device_map": device_summary(info.device_map),
        "memory": gpu_memory(info.device_map),
        "engine": info.engine,
        "tokens_per_s": stats.tokens_per_s if stats else None,
        "time_to_first_token_s": stats.time_to_first_token_s if stats and stats.new_tokens else None,
        "prompt_tokens": stats.prompt_tokens if stats else 0,  # TTFT grows with it (the prompt is read first)
    }


def served_by(model: ChatBackend) -> str | None:
    """The address of the server that generates, or None for a model in this process."""
    return None if model.info.device_map else str(model.info.folder)


def device_summary(device_map: dict) -> str:
    """``cpu``, ``cuda:0``, or ``cuda:0 ×17, cuda:1 ×16`` (blocks per device) for a split model."""
    if not device_map:
        return "—"
    counts: dict[str, int] = {}
    for device in device_map.values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{device} ×{n}" for device, n in counts.items())


def gpu_memory(device_map: dict) -> dict[str, int] | None:
    """Bytes allocated by torch on each GPU the model uses; None when it runs on no GPU."""
    devices = {f"cuda:{d}" if str(d).isdigit() else str(d) for d in device_map.values()}
    gpus = sorted(d for d in devices if d.startswith("cuda"))
    if not gpus:
        return None
    import torch

    return {device: torch.cuda.memory_allocated(device) for device in gpus}
