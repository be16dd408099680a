"""Turn an original InternLM folder into a native transformers Llama model: all I/O happens here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from ..errors import ModelFolderError
from ..i18n import Phrase
from . import registry
from .checkpoint import check_config, check_token_ids, iter_tensors, read_config, read_json, tensor_bytes, weight_files
from .demo import ensure_demo_model
from .families import Family, family_for
from .placement import balanced_device_map, dispatch
from .standin import STANDIN_MODEL_ID, STANDS_IN_FOR, ensure_standin_model
from .tokenizer import ChatTokenizer, read_fast_tokenizer, read_tokenizer
from .transformers_compat import ROTARY_MODULE, llama_config, rebuild_rotary, rope_parameters

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what a checkpoint may store
CHAT_DEFAULT_IDS = ("internlm-chat-7b", "internlm2_5-7b-chat")
DEMO_MODEL_ID = "internlm-demo-tiny"
# InternLM-20B's "rotary": {"type": "dynamic"} carries no factor; its model card claims 16k on a 4k window.
V1_DYNAMIC_ROTARY_FACTOR = 4.0


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model, for the UI and for exported conversations."""

    model_id: str
    folder: Path
    family: str
    dtype: str
    device_map: dict
    context_window: int
    is_demo: bool = False  # random weights: its replies are noise
    is_standin: bool = False  # a small real model answering until InternLM weights are downloaded
    stands_in_for: str = ""  # the InternLM model id a demo or stand-in model's banner tells the user to get
    engine: str = ""  # how tokens are made (set by serving: engine, kernels, slots, KV budget)


def resolve_folder(path_or_id: str | Path | None, default_ids=CHAT_DEFAULT_IDS, demo=None) -> tuple[Path, str, bool]:
    """(folder, model id, is_demo) for a folder path, a known model id, or None.

    None means the first of ``default_ids`` that is downloaded, else ``demo()``'s ``(folder, model id)``,
    else the stand-in model. The stand-in and the tiny random demo model can also be named by their ids.
    """
    if path_or_id is None:
        for model_id in default_ids:
            folder = registry.downloaded_folder(model_id)
            if folder is not None:
                return folder, model_id, False
        if demo is not None:
            return (*demo(), True)
        return ensure_standin_model(), STANDIN_MODEL_ID, False
    text = str(path_or_id)
    if text == STANDIN_MODEL_ID:
        return ensure_standin_model(), STANDIN_MODEL_ID, False
    if text == DEMO_MODEL_ID:
        return ensure_demo_model(), DEMO_MODEL_ID, True
    if text in registry.KNOWN_MODELS:
        folder = registry.downloaded_folder(text)
        if folder is None:
            raise ModelFolderError("not_downloaded", {"model_id": text, "folder": registry.models_dir() / text})
        return folder, text, False
    folder = Path(text).expanduser()
    if not folder.exists():
        known = ", ".join([*registry.KNOWN_MODELS, STANDIN_MODEL_ID, DEMO_MODEL_ID])
        raise ModelFolderError("unknown_model", {"name": text, "known": known})
    return folder.resolve(), folder.name, False


def llama_config_for(family: Family, config: dict) -> LlamaConfig:
    """The native config equivalent to an original InternLM ``config.json``."""
    try:
        heads = config["num_attention_heads"]
        rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))}
        scaling = config.get("rope_scaling") or {}
        rotary = config.get("rotary") or {}
        if scaling.get("type", scaling.get("rope_type")) == "dynamic":
            rope.update(rope_type="dynamic", factor=float(scaling.get("factor", 1.0)))
        elif rotary.get("type") == "dynamic":
            rope.update(rope_type="dynamic", factor=1.0, rope_theta=float(rotary.get("base", 10000.0)))
        elif rotary.get("base"):
            rope["rope_theta"] = float(rotary["base"])
        attention_bias = config.get("qkv_bias", config.get("bias", False))
        pad = config.get("pad_token_id", 2)  # XComposer's -1 means none
        return llama_config(
            rope,
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            attention_bias=bool(attention_bias),
            mlp_bias=bool(config.get("mlp_bias", False)) if family.name == "internlm3" else False,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            bos_token_id=config.get("bos_token_id", 1),
            eos_token_id=config.get("eos_token_id", 2),
            pad_token_id=pad if isinstance(pad, int) and 0 <= pad < config["vocab_size"] else None,
        )
    except KeyError as exc:
        raise ModelFolderError("config_key_missing", {"key": exc.args[0]}) from exc


def context_window_of(config: LlamaConfig, family: Family, original: dict) -> int:
    """Tokens the model can attend to: the trained window times a dynamic-rope factor."""
    rope = rope_parameters(config)
    factor = rope.get("factor", 1.0) if rope.get("rope_type") == "dynamic" else 1.0
    if family.name == "internlm" and (original.get("rotary") or {}).get("type") == "dynamic":
        factor = V1_DYNAMIC_ROTARY_FACTOR
    return int(config.max_position_embeddings * factor)


