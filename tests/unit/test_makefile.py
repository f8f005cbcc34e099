"""`make install` reinstalls when EXTRAS changes, swapping the TensorFlow flavour.

The Makefile runs in a scratch folder with a stand-in Python whose venv records every pip call,
so nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# `$(PYTHON) -m venv .venv` writes .venv/bin/python, which logs its arguments (pip calls).
FAKE_PYTHON = """#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/sh\\necho "$*" >> "%s/pip.log"\\n' "$(pwd)" > "$3/bin/python"
  chmod +x "$3/bin/python"
fi
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    python = tmp_path / "fake-python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def _install(project: Path, *variables: str) -> list[str]:
    """pip calls of one `make install`."""
    log = project / "pip.log"
    before = log.read_text().splitlines() if log.exists() else []
    time.sleep(0.05)  # file times tick in kernel jiffies: keep runs apart, as a person would
    subprocess.run(
        ["make", "-s", "install", f"PYTHON={project / 'fake-python'}", *variables],
        cwd=project,
        check=True,
        capture_output=True,
    )
    after = log.read_text().splitlines() if log.exists() else []
    return after[len(before) :]


def test_changing_extras_installs_the_other_tensorflow(project: Path) -> None:
    cpu = _install(project)
    assert "-m pip uninstall --quiet --yes tensorflow" in cpu
    assert "-m pip install --quiet -e .[cpu,workflow,dev]" in cpu
    assert _install(project) == []  # nothing changed: nothing to do
    gpu = _install(project, "EXTRAS=gpu,workflow,dev")
    assert "-m pip uninstall --quiet --yes tensorflow-cpu" in gpu
    assert "-m pip install --quiet -e .[gpu,workflow,dev]" in gpu
    assert _install(project, "EXTRAS=gpu,workflow,dev") == []
    back = _install(project)  # and back to the CPU build
    assert "-m pip uninstall --quiet --yes tensorflow" in back
    assert "-m pip install --quiet -e .[cpu,workflow,dev]" in back


def test_a_changed_pyproject_reinstalls(project: Path) -> None:
    _install(project)
    installed = (project / ".venv" / ".installed").stat().st_mtime
    os.utime(project / "pyproject.toml", (installed + 1, installed + 1))  # an edit, later
    assert "-m pip install --quiet -e .[cpu,workflow,dev]" in _install(project)
