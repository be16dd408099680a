"""``python -m apps.xcomposer [flags]``: check the port, load the model (failing early with a readable message), then serve."""

from __future__ import annotations

import sys

from internlm_demo.errors import ModelFolderError, PortInUseError
from internlm_demo.settings import Settings
from internlm_demo.xcomposer.preprocess import MAX_FILE_BYTES

from .app import build_demo, model_provider


def main(argv: list[str] | None = None) -> None:
    settings = Settings.parse(argv, prog="python -m apps.xcomposer", app="xcomposer")
    provider = model_provider(settings)
    try:
        settings.check_port()  # before the model loads, which takes a while
        provider.get()
    except (ModelFolderError, PortInUseError) as exc:
        sys.exit(f"error: {exc}")
    build_demo(settings, provider).queue().launch(
        server_name=settings.host, server_port=settings.port, share=settings.share, max_file_size=MAX_FILE_BYTES
    )


if __name__ == "__main__":
    main()
