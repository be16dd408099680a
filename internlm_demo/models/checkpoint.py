"""Read an original InternLM model folder: config, shard index and tensors, validated."""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from ..errors import ModelFolderError

if TYPE_CHECKING:
    import torch

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FIX_DOWNLOAD = "re-run `.venv/bin/python download.py MODEL --output {folder}` to fetch it again"
JSON_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "true/false", type(None): "null"}
# Generous bounds no InternLM checkpoint comes near; past them a config.json is damaged, not ambitious.
SIZE_LIMITS = {
    "vocab_size": 4_194_304, "hidden_size": 65_536, "intermediate_size": 262_144, "num_hidden_layers": 1_000,
    "num_attention_heads": 1_024, "num_key_value_heads": 1_024, "head_dim": 1_024,
    "max_position_embeddings": 16_777_216, "num_query_token": 1_024,
}
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
FLAGS = ("bias", "qkv_bias", "mlp_bias", "tie_word_embeddings")


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON object of the model folder, or fail naming it."""
    if not path.is_file():
        raise ModelFolderError(f"{path} is missing: {what}.")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc}); {FIX_DOWNLOAD.format(folder=path.parent)}.") from exc
    if not isinstance(document, dict):
        raise ModelFolderError(f"{path} holds a JSON {JSON_KINDS.get(type(document), 'value')}, not an object; "
                               f"restore the original file ({FIX_DOWNLOAD.format(folder=path.parent)}).")
    return document


def bad_value(path: Path, key: str, value, wanted: str) -> ModelFolderError:
    """The one-line error for a settings file whose ``key`` holds ``value`` instead of ``wanted``."""
    return ModelFolderError(f"{path}: {key} is {value!r}, but it must be {wanted}; restore the original "
                            f"{path.name} ({FIX_DOWNLOAD.format(folder=path.parent)}).")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_size(path: Path, key: str, value) -> None:
    limit = SIZE_LIMITS.get(key.rpartition(".")[2], SIZE_LIMITS["hidden_size"])
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit):
        raise bad_value(path, key, value, f"a whole number from 1 to {limit}")


def check_positive(path: Path, key: str, value, below: float = math.inf, at_least: float = 0.0) -> None:
    if not (is_number(value) and math.isfinite(value) and value > 0 and at_least <= value < below):
        bound = f" below {below:g}" if below != math.inf else ""
        raise bad_value(path, key, value, f"a finite number {'≥ %g' % at_least if at_least else 'above 0'}{bound}")


def check_token_ids(path: Path, key: str, value, vocab_size: int) -> None:
    """A token id (or, for eos, a list of them) that the vocabulary has; None is allowed (not set)."""
    ids = value if isinstance(value, list) and key.startswith("eos") else [value]
    if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size
                                     for i in ids):
        raise bad_value(path, key, value, f"a token id from 0 to {vocab_size - 1}" + (" or a list of them" * key.startswith("eos")))


def check_config(config: dict, path: Path) -> None:
    """Refuse a config.json whose model sizes, rope settings, flags or token ids are unusable, before
    anything is built; the error names the file, the key and the fix."""
    for key in REQUIRED_SIZES:
        if key not in config:
            raise ModelFolderError(f"{path} lacks {key!r}; restore the original config.json "
                                   f"({FIX_DOWNLOAD.format(folder=path.parent)}).")
    for key in SIZE_LIMITS:
        if config.get(key) is not None:
            check_size(path, key, config[key])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise bad_value(path, "num_attention_heads", heads,
                        f"a divisor of hidden_size (hidden_size {config['hidden_size']} is not a multiple of it)")
    if heads % kv_heads:
        raise bad_value(path, "num_key_value_heads", kv_heads, f"a divisor of num_attention_heads ({heads})")
    for key in FLAGS:
        if key in config and not isinstance(config[key], bool):
            raise bad_value(path, key, config[key], "true or false")
    if "rms_norm_eps" in config:
        check_positive(path, "rms_norm_eps", config["rms_norm_eps"], below=1.0)
    if "rope_theta" in config:
        check_positive(path, "rope_theta", config["rope_theta"])
    for key in ("rope_scaling", "rotary"):
        section = config.get(key)
        if section is not None and not isinstance(section, dict):
            raise bad_value(path, key, section, 'null or an object such as {"type": "dynamic", "factor": 2.0}')
        for name in ("factor", "base"):
            if section and name in section:
                check_positive(path, f"{key}.{name}", section[name], at_least=1.0 if name == "factor" else 0.0)
    for key in ("bos_token_id", "eos_token_id"):
        check_token_ids(path, key, config.get(key), config["vocab_size"])
    for part, dims in (config.get("tiny_dims") or {}).items():
        for key, value in (dims or {}).items():
            (check_positive if isinstance(value, float) else check_size)(path, f"tiny_dims.{part}.{key}", value)


def read_config(folder: Path) -> dict:
    """``config.json`` of an original model folder."""
    if not folder.is_dir():
        raise ModelFolderError(
            f"{folder} is not a folder. Pass a folder that holds config.json and the weights, "
            "or a known model id (see `.venv/bin/python download.py --list`)."
        )
    return read_json(folder / "config.json", "this does not look like a model folder (pass the folder that holds config.json)")


def weight_files(folder: Path) -> list[Path]:
    """The shards of the checkpoint, checked to exist and to be non-empty."""
    for index_name in WEIGHT_INDEXES:
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = read_json(index_path, "the shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelFolderError(f"{index_path} has no weight_map; {FIX_DOWNLOAD.format(folder=folder)}.")
            shards = [folder / name for name in dict.fromkeys(weight_map.values())]
            break
    else:
        shards = [folder / name for name in SINGLE_WEIGHT_FILES if (folder / name).is_file()][:1]
        if not shards:
            raise ModelFolderError(
                f"{folder} holds no weights (no *.safetensors or pytorch_model*.bin with its index); "
                f"{FIX_DOWNLOAD.format(folder=folder)}."
            )
    for shard in shards:
        if not shard.is_file():
            raise ModelFolderError(
                f"{shard.name} is listed in the shard index but missing from {folder}; {FIX_DOWNLOAD.format(folder=folder)}."
            )
        if shard.stat().st_size == 0:
            raise ModelFolderError(f"{shard} is empty; {FIX_DOWNLOAD.format(folder=folder)}.")
    return shards


def tensor_bytes(folder: Path, shards: list[Path]) -> int:
    """The bytes of tensor data in the checkpoint: the index's ``total_size``, else the shards' file sizes."""
    for index_name in WEIGHT_INDEXES:
        if (folder / index_name).is_file():
            declared = read_json(folder / index_name, "the shard index").get("metadata", {}).get("total_size")
            if isinstance(declared, int) and declared > 0:
                return declared
    return sum(shard.stat().st_size for shard in shards)


def read_shard_header(shard: Path) -> list[str]:
    """Tensor names stored in one shard, read without loading the data (a cheap integrity check)."""
    try:
        if shard.suffix == ".safetensors":
            with safe_open(str(shard), framework="pt") as handle:
                return list(handle.keys())
        with zipfile.ZipFile(shard) as archive:
            if archive.testzip() is not None:
                raise zipfile.BadZipFile("a member fails its checksum")
            return [name for name in archive.namelist() if name.endswith("data.pkl")]
    except (SafetensorError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelFolderError(
            f"{shard} is truncated or corrupt ({exc}); {FIX_DOWNLOAD.format(folder=shard.parent)}."
        ) from exc


def iter_tensors(shards: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (name, tensor) of the checkpoint, one shard in memory at a time."""
    import torch  # here, so that checking a folder (download.py) does not pay for importing torch
    for shard in shards:
        try:
            if shard.suffix == ".safetensors":
                with safe_open(str(shard), framework="pt") as handle:
                    for name in handle.keys():
                        yield name, handle.get_tensor(name)
            else:
                state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
                yield from state.items()
                del state
        except pickle.UnpicklingError as exc:
            culprit = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            raise ModelFolderError(
                f"{shard} holds not only tensors: it asks to run Python code ({culprit[1] if culprit else 'an object'}),"
                f" which this loader never does; get the original weights ({FIX_DOWNLOAD.format(folder=shard.parent)})."
            ) from None
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ModelFolderError(
                f"{shard} is truncated or corrupt ({str(exc).splitlines()[0]}); {FIX_DOWNLOAD.format(folder=shard.parent)}."
            ) from exc
