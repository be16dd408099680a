"""Fetch InternLM checkpoints from modelscope or openxlab into a verified, resumable folder.

Files land directly in the model's folder. The folder receives ``registry.COMPLETE_MARKER``
only after every file was verified, so an interrupted download never looks complete.
Re-running the same download keeps what verifies, deletes what does not, and fetches the rest.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import glob
import io
import json
import logging
import os
import shlex
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import ModelFolderError
from . import registry
from .registry import KnownModel

log = logging.getLogger(__name__)

SOURCES = ("modelscope", "openxlab")
PARTIAL_STATE = ".internlm-demo-partial.json"  # which source and revision the files on disk came from
WORKING_ROOM_BYTES = 2 * 10**9  # room for the SDKs' temporary part files
MIN_SHARD_FILL = 0.98  # the shards must hold at least this share of the index's total_size
SDK_TEMP_SUFFIXES = (".incomplete", ".parallel_tmp")
INSTALL_HINTS = {
    "modelscope": "pip install modelscope",
    "openxlab": 'pip install --no-deps openxlab==0.1.3 && pip install "oss2~=2.17.0"',
}
AUTH_HINTS = {
    "openxlab": (
        "openxlab serves downloads only to signed-in users: create an AccessKey/SecretKey pair in your "
        "openxlab account settings, then export OPENXLAB_AK=... and OPENXLAB_SK=... or run `openxlab login`"
    ),
    "modelscope": "sign in with `modelscope login --token TOKEN` or export MODELSCOPE_API_TOKEN=TOKEN",
}


class DownloadError(Exception):
    """A download cannot go on; the message says why and what to do, in one line."""


class UnknownModelError(DownloadError):
    """The model id is not in the registry."""


class NotEnoughSpaceError(DownloadError):
    """The target disk cannot hold the model."""


class SourceUnavailableError(DownloadError):
    """A source could not be reached, or failed in the middle of a transfer."""


class SourceRefusedError(DownloadError):
    """A source answered but refused: missing credentials, no access, or no such repository."""


def resolve_known_model(model_id: str) -> KnownModel:
    """The registry entry for a model id (or a repo id on either source), or UnknownModelError."""
    model = registry.find_model(model_id)
    if model is not None:
        return model
    close = difflib.get_close_matches(model_id, list(registry.KNOWN_MODELS), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UnknownModelError(
        f"unknown model {model_id!r}: {hint}known models are {', '.join(registry.KNOWN_MODELS)} "
        "(`.venv/bin/python download.py --list` shows their sizes)."
    )


def download_model(
    model_id: str,
    source: str = "modelscope",
    output: str | Path | None = None,
    revision: str | None = None,
    allow_fallback: bool = True,
    progress: bool = True,
) -> Path:
    """Download a known model into ``output`` (default: ``models_dir()/MODEL``), verify it, return the folder.

    ``source`` is tried first; with ``allow_fallback`` the other source is tried when it is
    unreachable or refuses. A folder that is already complete is returned without any transfer.
    Raises DownloadError (or a subclass) with a one-line explanation.
    """
    model = resolve_known_model(model_id)
    folder = Path(output).expanduser() if output is not None else registry.models_dir() / model.id
    sources = sources_to_try(model, source, revision, allow_fallback)
    origin = files_origin(folder)
    check_folder_is_ours(folder, model, origin)
    if is_complete(folder) and revision in (None, origin["revision"]):
        return folder
    (folder / registry.COMPLETE_MARKER).unlink(missing_ok=True)
    intact = discard_damaged_files(folder) if folder.is_dir() else {}
    check_disk_space(folder, model, present_bytes=sum(local_files(folder).values()) if folder.is_dir() else 0)
    folder.mkdir(parents=True, exist_ok=True)

    failures = []
    for name in sources:
        trusted = intact if origin == partial_state(model, name, revision) else {}
        origin = partial_state(model, name, revision)
        (folder / PARTIAL_STATE).write_text(json.dumps(origin), encoding="utf-8")
        try:
            with total_progress(folder, int(model.download_gb * 10**9), progress):
                fetch(name, model.repo_on(name), folder, revision, sorted(trusted), progress)
        except (SourceUnavailableError, SourceRefusedError) as failure:
            failures.append(failure)
            intact = discard_damaged_files(folder)
            if name != sources[-1]:
                log.warning("%s; trying the next source.", str(failure).rstrip("."))
            continue
        finish(folder, model, name, revision)
        return folder
    reasons = "; ".join(str(failure).rstrip(".") for failure in failures)
    if any(isinstance(failure, SourceUnavailableError) for failure in failures):
        reasons += f"; files fetched so far are kept in {folder}, re-run the same command to resume"
    if len(failures) == 1:
        raise type(failures[0])(f"{reasons}.") from failures[0]
    raise DownloadError(f"could not download {model.id} from any source: {reasons}.")


def sources_to_try(model: KnownModel, source: str, revision: str | None, allow_fallback: bool) -> list[str]:
    """The sources to try in order, or DownloadError when none can serve this request."""
    source = source.lower()
    if source not in SOURCES:
        raise DownloadError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}.")
    other = next(s for s in SOURCES if s != source)
    if not model.repo_on(source) and not allow_fallback:
        raise DownloadError(f"{model.id} is not published on {source}; use --source {other}.")
    if revision and source == "openxlab" and not allow_fallback:
        raise DownloadError(
            "openxlab serves only the latest files of a repository; drop --revision or use --source modelscope."
        )
    candidates = [source, other] if allow_fallback else [source]
    return [s for s in candidates if model.repo_on(s) and not (revision and s == "openxlab")]


def fetch(source: str, repo: str, folder: Path, revision: str | None, skip: list[str], progress: bool) -> None:
    """Let the source's SDK put every file of ``repo`` except ``skip`` into ``folder``; DownloadError on failure."""
    fetcher = {"modelscope": fetch_from_modelscope, "openxlab": fetch_from_openxlab}[source]
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    try:
        with quiet:
            fetcher(repo, folder, revision, skip, progress)
    except DownloadError:
        raise
    except ImportError as exc:
        raise SourceUnavailableError(
            f"{source}: its SDK is not installed ({exc}); install it with `{INSTALL_HINTS[source]}`."
        ) from exc
    except Exception as exc:
        failure = describe_source_failure(source, repo, revision, exc)
        if failure is None:
            raise
        raise failure from exc


