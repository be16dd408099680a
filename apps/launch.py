"""``python -m apps.launch APP [flags]`` (what ``scripts/run.sh APP -- flags`` runs): check the app's address, then start it.

APP is chat, agent, xcomposer or server. A taken port is reported in one line before anything loads; the
Streamlit pages get the address and port on Streamlit's command line, the others read them from the flags.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from internlm_demo.errors import PortInUseError
from internlm_demo.settings import APP_PORTS, Settings

PAGES = {"chat": "chat.py", "agent": "agent.py"}  # Streamlit scripts beside this file
MODULES = {"xcomposer": "apps.xcomposer", "server": "internlm_demo.serving.openai_server"}


def command_for(app: str, settings: Settings, flags: list[str]) -> list[str]:
    """The command line that starts ``app`` with ``flags`` on ``settings``' address."""
    if app in PAGES:
        page = Path(__file__).with_name(PAGES[app])
        return [sys.executable, "-m", "streamlit", "run", str(page), "--server.address", settings.host,
                "--server.port", str(settings.port), "--", *flags]
    return [sys.executable, "-m", MODULES[app], *flags]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in APP_PORTS:
        sys.exit(f"usage: scripts/run.sh {'|'.join(APP_PORTS)} [-- flags]  (got {' '.join(argv) or 'nothing'})")
    app, flags = argv[0], argv[1:]
    settings = Settings.parse(flags, prog=f"scripts/run.sh {app} --", app=app)
    try:
        settings.check_port()
    except PortInUseError as exc:
        sys.exit(f"error: {exc}")
    command = command_for(app, settings, flags)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
