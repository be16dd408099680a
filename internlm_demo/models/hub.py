"""Fetch InternLM checkpoints from modelscope or openxlab into a verified, resumable folder.

Files land directly in the model's folder. ModelScope lists every file with its size and sha256: its SDK keeps
the local files that match the listing, resumes partial ones with HTTP Range and checks each file it fetches, so
a re-run fetches exactly what is missing, damaged or changed upstream. OpenXLab lists no checksums; its files are
checked by format. The folder receives ``registry.COMPLETE_MARKER`` (source, repo, revision, a hash of the
listing, every file's size and sha256) only after every file was verified, so an interrupted download never
looks complete.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFolderError
from . import registry
from .registry import KnownModel

log = logging.getLogger(__name__)

SOURCES = ("modelscope", "openxlab")
MODELSCOPE_DEFAULT_REVISION = "master"  # the branch modelscope serves when no revision is asked for
PARTIAL_STATE = ".internlm-demo-partial.json"  # which source and revision the files on disk came from
SDK_LOCKS = ".internlm-demo-sdk"  # modelscope's per-file locks for this folder (its default is shared per user)
WORKING_ROOM_BYTES = 2 * 10**9  # room for the SDKs' temporary part files
MIN_SHARD_FILL = 0.98  # the shards must hold at least this share of the index's total_size
SDK_TEMP_SUFFIXES = (".incomplete", ".parallel_tmp")
DROPPED = "connection dropped mid-transfer"
INSTALL_HINTS = {
    "modelscope": "pip install modelscope-hub",
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
    """A source answered but refused: missing credentials, no access, or no such repository or file."""


@dataclass(frozen=True)
class ListedFile:
    """One file of a repository as its source lists it; ``sha256`` is None where the source publishes none."""

    path: str
    size: int
    sha256: str | None = None


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
    check_output_path(folder)
    origin = files_origin(folder)
    check_folder_is_ours(folder, model, origin)
    if registry.is_complete(folder) and revision in (None, origin["revision"]):
        return folder
    created = prepare_folder(folder)
    with exclusive_access(folder):
        (folder / registry.COMPLETE_MARKER).unlink(missing_ok=True)
        try:
            return download_into(folder, model, sources, revision, progress)
        except DownloadError:
            tidy_after_failure(folder, created)
            raise


def download_into(folder: Path, model: KnownModel, sources: list[str], revision: str | None, progress: bool) -> Path:
    """Try each source in turn until one delivers a verified folder."""
    failures = []
    for name in sources:
        try:
            listed = fetch(name, model, folder, revision, progress)
        except (SourceUnavailableError, SourceRefusedError) as failure:
            failures.append(failure)
            if name != sources[-1]:
                log.warning("%s; trying the next source.", str(failure).rstrip("."))
            continue
        finish(folder, model, name, revision, listed)
        return folder
    if len(failures) == 1:
        raise failures[0]
    reasons = "; ".join(str(failure).rstrip(".") for failure in failures)
    raise DownloadError(f"could not download {model.id} from any source: {reasons}.")


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


def fetch(source: str, model: KnownModel, folder: Path, revision: str | None, progress: bool) -> list[ListedFile]:
    """Let the source's SDK bring ``folder`` in line with the repository; return its files as listed.

    Raises SourceUnavailableError / SourceRefusedError (which let the next source be tried) or DownloadError.
    """
    repo = model.repo_on(source)
    previous = files_origin(folder)
    origin = partial_state(model, source, revision)
    (folder / PARTIAL_STATE).write_text(json.dumps(origin), encoding="utf-8")
    try:
        if source == "modelscope":
            return fetch_from_modelscope(model, folder, revision or MODELSCOPE_DEFAULT_REVISION, progress)
        intact = discard_damaged_files(folder)
        return fetch_from_openxlab(model, folder, sorted(intact) if previous == origin else [], progress)
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


def fetch_from_modelscope(model: KnownModel, folder: Path, revision: str, progress: bool) -> list[ListedFile]:
    """List the repository, then let the SDK fetch into ``folder`` every file that does not match the listing.

    The SDK keeps local files whose size and sha256 match, resumes ``NAME.incomplete`` with HTTP Range, checks
    the sha256 of what it fetched (deleting and re-fetching a mismatch), and tries every file before it raises
    one error naming each failed file with its cause.
    """
    from modelscope_hub import HubApi
    from modelscope_hub.errors import FileDownloadError

    repo = model.modelscope_repo
    api = HubApi()
    with contextlib.suppress(Exception):  # as the SDK's own snapshot_download: the site that holds the repo
        api = HubApi(endpoint=api.resolve_endpoint_for_read(repo))
    listed = [ListedFile(entry.path, entry.size, entry.sha256)
              for entry in api.list_repo_files(repo, "model", revision=revision) if not entry.is_dir]
    present = local_files(folder)
    missing = sum(entry.size for entry in listed if present.get(entry.path) != entry.size)
    check_disk_space(folder, model, missing)
    with bytes_progress(model.id, missing, progress) as bar, sdk_output_hidden():
        try:
            api.download_repo(
                repo, "model", revision=revision, local_dir=folder, cache_dir=folder / SDK_LOCKS,
                file_list=[{"Path": entry.path, "Size": entry.size, "Sha256": entry.sha256} for entry in listed],
                progress_callbacks=[progress_callback(bar)] if bar is not None else None,
            )
        except FileDownloadError as failed:
            raise file_failures(repo, failed.failed_files, failed.total or len(listed)) from failed
    return listed


def file_failures(repo: str, failed: dict[str, BaseException], total: int) -> DownloadError:
    """One error naming what went wrong with each file modelscope could not deliver, and what to do about it."""
    from modelscope_hub import constants

    kinds: dict[str, list[str]] = {}
    for path, exc in failed.items():
        kinds.setdefault(failure_kind(exc), []).append(path)
    statuses = sorted({str(getattr(failed[path], "status_code", "")) for path in kinds.get("refused", [])})
    network = next((failed[path] for path in kinds.get("network", [])), None)
    advice = {
        "missing": "listed by modelscope but missing upstream (HTTP 404); re-running will not help until the "
                   "repository is fixed: try --source openxlab or another --revision",
        "checksum": "did not match the size or sha256 in the listing, again after the SDK deleted and re-fetched "
                    "the bad copy: modelscope's copy is damaged or changed during the download; re-run later "
                    "or try --source openxlab",
        "refused": f"refused (HTTP {'/'.join(statuses)}); {AUTH_HINTS['modelscope']}",
        "timeout": f"timed out (no data for {constants.DOWNLOAD_TIMEOUT} s, {constants.DOWNLOAD_RETRY_TIMES + 1} "
                   "attempts); re-run the same command to resume, and on a slow link raise "
                   f"MODELSCOPE_DOWNLOAD_TIMEOUT (now {constants.DOWNLOAD_TIMEOUT} s) or "
                   f"MODELSCOPE_DOWNLOAD_MAX_RETRIES (now {constants.DOWNLOAD_RETRY_TIMES})",
        "budget": "used up the SDK's time budget per file (MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT, now "
                  f"{constants.DOWNLOAD_TOTAL_TIMEOUT} s); re-run the same command to resume (partial files are "
                  "kept), and raise MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT for large files on a slow link",
        "network": f"could not be fetched: the connection failed ({network_reason(network)}); check the network, "
                   "then re-run the same command to resume (partial files are kept)",
        "disk": "could not be written: the disk is full; free some space and re-run the same command to resume",
    }
    parts = []
    for kind, paths in kinds.items():
        text = advice.get(kind) or f"failed ({first_line(failed[paths[0]])})"
        parts.append(f"{', '.join(sorted(paths))} {text}")
    message = f"modelscope could not deliver {len(failed)} of {total} files of {repo}: {'; '.join(parts)}."
    if set(kinds) <= {"missing", "refused"}:
        return SourceRefusedError(message)
    if set(kinds) == {"disk"}:
        return NotEnoughSpaceError(message)
    return SourceUnavailableError(message)


def failure_kind(exc: BaseException) -> str:
    """What went wrong with one file, from the modelscope SDK's error: missing, checksum, refused, timeout, budget,
    network, disk or other."""
    from modelscope_hub.errors import AuthenticationError, FileIntegrityError, NotExistError, PermissionDeniedError

    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    first = chain[0]
    if isinstance(first, NotExistError):
        return "missing"
    if isinstance(first, (AuthenticationError, PermissionDeniedError)):
        return "refused"
    if isinstance(first, FileIntegrityError):
        return "checksum"
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain):
        return "disk"
    if any(type(e).__name__ == "_DownloadDeadlineError" for e in chain):  # the SDK's total time per file
        return "budget"
    if any(isinstance(e, TimeoutError) or re.search(r"Timeout|Deadline", f"{type(e).__name__} {e}") for e in chain):
        return "timeout"
    if isinstance(first, ConnectionError):
        return "network"
    return "other"


def network_reason(exc: BaseException | None) -> str:
    """The innermost reason a connection failed ("Connection refused", "connection dropped mid-transfer", ...)."""
    text = " ".join(str(e) for e in (exc, getattr(exc, "__cause__", None)) if e is not None)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if re.search(r"ProtocolError|IncompleteRead|ChunkedEncoding|Connection broken", text):
        return DROPPED
    return first_line(exc) if exc is not None else "no reason given"


@contextlib.contextmanager
def sdk_output_hidden() -> Iterator[None]:
    """Hide the SDK's own per-file bars and log lines while it runs: our one bar and our message replace them."""
    sdk_logger = logging.getLogger("modelscope_hub")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.CRITICAL + 1)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            yield
    finally:
        sdk_logger.setLevel(level)