def fetch_from_modelscope(repo: str, folder: Path, revision: str | None, skip: list[str], progress: bool) -> None:
    """``modelscope.snapshot_download`` into ``folder``; it resumes its own ``.incomplete`` files."""
    import modelscope

    callbacks = None
    if progress:
        from modelscope.hub.callback import TqdmCallback

        callbacks = [TqdmCallback]
    modelscope.snapshot_download(
        repo,
        revision=revision,
        local_dir=str(folder),
        ignore_patterns=[glob.escape(name) for name in skip] or None,
        progress_callbacks=callbacks,
    )


def fetch_from_openxlab(repo: str, folder: Path, revision: str | None, skip: list[str], progress: bool) -> None:
    """``openxlab.model.download`` into ``folder``, bypassing its symlinked ~/.cache copy.

    openxlab 0.1.3 prints a refusal ("Error: Get download url error: ...") and returns None
    instead of raising, so the printed text is captured to explain the failure.
    """
    import openxlab.model

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        downloaded = openxlab.model.download(repo, output=str(folder), cache=False, ignore=skip or None)
    if downloaded is None:
        said = " ".join(line.strip() for line in printed.getvalue().splitlines() if line.strip()) or "no reason given"
        raise SourceRefusedError(f"openxlab refused to serve {repo} ({said}); {AUTH_HINTS['openxlab']}.")


