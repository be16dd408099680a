"""download.py against stand-ins for the two SDK entry points, which cannot be reached from the test machine.

Only ``modelscope.snapshot_download`` and ``openxlab.model.download`` are replaced. The stand-ins
behave as the installed SDKs do (same signatures, same exception types, real files written from a
golden fixture checkpoint); everything else — verification, resume, markers, disk checks — is real.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from modelscope_hub.errors import AuthenticationError, FileDownloadError, NetworkError

from internlm_demo.models import registry
from internlm_demo.models.hub import (
    DownloadError,
    NotEnoughSpaceError,
    SourceRefusedError,
    SourceUnavailableError,
    UnknownModelError,
    download_model,
    human_size,
    summary,
)
from tests.conftest import FIXTURES_DIR as FIXTURES
from tests.conftest import REPO

CHAT_7B = FIXTURES / "internlm-chat-7b-tiny"
FIRST_SHARD = "pytorch_model-00001-of-00002.bin"
SECOND_SHARD = "pytorch_model-00002-of-00002.bin"


def repo_files(fixture: Path) -> list[str]:
    return sorted(path.name for path in fixture.iterdir() if path.is_file())


def write_truncated(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])


def corrupt_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


class ModelScopeStandIn:
    """``modelscope.snapshot_download`` serving a fixture as the hub would.

    Like the real SDK it skips ``ignore_patterns``, writes a failing file only to ``NAME.incomplete``,
    attempts every file and then raises ``FileDownloadError`` listing the failures.
    """

    def __init__(self, fixture: Path = CHAT_7B, *, error: Exception | None = None, fail: str | None = None,
                 corrupt: str | None = None, omit: str | None = None):
        self.fixture, self.error, self.fail, self.corrupt, self.omit = fixture, error, fail, corrupt, omit
        self.calls: list[dict] = []

    def __call__(self, model_id=None, revision=None, cache_dir=None, *, local_dir=None, ignore_patterns=None,
                 progress_callbacks=None, **other):
        call = {"model_id": model_id, "revision": revision, "local_dir": local_dir,
                "ignore_patterns": ignore_patterns, "written": []}
        self.calls.append(call)
        if self.error is not None:
            raise self.error
        target = Path(local_dir)
        failed = {}
        for name in repo_files(self.fixture):
            if any(fnmatch.fnmatch(name, pattern) for pattern in ignore_patterns or []) or name == self.omit:
                continue
            source = self.fixture / name
            callbacks = [cls(name, source.stat().st_size) for cls in progress_callbacks or []]
            if name == self.fail:
                write_truncated(source, target / f"{name}.incomplete")
                failed[name] = NetworkError(f"Download connection failed for {name}: Connection reset by peer")
                continue
            shutil.copyfile(source, target / name)
            if name == self.corrupt:
                corrupt_middle(target / name)
            for callback in callbacks:
                callback.update(source.stat().st_size)
                callback.end()
            call["written"].append(name)
        if failed:
            raise FileDownloadError(f"{len(failed)} of {len(repo_files(self.fixture))} file(s) failed to download",
                                    failed_files=failed, output_dir=local_dir)
        return local_dir


class OpenXLabStandIn:
    """``openxlab.model.download`` (0.1.3) serving a fixture: writes straight to ``output`` with ``cache=False``.

    A refusal is printed and answered with None, as the real SDK does; a dropped connection leaves the
    file being written truncated under its final name and raises out of the loop.
    """

    def __init__(self, fixture: Path = CHAT_7B, *, error: Exception | None = None, refuse: bool = False,
                 cut_at: str | None = None):
        self.fixture, self.error, self.refuse, self.cut_at = fixture, error, refuse, cut_at
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
            call["written"].append(name)
        print(f"download model repo:{model_repo} file finished")
        return [os.path.join(output, name) for name in call["written"]]


def never_called(source: str):
    def refuse_to_run(*args, **kwargs):
        raise AssertionError(f"the {source} SDK was called but this test did not expect a download")
    return refuse_to_run


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Models go to a temporary folder; an unexpected SDK call fails the test instead of reaching the network."""
    monkeypatch.setenv("INTERNLM_DEMO_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr("modelscope.snapshot_download", never_called("modelscope"))
    monkeypatch.setattr("openxlab.model.download", never_called("openxlab"))


def use_modelscope(monkeypatch, stand_in: ModelScopeStandIn) -> ModelScopeStandIn:
    monkeypatch.setattr("modelscope.snapshot_download", stand_in)
    return stand_in


def use_openxlab(monkeypatch, stand_in: OpenXLabStandIn) -> OpenXLabStandIn:
    monkeypatch.setattr("openxlab.model.download", stand_in)
    return stand_in


def marker_of(folder: Path) -> dict:
    return json.loads((folder / registry.COMPLETE_MARKER).read_text())


def sizes_of(folder: Path) -> dict[str, int]:
    files = [path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")]
    return {path.name: path.stat().st_size for path in files}


# --- normal fetch ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id, fixture, source", [
    ("internlm-chat-7b", "internlm-chat-7b-tiny", "modelscope"),
    ("internlm2-chat-7b", "internlm2-chat-7b-tiny", "modelscope"),
    ("internlm-chat-7b", "internlm-chat-7b-tiny", "openxlab"),
    ("internlm-xcomposer-7b", "internlm-xcomposer-7b-tiny", "openxlab"),
])
def test_normal_fetch_is_verified_and_marked_complete(monkeypatch, model_id, fixture, source):
    if source == "modelscope":
        hub = use_modelscope(monkeypatch, ModelScopeStandIn(FIXTURES / fixture))
    else:
        hub = use_openxlab(monkeypatch, OpenXLabStandIn(FIXTURES / fixture))

    folder = download_model(model_id, source=source, progress=False)

    model = registry.KNOWN_MODELS[model_id]
    assert folder == registry.models_dir() / model_id
    assert registry.downloaded_folder(model_id) == folder
    assert len(hub.calls) == 1
    if source == "modelscope":
        assert hub.calls[0]["model_id"] == model.modelscope_repo
        assert hub.calls[0]["local_dir"] == str(folder)
    else:
        assert hub.calls[0]["model_repo"] == model.openxlab_repo
        assert hub.calls[0]["output"] == str(folder)
        assert hub.calls[0]["cache"] is False
    record = marker_of(folder)
    assert record["model"] == model_id and record["source"] == source
    served = FIXTURES / fixture
    assert record["files"] == sizes_of(folder) == {name: (served / name).stat().st_size for name in repo_files(served)}
    assert not (folder / ".internlm-demo-partial.json").exists()