def split_fused_wqkv(wqkv: torch.Tensor, heads: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split InternLM2's ``wqkv`` weight or bias (per KV group: q heads, then k, then v) into q, k and v."""
    group = heads // kv_heads
    head_dim = wqkv.shape[0] // (kv_heads * (group + 2))
    trailing = wqkv.shape[1:]  # (in_features,) for the weight, () for the bias
    grouped = wqkv.reshape(kv_heads, group + 2, head_dim, *trailing)
    q = grouped[:, :group].reshape(heads * head_dim, *trailing)
    k = grouped[:, group].reshape(kv_heads * head_dim, *trailing)
    v = grouped[:, group + 1].reshape(kv_heads * head_dim, *trailing)
    return q, k, v


def native_tensors(family: Family, config: LlamaConfig, tensors):
    """Rename (and split) original tensors into Llama names; rotary buffers are passed through."""
    for name, tensor in tensors:
        for old, new in family.tensor_renames:
            if old.startswith("."):
                name = name.replace(old, new)
            elif name.startswith(old):
                name = new + name[len(old):]
        if family.fused_qkv and family.fused_qkv in name:
            prefix, suffix = name.split(family.fused_qkv)
            parts = split_fused_wqkv(tensor, config.num_attention_heads, config.num_key_value_heads)
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                yield f"{prefix}.self_attn.{proj}.{suffix}", part
            continue
        yield name, tensor


def assign_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in place of the (meta) parameter ``name``."""
    module_path, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_path)
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def fill_parameters(module: nn.Module, tensors, place, shard_names, part: Phrase | str = "") -> None:
    """Give every meta parameter of ``module`` its tensor, placed by ``place(name, tensor)``; shapes checked.

    Tensors the module has no parameter for are skipped; a parameter left without one is an error.
    """
    expected = {name: p.shape for name, p in module.named_parameters()}
    loaded: set[str] = set()
    for name, tensor in tensors:
        if name not in expected:
            log.info("ignoring tensor %s, which the %smodel does not use", name, part)
            continue
        if tuple(tensor.shape) != tuple(expected[name]):
            raise ModelFolderError("tensor_shape", {"name": name, "shape": tuple(tensor.shape),
                                                    "expected": tuple(expected[name]), "shards": ", ".join(shard_names)})
        if tensor.dtype not in WEIGHT_DTYPES:
            raise ModelFolderError("tensor_dtype", {"name": name, "shards": ", ".join(shard_names),
                                                    "dtype": str(tensor.dtype).removeprefix("torch.")})
        placed = place(name, tensor)
        if not torch.isfinite(placed).all():
            if placed.dtype == tensor.dtype:
                raise ModelFolderError("tensor_not_finite", {"name": name, "shards": ", ".join(shard_names)})
            raise ModelFolderError("tensor_not_finite_converted", {"name": name, "shards": ", ".join(shard_names),
                                                                   "dtype": str(placed.dtype).removeprefix("torch.")})
        assign_tensor(module, name, placed)
        loaded.add(name)
    missing = sorted(set(expected) - loaded)
    if missing:
        raise ModelFolderError("tensors_missing", {"count": len(missing), "part": part, "first": missing[0]})


def load_llama_weights(model: LlamaForCausalLM, tensors, device_map: dict, dtype: torch.dtype, shard_names) -> torch.Tensor | None:
    """Load mapped tensors onto their devices; returns the rotary inv_freq the checkpoint stores, if any."""
    stored: dict[str, torch.Tensor] = {}

    def without_rotary_buffers(pairs):
        for name, tensor in pairs:
            if name.endswith("rotary_emb.inv_freq"):
                stored["inv_freq"] = tensor
            else:
                yield name, tensor

    fill_parameters(model, without_rotary_buffers(tensors),
                    lambda name, tensor: tensor.to(device=device_for(name, device_map), dtype=dtype), shard_names)
    return stored.get("inv_freq")


def device_for(name: str, device_map: dict):
    """The device of the module that owns parameter ``name`` under ``device_map``."""
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        key = ".".join(parts[:end])
        if key in device_map:
            return device_map[key]
    raise KeyError(name)


def choose_device(device: str | None, dtype: str | None, num_gpus: int | None) -> tuple[str, torch.dtype]:
    """Default placement: float16 on a GPU when one exists, float32 on the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelFolderError("no_gpu")
    if num_gpus and num_gpus > 1 and num_gpus > torch.cuda.device_count():
        raise ModelFolderError("too_few_gpus", {"wanted": num_gpus, "count": torch.cuda.device_count()})
    if dtype is None:
        dtype = "float32" if device == "cpu" else "float16"
    if dtype not in DTYPES:
        raise ModelFolderError("unknown_dtype", {"dtype": dtype, "known": ", ".join(DTYPES)})
    return device, DTYPES[dtype]


def read_folder_tokenizer(folder: Path) -> ChatTokenizer:
    """The tokenizer of a model folder: ``tokenizer.model`` (InternLM) or ``tokenizer.json``, with
    ``tokenizer_config.json`` when present."""
    sentencepiece_file, json_file = folder / "tokenizer.model", folder / "tokenizer.json"
    tokenizer_file = json_file if json_file.is_file() and not sentencepiece_file.is_file() else sentencepiece_file
    if not tokenizer_file.is_file():
        raise ModelFolderError("tokenizer_missing", {"path": sentencepiece_file})
    tokenizer_config_path = folder / "tokenizer_config.json"
    tokenizer_config = (read_json(tokenizer_config_path, Phrase("loading", "what_tokenizer_settings"))
                        if tokenizer_config_path.is_file() else {})
    try:
        if tokenizer_file is json_file:
            return read_fast_tokenizer(folder, tokenizer_config)
        return read_tokenizer(folder, tokenizer_config)
    except Exception as exc:  # sentencepiece raises RuntimeError/OSError, tokenizers a plain Exception
        raise ModelFolderError("tokenizer_unreadable", {"path": tokenizer_file, "error": str(exc)}) from exc


def read_model_folder(folder: Path) -> tuple[dict, Family, ChatTokenizer, dict]:
    """config.json, family, tokenizer and generation_config.json of an original folder."""
    config = read_config(folder)
    tokenizer = read_folder_tokenizer(folder)
    model_type = config.get("model_type", "")
    family = family_for(model_type, tokenizer.special_tokens)
    if family is None:
        raise ModelFolderError("unknown_model_type", {"path": folder / "config.json", "model_type": repr(model_type)})
    check_config(config, folder / "config.json")
    generation_path = folder / "generation_config.json"
    generation_config = (read_json(generation_path, Phrase("loading", "what_generation_settings"))
                         if generation_path.is_file() else {})
    check_token_ids(generation_path, "eos_token_id", generation_config.get("eos_token_id"), config["vocab_size"])
    return config, family, tokenizer, generation_config


def build_llama(config: LlamaConfig, tensors, device: str, dtype: torch.dtype, num_gpus: int | None, shard_names,
                device_map: dict | None = None) -> tuple[LlamaForCausalLM, dict]:
    """Instantiate a Llama without allocating, then fill it from ``tensors`` directly on its devices.

    ``device_map`` overrides the balanced split over ``num_gpus`` (XComposer plans it with its vision tower).
    """
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if device_map is None:
        device_map = balanced_device_map(model, num_gpus) if num_gpus and num_gpus > 1 else {"": device}
    if config.tie_word_embeddings and "lm_head" in device_map:
        device_map["lm_head"] = device_map["model.embed_tokens"]  # one tensor serves both, on the first GPU
    stored_inv_freq = load_llama_weights(model, tensors, device_map, dtype, shard_names)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # The original code reads inv_freq from the checkpoint, where it was stored rounded to float16.
    rebuild_rotary(model, device_for(ROTARY_MODULE, device_map), stored_inv_freq)
    model.eval()
    if len(set(map(str, device_map.values()))) > 1:
        dispatch(model, device_map)
    return model, device_map


def with_progress(tensors, total_bytes: int, desc: str):
    """Pass ``tensors`` through while a bar shows the bytes read against the checkpoint's total, rate and ETA."""
    with tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, leave=False) as bar:
        for name, tensor in tensors:
            yield name, tensor
            bar.update(tensor.numel() * tensor.element_size())


