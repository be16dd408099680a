"""``load_xcomposer``: every file read, check and device placement for an XComposer v1 folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from ..errors import ModelFolderError
from ..generation.engine import describe_engine, engine_for
from ..models.checkpoint import check_config, iter_tensors, read_config, tensor_bytes, weight_files
from ..models.families import INTERNLM
from ..models.loading import (
    ModelInfo,
    build_llama,
    choose_device,
    device_for,
    fill_parameters,
    llama_config_for,
    read_folder_tokenizer,
    resolve_folder,
    with_progress,
)
from ..models.placement import model_blocks, plan_device_map
from ..models.tokenizer import InternLMTokenizer
from ..i18n import Phrase
from .checkpoint import image_tensors, llm_tensors, lora_spec_for, merge_lora
from .model import XComposer
from .network import ImageEncoder, qformer_config_for, vision_config_for

MODEL_TYPE = "InternLMXComposer"
DOWNLOADABLE = ("internlm-xcomposer-7b", "internlm-xcomposer-vl-7b")
DEMO_MODEL_ID = "internlm-xcomposer-demo-tiny"


def resolve_xcomposer_folder(path_or_id: str | Path | None) -> tuple[Path, str, bool]:
    """(folder, model id, is_demo): a folder, a known id, or None → a downloaded XComposer or the embedded demo."""
    from .demo import ensure_demo_xcomposer

    return resolve_folder(path_or_id, DOWNLOADABLE, demo=lambda: (ensure_demo_xcomposer(), DEMO_MODEL_ID))


def read_xcomposer_folder(folder: Path) -> tuple[dict, InternLMTokenizer]:
    """config.json (checked to be XComposer v1) and the tokenizer of an original folder."""
    config = read_config(folder)
    model_type = config.get("model_type", "")
    if model_type != MODEL_TYPE:
        raise ModelFolderError("not_xcomposer", {"path": folder / "config.json", "model_type": repr(model_type),
                                                 "expected": MODEL_TYPE})
    check_config(config, folder / "config.json")
    return config, read_folder_tokenizer(folder)


def build_image_encoder(config: dict, llm_hidden_size: int) -> ImageEncoder:
    """The image side on the meta device (no memory), sized from config.json."""
    vision = vision_config_for(config)
    with torch.device("meta"):
        return ImageEncoder(
            vision,
            qformer_config_for(config, vision.hidden_size),
            int(config.get("num_query_token", 64)),
            llm_hidden_size,
        )


def image_encoder_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The ViT runs in the model dtype; the small Q-Former bridge stays float32, as BLIP-2 keeps it."""
    return dtype if name.startswith("visual_encoder.") else torch.float32


def plan_xcomposer_devices(
    image_encoder_bytes: int, llm_blocks: list[tuple[str, int]], num_gpus: int
) -> tuple[int, dict[str, int]]:
    """(GPU of the image encoder, GPU per language-model block) for a balanced, contiguous split.

    The image encoder and the token embeddings form one block, so both land on the first GPU
    together (image embeddings join the text embeddings there); the layers follow in order.
    """
    (embed_name, embed_bytes), *rest = llm_blocks
    plan = plan_device_map([("image encoder + embeddings", image_encoder_bytes + embed_bytes), *rest], num_gpus)
    first = plan.pop("image encoder + embeddings")
    return first, {embed_name: first, **plan}


def xcomposer_device_map(
    image_encoder: ImageEncoder, llm_config, dtype: torch.dtype, device: str, num_gpus: int | None
) -> tuple[str, dict]:
    """(image encoder device, language-model device map) for ``num_gpus`` GPUs, or everything on ``device``."""
    if not num_gpus or num_gpus <= 1:
        return device, {"": device}
    with torch.device("meta"):
        llm = LlamaForCausalLM(llm_config)
    # model_blocks sizes the meta model in float32; the weights will be stored in ``dtype``.
    llm_blocks = [(name, size * dtype.itemsize // 4) for name, size in model_blocks(llm)]
    image_bytes = sum(p.numel() * image_encoder_dtype(n, dtype).itemsize for n, p in image_encoder.named_parameters())
    first, plan = plan_xcomposer_devices(image_bytes, llm_blocks, num_gpus)
    return f"cuda:{first}", {name: f"cuda:{gpu}" for name, gpu in plan.items()}


def load_image_encoder_weights(encoder: ImageEncoder, tensors, device: str, dtype: torch.dtype, shard_names) -> None:
    """Fill the meta ImageEncoder from mapped tensors on ``device``, checking names and shapes."""
    fill_parameters(encoder, tensors, lambda name, tensor: tensor.to(device=device, dtype=image_encoder_dtype(name, dtype)),
                    shard_names, part=Phrase("loading", "part_image_encoder"))
    encoder.eval()


def load_xcomposer(
    path_or_id: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    num_gpus: int | None = None,
    progress: bool = True,
    engine: str = "auto",
) -> XComposer:
    """Load an original InternLM-XComposer v1 folder (or known id; None → a downloaded one or the embedded demo).

    Each tensor goes straight from the checkpoint to its device, so ``num_gpus`` > 1 never needs the
    whole model on one GPU. ``engine`` as for ``load_chat_model``: "auto"/"fast" decode on the batched
    engine, "simple" on the transformers model. Raises ModelFolderError with the file and the fix when the
    folder is unusable.
    """
    folder, model_id, is_demo = resolve_xcomposer_folder(path_or_id)
    config, tokenizer = read_xcomposer_folder(folder)
    llm_config = llama_config_for(INTERNLM, {**config, "pad_token_id": None})  # the original -1 is not a token
    device, torch_dtype = choose_device(device, dtype, num_gpus)
    shards = weight_files(folder)
    shard_names = [s.name for s in shards]
    image_encoder = build_image_encoder(config, llm_config.hidden_size)
    image_device, llm_map = xcomposer_device_map(image_encoder, llm_config, torch_dtype, device, num_gpus)

    lora = lora_spec_for(config)
    tensors = iter_tensors(shards)
    if progress:
        tensors = with_progress(tensors, tensor_bytes(folder, shards), f"loading {model_id} (language model)")
    tensors = merge_lora(llm_tensors(tensors), lora, lambda module: device_for(module, llm_map))
    llm, llm_map = build_llama(llm_config, tensors, device, torch_dtype, num_gpus, shard_names, device_map=llm_map)
    load_image_encoder_weights(
        image_encoder, image_tensors(iter_tensors(shards)), image_device, torch_dtype, shard_names
    )

    info = ModelInfo(
        model_id=model_id,
        folder=folder,
        family="xcomposer",
        dtype=str(torch_dtype).removeprefix("torch."),
        device_map={
            "image_encoder": str(image_device),
            **{f"llm.{k}" if k else "llm": str(v) for k, v in llm_map.items()},
        },
        context_window=llm_config.max_position_embeddings,
        is_demo=is_demo,
    )
    built = engine_for(llm, engine, info.context_window)
    info = replace(info, engine=describe_engine(built))
    return XComposer(image_encoder, llm, tokenizer, info, built)