def test_progress_bars_run_with_the_sdk_callbacks(monkeypatch, capsys):
    use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("internlm-chat-7b", progress=True)
    assert registry.downloaded_folder("internlm-chat-7b") == folder
    shown = capsys.readouterr().err
    assert "total" in shown and f"Downloading [{FIRST_SHARD}]" in shown


def test_complete_folder_is_not_fetched_again(monkeypatch):
    use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("internlm-chat-7b", progress=False)
    monkeypatch.setattr("modelscope.snapshot_download", never_called("modelscope"))
    assert download_model("internlm-chat-7b", progress=False) == folder


def test_repo_ids_name_known_models_too(monkeypatch):
    hub = use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("Shanghai_AI_Laboratory/internlm-chat-7b", progress=False)
    assert folder == registry.models_dir() / "internlm-chat-7b"
    assert hub.calls[0]["model_id"] == "Shanghai_AI_Laboratory/internlm-chat-7b"


def test_output_folder_and_revision_are_passed_through(monkeypatch, tmp_path):
    hub = use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("internlm-chat-7b", output=tmp_path / "elsewhere" / "chat7b", revision="v1.0.3",
                            progress=False)
    assert folder == tmp_path / "elsewhere" / "chat7b"
    assert hub.calls[0]["revision"] == "v1.0.3"
    assert marker_of(folder)["revision"] == "v1.0.3"
    assert registry.downloaded_folder("internlm-chat-7b") is None  # not the default location
    assert f"--model {folder}" in summary("internlm-chat-7b", folder)


