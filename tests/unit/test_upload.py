"""The upload archive: never written with a missing or invalid mask; what an executable must do."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from efficientcellseg import ctc
from efficientcellseg.metrics import ResultsError
from efficientcellseg.upload import UploadError, pack_upload, run_executable, stage_software

NAME = "Fluo-Test"
SHAPE = (3, 16, 16)


def _challenge_set(root: Path, frames: int = 2, digits: int = 3) -> Path:
    dataset = root / "challenge" / NAME
    for sequence in ("01", "02"):
        for t in range(frames):
            path = dataset / sequence / ctc.frame_name(t, digits)
            path.parent.mkdir(parents=True, exist_ok=True)
            ctc.write_tiff(path, np.full(SHAPE, t, np.uint16))
    return dataset


def _software(root: Path, script_body: str = "exit 0") -> Path:
    folder = root / "ctc_submission"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "lib.py").write_text("x = 1\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "lib.pyc").write_bytes(b"cache")
    (folder / "venv" / "bin").mkdir(parents=True)
    (folder / "SUBMISSION.md").write_text("method\n")
    for sequence in ("01", "02"):
        script = folder / f"{NAME}-{sequence}.sh"
        script.write_text(
            f"#!/usr/bin/env bash\nset -e\n{script_body}\n".replace("@SEQ@", sequence)
        )
        script.chmod(0o755)
    return folder


def _results(root: Path, dataset: Path, dtype=np.uint16, skip: tuple = ()) -> dict:
    results = {}
    for sequence in ("01", "02"):
        res_dir = root / "results" / f"{sequence}_RES"
        res_dir.mkdir(parents=True)
        for t in range(2):
            if (sequence, t) not in skip:
                ctc.write_tiff(res_dir / ctc.mask_name(t, 3), np.full(SHAPE, t + 1, dtype))
        results[sequence] = (dataset, res_dir)
    return {NAME: results}


def test_valid_results_are_packed_with_the_software_as_sw(tmp_path: Path) -> None:
    dataset = _challenge_set(tmp_path)
    software = stage_software(_software(tmp_path), tmp_path / "staged" / "SW")
    assert not (software / "venv").exists() and not (software / "__pycache__").exists()
    wheelhouse = tmp_path / "wheelhouse" / "cpu"
    wheelhouse.mkdir(parents=True)
    (wheelhouse / "pkg-1.0-py3-none-any.whl").write_bytes(b"wheel")
    archive = tmp_path / "upload.zip"
    summary = pack_upload(archive, software, _results(tmp_path, dataset), [wheelhouse])
    with zipfile.ZipFile(archive) as zf:
        names = sorted(zf.namelist())
        mask = zf.read(f"{NAME}/02_RES/mask001.tif")
        mode = zf.getinfo(f"SW/{NAME}-01.sh").external_attr >> 16
    assert names == sorted(
        [f"{NAME}/{s}_RES/mask00{t}.tif" for s in ("01", "02") for t in range(2)]
        + [f"SW/{NAME}-01.sh", f"SW/{NAME}-02.sh", "SW/SUBMISSION.md", "SW/code/lib.py",
           "SW/wheelhouse/cpu/pkg-1.0-py3-none-any.whl"]
    )  # fmt: skip
    assert mask == (tmp_path / "results" / "02_RES" / "mask001.tif").read_bytes()
    assert mode & 0o111
    assert summary["masks"] == 4 and summary["bytes"] == archive.stat().st_size


def test_missing_or_invalid_masks_write_no_archive(tmp_path: Path) -> None:
    dataset = _challenge_set(tmp_path)
    software = _software(tmp_path)
    results = _results(tmp_path, dataset, skip=(("01", 1),))
    bad = tmp_path / "results" / "02_RES" / "mask000.tif"
    ctc.write_tiff(bad, np.zeros(SHAPE, np.uint8))  # not uint16
    archive = tmp_path / "upload.zip"
    with pytest.raises(UploadError) as info:
        pack_upload(archive, software, results)
    message = str(info.value)
    assert "mask001.tif: missing (every frame needs a mask)" in message
    assert "mask000.tif: stored as uint8, the CTC requires uint16" in message
    assert not archive.exists() and not list(tmp_path.glob(".upload.zip*"))


def test_results_must_cover_every_executable_and_challenge_sequence(tmp_path: Path) -> None:
    dataset = _challenge_set(tmp_path)
    software = _software(tmp_path)
    (software / f"{NAME}-03.sh").write_text("#!/bin/sh\n")
    with pytest.raises(UploadError, match=r"the software has executables for \['01', '02', '03'\]"):
        pack_upload(tmp_path / "upload.zip", software, _results(tmp_path, dataset))


def test_mask_digits_follow_the_challenge_frames(tmp_path: Path) -> None:
    dataset = _challenge_set(tmp_path, digits=4)  # a long sequence: t0000.tif ...
    with pytest.raises(UploadError, match=r"mask0000\.tif: missing; found mask000\.tif instead"):
        pack_upload(tmp_path / "upload.zip", _software(tmp_path), _results(tmp_path, dataset))


def test_executables_run_from_sw_beside_the_dataset(tmp_path: Path) -> None:
    """The script runs in SW/ with no inherited environment and finds ../<DATASET>/<SEQ>."""
    dataset = _challenge_set(tmp_path)
    body = (
        'python3 -c "import sys, os, numpy, tifffile\n'
        "from pathlib import Path\n"
        "assert os.environ.get('SECRET') is None\n"
        f"src = Path('../{NAME}/@SEQ@'); out = Path('../{NAME}/@SEQ@_RES'); out.mkdir()\n"
        "for p in sorted(src.glob('t*.tif')):\n"
        "    tifffile.imwrite(out / p.name.replace('t', 'mask', 1), "
        'tifffile.imread(p).astype(numpy.uint16) + 1)"'
    )
    software = stage_software(_software(tmp_path, body), tmp_path / "upload" / "SW")
    os.environ["SECRET"] = "not for the script"
    try:
        res_dir = run_executable(software, NAME, "02", dataset)
    finally:
        del os.environ["SECRET"]
    assert res_dir == tmp_path / "upload" / NAME / "02_RES"
    assert (tmp_path / "upload" / NAME / "02").resolve() == (dataset / "02").resolve()
    assert ctc.read_image(res_dir / "mask001.tif").max() == 2


def test_failing_or_wrong_executables_are_errors(tmp_path: Path) -> None:
    dataset = _challenge_set(tmp_path)
    software = stage_software(_software(tmp_path, "exit 3"), tmp_path / "a" / "SW")
    with pytest.raises(UploadError, match=f"{NAME}-01.sh failed with exit status 3"):
        run_executable(software, NAME, "01", dataset)
    writes_nothing = stage_software(_software(tmp_path / "b"), tmp_path / "b" / "SW")
    with pytest.raises(ResultsError, match="result folder does not exist"):
        run_executable(writes_nothing, NAME, "01", dataset)
    shutil.rmtree(dataset / "02")
    with pytest.raises(ctc.CTCFormatError, match="the challenge set has no sequence 02"):
        run_executable(software, NAME, "02", dataset)
