"""The archive uploaded to the CTC: challenge-set results made by the executables, and the software.

The organisers re-run the software and compare, so the results in the archive are made the way
they will be: the software folder is staged as ``SW/`` beside a folder per dataset whose
sequence folders are the challenge (test) set's, and each executable runs from inside ``SW/``
with no arguments, no inherited environment (``env -i``) and, where the system allows, no
network (``unshare --net``), writing ``../<DATASET>/<SEQ>_RES``. Every result folder is then
checked as the CTC checks it (:func:`efficientcellseg.metrics.validate_results`: every frame,
uint16, names with the input's digit count, shapes) before anything is packed; an archive with a
missing or invalid mask is never written.

Archive layout (the CTC's names: results in ``<DATASET>/<SEQ>_RES``, the software in ``SW``)::

    Fluo-C3DL-MDA231/01_RES/mask000.tif ...
    Fluo-C3DL-MDA231/02_RES/...
    SW/Fluo-C3DL-MDA231-01.sh ... install.sh, requirements-*.txt, SUBMISSION.md,
    SW/models/..., SW/code/..., SW/wheelhouse/<variant>/*.whl (optional)
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import ctc
from .files import atomic_output
from .metrics import ResultsError, validate_results
from .submission import script_name

log = logging.getLogger(__name__)

SOFTWARE_FOLDER = "SW"
# Not part of the software: a local install, caches, interrupted results.
NOT_SOFTWARE = ("venv", "wheelhouse", "__pycache__", "*.pyc", "*.partial")
PASSED_THROUGH = ("CUDA_VISIBLE_DEVICES",)  # which GPU a scheduler gave this job


class UploadError(RuntimeError):
    """The upload cannot be made; nothing was written. The message lists every problem."""


def stage_software(submission_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the submission folder to ``dest`` (the software folder the executables run in),
    leaving out a local ``venv``, the wheelhouse and caches."""
    submission_dir, dest = Path(submission_dir), Path(dest)
    if not any(submission_dir.glob("*-[0-9][0-9].sh")):
        raise FileNotFoundError(f"{submission_dir} holds no executables: build it first")
    if dest.exists():
        shutil.rmtree(dest)
    with atomic_output(dest) as tmp:
        shutil.copytree(submission_dir, tmp, ignore=shutil.ignore_patterns(*NOT_SOFTWARE))
    return dest


@functools.cache
def no_network_prefix() -> tuple[str, ...]:
    """A command prefix that runs a program with no network: ``unshare --net`` (as root) or
    ``unshare --map-root-user --net`` (user namespaces); empty when neither is allowed."""
    unshare = shutil.which("unshare")
    for prefix in ((unshare, "--net"), (unshare, "--map-root-user", "--net")):
        if unshare and subprocess.run([*prefix, "true"], check=False).returncode == 0:
            return prefix
    log.warning("cannot run without network here (no unshare, or not permitted): running with it")
    return ()


def run_executable(
    software_dir: str | os.PathLike,
    ctc_name: str,
    sequence: str,
    challenge_dir: str | os.PathLike,
) -> Path:
    """Run ``<ctc_name>-<sequence>.sh`` as the organisers do and return its checked result folder.

    The challenge set's sequence folder is linked to ``<software_dir>/../<ctc_name>/<sequence>``;
    the script runs from inside ``software_dir`` with only ``PATH`` (this Python's folder first,
    so the script finds its packages), ``HOME`` (an empty temporary folder) and
    ``CUDA_VISIBLE_DEVICES`` (when set), and without network where :func:`no_network_prefix`
    can. Its output goes to this process's stdout and stderr.

    Raises
    ------
    UploadError
        The script failed.
    efficientcellseg.metrics.ResultsError
        The script wrote an invalid result folder.
    """
    software_dir = Path(software_dir).resolve()
    script = software_dir / script_name(ctc_name, sequence)
    if not script.is_file():
        raise FileNotFoundError(f"{script} missing: the software folder has no executable for it")
    source = Path(challenge_dir).resolve() / sequence
    if not source.is_dir():
        raise ctc.CTCFormatError(
            f"{source}: the challenge set has no sequence {sequence} (the software has an "
            f"executable for it)"
        )
    workspace = software_dir.parent / ctc_name
    workspace.mkdir(parents=True, exist_ok=True)
    link = workspace / sequence
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(source, target_is_directory=True)
    with tempfile.TemporaryDirectory(prefix="ctc-home-") as home:
        env = [f"PATH={Path(sys.executable).parent}:/usr/bin:/bin", f"HOME={home}"]
        env += [f"{k}={os.environ[k]}" for k in PASSED_THROUGH if k in os.environ]
        command = [*no_network_prefix(), "env", "-i", *env, f"./{script.name}"]
        log.info("running %s in %s", " ".join(command), software_dir)
        sys.stdout.flush()
        sys.stderr.flush()
        result = subprocess.run(command, cwd=software_dir, check=False)
    if result.returncode != 0:
        raise UploadError(f"{script.name} failed with exit status {result.returncode} (see above)")
    res_dir = workspace / f"{sequence}_RES"
    validate_results(ctc.open_sequence(workspace, sequence), res_dir)
    log.info("%s: every frame has a valid mask", res_dir)
    return res_dir