def describe_source_failure(source: str, repo: str, revision: str | None, exc: Exception) -> DownloadError | None:
    """The DownloadError an SDK exception stands for, or None when it is not a source failure."""
    import requests

    status = (
        getattr(getattr(exc, "response", None), "status_code", None)
        or getattr(exc, "status_code", None)
        or getattr(exc.__cause__, "status_code", None)
    )
    reason = first_line(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return NotEnoughSpaceError(f"the disk filled up during the download ({reason}); free some space "
                                   "and re-run the same command to resume.")
    if status in (401, 403):
        return SourceRefusedError(f"{source} refused access to {repo} (HTTP {status}: {reason}); {AUTH_HINTS[source]}.")
    if status == 404:
        wanted = f"{repo} at revision {revision}" if revision else repo
        return SourceRefusedError(f"{source} has no repository {wanted} (HTTP 404: {reason}).")
    if status and 400 <= status < 500:
        return SourceRefusedError(f"{source} rejected the request for {repo} (HTTP {status}: {reason}).")
    unreachable = (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                   requests.exceptions.ChunkedEncodingError, requests.exceptions.HTTPError)
    if isinstance(exc, unreachable) or is_modelscope_hub_error(exc):
        return SourceUnavailableError(
            f"{source} could not be reached or failed mid-transfer ({type(exc).__name__}: {reason})."
        )
    return None


def is_modelscope_hub_error(exc: Exception) -> bool:
    """Whether ``exc`` is one of modelscope's own transfer/server errors (checked without importing modelscope)."""
    return any(cls.__module__.startswith(("modelscope_hub", "modelscope.hub")) for cls in type(exc).__mro__)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text, shortened for a one-line message."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    from .checkpoint import read_shard_header

    if path.suffix == ".safetensors" or (path.suffix == ".bin" and path.name.startswith("pytorch_model")):
        read_shard_header(path)
    elif path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError(f"{path} is not valid JSON ({exc}).") from exc
    elif path.name == "tokenizer.model":
        import sentencepiece

        try:
            sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise ModelFolderError(f"{path} is not a sentencepiece model ({first_line(exc)}).") from exc
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


def verify_folder(folder: Path) -> dict[str, int]:
    """Check that ``folder`` holds a complete checkpoint; return every file's size. Raises ModelFolderError.

    Complete means: config.json, tokenizer.model and every shard named in the index exist; the shard
    headers read; JSON files parse and the tokenizer loads; the shards hold the bytes the index declares.
    """
    from .checkpoint import (
        WEIGHT_INDEXES,
        read_config,
        read_json,
        read_shard_header,
        weight_files,
    )

    read_config(folder)
    if not (folder / "tokenizer.model").is_file():
        raise ModelFolderError(f"{folder / 'tokenizer.model'} is missing.")
    shards = weight_files(folder)
    for shard in shards:
        read_shard_header(shard)
    for name in local_files(folder):
        if folder / name not in shards:
            check_file(folder / name)
    for index_name in WEIGHT_INDEXES:
        if (folder / index_name).is_file():
            declared = read_json(folder / index_name, "the shard index").get("metadata", {}).get("total_size")
            held = sum(shard.stat().st_size for shard in shards)
            if declared and held < declared * MIN_SHARD_FILL:
                raise ModelFolderError(
                    f"the shards in {folder} hold {held} bytes but {index_name} declares {declared}; "
                    "some are truncated."
                )
    return local_files(folder)


def read_record(path: Path) -> dict | None:
    """A JSON record this module wrote (complete marker or partial state), or None when absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def check_folder_is_ours(folder: Path, model: KnownModel, origin: dict | None) -> None:
    """DownloadError unless ``folder`` is new, empty, or a (partial) download of this model.

    Resuming deletes files that fail their checks, so folders this module did not create are left alone.
    """
    if origin is not None and origin["model"] != model.id:
        raise DownloadError(f"{folder} already holds {origin['model']}; choose another --output for {model.id}.")
    if origin is None and folder.is_dir() and any(folder.iterdir()):
        raise DownloadError(f"{folder} already holds files that download.py did not put there; "
                            f"choose a new or empty folder with --output for {model.id}.")


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` carries the complete marker and every file still has its recorded size."""
    sizes = (read_record(folder / registry.COMPLETE_MARKER) or {}).get("files") or {}
    return bool(sizes) and all(
        (folder / name).is_file() and (folder / name).stat().st_size == size for name, size in sizes.items()
    )


def partial_state(model: KnownModel, source: str, revision: str | None) -> dict:
    """Where the files of a download come from; a resume trusts only files of the same origin."""
    return {"model": model.id, "source": source, "revision": revision}


def files_origin(folder: Path) -> dict | None:
    """The origin recorded by an unfinished download, else by the complete marker, else None."""
    record = read_record(folder / PARTIAL_STATE) or read_record(folder / registry.COMPLETE_MARKER)
    return {key: record.get(key) for key in ("model", "source", "revision")} if record else None


def finish(folder: Path, model: KnownModel, source: str, revision: str | None) -> None:
    """Verify the fetched folder and mark it complete; on damage delete the bad files and raise DownloadError."""
    try:
        sizes = verify_folder(folder)
    except ModelFolderError as problem:
        discard_damaged_files(folder)
        raise DownloadError(
            f"the files {source} delivered for {model.id} failed verification: {problem} "
            "Damaged files were removed; re-run the same command to fetch them again."
        ) from problem
    for leftover in folder.iterdir():
        if leftover.name.endswith(SDK_TEMP_SUFFIXES):
            leftover.unlink()
    record = {
        "model": model.id,
        "source": source,
        "repo": model.repo_on(source),
        "revision": revision,
        "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": sizes,
    }
    staging = folder / (registry.COMPLETE_MARKER + ".tmp")
    staging.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(staging, folder / registry.COMPLETE_MARKER)
    (folder / PARTIAL_STATE).unlink(missing_ok=True)


def check_disk_space(folder: Path, model: KnownModel, present_bytes: int) -> None:
    """NotEnoughSpaceError unless the disk of ``folder`` can take the rest of the model plus working room."""
    missing = max(int(model.download_gb * 10**9) - present_bytes, 0)
    needed = missing + WORKING_ROOM_BYTES
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise NotEnoughSpaceError(
            f"not enough disk space for {model.id}: it needs about {human_size(needed)} at {folder} "
            f"({human_size(missing)} still to fetch + {human_size(WORKING_ROOM_BYTES)} working room) "
            f"but only {human_size(free)} are free; free some space or pass --output DIR on a larger disk."
        )


@contextlib.contextmanager
def total_progress(folder: Path, expected_bytes: int, enabled: bool) -> Iterator[None]:
    """A "total" progress bar of the bytes in ``folder``, refreshed while an SDK shows its per-file bars."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    def on_disk() -> int:
        total = 0
        for path in folder.rglob("*"):
            with contextlib.suppress(OSError):  # the SDK renames and deletes files meanwhile
                total += path.stat().st_size if path.is_file() and path.name != PARTIAL_STATE else 0
        return total

    stop = threading.Event()
    bar = tqdm(total=expected_bytes, initial=on_disk(), unit="B", unit_scale=True, desc="total")

    def refresh() -> None:
        while not stop.wait(0.5):
            with contextlib.suppress(OSError):
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
        bar.close()


def human_size(size: int) -> str:
    """Bytes as GB (or MB below 1 GB), decimal units."""
    return f"{size / 10**9:.1f} GB" if size >= 10**9 else f"{size / 10**6:.1f} MB"


def app_commands(model: KnownModel, folder: Path) -> list[str]:
    """The commands that start each app able to run this model from ``folder``."""
    default = registry.models_dir() / model.id
    name = model.id if folder.resolve() == default.resolve() else shlex.quote(str(folder))
    if model.family == "xcomposer":
        return [f"bash scripts/run.sh xcomposer -- --model {name}"]
    return [f"bash scripts/run.sh {app} -- --model {name}" for app in ("chat", "agent", "server")]


def summary(model_id: str, folder: Path) -> str:
    """Where a downloaded model is, its size, and how to start the apps with it."""
    model = resolve_known_model(model_id)
    sizes = local_files(folder)
    lines = [f"{model.id} is ready in {folder} ({human_size(sum(sizes.values()))}, {len(sizes)} files, verified).",
             "Start it with:"]
    lines += [f"  {command}" for command in app_commands(model, folder)]
    return "\n".join(lines)


def model_table() -> str:
    """The known models with their download size, float16 GPU memory and sources, as a text table."""
    header = ("MODEL", "FAMILY", "DOWNLOAD", "GPU (fp16)", "CONTEXT", "SOURCES", "")
    rows = [header]
    for model in registry.KNOWN_MODELS.values():
        sources = ", ".join(s for s in SOURCES if model.repo_on(s))
        state = "downloaded" if registry.downloaded_folder(model.id) else ""
        rows.append((model.id, model.family, f"{model.download_gb:.1f} GB", f"{model.fp16_gpu_gb:.0f} GB",
                     f"{model.context_window // 1024}k", sources, state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"Sizes in GB (10^9 bytes). Models go to {registry.models_dir()} unless --output is given.")
    return "\n".join(lines)
