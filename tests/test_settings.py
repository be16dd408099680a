"""The one settings object: flags over environment variables over defaults."""

import pytest

from internlm_demo.settings import Settings


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