@contextlib.contextmanager
def bytes_progress(name: str, total: int, enabled: bool) -> Iterator[object | None]:
    """One progress bar, in bytes, for a whole set of files (None when disabled)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar


def progress_callback(bar) -> type:
    """A modelscope ProgressCallback class that adds every file's bytes to ``bar``."""
    from modelscope_hub import ProgressCallback

    lock = threading.Lock()

    class AddToBar(ProgressCallback):
        def update(self, size: int) -> None:
            with lock:
                bar.update(size)
                bar.total = max(bar.total, bar.n)

    return AddToBar


def fetch_from_openxlab(model: KnownModel, folder: Path, skip: list[str], progress: bool) -> list[ListedFile]:
    """``openxlab.model.download`` into ``folder``, bypassing its symlinked ~/.cache copy; return what it delivered.

    openxlab lists neither sizes nor checksums, so files that pass their format check are not fetched again.
    openxlab 0.1.3 prints a refusal ("Error: Get download url error: ...") and returns None
    instead of raising, so the printed text is captured to explain the failure.
    """
    import openxlab.model

    repo = model.openxlab_repo
    present = sum(local_files(folder).values())
    check_disk_space(folder, model, max(int(model.download_gb * 10**9) - present, 0))
    with total_progress(folder, model.id, int(model.download_gb * 10**9), progress), sdk_output_hidden():
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            downloaded = openxlab.model.download(repo, output=str(folder), cache=False, ignore=skip or None)
    if downloaded is None:
        said = " ".join(line.strip() for line in printed.getvalue().splitlines() if line.strip()) or "no reason given"
        raise SourceRefusedError(f"openxlab refused to serve {repo} ({said}); {AUTH_HINTS['openxlab']}.")
    return [ListedFile(name, size) for name, size in local_files(folder).items()]


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
    if isinstance(exc, TimeoutError) or isinstance(exc, requests.exceptions.Timeout):
        return SourceUnavailableError(f"{source} did not answer in time for {repo} ({reason}); re-run the same "
                                      "command to resume.")
    unreachable = (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                   requests.exceptions.HTTPError)
    if isinstance(exc, unreachable) or is_modelscope_hub_error(exc):
        reason = network_reason(exc)
        what = "failed mid-transfer" if reason == DROPPED else "could not be reached"
        return SourceUnavailableError(f"{source} {what} ({reason}); check the network, then re-run the same command.")
    if isinstance(exc, OSError):
        return DownloadError(f"cannot write the files of {repo}: {exc}.")
    return None


