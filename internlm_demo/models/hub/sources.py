"""The two sources: list and fetch a repository through the modelscope or openxlab SDK, quietly, with one progress bar."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from ..registry import KnownModel
from .failures import (
    AUTH_HINTS,
    INSTALL_HINTS,
    DownloadError,
    SourceRefusedError,
    SourceUnavailableError,
    describe_source_failure,
    file_failures,
)
from .folder import (
    MODELSCOPE_DEFAULT_REVISION,
    PARTIAL_STATE,
    SDK_LOCKS,
    ListedFile,
    bytes_progress,
    check_disk_space,
    discard_damaged_files,
    files_origin,
    local_files,
    partial_state,
    total_progress,
)

log = logging.getLogger(__name__)


SOURCES = ("modelscope", "openxlab")


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
