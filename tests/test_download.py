"""download.py against the real modelscope SDK talking to a local hub, and a stand-in for openxlab's SDK.

ModelScope: the installed SDK (modelscope_hub) runs unmodified, pointed by ``MODELSCOPE_ENDPOINT`` at
``tests/hub_emulator.py`` on 127.0.0.1, which serves a copy of a golden fixture and can refuse, omit, corrupt,
cut or stall files. Every modelscope scenario runs ``download.py`` in a subprocess, as a user would.
OpenXLab: its SDK cannot be pointed at another endpoint (see docs/download.md), so ``openxlab.model.download``
is replaced by a stand-in that writes the fixture's real files as the SDK does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from internlm_demo.models import registry
from internlm_demo.models.hub import (
    DownloadError,
    NotEnoughSpaceError,
    SourceRefusedError,
    SourceUnavailableError,
    UnknownModelError,
    download_model,
    human_size,
)
from tests.conftest import FIXTURES_DIR as FIXTURES
from tests.conftest import REPO, copy_fixture, reference
from tests.hub_emulator import LISTING, HubEmulator

CHAT_7B = FIXTURES / "internlm-chat-7b-tiny"
CHAT_7B_REPO = "Shanghai_AI_Laboratory/internlm-chat-7b"
FIRST_SHARD = "pytorch_model-00001-of-00002.bin"
SECOND_SHARD = "pytorch_model-00002-of-00002.bin"
CUT_AT = 2_000_000  # past the SDK's 1 MB read size, so a cut leaves bytes in NAME.incomplete
STALL_AT = 2 * 1024 * 1024  # bytes a stalled transfer receives before the hub stops sending
MIB = 1024 * 1024
# Short SDK waits, for download.py runs and for this process (the SDK reads them when first imported).
SDK_WAITS = {"MODELSCOPE_DOWNLOAD_TIMEOUT": "1", "MODELSCOPE_DOWNLOAD_MAX_RETRIES": "1",
             "MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1"}
for _name, _value in SDK_WAITS.items():
    os.environ.setdefault(_name, _value)


def repo_files(fixture: Path) -> list[str]:
    return sorted(path.name for path in fixture.iterdir() if path.is_file())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_truncated(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])


class OpenXLabStandIn:
    """``openxlab.model.download`` (0.1.3) serving a fixture: writes straight to ``output`` with ``cache=False``.

    A refusal is printed and answered with None, as the real SDK does; a dropped connection leaves the
    file being written truncated under its final name and raises out of the loop.
    """

    def __init__(self, fixture: Path = CHAT_7B, *, error: Exception | None = None, refuse: bool = False,
                 cut_at: str | None = None, corrupt: str | None = None):
        self.fixture, self.error, self.refuse, self.cut_at, self.corrupt = fixture, error, refuse, cut_at, corrupt
        self.interruption: BaseException = requests.exceptions.ChunkedEncodingError(
            "Connection broken: IncompleteRead(3300000 bytes read)")
        self.calls: list[dict] = []

    def __call__(self, model_repo, model_name=None, output=None, overwrite=False, ignore=None, cache=True):
        call = {"model_repo": model_repo, "output": output, "ignore": ignore, "cache": cache, "written": []}
        self.calls.append(call)
        if self.refuse:
            print("warning: Local config must not be empty before get token via api.")
            print("Error: Get download url error:用户未登录, traceId:3f2a")
            return None
        if self.error is not None:
            raise self.error
        for name in repo_files(self.fixture):
            if name in (ignore or []):
                continue
            if name == self.cut_at:
                write_truncated(self.fixture / name, Path(output) / name)
                raise self.interruption
            shutil.copyfile(self.fixture / name, Path(output) / name)
            if name == self.corrupt:  # bytes damaged on the way, which openxlab has no checksum to notice
                data = bytearray((Path(output) / name).read_bytes())
                data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
                (Path(output) / name).write_bytes(bytes(data))
            call["written"].append(name)
        print(f"download model repo:{model_repo} file finished")
        return [os.path.join(output, name) for name in call["written"]]



def never_called(*args, **kwargs):
    raise AssertionError("the openxlab SDK was called but this test did not expect it")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Models and the SDK's cache go to temporary folders; openxlab's SDK is never reached."""
    monkeypatch.setenv("INTERNLM_DEMO_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope-cache"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "modelscope-home"))
    monkeypatch.setattr("openxlab.model.download", never_called)
    from modelscope_hub.config import set_default_config

    set_default_config(None)  # the SDK caches its endpoint per process; each test sets its own
    yield
    set_default_config(None)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The local modelscope hub serving a writable copy of the chat-7b fixture as its repository."""
    with HubEmulator(copy_fixture(CHAT_7B.name, tmp_path / "upstream"), CHAT_7B_REPO) as emulator:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", emulator.url)
        yield emulator


def use_openxlab(monkeypatch, stand_in: OpenXLabStandIn) -> OpenXLabStandIn:
    monkeypatch.setattr("openxlab.model.download", stand_in)
    return stand_in


def download(*args: str, timeout_s: int = 1, **env: str) -> subprocess.CompletedProcess:
    """``python download.py internlm-chat-7b --no-fallback ARGS`` as a user runs it, with short SDK timeouts."""
    return subprocess.run([sys.executable, "download.py", "internlm-chat-7b", "--no-fallback", *args],
                          cwd=REPO, env=cli_env(timeout_s, **env), capture_output=True, text=True, timeout=120)


def cli_env(timeout_s: int = 1, **env: str) -> dict[str, str]:
    return {**os.environ, **SDK_WAITS, "MODELSCOPE_DOWNLOAD_TIMEOUT": str(timeout_s), "PYTHONPATH": str(REPO), **env}


def error_of(done: subprocess.CompletedProcess) -> str:
    """The one error line download.py printed, after checking it failed without a traceback."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def wait_for_stall(hub: HubEmulator, path: Path, process: subprocess.Popen, within_s: float = 90) -> Path:
    """Wait until the download running in ``process`` is stalled by ``hub`` with at least 1 MiB in ``path``
    (generous: the process imports the SDK first, which takes long on a loaded machine). The SDK writes what
    each read returns through a buffered file, so the size on disk while stalled may lag what it received."""
    deadline = time.monotonic() + within_s
    while not (hub.stalled.is_set() and path.exists() and path.stat().st_size >= MIB):
        if process.poll() is not None:
            pytest.fail(f"download.py ended ({process.returncode}) before stalling: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} never stalled with 1 MiB in it: {process.communicate()[1]}")
        time.sleep(0.05)
    return path


