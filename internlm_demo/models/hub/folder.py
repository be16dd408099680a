"""The target folder: checks before a download, verification after it, the completion marker and progress."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelFolderError
from .. import registry
from ..registry import KnownModel
from .failures import DownloadError, NotEnoughSpaceError, SourceRefusedError, first_line

PARTIAL_STATE = ".internlm-demo-partial.json"  # which source and revision the files on disk came from
WORKING_ROOM_BYTES = 2 * 10**9  # room for the SDKs' temporary part files
MIN_SHARD_FILL = 0.98  # the shards must hold at least this share of the index's total_size
MODELSCOPE_DEFAULT_REVISION = "master"  # the branch modelscope serves when no revision is asked for
SDK_LOCKS = ".internlm-demo-sdk"  # modelscope's per-file locks for this folder (its default is shared per user)
SDK_TEMP_SUFFIXES = (".incomplete", ".parallel_tmp")


@dataclass(frozen=True)
class ListedFile:
    """One file of a repository as its source lists it; ``sha256`` is None where the source publishes none."""

    path: str
    size: int
    sha256: str | None = None


@contextlib.contextmanager
def bytes_progress(name: str, total: int, enabled: bool) -> Iterator[object | None]:
    """One progress bar, in bytes, for a whole set of files (None when disabled)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar


def check_output_path(folder: Path) -> None:
    """DownloadError when ``folder`` is a file or lies under one."""
    if folder.exists() and not folder.is_dir():
        raise DownloadError(f"--output {folder} is a file; pass the path of a folder (a missing one is created).")
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DownloadError(f"cannot create {folder}: {parent} is a file, not a folder; pass another --output.")


def prepare_folder(folder: Path) -> bool:
    """Create ``folder`` if needed and check that files can be written in it; True when it was created here."""
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise DownloadError(
            f"cannot write to {folder} ({exc.strerror or exc}); pass --output with a folder you can write to."
        ) from exc
    return created


@contextlib.contextmanager
def exclusive_access(folder: Path) -> Iterator[None]:
    """Hold an advisory lock on ``folder``; DownloadError at once when another download holds it."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(
                f"another download is writing into {folder} right now; wait for it to finish, "
                "or pass a different --output."
            ) from None
        yield
    finally:
        os.close(handle)


def tidy_after_failure(folder: Path, created: bool) -> None:
    """After a failed download that fetched nothing, leave no trace: no partial marker, no folder we created."""
    shutil.rmtree(folder / SDK_LOCKS, ignore_errors=True)
    if local_files(folder) or any(path.name.endswith(SDK_TEMP_SUFFIXES) for path in folder.iterdir()):
        return
    (folder / PARTIAL_STATE).unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def local_files(folder: Path) -> dict[str, int]:
    """Size of every downloaded file under ``folder`` by relative path; hidden files and SDK temp files excluded."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        hidden = any(part.startswith(".") for part in relative.parts)
        if path.is_file() and not hidden and not path.name.endswith(SDK_TEMP_SUFFIXES):
            files[relative.as_posix()] = path.stat().st_size
    return files


def check_file(path: Path) -> bool:
    """Check one file whose format can be checked; True when it was checked and is intact, False when uncheckable.

    Raises ModelFolderError when a checkable file (shard, JSON, tokenizer.model) is empty, truncated or corrupt.
    """
    from ..checkpoint import read_shard_header

    if path.suffix == ".safetensors" or (path.suffix == ".bin" and path.name.startswith("pytorch_model")):
        read_shard_header(path)
    elif path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError("json_unparsable", {"path": path, "error": str(exc)}) from exc
    elif path.name == "tokenizer.model":
        import sentencepiece

        try:
            sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise ModelFolderError("not_sentencepiece", {"path": path, "error": first_line(exc)}) from exc
    else:
        return False
    return True


def discard_damaged_files(folder: Path) -> dict[str, int]:
    """Delete truncated or corrupt files left by an interrupted download; return the verified ones with their sizes.

    Files whose format cannot be checked (README, code) stay and are fetched again; they are small.
    """
    intact = {}
    for name, size in local_files(folder).items():
        try:
            if check_file(folder / name):
                intact[name] = size
        except ModelFolderError:
            (folder / name).unlink()
    return intact


def verify_folder(folder: Path) -> None:
    """Check that ``folder`` holds a complete checkpoint. Raises ModelFolderError.

    Complete means: config.json, tokenizer.model and every shard named in the index exist; the shard
    headers read; JSON files parse and the tokenizer loads; the shards hold the bytes the index declares.
    """
    from ..checkpoint import read_config, read_shard_header, tensor_bytes, weight_files

    read_config(folder)
    if not (folder / "tokenizer.model").is_file():
        raise ModelFolderError("missing", {"path": folder / "tokenizer.model"})
    shards = weight_files(folder)
    for shard in shards:
        read_shard_header(shard)
    for name in local_files(folder):
        if folder / name not in shards:
            check_file(folder / name)
    declared, held = tensor_bytes(folder, shards), sum(shard.stat().st_size for shard in shards)
    if held < declared * MIN_SHARD_FILL:
        raise ModelFolderError("shards_truncated", {"folder": folder, "held": held, "declared": declared})


