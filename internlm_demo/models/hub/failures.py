"""Why a download failed, in one line a user can act on: the errors and the hints they carry."""

from __future__ import annotations

import errno
import re

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
