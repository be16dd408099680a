"""Fetch InternLM checkpoints from modelscope or openxlab into a verified, resumable folder.

Files land directly in the model's folder. ModelScope lists every file with its size and sha256: its SDK keeps
the local files that match the listing, resumes partial ones with HTTP Range and checks each file it fetches, so
a re-run fetches exactly what is missing, damaged or changed upstream. OpenXLab lists no checksums; its files are
checked by format. The folder receives ``registry.COMPLETE_MARKER`` (source, repo, revision, a hash of the
listing, every file's size and sha256) only after every file was verified, so an interrupted download never
looks complete.
"""

from __future__ import annotations

import difflib
import logging
import shlex
from pathlib import Path

from .. import registry
from ..registry import KnownModel
from .failures import (
    DownloadError,
    NotEnoughSpaceError,
    SourceRefusedError,
    SourceUnavailableError,
    UnknownModelError,
)
from .folder import (
    check_folder_is_ours,
    check_output_path,
    exclusive_access,
    files_origin,
    finish,
    human_size,
    local_files,
    prepare_folder,
    tidy_after_failure,
)
from .sources import SOURCES, fetch, sources_to_try

log = logging.getLogger(__name__)

__all__ = ["SOURCES", "DownloadError", "NotEnoughSpaceError", "SourceRefusedError", "SourceUnavailableError",
           "UnknownModelError", "download_model", "human_size", "model_table", "summary"]


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