def folder_of(model_id: str = "internlm-chat-7b") -> Path:
    return registry.models_dir() / model_id


def marker_of(folder: Path) -> dict:
    return json.loads((folder / registry.COMPLETE_MARKER).read_text())


def sizes_of(folder: Path) -> dict[str, int]:
    files = [path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")]
    return {path.name: path.stat().st_size for path in files}


def assert_same_files(folder: Path, upstream: Path) -> None:
    assert sorted(sizes_of(folder)) == repo_files(upstream)
    for name in repo_files(upstream):
        assert (folder / name).read_bytes() == (upstream / name).read_bytes(), name


# --- modelscope through its real SDK: success, re-runs, resume ------------------------------------

def test_fresh_download_is_byte_identical_and_the_marker_records_the_listing(hub):
    done = download()
    assert done.returncode == 0, done.stderr
    folder = folder_of()
    assert_same_files(folder, hub.folder)
    record = marker_of(folder)
    assert (record["model"], record["source"], record["repo"], record["revision"]) == (
        "internlm-chat-7b", "modelscope", CHAT_7B_REPO, "master")
    assert record["files"].keys() == set(repo_files(hub.folder))
    for name, facts in record["files"].items():
        assert (facts["size"], facts["sha256"]) == ((hub.folder / name).stat().st_size, sha256_of(hub.folder / name))
    listing = sorted([name, (hub.folder / name).stat().st_size, sha256_of(hub.folder / name)]
                     for name in repo_files(hub.folder))
    assert record["listing_sha256"] == hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    assert registry.downloaded_folder("internlm-chat-7b") == folder
    assert f"internlm-chat-7b is ready in {folder} ({human_size(sum(sizes_of(folder).values()))}, 8 files, " in done.stdout
    for app in ("chat", "agent", "server"):
        assert f"bash scripts/run.sh {app} -- --model internlm-chat-7b" in done.stdout
    assert not any(path.name.startswith(".internlm-demo-") and path.name != registry.COMPLETE_MARKER
                   for path in folder.iterdir())


def test_downloaded_folder_chats_exactly_like_the_reference(hub, capfd):
    assert download().returncode == 0
    from tqdm import tqdm

    from internlm_demo import load_chat_model

    case = reference(CHAT_7B.name)["chat_cases"][0]
    greedy = case["greedy"]
    model = load_chat_model("internlm-chat-7b", device="cpu", dtype="float32", progress=True)
    total = json.loads((CHAT_7B / "pytorch_model.bin.index.json").read_text())["metadata"]["total_size"]
    shown = capfd.readouterr().err.replace("\r", "\n")
    assert f"loading internlm-chat-7b:   0%|          | 0.00/{tqdm.format_sizeof(total)} [" in shown, shown
    response, _ = model.chat(case["query"], [], do_sample=False, max_new_tokens=greedy["chat_kwargs"]["max_new_tokens"])
    assert response == greedy["response"]


def test_rerun_of_a_complete_folder_makes_no_request(hub):
    assert download().returncode == 0
    asked = len(hub.requests)
    again = download()
    assert again.returncode == 0 and "is ready in" in again.stdout
    assert len(hub.requests) == asked


def test_progress_is_one_bar_for_the_whole_file_set_sized_from_the_listing(hub):
    done = download()
    assert done.returncode == 0
    assert sum((hub.folder / name).stat().st_size for name in repo_files(hub.folder)) == 14_922_478
    assert "internlm-chat-7b: 100%" in done.stderr and "14.9M/14.9M" in done.stderr, done.stderr
    for name in repo_files(hub.folder):
        assert f"{name}:" not in done.stderr  # the SDK's own per-file bars are not shown
    assert "Downloading" not in done.stderr


def test_cut_transfer_is_resumed_with_range_in_the_same_run(hub):
    hub.cut(FIRST_SHARD, after=CUT_AT)
    assert download().returncode == 0
    assert hub.fetches_of(FIRST_SHARD) == [None, f"bytes={CUT_AT}-"]
    assert_same_files(folder_of(), hub.folder)


def test_transfer_cut_every_time_fails_then_a_rerun_resumes_from_the_partial_file(hub):
    hub.cut(FIRST_SHARD, after=CUT_AT, times=10)
    error = error_of(download())
    assert error == (
        f"error: modelscope could not deliver 1 of 8 files of {CHAT_7B_REPO}: {FIRST_SHARD} could not be fetched: "
        "the connection failed (connection dropped mid-transfer); check the network, then re-run the same command "
        "to resume (partial files are kept).")
    folder = folder_of()
    assert (folder / f"{FIRST_SHARD}.incomplete").stat().st_size == CUT_AT
    assert registry.downloaded_folder("internlm-chat-7b") is None

    hub.cuts.clear()
    before = len(hub.requests)
    assert download().returncode == 0
    rerun = hub.requests[before:]
    assert [ranged for asked, ranged in rerun if asked == FIRST_SHARD] == [f"bytes={CUT_AT}-"]
    assert {asked for asked, _ in rerun} == {LISTING, FIRST_SHARD}  # verified files are not fetched again
    assert_same_files(folder, hub.folder)


def test_ctrl_c_keeps_the_partial_file_and_the_rerun_resumes(hub):
    hub.stall(FIRST_SHARD, after=STALL_AT)
    running = subprocess.Popen([sys.executable, "download.py", "internlm-chat-7b", "--no-fallback"], cwd=REPO,
                               env=cli_env(timeout_s=60), stderr=subprocess.PIPE, text=True)
    partial = wait_for_stall(hub, folder_of() / f"{FIRST_SHARD}.incomplete", running)
    running.send_signal(signal.SIGINT)
    try:
        _, err = running.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        running.kill()
        pytest.fail(f"download.py did not stop within 30 s of Ctrl-C: {running.communicate()[1]}")
    assert running.returncode == 130, err
    assert err.strip().endswith("interrupted: the folder is not marked complete; run the same command again to resume.")
    kept = partial.stat().st_size
    assert MIB <= kept <= STALL_AT

    hub.stalls.clear()
    assert download().returncode == 0
    assert hub.fetches_of(FIRST_SHARD)[-1] == f"bytes={kept}-"
    assert_same_files(folder_of(), hub.folder)


def test_file_changed_upstream_between_runs_is_fetched_not_kept(hub):
    """The first run fails on a missing file; upstream then fixes it and changes generation_config.json."""
    hub.missing.add(FIRST_SHARD)
    assert "missing upstream" in error_of(download())
    old = (folder_of() / "generation_config.json").read_bytes()

    hub.missing.clear()
    changed = json.loads(old) | {"max_length": 4096}
    (hub.folder / "generation_config.json").write_text(json.dumps(changed))
    assert download().returncode == 0
    folder = folder_of()
    assert json.loads((folder / "generation_config.json").read_text()) == changed
    assert marker_of(folder)["files"]["generation_config.json"]["sha256"] == sha256_of(hub.folder / "generation_config.json")
    assert_same_files(folder, hub.folder)


def test_file_edited_after_completion_makes_the_folder_incomplete_and_is_refetched(hub):
    assert download().returncode == 0
    folder = folder_of()
    edited = bytearray((folder / "tokenizer_config.json").read_bytes())
    edited[-2:-1] = b" "  # same size, other bytes
    (folder / "tokenizer_config.json").write_bytes(bytes(edited))
    assert registry.downloaded_folder("internlm-chat-7b") is None

    before = len(hub.requests)
    assert download().returncode == 0
    assert {asked for asked, _ in hub.requests[before:]} == {LISTING, "tokenizer_config.json"}
    assert_same_files(folder, hub.folder)
    assert registry.downloaded_folder("internlm-chat-7b") == folder


def test_revision_is_asked_for_and_recorded(hub):
    hub.revisions.add("v1.0.3")
    assert download("--revision", "v1.0.3").returncode == 0
    assert marker_of(folder_of())["revision"] == "v1.0.3"
    error = error_of(download("--revision", "no-such-tag"))
    assert error.startswith(f"error: modelscope has no repository {CHAT_7B_REPO} at revision no-such-tag (HTTP 404")


# --- modelscope: each failure says what failed and what to do -------------------------------------

def test_file_missing_upstream_says_a_rerun_will_not_help(hub):
    hub.missing.add("config.json")
    assert error_of(download()) == (
        f"error: modelscope could not deliver 1 of 8 files of {CHAT_7B_REPO}: config.json listed by modelscope "
        "but missing upstream (HTTP 404); re-running will not help until the repository is fixed: try --source "
        "openxlab or another --revision.")


def test_shard_left_out_of_the_repository_is_missing_upstream_not_damaged(hub):
    hub.unlisted.add(SECOND_SHARD)
    assert error_of(download()) == (
        f"error: {SECOND_SHARD} is named in the shard index of {CHAT_7B_REPO} but modelscope does not have it "
        "(missing upstream); re-running will not help: try the other --source or another --revision.")
    assert registry.downloaded_folder("internlm-chat-7b") is None


def test_corrupt_bytes_are_refetched_then_reported_and_never_kept(hub):
    hub.corrupt.add("tokenizer.model")
    assert error_of(download()) == (
        f"error: modelscope could not deliver 1 of 8 files of {CHAT_7B_REPO}: tokenizer.model did not match the "
        "size or sha256 in the listing, again after the SDK deleted and re-fetched the bad copy: modelscope's copy "
        "is damaged or changed during the download; re-run later or try --source openxlab.")
    assert len(hub.fetches_of("tokenizer.model")) >= 2
    folder = folder_of()
    assert not (folder / "tokenizer.model").exists() and not (folder / "tokenizer.model.incomplete").exists()


@pytest.mark.parametrize("status", [401, 403])
def test_one_refused_file_keeps_the_sign_in_hint(hub, status):
    hub.refuse["tokenizer.model"] = status
    assert error_of(download()) == (
        f"error: modelscope could not deliver 1 of 8 files of {CHAT_7B_REPO}: tokenizer.model refused (HTTP {status}); "
        "sign in with `modelscope login --token TOKEN` or export MODELSCOPE_API_TOKEN=TOKEN.")


@pytest.mark.parametrize("status, expected", [
    (401, f"error: modelscope refused access to {CHAT_7B_REPO} (HTTP 401: login required); sign in with "
          "`modelscope login --token TOKEN` or export MODELSCOPE_API_TOKEN=TOKEN."),
    (403, f"error: modelscope refused access to {CHAT_7B_REPO} (HTTP 403: access denied); sign in with "
          "`modelscope login --token TOKEN` or export MODELSCOPE_API_TOKEN=TOKEN."),
    (404, f"error: modelscope has no repository {CHAT_7B_REPO} (HTTP 404: not found)."),
])
def test_refused_repository_leaves_no_trace(hub, tmp_path, status, expected):
    hub.refuse[LISTING] = status
    assert error_of(download()) == expected
    assert not folder_of().exists()
    if status == 401:  # an empty folder of the user's choosing stays as it was
        empty = tmp_path / "chosen"
        empty.mkdir()
        assert error_of(download("--output", str(empty))) == expected
        assert list(empty.iterdir()) == []  # no orphan partial marker


def test_stalled_transfer_times_out_naming_the_knobs(hub):
    hub.stall(FIRST_SHARD, after=CUT_AT, times=10)
    started = time.monotonic()
    error = error_of(download())
    assert time.monotonic() - started < 30
    assert error == (
        f"error: modelscope could not deliver 1 of 8 files of {CHAT_7B_REPO}: {FIRST_SHARD} timed out (no data for "
        "1 s, 2 attempts); re-run the same command to resume, and on a slow link raise MODELSCOPE_DOWNLOAD_TIMEOUT "
        "(now 1 s) or MODELSCOPE_DOWNLOAD_MAX_RETRIES (now 1).")
    assert (folder_of() / f"{FIRST_SHARD}.incomplete").stat().st_size == CUT_AT


def test_file_past_the_sdk_time_budget_names_that_knob(hub):
    hub.stall(FIRST_SHARD, after=CUT_AT, times=10)
    error = error_of(download(timeout_s=30, MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT="2"))
    assert error == (
        f"error: modelscope could not deliver 1 of 8 files of {CHAT_7B_REPO}: {FIRST_SHARD} used up the SDK's time "
        "budget per file (MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT, now 2 s); re-run the same command to resume (partial "
        "files are kept), and raise MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT for large files on a slow link.")


def test_unreachable_hub_is_a_network_error(hub):
    closed = HubEmulator(hub.folder, CHAT_7B_REPO)
    with closed:
        url = closed.url
    assert error_of(download(MODELSCOPE_ENDPOINT=url)) == (
        "error: modelscope could not be reached (Connection refused); check the network, then re-run the same command.")
    assert not folder_of().exists()


def test_downloads_into_two_folders_do_not_wait_for_each_other(hub, tmp_path):
    hub.stall(FIRST_SHARD, after=STALL_AT)
    first = subprocess.Popen([sys.executable, "download.py", "internlm-chat-7b", "--no-fallback"], cwd=REPO,
                             env=cli_env(timeout_s=60), stderr=subprocess.PIPE, text=True)
    try:
        wait_for_stall(hub, folder_of() / f"{FIRST_SHARD}.incomplete", first)
        same = download()
        assert error_of(same) == (f"error: another download is writing into {folder_of()} right now; wait for it "
                                  "to finish, or pass a different --output.")
        other = download("--output", str(tmp_path / "second"))
        assert other.returncode == 0, other.stderr
        assert first.poll() is None  # still stalled: the second folder did not wait on its lock
        assert_same_files(tmp_path / "second", hub.folder)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)