@dataclass(frozen=True)
class LoadedModel:
    """A native transformers model with what it needs to chat: tokenizer, family, facts and stop ids."""

    model: LlamaForCausalLM
    tokenizer: ChatTokenizer
    family: Family
    info: ModelInfo
    stop_ids: set[int]


def load_model(path_or_id: str | Path | None = None, device: str | None = None, dtype: str | None = None,
               num_gpus: int | None = None, progress: bool = True) -> LoadedModel:
    """Read, validate and place an InternLM chat checkpoint (folder or known id; None → a downloaded
    model or the stand-in) as a native transformers Llama."""
    folder, model_id, is_demo = resolve_folder(path_or_id)
    config, family, tokenizer, generation_config = read_model_folder(folder)
    llama_config = llama_config_for(family, config)
    device, torch_dtype = choose_device(device, dtype, num_gpus)
    shards = weight_files(folder)
    tensors = iter_tensors(shards)
    if progress:
        tensors = with_progress(tensors, tensor_bytes(folder, shards), f"loading {model_id}")
    tensors = native_tensors(family, llama_config, tensors)
    model, device_map = build_llama(llama_config, tensors, device, torch_dtype, num_gpus, [s.name for s in shards])
    info = ModelInfo(
        model_id=model_id,
        folder=folder,
        family=family.name,
        dtype=str(torch_dtype).removeprefix("torch."),
        device_map={k: str(v) for k, v in device_map.items()},
        context_window=context_window_of(llama_config, family, config),
        is_demo=is_demo,
        is_standin=model_id == STANDIN_MODEL_ID,
        stands_in_for=STANDS_IN_FOR if is_demo or model_id == STANDIN_MODEL_ID else "",
    )
    eos = generation_config.get("eos_token_id", config.get("eos_token_id", tokenizer.eos_id))
    return LoadedModel(model, tokenizer, family, info, set(eos if isinstance(eos, list) else [eos]))
