"""One settings object for every app, filled from command-line flags and environment variables."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from dataclasses import dataclass, field, fields

from .errors import PortInUseError, SettingsError

# Each app's own port, so that they can run side by side; chat keeps the tutorial's 6006 (the port it forwards),
# the server LMDeploy api_server's 23333, so that --api-base URLs stay interchangeable.
APP_PORTS = {"chat": 6006, "agent": 6007, "xcomposer": 6008, "server": 23333}


@dataclass(frozen=True)
class Settings:
    """What an app needs to start. Each field can come from ``--flag`` or ``INTERNLM_DEMO_<FIELD>``."""

    model: str | None = None  # folder or known model id; None → a downloaded model or the stand-in model
    num_gpus: int | None = None
    device: str | None = None  # "cuda", "cuda:1", "cpu"; None → GPU when there is one
    dtype: str | None = None  # "float16", "bfloat16", "float32"; None → float16 on GPU, float32 on CPU
    # auto/fast: the batched engine (CPU and GPUs alike); simple: transformers, one generation at a time
    engine: str = field(default="auto", metadata={"choices": ("auto", "fast", "simple")})
    host: str = "127.0.0.1"
    port: int = 6006
    api_base: str | None = None  # an OpenAI-compatible server to use instead of a local model
    api_model: str | None = None  # the model name to ask that server for
    api_context_window: int | None = None  # that server's window in tokens, assumed when the server does not say it
    api_serial: bool = False  # send that server one request at a time (queued here), e.g. a server that cuts one for another
    gallery: str | None = None  # image folder for XComposer's article writer
    share: bool = False  # Gradio public link; off unless asked for
    agent_script: str | None = None  # JSON of canned model outputs the agent app replays instead of a model
    allow_weak_sandbox: bool = False  # agent app: run model code even below the sandbox's minimum isolation level
    # The OpenAI-compatible server's limits: larger bodies get 413, a full queue 429, a longer wait 503.
    max_body_bytes: int = field(default=2 * 1024 * 1024, metadata={"min": 1})
    max_concurrent_requests: int = field(default=16, metadata={"min": 1})  # requests generating at once
    max_queued_requests: int = field(default=64, metadata={"min": 0})  # requests waiting for one of those places
    queue_timeout_s: int = field(default=600, metadata={"min": 1})  # how long a request may wait

    @classmethod
    def parse(cls, argv: list[str] | None = None, environ: dict[str, str] | None = None, prog: str | None = None,
              defaults: dict | None = None, app: str | None = None) -> Settings:
        """``read``, for a command line: bad flags print argparse's words and exit, ``--help`` prints the help."""
        try:
            return cls.read(argv, environ, prog, defaults, app)
        except SettingsError as exc:
            print(exc, file=sys.stderr if exc.status else sys.stdout, end="")
            sys.exit(exc.status)

    @classmethod
    def read(cls, argv: list[str] | None = None, environ: dict[str, str] | None = None, prog: str | None = None,
             defaults: dict | None = None, app: str | None = None) -> Settings:
        """Flags win over environment variables, which win over ``defaults``, then ``app``'s port
        (a key of APP_PORTS), then the field defaults. Bad values (or ``--help``) raise SettingsError with
        argparse's words; nothing is printed, so a page can show them without touching ``sys.stdout``."""
        environ = os.environ if environ is None else environ
        defaults = {"port": APP_PORTS[app], **(defaults or {})} if app else defaults or {}
        parser = QuietParser(prog=prog, description=cls.__doc__)
        for option in fields(cls):
            flag = "--" + option.name.replace("_", "-")
            variable = f"INTERNLM_DEMO_{option.name.upper()}"
            env_value = environ.get(variable)
            fallback = defaults.get(option.name, option.default)
            if option.type == "bool":
                default = env_value.lower() in ("1", "true", "yes") if env_value is not None else fallback
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
                continue
            convert = int if option.type.startswith("int") else str
            try:
                default = convert(env_value) if env_value not in (None, "") else fallback
            except ValueError:
                raise SettingsError(f"{variable}={env_value!r} is not a whole number; set it to one or unset it.\n") from None
            choices = option.metadata.get("choices")
            parser.add_argument(flag, type=convert, default=default, choices=choices,
                                metavar=None if choices else option.name.upper())
        values = vars(parser.parse_args(argv))
        for option in fields(cls):
            least = option.metadata.get("min")
            if least is not None and values[option.name] < least:
                parser.error(f"--{option.name.replace('_', '-')} must be at least {least} "
                             f"(got {values[option.name]}, from the flag or INTERNLM_DEMO_{option.name.upper()})")
        return cls(**values)

    def check_port(self) -> None:
        """PortInUseError unless ``host:port`` can be listened on now; apps call it before loading a model."""
        try:
            family, kind, _, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is free
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"Port {self.port} on {self.host} is already in use (another app?): "
                                     f"choose another with --port N or INTERNLM_DEMO_PORT=N.") from None
            raise PortInUseError(f"Cannot listen on {self.host}:{self.port} ({exc.strerror or exc}): "
                                 f"choose the address with --host or INTERNLM_DEMO_HOST, the port with --port "
                                 f"or INTERNLM_DEMO_PORT.") from None

    def model_options(self) -> dict:
        """Keyword arguments for ``load_chat_model`` besides the model itself."""
        return {"device": self.device, "dtype": self.dtype, "num_gpus": self.num_gpus, "engine": self.engine}


class QuietParser(argparse.ArgumentParser):
    """An ArgumentParser that raises SettingsError with what it would have printed, instead of printing and exiting."""

    said = ""

    def _print_message(self, message, file=None) -> None:
        self.said += message or ""

    def exit(self, status=0, message=None):
        raise SettingsError(self.said + (message or ""), status)
