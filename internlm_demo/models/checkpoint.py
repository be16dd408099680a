"""Read an original InternLM model folder: config, shard index and tensors, validated."""

from __future__ import annotations

import json
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


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file of the model folder, or fail naming it."""
    if not path.is_file():
        raise ModelFolderError(f"{path} is missing: {what}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc}); {FIX_DOWNLOAD.format(folder=path.parent)}.") from exc


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
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ModelFolderError(
                f"{shard} is truncated or corrupt ({str(exc).splitlines()[0]}); {FIX_DOWNLOAD.format(folder=shard.parent)}."
            ) from exc
