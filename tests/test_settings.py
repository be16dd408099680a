"""The one settings object: flags over environment variables over defaults."""

import re
import sys
from pathlib import Path

import pytest

from internlm_demo.settings import Settings
from tests.conftest import REPO


def test_defaults_bind_locally_without_sharing():
    settings = Settings.parse([], {})
    assert (settings.host, settings.port, settings.share, settings.engine) == ("127.0.0.1", 6006, False, "auto")


def test_environment_then_flags():
    environ = {"INTERNLM_DEMO_PORT": "7000", "INTERNLM_DEMO_MODEL": "internlm-chat-7b", "INTERNLM_DEMO_SHARE": "yes"}
    from_env = Settings.parse([], environ)
    assert (from_env.port, from_env.model, from_env.share) == (7000, "internlm-chat-7b", True)
    flagged = Settings.parse(["--port", "7100", "--no-share", "--num-gpus", "2"], environ)
    assert (flagged.port, flagged.share, flagged.num_gpus, flagged.model) == (7100, False, 2, "internlm-chat-7b")


def test_app_defaults_sit_between_environment_and_field_defaults():
    assert Settings.parse([], {}, defaults={"port": 23333}).port == 23333
    assert Settings.parse([], {"INTERNLM_DEMO_PORT": "1"}, defaults={"port": 23333}).port == 1


def test_bad_values_are_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        Settings.parse(["--engine", "turbo"], {})
    assert "invalid choice: 'turbo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        Settings.parse(["--num-gpus", "two"], {})


def test_model_options_feed_the_loader():
    options = Settings.parse(["--dtype", "bfloat16", "--engine", "simple"], {}).model_options()
    assert options == {"device": None, "dtype": "bfloat16", "num_gpus": None, "engine": "simple"}


def test_server_limits_come_from_flags_and_environment():
    defaults = Settings.parse([], {})
    assert (defaults.max_body_bytes, defaults.max_concurrent_requests, defaults.max_queued_requests,
            defaults.queue_timeout_s) == (2 * 1024 * 1024, 16, 64, 600)
    environ = {"INTERNLM_DEMO_MAX_BODY_BYTES": "1000", "INTERNLM_DEMO_MAX_QUEUED_REQUESTS": "3"}
    settings = Settings.parse(["--max-concurrent-requests", "2", "--queue-timeout-s", "5"], environ)
    assert (settings.max_body_bytes, settings.max_concurrent_requests, settings.max_queued_requests,
            settings.queue_timeout_s) == (1000, 2, 3, 5)


class Untouchable:
    """Stands in for sys.stdout/sys.stderr: any write fails the test (pages share them across sessions)."""

    def write(self, text):
        raise AssertionError(f"wrote to a process-wide stream: {text!r}")

    def flush(self):
        pass


def test_read_reports_bad_flags_without_touching_process_streams(monkeypatch):
    from internlm_demo.errors import SettingsError

    monkeypatch.setattr(sys, "stdout", Untouchable())
    monkeypatch.setattr(sys, "stderr", Untouchable())
    with pytest.raises(SettingsError) as caught:
        Settings.read(["--num-gpus", "two"], {}, prog="chat --")
    assert "--num-gpus" in str(caught.value) and "invalid int value: 'two'" in str(caught.value)
    assert "usage: chat --" in str(caught.value) and caught.value.status == 2
    with pytest.raises(SettingsError) as caught:
        Settings.read(["--help"], {}, prog="chat --")
    assert caught.value.status == 0 and "--max-queued-requests" in str(caught.value)


@pytest.mark.parametrize(("environ", "expected"), [
    ({"INTERNLM_DEMO_PORT": "abc"}, "INTERNLM_DEMO_PORT='abc' is not a whole number"),
    ({"INTERNLM_DEMO_MAX_QUEUED_REQUESTS": "-1"}, "--max-queued-requests must be at least 0"),
    ({"INTERNLM_DEMO_MAX_BODY_BYTES": "0"}, "--max-body-bytes must be at least 1"),
])
def test_bad_environment_values_are_one_line(environ, expected):
    from internlm_demo.errors import SettingsError

    with pytest.raises(SettingsError, match=re.escape(expected)):
        Settings.read([], environ)


def test_no_page_redirects_the_process_streams():
    """contextlib.redirect_stdout/stderr swap sys.stdout for every thread, and Streamlit runs sessions in threads.
    (models/hub/sources.py, which quiets the download SDKs, runs only in download.py's process.)"""
    sources = [path for path in [*Path(REPO / "apps").rglob("*.py"), *Path(REPO / "internlm_demo").rglob("*.py")]
               if path != REPO / "internlm_demo" / "models" / "hub" / "sources.py"]
    offenders = [str(path) for path in sources if re.search(r"redirect_std(out|err)", path.read_text())]
    assert offenders == []