def pack_upload(
    archive: str | os.PathLike,
    software_dir: str | os.PathLike,
    results: dict[str, dict[str, tuple[str | os.PathLike, str | os.PathLike]]],
    wheelhouses: list[str | os.PathLike] = (),
) -> dict:
    """Check every result folder, then write the upload zip (all or nothing).

    Parameters
    ----------
    archive
        The zip to write.
    software_dir
        The staged software folder (:func:`stage_software`); packed as ``SW/``.
    results
        CTC dataset name -> sequence -> (challenge set folder, result folder).
    wheelhouses
        ``wheelhouse/<variant>`` folders, packed as ``SW/wheelhouse/<variant>``.

    Raises
    ------
    UploadError
        A result folder is missing, holds a missing or invalid mask, or the sequences of the
        software and of a challenge set differ; every problem is listed and nothing is written.
    """
    software_dir = Path(software_dir)
    masks, problems = _checked_masks(software_dir, results)
    if problems:
        raise UploadError(
            "not writing the upload, the results are incomplete or invalid:\n" + "\n".join(problems)
        )
    members = [(path, f"{SOFTWARE_FOLDER}/{path.relative_to(software_dir).as_posix()}")
               for path in _files(software_dir)]  # fmt: skip
    for wheelhouse in map(Path, wheelhouses):
        members += [
            (path, f"{SOFTWARE_FOLDER}/wheelhouse/{wheelhouse.name}/{path.name}")
            for path in sorted(wheelhouse.glob("*.whl"))
        ]
    members += masks
    with atomic_output(archive) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for path, name in members:
                stored = path.suffix == ".whl"  # wheels are zips already
                zf.write(path, name, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
        with zipfile.ZipFile(tmp) as zf:
            damaged = zf.testzip()
            if damaged is not None:
                raise UploadError(f"{archive}: member {damaged} does not read back intact")
    summary = {
        "archive": str(archive),
        "masks": len(masks),
        "files": len(members),
        "bytes": Path(archive).stat().st_size,
    }
    log.info("wrote %s: %d masks, %d files, %.1f MB", archive, len(masks), len(members),
             summary["bytes"] / 1e6)  # fmt: skip
    return summary


def _checked_masks(software_dir: Path, results: dict) -> tuple[list[tuple[Path, str]], list[str]]:
    """(path, archive name) of every mask, and every problem found (one a line)."""
    masks, problems = [], []
    for ctc_name, sequences in results.items():
        executables = sorted(
            p.name.removeprefix(f"{ctc_name}-").removesuffix(".sh")
            for p in software_dir.glob(f"{ctc_name}-[0-9][0-9].sh")
        )
        if sorted(sequences) != executables:
            problems.append(
                f"  {ctc_name}: results of sequences {sorted(sequences)} but the software has "
                f"executables for {executables}"
            )
        for challenge_dir in {str(Path(c)) for c, _ in sequences.values()}:
            available = ctc.discover_sequences(challenge_dir)
            if available != executables:
                problems.append(
                    f"  {challenge_dir}: the challenge set has sequences {available} but the "
                    f"software has executables for {executables}"
                )
        for sequence, (challenge_dir, res_dir) in sorted(sequences.items()):
            seq = ctc.open_sequence(challenge_dir, sequence)
            try:
                validate_results(seq, res_dir)
            except ResultsError as exc:
                problems.append("  " + str(exc).replace("\n", "\n  "))
                continue
            for frame in seq.frame_ids:
                name = ctc.mask_name(frame, seq.digits)
                masks.append((Path(res_dir) / name, f"{ctc_name}/{sequence}_RES/{name}"))
    return masks, problems


def _files(folder: Path) -> list[Path]:
    skipped = {"__pycache__", "venv", "wheelhouse"}
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not skipped & set(p.relative_to(folder).parts)
        and p.suffix != ".pyc"
    )  # fmt: skip