def test_verified_folder_loads_with_load_chat_model(monkeypatch):
    use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("internlm-chat-7b", progress=False)

    from internlm_demo import load_chat_model

    model = load_chat_model(str(folder), device="cpu", dtype="float32", progress=False)
    response, history = model.chat("Hello", [], do_sample=False, max_new_tokens=3)
    assert isinstance(response, str)
    assert history == [("Hello", response)]


# --- interrupted and resumed ----------------------------------------------------------------------

@pytest.mark.parametrize("interruption, expected", [
    (requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"), SourceUnavailableError),
    (KeyboardInterrupt(), KeyboardInterrupt),  # Ctrl-C: nothing is cleaned up until the next run
], ids=["connection dropped", "ctrl-c"])
def test_interrupted_openxlab_download_resumes_without_refetching_verified(monkeypatch, interruption, expected):
    hub = use_openxlab(monkeypatch, OpenXLabStandIn(cut_at=SECOND_SHARD))
    hub.interruption = interruption
    with pytest.raises(expected):
        download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)

    folder = registry.models_dir() / "internlm-chat-7b"
    assert not (folder / registry.COMPLETE_MARKER).exists()
    assert registry.downloaded_folder("internlm-chat-7b") is None
    first_shard_written = (folder / FIRST_SHARD).stat().st_mtime_ns

    hub.cut_at = None
    assert download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False) == folder

    resumed = hub.calls[-1]
    assert FIRST_SHARD in resumed["ignore"] and "config.json" in resumed["ignore"]
    assert SECOND_SHARD not in resumed["ignore"]  # the truncated shard was deleted, so it is fetched again
    assert SECOND_SHARD in resumed["written"] and FIRST_SHARD not in resumed["written"]
    assert (folder / FIRST_SHARD).stat().st_mtime_ns == first_shard_written
    assert marker_of(folder)["files"] == sizes_of(folder)


def test_interrupted_modelscope_download_resumes(monkeypatch):
    hub = use_modelscope(monkeypatch, ModelScopeStandIn(fail=FIRST_SHARD))
    with pytest.raises(SourceUnavailableError, match="re-run the same command to resume"):
        download_model("internlm-chat-7b", allow_fallback=False, progress=False)
    folder = registry.models_dir() / "internlm-chat-7b"
    assert (folder / f"{FIRST_SHARD}.incomplete").exists()
    assert registry.downloaded_folder("internlm-chat-7b") is None

    hub.fail = None
    download_model("internlm-chat-7b", allow_fallback=False, progress=False)
    assert set(hub.calls[-1]["written"]) == {FIRST_SHARD}  # everything else verified and was skipped
    assert registry.downloaded_folder("internlm-chat-7b") == folder
    assert not any(path.name.endswith(".incomplete") for path in folder.iterdir())


def test_files_of_another_source_are_not_trusted_on_resume(monkeypatch):
    use_modelscope(monkeypatch, ModelScopeStandIn(fail=FIRST_SHARD))
    with pytest.raises(SourceUnavailableError):
        download_model("internlm-chat-7b", allow_fallback=False, progress=False)
    hub = use_openxlab(monkeypatch, OpenXLabStandIn())
    download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)
    assert hub.calls[0]["ignore"] is None  # openxlab cannot check modelscope's files, so it sends them all
    assert marker_of(registry.models_dir() / "internlm-chat-7b")["source"] == "openxlab"


# --- corrupt or missing shards --------------------------------------------------------------------

def test_corrupt_shard_is_detected_removed_and_refetched(monkeypatch):
    hub = use_modelscope(monkeypatch, ModelScopeStandIn(corrupt=SECOND_SHARD))
    with pytest.raises(DownloadError, match=f"failed verification: .*{SECOND_SHARD}.* is truncated or corrupt"):
        download_model("internlm-chat-7b", progress=False)
    folder = registry.models_dir() / "internlm-chat-7b"
    assert not (folder / SECOND_SHARD).exists()
    assert registry.downloaded_folder("internlm-chat-7b") is None

    hub.corrupt = None
    download_model("internlm-chat-7b", progress=False)
    assert hub.calls[-1]["written"] == [SECOND_SHARD]
    assert registry.downloaded_folder("internlm-chat-7b") == folder


