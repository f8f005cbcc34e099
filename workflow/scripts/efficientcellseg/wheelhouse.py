"""Wheels for an offline install of the CTC executables on the organisers' platform.

``pip download`` fetches every wheel that ``requirements-<variant>.txt`` needs (with all
dependencies) for Linux x86_64 and CPython 3.11, whatever machine builds the wheelhouse; the
submission's ``install.sh`` then installs from it with ``pip install --no-index
--find-links``. Only binary wheels are taken (nothing is built on the organisers' machine). The
platform tags accepted are manylinux for glibc 2.28 down to 2.5: the newest wheels needed
(OpenVINO, ONNX Runtime, OpenCV) require glibc 2.28, so the install needs a Linux at least as
new as RHEL 8, Debian 10 or Ubuntu 18.10. Measured here (the pins of pyproject.toml): the cpu
variant is 25 wheels, 237 MB; the gpu variant 63 wheels, 3.5 GB (TensorFlow and CUDA).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from .files import atomic_output

log = logging.getLogger(__name__)

PYTHON_VERSION = "3.11"
ABI = "cp311"
# pip does not widen a manylinux_2_X tag to older glibc versions: every accepted tag is listed.
PLATFORM_TAGS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)


def download_command(requirements: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """The ``pip download`` command that fills ``dest`` with the wheels of ``requirements``."""
    platforms = [arg for tag in PLATFORM_TAGS for arg in ("--platform", tag)]
    return [
        sys.executable, "-m", "pip", "download",
        "--only-binary=:all:",
        "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", ABI,
        *platforms,
        "--requirement", str(requirements),
        "--dest", str(dest),
        "--progress-bar", "off",
    ]  # fmt: skip


def build_wheelhouse(requirements: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Download the wheels of ``requirements`` into the new folder ``dest`` (all or nothing).

    Returns the number of wheels and their total size in bytes. pip's own messages go to this
    process's stdout and stderr (the job log in the workflow).
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists already: delete it to build the wheelhouse again")
    with atomic_output(dest) as tmp:
        tmp.mkdir()
        result = subprocess.run(download_command(requirements, tmp), check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"pip download of {requirements} for Linux x86_64 / CPython {PYTHON_VERSION} "
                f"failed (exit status {result.returncode}; pip's messages are above): the "
                "package index must be reachable, or leave the variant out of "
                "submission_wheelhouse"
            )
    wheels = sorted(dest.glob("*.whl"))
    summary = {"wheels": len(wheels), "bytes": sum(w.stat().st_size for w in wheels)}
    log.info("%s: %d wheels, %.0f MB", dest, summary["wheels"], summary["bytes"] / 1e6)
    return summary