# --- --output that cannot be used ----------------------------------------------------------------

def test_output_that_is_a_file_is_a_one_line_error(hub, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert error_of(download("--output", str(taken))) == (
        f"error: --output {taken} is a file; pass the path of a folder (a missing one is created).")
    assert error_of(download("--output", str(taken / "model"))) == (
        f"error: cannot create {taken / 'model'}: {taken} is a file, not a folder; pass another --output.")
    assert taken.read_text() == "mine"


def test_read_only_output_is_a_one_line_error(hub, tmp_path):
    locked = tmp_path / "read-only"
    locked.mkdir()
    target = locked / "internlm-chat-7b"
    args = [sys.executable, "download.py", "internlm-chat-7b", "--no-fallback", "--output", str(target)]
    if os.geteuid() == 0:  # root writes through permission bits: make the folder a read-only mount instead
        command = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(locked), *args]
        reason = "Read-only file system"
    else:
        locked.chmod(0o555)
        command, reason = args, "Permission denied"
    done = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert error_of(done) == (f"error: cannot write to {target} ({reason}); pass --output with a folder you can "
                              "write to.")
    assert hub.requests == []


def test_no_disk_space_stops_before_any_transfer(hub, monkeypatch):
    nearly_full = SimpleNamespace(total=500 * 10**9, used=499 * 10**9, free=10**9)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: nearly_full)
    with pytest.raises(NotEnoughSpaceError, match=r"needs about 2\.0 GB .*\(14\.9 MB still to fetch .* only 1\.0 GB"):
        download_model("internlm-chat-7b", allow_fallback=False, progress=False)
    assert hub.requests == [(LISTING, None)]
    assert not folder_of().exists()


