"""Built-in datasets through the CLI, as a user makes them: synthetic and the real CHO sample."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from efficientcellseg import ctc, samples
from efficientcellseg.cli import main

CONFTEST_CACHE = Path(__file__).resolve().parents[2] / ".cache"


def test_cli_synthetic_writes_a_dataset_and_says_so(tmp_path: Path, capsys) -> None:
    assert main(["synthetic", str(tmp_path / "syn"), "--seed", "7", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'syn'}" in out and "01:" in out and "02:" in out
    seq = ctc.open_sequence(tmp_path / "syn", "02")
    assert seq.frame_ids == [0, 1]


def test_cli_synthetic_2d(tmp_path: Path) -> None:
    assert main(["synthetic", str(tmp_path / "syn2d"), "--2d", "--sequences", "1"]) == 0
    assert ctc.discover_sequences(tmp_path / "syn2d") == ["01"]
    assert ctc.open_sequence(tmp_path / "syn2d", "01").ndim == 2


def test_cli_reports_bad_options_without_a_traceback(tmp_path: Path, caplog) -> None:
    assert main(["synthetic", str(tmp_path / "x"), "--depth", "3"]) == 2
    assert "depth 3 is too small" in caplog.text


def test_console_script_is_installed() -> None:
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "efficientcellseg"), "--help"], capture_output=True, text=True, check=True
    )
    assert "synthetic" in result.stdout and "sample" in result.stdout


def test_cho_sample_axes_and_checksums(cho_arrays) -> None:
    image, masks = cho_arrays
    assert image.shape == masks.shape == (20, 5, 443, 512)
    assert image.dtype == np.uint8 and masks.dtype == np.uint16
    counts = [len(np.unique(m)) - 1 for m in masks]
    assert min(counts) >= 8 and max(counts) <= 11  # 8-11 nuclei per frame
    # With the axes right, a nucleus is continuous in z: its slices overlap in xy.
    frame = masks[10]
    label = np.bincount(frame.ravel())[1:].argmax() + 1
    present = [z for z in range(5) if (frame[z] == label).any()]
    assert len(present) >= 2
    a, b = frame[present[0]] == label, frame[present[1]] == label
    assert (a & b).sum() > 0.3 * min(a.sum(), b.sum())


def test_cho_sample_as_ctc_dataset(cho_dataset: Path) -> None:
    assert ctc.discover_sequences(cho_dataset) == ["01", "02"]
    for name in ("01", "02"):
        seq = ctc.open_sequence(cho_dataset, name)
        assert seq.frame_ids == list(range(10)) and seq.frame_shape == (5, 443, 512)
        assert seq.gt_seg == () and len(seq.st_seg) == 10  # computer-made masks: silver slot
    assert "not manual gold truth" in (cho_dataset / "README.txt").read_text()


def test_cho_sample_cli_uses_the_cache(tmp_path: Path, capsys) -> None:
    # The session fixture already fetched the wheel into .cache: this must not download again.
    wheel = CONFTEST_CACHE / samples.WHEEL_FILE
    assert wheel.is_file()
    before = wheel.stat().st_mtime_ns
    assert main(["sample", "cho", str(tmp_path / "cho"), "--cache", str(CONFTEST_CACHE)]) == 0
    assert wheel.stat().st_mtime_ns == before
    assert "01:" in capsys.readouterr().out


def test_tampered_wheel_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / samples.WHEEL_FILE
    member, _ = samples.MEMBERS["image"]
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(member, b"not the real file")
        archive.writestr(samples.MEMBERS["masks"][0], b"x")
    with pytest.raises(samples.SampleError, match="sha256 .* differs from the pinned"):
        samples.read_cho_sample(tmp_path)
    assert hashlib.sha256(b"not the real file").hexdigest() not in samples.MEMBERS["image"][1]