def test_missing_shard_is_detected(monkeypatch):
    use_modelscope(monkeypatch, ModelScopeStandIn(omit=FIRST_SHARD))
    with pytest.raises(DownloadError, match=f"{FIRST_SHARD} is listed in the shard index but missing"):
        download_model("internlm-chat-7b", progress=False)
    assert registry.downloaded_folder("internlm-chat-7b") is None


def test_shard_damaged_after_completion_is_fetched_again(monkeypatch):
    hub = use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("internlm-chat-7b", progress=False)
    (folder / FIRST_SHARD).unlink()
    assert download_model("internlm-chat-7b", progress=False) == folder
    assert hub.calls[-1]["written"] == [FIRST_SHARD]
    assert marker_of(folder)["files"][FIRST_SHARD] == (CHAT_7B / FIRST_SHARD).stat().st_size


# --- disk space -----------------------------------------------------------------------------------

def test_no_disk_space_stops_before_any_transfer(monkeypatch):
    nearly_full = SimpleNamespace(total=500 * 10**9, used=499 * 10**9, free=10**9)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: nearly_full)
    with pytest.raises(NotEnoughSpaceError, match=r"needs about 16\.6 GB .* only 1\.0 GB are free.*--output"):
        download_model("internlm-chat-7b", progress=False)
    assert not (registry.models_dir() / "internlm-chat-7b").exists()


def test_disk_filling_up_mid_transfer_is_reported(monkeypatch):
    use_modelscope(monkeypatch, ModelScopeStandIn(error=OSError(28, "No space left on device")))
    with pytest.raises(NotEnoughSpaceError, match="disk filled up during the download .*re-run the same command"):
        download_model("internlm-chat-7b", progress=False)


# --- sources unreachable or refusing --------------------------------------------------------------

def test_unreachable_source_falls_back_to_the_other(monkeypatch, caplog):
    no_dns = NetworkError("Download connection failed: [Errno -3] Temporary failure in name resolution")
    use_modelscope(monkeypatch, ModelScopeStandIn(error=no_dns))
    hub = use_openxlab(monkeypatch, OpenXLabStandIn())
    folder = download_model("internlm-chat-7b", progress=False)
    assert len(hub.calls) == 1
    assert marker_of(folder)["source"] == "openxlab"
    assert "modelscope could not be reached" in caplog.text and "trying the next source" in caplog.text


def test_unreachable_source_without_fallback_is_a_clear_error(monkeypatch):
    use_openxlab(monkeypatch, OpenXLabStandIn(error=requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='openapi.openxlab.org.cn', port=443): Max retries exceeded")))
    with pytest.raises(SourceUnavailableError, match="openxlab could not be reached .*ConnectionError") as caught:
        download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)
    assert "\n" not in str(caught.value)


def test_both_sources_unreachable(monkeypatch):
    use_modelscope(monkeypatch, ModelScopeStandIn(error=NetworkError("Download connection failed")))
    use_openxlab(monkeypatch, OpenXLabStandIn(error=requests.exceptions.ConnectionError("Max retries exceeded")))
    with pytest.raises(DownloadError, match="any source: modelscope could not be reached.*; openxlab could not be"):
        download_model("internlm-chat-7b", progress=False)
    assert registry.downloaded_folder("internlm-chat-7b") is None


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


def test_modelscope_auth_refused_explains_the_token(monkeypatch):
    # snapshot_download re-raises AuthenticationError as requests' HTTPError without a response
    try:
        try:
            raise AuthenticationError("Authentication failed", status_code=401)
        except AuthenticationError as refusal:
            raise requests.exceptions.HTTPError(str(refusal), response=None) from refusal
    except requests.exceptions.HTTPError as converted:
        use_modelscope(monkeypatch, ModelScopeStandIn(error=converted))
    with pytest.raises(SourceRefusedError, match="HTTP 401.*MODELSCOPE_API_TOKEN"):
        download_model("internlm-chat-7b", allow_fallback=False, progress=False)


