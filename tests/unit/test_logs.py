"""Workflow scripts log into their Snakemake log file; a user error ends it with one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
from efficientcellseg.logs import script_log

with script_log({log!r}):
    print("started")
    raise {error}
"""


def run_script(tmp_path: Path, error: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "job.log"
    code = textwrap.dedent(SCRIPT.format(log=str(log), error=error))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return result, log.read_text()


@pytest.mark.parametrize(
    "error",
    [
        "ValueError('/data/t000.tif: not a readable TIFF file')",
        "FileNotFoundError(2, 'No such file or directory', '/data/t000.tif')",
        "RuntimeError('/data/t000.tif: backend onnx cannot load this network')",
    ],
)
def test_a_user_error_ends_the_log_with_one_line(tmp_path: Path, error: str) -> None:
    result, log = run_script(tmp_path, error)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + log
    lines = log.splitlines()
    assert lines[0] == "started"
    assert "ERROR efficientcellseg:" in lines[-1] and "/data/t000.tif" in lines[-1]
    assert len(lines) == 2


def test_a_bug_keeps_its_traceback(tmp_path: Path) -> None:
    result, log = run_script(tmp_path, "KeyError('x')")
    assert result.returncode == 1
    assert "Traceback" in log and "KeyError: 'x'" in log