def is_modelscope_hub_error(exc: Exception) -> bool:
    """Whether ``exc`` is one of modelscope's own transfer/server errors (checked without importing modelscope)."""
    return any(cls.__module__.startswith(("modelscope_hub", "modelscope.hub")) for cls in type(exc).__mro__)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (an SDK error's own message), shortened for a one-line message."""
    lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
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


def verify_folder(folder: Path) -> None:
    """Check that ``folder`` holds a complete checkpoint. Raises ModelFolderError.

    Complete means: config.json, tokenizer.model and every shard named in the index exist; the shard
    headers read; JSON files parse and the tokenizer loads; the shards hold the bytes the index declares.
    """
    from .checkpoint import read_config, read_shard_header, tensor_bytes, weight_files

    read_config(folder)
    if not (folder / "tokenizer.model").is_file():
        raise ModelFolderError(f"{folder / 'tokenizer.model'} is missing.")
    shards = weight_files(folder)
    for shard in shards:
        read_shard_header(shard)
    for name in local_files(folder):
        if folder / name not in shards:
            check_file(folder / name)
    declared, held = tensor_bytes(folder, shards), sum(shard.stat().st_size for shard in shards)
    if held < declared * MIN_SHARD_FILL:
        raise ModelFolderError(
            f"the shards in {folder} hold {held} bytes but the shard index declares {declared}; some are truncated."
        )


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
    from .checkpoint import WEIGHT_INDEXES

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
    record = registry.read_complete_marker(folder) or {}
    at = f" at revision {record['revision']}" if record.get("revision") else ""
    lines = [f"{model.id} is ready in {folder} ({human_size(sum(sizes.values()))}, {len(sizes)} files, "
             f"verified; from {record.get('source')} {record.get('repo')}{at}).",
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