def test_openxlab_refusal_falls_back_to_modelscope(monkeypatch):
    use_openxlab(monkeypatch, OpenXLabStandIn(refuse=True))
    use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("internlm-chat-7b", source="openxlab", progress=False)
    assert marker_of(folder)["source"] == "modelscope"


def test_missing_sdk_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openxlab.model", None)  # as if openxlab were not installed
    install = 'pip install --no-deps openxlab==0.1.3 && pip install "oss2~=2.17.0"'
    with pytest.raises(SourceUnavailableError, match=install):
        download_model("internlm-chat-7b", source="openxlab", allow_fallback=False, progress=False)


# --- requests that cannot be served ---------------------------------------------------------------

def test_unknown_model_id_suggests_the_closest(monkeypatch):
    with pytest.raises(UnknownModelError, match="did you mean internlm2_5-7b-chat\\?.*--list"):
        download_model("internlm2.5-7b-chat", progress=False)


def test_model_not_on_the_chosen_source(monkeypatch):
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


def test_asking_for_another_revision_refreshes_a_complete_folder(monkeypatch):
    hub = use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("internlm-chat-7b", progress=False)
    download_model("internlm-chat-7b", revision="v1.0.3", progress=False)
    assert hub.calls[-1]["revision"] == "v1.0.3"
    assert hub.calls[-1]["ignore_patterns"] is None  # files of another revision are re-checked by the SDK
    assert marker_of(folder)["revision"] == "v1.0.3"


def test_folder_of_another_model_is_not_reused(monkeypatch, tmp_path):
    use_modelscope(monkeypatch, ModelScopeStandIn())
    folder = download_model("internlm-chat-7b", output=tmp_path / "shared", progress=False)
    with pytest.raises(DownloadError, match="already holds internlm-chat-7b; choose another --output"):
        download_model("internlm2-chat-7b", output=folder, progress=False)


# --- command line ---------------------------------------------------------------------------------

def run_cli(*args: str, env_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "INTERNLM_DEMO_MODELS": str(env_dir)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "download.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    return done, time.perf_counter() - started


def test_cli_help_and_list_work_offline_and_fast(tmp_path):
    run_cli("--help", env_dir=tmp_path)  # warm the bytecode cache
    shown, took = run_cli("--help", env_dir=tmp_path)
    assert shown.returncode == 0 and "--source {modelscope,openxlab}" in shown.stdout and "resumes" in shown.stdout
    listed, took_list = run_cli("--list", env_dir=tmp_path)
    assert listed.returncode == 0
    for model in registry.KNOWN_MODELS.values():
        assert model.id in listed.stdout
    assert "14.6 GB" in listed.stdout and "40.2 GB" in listed.stdout
    assert max(took, took_list) < 3, (
        f"--help took {took:.1f} s and --list {took_list:.1f} s; importing internlm_demo must not import torch"
    )


def test_cli_download_prints_where_size_and_app_commands(monkeypatch, capsys):
    import download as cli

    use_modelscope(monkeypatch, ModelScopeStandIn())
    assert cli.main(["internlm-chat-7b"]) == 0
    printed = capsys.readouterr().out
    folder = registry.models_dir() / "internlm-chat-7b"
    assert f"internlm-chat-7b is ready in {folder} ({human_size(sum(sizes_of(folder).values()))}, " in printed
    for app in ("chat", "agent", "server"):
        assert f"bash scripts/run.sh {app} -- --model internlm-chat-7b" in printed


def test_cli_xcomposer_summary_names_its_app(monkeypatch, capsys):
    import download as cli

    use_modelscope(monkeypatch, ModelScopeStandIn(FIXTURES / "internlm-xcomposer-7b-tiny"))
    assert cli.main(["internlm-xcomposer-7b"]) == 0
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
