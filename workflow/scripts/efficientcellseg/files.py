"""Writing files so that no half-written one survives an interruption.

Every output is written under a temporary name in its own folder and renamed into place when
complete (a rename within one file system is atomic). The temporary file is created like any
other file, so the result gets the mode the umask gives (``tempfile.mkstemp`` would make it
0600, unreadable to a lab's colleagues and the CTC organisers).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

PART = ".part"  # marks temporary names: .<name>.<random>.part<suffix>


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds,
    remove it when the block fails.

    The temporary name keeps the suffix of ``path`` (``.keras``, ``.npz`` and ``.tif`` writers
    look at it) and is hidden: ``.<name>.<random>.part<suffix>``. It may be a file or a folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PART}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def temporaries(folder: str | os.PathLike, name_pattern: str = "*") -> list[Path]:
    """Temporary files :func:`atomic_output` left in ``folder`` when a process was killed,
    of outputs whose names match ``name_pattern``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f".{name_pattern}.*{PART}*"))


def remove(path: Path) -> None:
    """Delete a file or a folder tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- checksums ------------------------------------------------------------------------------

CHECKSUM_ALGORITHMS = ("sha256", "md5")


class ChecksumError(ValueError):
    """A file does not have the checksum it is pinned to."""


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"checksum algorithm {algorithm!r} is not one of {CHECKSUM_ALGORITHMS}")
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def check_checksum(path: str | os.PathLike, checksum: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has ``checksum`` (``sha256:<hex>`` or
    ``md5:<hex>``)."""
    algorithm, _, expected = checksum.partition(":")
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise ChecksumError(
            f"{path}: {algorithm} is {actual}, but it must be {expected}: the file is damaged "
            "or not the one pinned; delete it and fetch it again"
        )
