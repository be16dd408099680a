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
from ..i18n import Phrase

if TYPE_CHECKING:
    import torch

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
JSON_KINDS = {list: Phrase("loading", "json_list"), str: Phrase("loading", "json_string"),
              int: Phrase("loading", "json_number"), float: Phrase("loading", "json_number"),
              bool: Phrase("loading", "json_bool"), type(None): Phrase("loading", "json_null")}
# Generous bounds no InternLM checkpoint comes near; past them a config.json is damaged, not ambitious.
SIZE_LIMITS = {
    "vocab_size": 4_194_304, "hidden_size": 65_536, "intermediate_size": 262_144, "num_hidden_layers": 1_000,
    "num_attention_heads": 1_024, "num_key_value_heads": 1_024, "head_dim": 1_024,
    "max_position_embeddings": 16_777_216, "num_query_token": 1_024,
}
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
FLAGS = ("bias", "qkv_bias", "mlp_bias", "tie_word_embeddings")


def fix_download(folder: Path) -> Phrase:
    """The command that fetches a damaged file of ``folder`` again."""
    return Phrase("loading", "fix_download", {"folder": folder})


def read_json(path: Path, what: Phrase) -> dict:
    """Parse a JSON object of the model folder, or fail naming it (``what`` says what the file is)."""
    if not path.is_file():
        raise ModelFolderError("file_missing", {"path": path, "what": what})
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError("json_invalid", {"path": path, "error": str(exc),
                                                "fix": fix_download(path.parent)}) from exc
    if not isinstance(document, dict):
        kind = JSON_KINDS.get(type(document), Phrase("loading", "json_value"))
        raise ModelFolderError("json_not_object", {"path": path, "kind": kind, "fix": fix_download(path.parent)})
    return document


def bad_value(path: Path, key: str, value, wanted: Phrase) -> ModelFolderError:
    """The one-line error for a settings file whose ``key`` holds ``value`` instead of ``wanted``."""
    return ModelFolderError("bad_value", {"path": path, "key": key, "value": repr(value), "wanted": wanted,
                                          "name": path.name, "fix": fix_download(path.parent)})


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_size(path: Path, key: str, value) -> None:
    limit = SIZE_LIMITS.get(key.rpartition(".")[2], SIZE_LIMITS["hidden_size"])
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit):
        raise bad_value(path, key, value, Phrase("loading", "want_whole_number", {"limit": limit}))


def check_positive(path: Path, key: str, value, below: float = math.inf, at_least: float = 0.0) -> None:
    if not (is_number(value) and math.isfinite(value) and value > 0 and at_least <= value < below):
        lower = Phrase("loading", "at_least", {"at_least": at_least}) if at_least else Phrase("loading", "above_zero")
        upper = Phrase("loading", "below", {"below": below}) if below != math.inf else ""
        raise bad_value(path, key, value, Phrase("loading", "want_finite", {"lower": lower, "upper": upper}))


def check_token_ids(path: Path, key: str, value, vocab_size: int) -> None:
    """A token id (or, for eos, a list of them) that the vocabulary has; None is allowed (not set)."""
    ids = value if isinstance(value, list) and key.startswith("eos") else [value]
    if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size
                                     for i in ids):
        wanted = (Phrase("loading", "want_token_ids", {"last": vocab_size - 1}) if key.startswith("eos")
                  else Phrase("loading", "want_token_id", {"last": vocab_size - 1}))
        raise bad_value(path, key, value, wanted)


def check_config(config: dict, path: Path) -> None:
    """Refuse a config.json whose model sizes, rope settings, flags or token ids are unusable, before
    anything is built; the error names the file, the key and the fix."""
    for key in REQUIRED_SIZES:
        if key not in config:
            raise ModelFolderError("config_lacks", {"path": path, "key": key, "fix": fix_download(path.parent)})
    for key in SIZE_LIMITS:
        if config.get(key) is not None:
            check_size(path, key, config[key])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise bad_value(path, "num_attention_heads", heads,
                        Phrase("loading", "want_head_divisor", {"hidden_size": config["hidden_size"]}))
    if heads % kv_heads:
        raise bad_value(path, "num_key_value_heads", kv_heads,
                        Phrase("loading", "want_kv_head_divisor", {"heads": heads}))
    for key in FLAGS:
        if key in config and not isinstance(config[key], bool):
            raise bad_value(path, key, config[key], Phrase("loading", "want_bool"))
    if "rms_norm_eps" in config:
        check_positive(path, "rms_norm_eps", config["rms_norm_eps"], below=1.0)
    if "rope_theta" in config:
        check_positive(path, "rope_theta", config["rope_theta"])
    for key in ("rope_scaling", "rotary"):
        section = config.get(key)
        if section is not None and not isinstance(section, dict):
            raise bad_value(path, key, section,
                            Phrase("loading", "want_rope_object", {"example": '{"type": "dynamic", "factor": 2.0}'}))
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
        raise ModelFolderError("not_a_folder", {"folder": folder})
    return read_json(folder / "config.json", Phrase("loading", "what_config"))


def weight_files(folder: Path) -> list[Path]:
    """The shards of the checkpoint, checked to exist and to be non-empty."""
    for index_name in WEIGHT_INDEXES:
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = read_json(index_path, Phrase("loading", "what_shard_index")).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelFolderError("no_weight_map", {"path": index_path, "fix": fix_download(folder)})
            shards = [folder / name for name in dict.fromkeys(weight_map.values())]
            break
    else:
        shards = [folder / name for name in SINGLE_WEIGHT_FILES if (folder / name).is_file()][:1]
        if not shards:
            raise ModelFolderError("no_weights", {"folder": folder, "fix": fix_download(folder)})
    for shard in shards:
        if not shard.is_file():
            raise ModelFolderError("shard_missing", {"name": shard.name, "folder": folder, "fix": fix_download(folder)})
        if shard.stat().st_size == 0:
            raise ModelFolderError("shard_empty", {"path": shard, "fix": fix_download(folder)})
    return shards


def tensor_bytes(folder: Path, shards: list[Path]) -> int:
    """The bytes of tensor data in the checkpoint: the index's ``total_size``, else the shards' file sizes."""
    for index_name in WEIGHT_INDEXES:
        if (folder / index_name).is_file():
            index = read_json(folder / index_name, Phrase("loading", "what_shard_index"))
            declared = index.get("metadata", {}).get("total_size")
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
        raise ModelFolderError("shard_corrupt", {"path": shard, "error": str(exc),
                                                 "fix": fix_download(shard.parent)}) from exc


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
            what = culprit[1] if culprit else Phrase("loading", "an_object")
            raise ModelFolderError("shard_runs_code", {"path": shard, "culprit": what,
                                                       "fix": fix_download(shard.parent)}) from None
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ModelFolderError("shard_corrupt", {"path": shard, "error": str(exc).splitlines()[0],
                                                     "fix": fix_download(shard.parent)}) from exc