def read_record(path: Path) -> dict | None:
    """A JSON object from ``path`` (partial state, weight index), or None when absent or unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def check_folder_is_ours(folder: Path, model: KnownModel, origin: dict | None) -> None:
    """DownloadError unless ``folder`` is new, empty, or a (partial) download of this model.

    Resuming deletes files that fail their checks, so folders this module did not create are left alone.
    """
    if origin is not None and origin["model"] != model.id:
        raise DownloadError(f"{folder} already holds {origin['model']}; choose another --output for {model.id}.")
    if origin is None and folder.is_dir() and any(folder.iterdir()):
        raise DownloadError(f"{folder} already holds files that download.py did not put there; "
                            f"choose a new or empty folder with --output for {model.id}.")


def partial_state(model: KnownModel, source: str, revision: str | None) -> dict:
    """Where the files of a download come from; a resume trusts only files of the same origin."""
    return {"model": model.id, "source": source, "revision": revision}


def files_origin(folder: Path) -> dict | None:
    """The origin recorded by an unfinished download, else by the complete marker, else None."""
    record = read_record(folder / PARTIAL_STATE) or read_record(folder / registry.COMPLETE_MARKER)
    return {key: record.get(key) for key in ("model", "source", "revision")} if record else None


def finish(folder: Path, model: KnownModel, source: str, revision: str | None, listed: list[ListedFile]) -> None:
    """Verify the fetched folder and mark it complete; DownloadError says what is wrong and whether a re-run helps."""
    repo = model.repo_on(source)
    names = {entry.path for entry in listed}
    absent = sorted(set(index_shards(folder)) - names)
    if absent:
        raise SourceRefusedError(
            f"{absent[0]} is named in the shard index of {repo} but {source} does not have it (missing upstream); "
            "re-running will not help: try the other --source or another --revision."
        )
    try:
        verify_folder(folder)
    except ModelFolderError as problem:
        if source == "openxlab":
            discard_damaged_files(folder)
            raise DownloadError(
                f"the files {source} delivered for {model.id} failed verification: {problem} "
                "Damaged files were removed; re-run the same command to fetch them again."
            ) from problem
        reason = str(problem).split("; re-run `")[0].rstrip(".")
        raise DownloadError(
            f"{source}'s copy of {repo} matches its own listing but does not load ({reason}); fetching it again "
            "will not help: try --source openxlab or another --revision."
        ) from problem
    stale = [name for name in local_files(folder) if name not in names]
    for leftover in [*stale, *(path.name for path in folder.iterdir() if path.name.endswith(SDK_TEMP_SUFFIXES))]:
        (folder / leftover).unlink()
    shutil.rmtree(folder / SDK_LOCKS, ignore_errors=True)
    canonical = json.dumps(sorted([entry.path, entry.size, entry.sha256] for entry in listed))
    record = {
        "model": model.id,
        "source": source,
        "repo": repo,
        "revision": revision or (MODELSCOPE_DEFAULT_REVISION if source == "modelscope" else None),
        "listing_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {entry.path: {"size": entry.size, "sha256": entry.sha256,
                               "mtime_ns": (folder / entry.path).stat().st_mtime_ns} for entry in listed},
    }
    staging = folder / (registry.COMPLETE_MARKER + ".tmp")
    staging.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(staging, folder / registry.COMPLETE_MARKER)
    (folder / PARTIAL_STATE).unlink(missing_ok=True)


def index_shards(folder: Path) -> list[str]:
    """The shard files the folder's weight index names (none without an index)."""
    from ..checkpoint import WEIGHT_INDEXES

    for index_name in WEIGHT_INDEXES:
        weight_map = (read_record(folder / index_name) or {}).get("weight_map")
        if isinstance(weight_map, dict):
            return list(dict.fromkeys(weight_map.values()))
    return []


def check_disk_space(folder: Path, model: KnownModel, missing: int) -> None:
    """NotEnoughSpaceError unless the disk of ``folder`` can take ``missing`` more bytes plus working room."""
    needed = missing + WORKING_ROOM_BYTES
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise NotEnoughSpaceError(
            f"not enough disk space for {model.id}: it needs about {human_size(needed)} at {folder} "
            f"({human_size(missing)} still to fetch + {human_size(WORKING_ROOM_BYTES)} working room) "
            f"but only {human_size(free)} are free; free some space or pass --output DIR on a larger disk."
        )


@contextlib.contextmanager
def total_progress(folder: Path, name: str, expected_bytes: int, enabled: bool) -> Iterator[None]:
    """One progress bar of the bytes in ``folder``, for an SDK that reports no progress of its own to us."""
    with bytes_progress(name, expected_bytes, enabled) as bar:
        if bar is None:
            yield
            return

        def on_disk() -> int:
            total = 0
            for path in folder.rglob("*"):
                with contextlib.suppress(OSError):  # the SDK renames and deletes files meanwhile
                    total += path.stat().st_size if path.is_file() and not path.name.startswith(".") else 0
            return total

        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(0.5):
                bar.n = on_disk()
                bar.total = max(bar.total, bar.n)
                bar.refresh()

        watcher = threading.Thread(target=refresh, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
            bar.n = on_disk()
            bar.total = max(bar.total, bar.n)


def human_size(size: int) -> str:
    """Bytes as GB (or MB below 1 GB), decimal units."""
    return f"{size / 10**9:.1f} GB" if size >= 10**9 else f"{size / 10**6:.1f} MB"