# --- other models, in-process --------------------------------------------------------------------

@pytest.mark.parametrize("model_id, fixture", [
    ("internlm2-chat-7b", "internlm2-chat-7b-tiny"),
    ("internlm-xcomposer-7b", "internlm-xcomposer-7b-tiny"),
])
def test_other_layouts_download_and_verify(tmp_path, monkeypatch, model_id, fixture):
    model = registry.KNOWN_MODELS[model_id]
    with HubEmulator(copy_fixture(fixture, tmp_path / "upstream"), model.modelscope_repo) as emulator:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", emulator.url)
        folder = download_model(model_id, allow_fallback=False, progress=False)
    assert registry.downloaded_folder(model_id) == folder
    assert_same_files(folder, emulator.folder)


def test_repo_id_names_a_known_model(hub):
    folder = download_model(CHAT_7B_REPO, allow_fallback=False, progress=False)
    assert folder == folder_of()


# --- openxlab, through a stand-in for its SDK -----------------------------------------------------

@pytest.mark.parametrize("model_id, fixture", [
    ("internlm-chat-7b", "internlm-chat-7b-tiny"),
    ("internlm-xcomposer-7b", "internlm-xcomposer-7b-tiny"),
])
def test_openxlab_fetch_is_verified_and_marked_complete(monkeypatch, model_id, fixture):
    sdk = use_openxlab(monkeypatch, OpenXLabStandIn(FIXTURES / fixture))
    folder = download_model(model_id, source="openxlab", allow_fallback=False, progress=False)
    model = registry.KNOWN_MODELS[model_id]
    assert sdk.calls[0]["model_repo"] == model.openxlab_repo
    assert sdk.calls[0]["output"] == str(folder) and sdk.calls[0]["cache"] is False
    record = marker_of(folder)
    assert (record["source"], record["repo"], record["revision"]) == ("openxlab", model.openxlab_repo, None)
    assert {name: facts["size"] for name, facts in record["files"].items()} == sizes_of(folder)
    assert registry.downloaded_folder(model_id) == folder
    assert_same_files(folder, FIXTURES / fixture)


