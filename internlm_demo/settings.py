"""One settings object for every app, filled from command-line flags and environment variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Settings:
    """What an app needs to start. Each field can come from ``--flag`` or ``INTERNLM_DEMO_<FIELD>``."""

    model: str | None = None  # folder or known model id; None → a downloaded model or the stand-in model
    num_gpus: int | None = None
    device: str | None = None  # "cuda", "cuda:1", "cpu"; None → GPU when there is one
    dtype: str | None = None  # "float16", "bfloat16", "float32"; None → float16 on GPU, float32 on CPU
    engine: str = field(default="auto", metadata={"choices": ("auto", "fast", "simple")})  # auto/fast: the batched engine; simple: transformers
    host: str = "127.0.0.1"
    port: int = 6006
    api_base: str | None = None  # an OpenAI-compatible server to use instead of a local model
    api_model: str | None = None  # the model name to ask that server for
    gallery: str | None = None  # image folder for XComposer's article writer
    share: bool = False  # Gradio public link; off unless asked for
    agent_script: str | None = None  # JSON of canned model outputs the agent app replays instead of a model
    allow_weak_sandbox: bool = False  # agent app: run model code even below the sandbox's minimum isolation level
    # The OpenAI-compatible server's limits: larger bodies get 413, a full queue 429, a longer wait 503.
    max_body_bytes: int = 2 * 1024 * 1024
    max_concurrent_requests: int = 16  # requests generating at once
    max_queued_requests: int = 64  # requests waiting for one of those places
    queue_timeout_s: int = 600  # how long a request may wait

    @classmethod
    def parse(cls, argv: list[str] | None = None, environ: dict[str, str] | None = None, prog: str | None = None,
              defaults: dict | None = None) -> Settings:
        """Flags win over environment variables, which win over ``defaults``, then the field defaults."""
        environ = os.environ if environ is None else environ
        defaults = defaults or {}
        parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
        for option in fields(cls):
            flag = "--" + option.name.replace("_", "-")
            env_value = environ.get(f"INTERNLM_DEMO_{option.name.upper()}")
            fallback = defaults.get(option.name, option.default)
            if option.type == "bool":
                default = env_value.lower() in ("1", "true", "yes") if env_value is not None else fallback
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
                continue
            convert = int if option.type.startswith("int") else str
            default = convert(env_value) if env_value not in (None, "") else fallback
            choices = option.metadata.get("choices")
            parser.add_argument(flag, type=convert, default=default, choices=choices,
                                metavar=None if choices else option.name.upper())
        return cls(**vars(parser.parse_args(argv)))

    def model_options(self) -> dict:
        """Keyword arguments for ``load_chat_model`` besides the model itself."""
        return {"device": self.device, "dtype": self.dtype, "num_gpus": self.num_gpus, "engine": self.engine}
