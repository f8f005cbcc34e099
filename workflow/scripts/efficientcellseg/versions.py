"""Versions of the code behind each kind of result, which decide what a code change redoes.

Snakemake's ``code`` rerun trigger redoes a script rule's jobs whenever the script file is newer
than their outputs, so a ``git pull``, a clone or a copy of the checkout would retrain every
network (days of GPU time) although only a comment changed, and a change in the library the
scripts call would redo nothing. The profiles therefore leave that trigger out
(``rerun-triggers`` in ``profiles/*/config.yaml``), and each rule passes the version of its
stage below as a parameter: Snakemake's ``params`` trigger redoes exactly the jobs whose
version changed, and everything downstream of them.

Raise a stage's number in the same commit as a change that alters what the stage computes (its
earlier results are then stale); leave it for refactoring, comments, logging and speed-ups that
keep the results. Interrupted work is only resumed by the same version: the number is part of
a training checkpoint's fingerprint and of every mask's record.

Only the standard library is imported: the Snakefile reads this module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CODE_VERSIONS: dict[str, int] = {
    "datasets": 1,  # synthetic_dataset, sample_cho: the data the workflow makes itself
    "pseudocolor": 1,  # pseudocolor: annotated slices and their pseudocolor
    "training": 1,  # train: targets, augmentation, losses, schedule, ONNX export
    "prediction": 1,  # predict: inference, tiling, post-processing, z-linking
    "evaluation": 1,  # evaluate, overlays, seg_summary: metrics, tables, figures
}

PACKAGE_DIR = Path(__file__).resolve().parent


def source_digest() -> str:
    """SHA-256 over the library's files (names and contents, not times): for cheap rules that
    must always carry the current code, such as the CTC submission, which copies it."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()