@pytest.mark.parametrize("interruption, expected", [
    (requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"), SourceUnavailableError),
    (KeyboardInterrupt(), KeyboardInterrupt),  # Ctrl-C: nothing is cleaned up until the next run
], ids=["connection dropped", "ctrl-c"])
def test_interrupted_openxlab_download_resumes_without_refetching_verified(monkeypatch, interruption, expected):
    sdk = use_openxlab(monkeypatch, OpenXLabStandIn(cut_at=SECOND_SHARD))
    sdk.interruption = interruption
    with pytest.raises(expected):
        download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)
    folder = folder_of()
    assert registry.downloaded_folder("internlm-chat-7b") is None
    first_shard_written = (folder / FIRST_SHARD).stat().st_mtime_ns

    sdk.cut_at = None
    assert download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False) == folder
    resumed = sdk.calls[-1]
    assert FIRST_SHARD in resumed["ignore"] and "config.json" in resumed["ignore"]
    assert SECOND_SHARD not in resumed["ignore"]  # the truncated shard was deleted, so it is fetched again
    assert SECOND_SHARD in resumed["written"] and FIRST_SHARD not in resumed["written"]
    assert (folder / FIRST_SHARD).stat().st_mtime_ns == first_shard_written
    assert_same_files(folder, CHAT_7B)


