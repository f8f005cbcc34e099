"""Logging set-up for the command line and workflow scripts, and progress bars for long loops."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: int = logging.INFO, stream=None) -> None:
    """Log records of this package (and warnings) to ``stream`` (default stderr)."""
    logging.basicConfig(level=level, format=FORMAT, stream=stream or sys.stderr, force=True)
    logging.captureWarnings(True)


@contextlib.contextmanager
def script_log(path: str | os.PathLike) -> Iterator[None]:
    """Send everything a workflow script writes - logging, print, TensorFlow's C++ messages and
    tracebacks - to its Snakemake log file (file descriptors 1 and 2 are redirected).

    A failure the library reports with a message that names the file or setting at fault (bad
    or damaged input, a failed download, a full disk: ValueError, RuntimeError, OSError) ends
    the log with that one line and the script with exit code 1, without a traceback (Snakemake
    shows the log of a failed job). Anything else is a bug: its traceback is logged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", buffering=1) as log_file:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        configure(stream=sys.stderr)
        logger = logging.getLogger("efficientcellseg")
        try:
            yield
        except (ValueError, RuntimeError, OSError) as exc:
            logger.error("%s", exc)
            raise SystemExit(1) from None
        except BaseException:
            logger.exception("failed")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def frame_progress(items: list, enabled: bool, desc: str):
    """``items``, wrapped in a tqdm progress bar (per frame) when ``enabled``."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="frame")
