"""Killed runs resume to the very masks an uninterrupted run makes.

``efficientcellseg predict`` is killed with SIGKILL (no clean-up possible, as when a machine
loses power or a cluster job runs out of time) once some masks of the sequence are written,
and run again; so is the whole workflow, its Snakemake and job processes killed together
during prediction. The final masks must be byte-identical to those of an uninterrupted run
(each mask records what it was made from, and that record is deterministic), and every kept
mask must belong to its frame.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from workflow_runs import (
    CTC_NAME,
    DATASET,
    TINY_CONFIG,
    run_snakemake,
    snakemake_command,
    write_config,
)

from efficientcellseg import ctc
from efficientcellseg.segment import RECORD_KEY, segment_sequence
from efficientcellseg.settings import InferenceSettings, SyntheticSpec
from efficientcellseg.synthetic import write_synthetic_dataset

COMMAND = Path(sys.executable).parent / "efficientcellseg"


def masks_in(folder: Path) -> list[Path]:
    """Finished masks (temporary files of an interrupted write are hidden ``.mask*`` files)."""
    return sorted(folder.glob("mask*.tif")) if folder.is_dir() else []


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``process`` and every process of its session as soon as ``ready()`` is true."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never got far enough to be killed"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def assert_masks_belong_to_their_frames(seq_dir: Path, result_dir: Path) -> None:
    """Each mask's record names its own frame file (by SHA-256) and its pixels read back."""
    seq = ctc.open_sequence(seq_dir.parent, seq_dir.name)
    for frame, frame_path in seq.frames.items():
        mask = result_dir / ctc.mask_name(frame, seq.digits)
        record = ctc.tiff_metadata(mask)[RECORD_KEY]
        assert record["frame"]["name"] == frame_path.name
        assert record["frame"]["sha256"] == hashlib.sha256(frame_path.read_bytes()).hexdigest()
        labels = ctc.read_labels(mask, seq.frame_shape)
        pixels = hashlib.sha256(np.ascontiguousarray(labels, np.uint16).tobytes()).hexdigest()
        assert record["pixels"] == pixels


def assert_same_bytes(folder: Path, reference: Path) -> None:
    names = [p.name for p in masks_in(reference)]
    assert [p.name for p in masks_in(folder)] == names
    assert sorted(p.name for p in folder.iterdir()) == names  # no temporary file left
    for name in names:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def long_sequence(tmp_path_factory) -> Path:
    """One sequence of 8 frames (8 x 64 x 64, uint8: pseudocolors fast)."""
    dataset = tmp_path_factory.mktemp("long") / "Long"
    spec = SyntheticSpec(seed=4, n_sequences=1, n_frames=8, depth=8, height=64, width=64,
                         n_objects=3)  # fmt: skip
    write_synthetic_dataset(dataset, spec)
    for frame in (dataset / "01").glob("t*.tif"):
        image = tifffile.imread(frame)
        ctc.write_tiff(frame, (image // (image.max() // 255 + 1)).astype(np.uint8))
    return dataset / "01"


def test_predict_killed_mid_sequence_resumes_to_the_same_masks(
    long_sequence, tiny_model_folder, tmp_path
) -> None:
    models = tiny_model_folder("distance")
    options = ["--models", str(models), "--backend", "openvino", "--threads", "2"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run([COMMAND, "predict", *options, long_sequence, reference], check=True)

    process = subprocess.Popen(
        [COMMAND, "predict", *options, long_sequence, resumed],
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kill_when(process, lambda: len(masks_in(resumed)) >= 2)
    finished = masks_in(resumed)
    assert 2 <= len(finished) < 8  # killed mid-sequence
    for mask in finished:  # written atomically: whatever exists is whole
        ctc.read_labels(mask, (8, 64, 64))

    result = subprocess.run(
        [COMMAND, "predict", *options, long_sequence, resumed],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"wrote {8 - len(finished)} masks to {resumed} (kept {len(finished)} finished)" in (
        result.stdout
    )
    assert_same_bytes(resumed, reference)
    assert_masks_belong_to_their_frames(long_sequence, resumed)


@pytest.mark.slow
def test_workflow_killed_during_prediction_resumes_to_the_same_masks(
    tiny_model_folder, tmp_path
) -> None:
    """The workflow with ready model folders (training is not what is tested here): killed
    with its job processes while the first sequence is being predicted, unlocked, run again."""
    workdir = tmp_path / "workflow"
    dataset_entry = {
        **TINY_CONFIG["datasets"][DATASET],
        "synthetic": {"seed": 3, "n_frames": 4, "depth": 8, "height": 64, "width": 64,
                      "n_objects": 3},
        "postprocess": {"kind": "distance", "min_area": 15, "min_volume": 40},
    }  # fmt: skip
    write_config(workdir, {**TINY_CONFIG, "submission": [], "datasets": {DATASET: dataset_entry}})
    for fold in ("without-01", "without-02"):
        models = workdir / f"results/{DATASET}/models/{fold}"
        shutil.copytree(tiny_model_folder("distance"), models)
    targets = [f"results/{DATASET}/predictions/{seq}.json" for seq in ("01", "02")]
    options = ["--cores", "2", "--allowed-rules", "synthetic_dataset", "predict", "--", *targets]
    first_results = workdir / f"results/{DATASET}/01_RES"

    process = subprocess.Popen(
        snakemake_command(workdir, *options),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: snakemake and its jobs die together
    )
    kill_when(process, lambda: len(masks_in(first_results)) >= 1)
    finished = masks_in(first_results)
    assert 1 <= len(finished) < 4

    again = run_snakemake(workdir, *options)
    assert again.returncode != 0 and "--unlock" in again.output  # the killed run's lock
    run_snakemake(workdir, "--unlock").check()
    run_snakemake(workdir, *options).check()
    summary = json.loads((workdir / targets[0]).read_text())
    assert summary["skipped"] == [int(p.name[4:7]) for p in finished]  # resumed, not redone

    dataset = workdir / "resources" / "ctc" / CTC_NAME
    for seq in ("01", "02"):
        reference = tmp_path / "reference" / f"{seq}_RES"
        segment_sequence(
            dataset / seq,
            reference,
            workdir / f"results/{DATASET}/models/without-{seq}",
            InferenceSettings(threads=2),  # as the job ran: 4 threads asked, 2 cores given
        )
        assert_same_bytes(workdir / f"results/{DATASET}/{seq}_RES", reference)
        assert_masks_belong_to_their_frames(dataset / seq, workdir / f"results/{DATASET}/{seq}_RES")