def test_damaged_openxlab_file_is_removed_and_fetched_again(monkeypatch):
    sdk = use_openxlab(monkeypatch, OpenXLabStandIn(corrupt=SECOND_SHARD))
    with pytest.raises(DownloadError) as caught:
        download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)
    message = str(caught.value)
    assert message.startswith(f"the files openxlab delivered for internlm-chat-7b failed verification: "
                              f"{folder_of() / SECOND_SHARD} is truncated or corrupt")
    assert message.endswith("Damaged files were removed; re-run the same command to fetch them again.")
    assert not (folder_of() / SECOND_SHARD).exists()

    sdk.corrupt = None
    download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)
    assert sdk.calls[-1]["written"] == [SECOND_SHARD]
    assert_same_files(folder_of(), CHAT_7B)


def test_files_of_another_source_are_not_trusted_by_openxlab(hub, monkeypatch):
    hub.missing.add(FIRST_SHARD)
    with pytest.raises(SourceRefusedError, match="missing upstream"):
        download_model("internlm-chat-7b", allow_fallback=False, progress=False)
    sdk = use_openxlab(monkeypatch, OpenXLabStandIn())
    download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)
    assert sdk.calls[0]["ignore"] is None  # openxlab cannot check modelscope's files, so it sends them all
    assert marker_of(folder_of())["source"] == "openxlab"


