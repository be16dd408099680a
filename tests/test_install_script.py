"""scripts/install.sh keeps one stamp per requirement set: run.sh and test.sh, alternated, run pip only once each."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

from tests.conftest import REPO

# A venv whose python only writes down how it was called: `-m pip install ...` lines show what pip would do.
RECORDING_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls.log"
"""


def test_alternating_the_runtime_and_the_dev_install_runs_pip_once_each(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "install.sh", checkout / "scripts")
    for name in ("requirements.txt", "requirements-dev.txt", "pyproject.toml"):
        shutil.copy(REPO / name, checkout)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(RECORDING_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    calls = venv / "calls.log"

    def pip_installs(*requirement_files: str) -> int:
        before = calls.read_text().count("pip") if calls.exists() else 0
        subprocess.run(["bash", "scripts/install.sh", *requirement_files], cwd=checkout, check=True, timeout=60,
                       env={**os.environ, "INTERNLM_DEMO_VENV": str(venv)})
        return calls.read_text().count("pip") - before

    assert pip_installs("requirements-dev.txt") > 0  # test.sh, first time: everything
    assert pip_installs() == 0  # run.sh: the runtime set came with the dev install
    assert pip_installs("requirements-dev.txt") == 0
    assert pip_installs() == 0
    (checkout / "requirements-dev.txt").write_text((checkout / "requirements-dev.txt").read_text() + "\nrich\n")
    assert pip_installs("requirements-dev.txt") > 0  # a changed set installs again
    assert pip_installs() == 0