def http_error(status: int, text: str) -> requests.exceptions.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.exceptions.HTTPError(text, response=response)


@pytest.mark.parametrize("stand_in", [
    OpenXLabStandIn(refuse=True),
    OpenXLabStandIn(error=http_error(401, "401 Client Error: Unauthorized for url: https://openapi.openxlab.org.cn")),
], ids=["refusal printed", "http 401"])
def test_openxlab_auth_refused_explains_the_keys(monkeypatch, stand_in):
    use_openxlab(monkeypatch, stand_in)
    with pytest.raises(SourceRefusedError) as caught:
        download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)
    message = str(caught.value)
    assert "OPENXLAB_AK" in message and "OPENXLAB_SK" in message and "openxlab login" in message
    assert "\n" not in message
    assert not folder_of().exists()


def test_openxlab_refusal_falls_back_to_modelscope(hub, monkeypatch, caplog):
    use_openxlab(monkeypatch, OpenXLabStandIn(refuse=True))
    folder = download_model("internlm-chat-7b", source="openxlab", progress=False)
    assert marker_of(folder)["source"] == "modelscope"
    assert "openxlab refused to serve" in caplog.text and "trying the next source" in caplog.text


def test_unreachable_modelscope_falls_back_to_openxlab(monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    sdk = use_openxlab(monkeypatch, OpenXLabStandIn())
    folder = download_model("internlm-chat-7b", progress=False)
    assert len(sdk.calls) == 1 and marker_of(folder)["source"] == "openxlab"


def test_both_sources_unreachable(monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    use_openxlab(monkeypatch, OpenXLabStandIn(error=requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='openapi.openxlab.org.cn', port=443): Max retries exceeded")))
    with pytest.raises(DownloadError) as caught:
        download_model("internlm-chat-7b", progress=False)
    assert str(caught.value).startswith(
        "could not download internlm-chat-7b from any source: modelscope could not be reached (Connection refused)")
    assert "; openxlab could not be reached" in str(caught.value)
    assert not folder_of().exists()


def test_missing_sdk_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openxlab.model", None)  # as if openxlab were not installed
    install = 'pip install --no-deps openxlab==0.1.3 && pip install "oss2~=2.17.0"'
    with pytest.raises(SourceUnavailableError, match=install):
        download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)


# --- requests that cannot be served ---------------------------------------------------------------

def test_unknown_model_id_suggests_the_closest():
    with pytest.raises(UnknownModelError, match="did you mean internlm2_5-7b-chat\\?.*--list"):
        download_model("internlm2.5-7b-chat", progress=False)


def test_model_not_on_the_chosen_source():
    with pytest.raises(DownloadError, match="internlm3-8b-instruct is not published on openxlab; use --source modelsc"):
        download_model("internlm3-8b-instruct", source="openxlab", allow_fallback=False, progress=False)
    with pytest.raises(DownloadError, match="openxlab serves only the latest files"):
        download_model("internlm-chat-7b", source="openxlab", revision="v1.0.3", allow_fallback=False, progress=False)


def test_folder_with_foreign_files_is_left_alone(tmp_path):
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.json").write_text("{not json")
    with pytest.raises(DownloadError, match="already holds files that download.py did not put there"):
        download_model("internlm-chat-7b", output=mine, progress=False)
    assert (mine / "notes.json").exists()


def test_asking_for_another_revision_refreshes_a_complete_folder(hub):
    hub.revisions.add("v1.0.3")
    folder = download_model("internlm-chat-7b", allow_fallback=False, progress=False)
    before = len(hub.requests)
    download_model("internlm-chat-7b", revision="v1.0.3", allow_fallback=False, progress=False)
    assert hub.requests[before:] == [(LISTING, None)]  # same files at both revisions: nothing to fetch
    assert marker_of(folder)["revision"] == "v1.0.3"


def test_folder_of_another_model_is_not_reused(hub, tmp_path):
    folder = download_model("internlm-chat-7b", output=tmp_path / "shared", allow_fallback=False, progress=False)
    with pytest.raises(DownloadError, match="already holds internlm-chat-7b; choose another --output"):
        download_model("internlm2-chat-7b", output=folder, progress=False)


# --- command line ---------------------------------------------------------------------------------

def test_cli_help_and_list_work_offline_and_fast():
    def run(*args):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "download.py", *args], cwd=REPO, capture_output=True, text=True,
                              check=False, timeout=60)
        return done, time.perf_counter() - started

    run("--help")  # warm the bytecode cache
    shown, took = run("--help")
    assert shown.returncode == 0 and "--source {modelscope,openxlab}" in shown.stdout and "resumes" in shown.stdout
    listed, took_list = run("--list")
    assert listed.returncode == 0
    for model in registry.KNOWN_MODELS.values():
        assert model.id in listed.stdout
    assert "14.6 GB" in listed.stdout and "40.2 GB" in listed.stdout
    assert max(took, took_list) < 3, (
        f"--help took {took:.1f} s and --list {took_list:.1f} s; importing internlm_demo must not import torch"
    )


def test_cli_xcomposer_summary_names_its_app(monkeypatch, capsys):
    import download as cli

    use_openxlab(monkeypatch, OpenXLabStandIn(FIXTURES / "internlm-xcomposer-7b-tiny"))
    assert cli.main(["internlm-xcomposer-7b", "--source", "openxlab", "--no-fallback"]) == 0
    assert "bash scripts/run.sh xcomposer -- --model internlm-xcomposer-7b" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["internlm-chat-7"], "unknown model 'internlm-chat-7'"),
    (["internlm-chat-7b", "--source", "openxlab", "--no-fallback"], "OPENXLAB_AK"),
])
def test_cli_errors_are_one_line_without_traceback(monkeypatch, capsys, argv, expected):
    import download as cli

    use_openxlab(monkeypatch, OpenXLabStandIn(refuse=True))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    last_line = err.rstrip("\n").rsplit("\n", 1)[-1]  # after the progress bar, if any
    assert last_line.startswith("error: ") and expected in last_line
    assert "Traceback" not in err
