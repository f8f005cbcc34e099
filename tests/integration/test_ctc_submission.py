"""Playing the organiser: the generated CTC executables run offline on a dataset without GT.

The submission folder built by the tiny workflow run is copied into an empty folder beside a
CTC-layout dataset that holds only raw frames. Each script runs from inside the folder with no
arguments, with a minimal environment (``env -i`` with PATH and HOME only) and, where the
machine allows, without any network (``unshare --net``). Its masks are then checked and scored
against the gold truth that was held back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from workflow_runs import CTC_NAME, TINY_MIN_SEG

from efficientcellseg import ctc
from efficientcellseg.metrics import evaluate_sequence
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow
SEQUENCES = ("01", "02")
VENV_BIN = Path(sys.executable).parent


def _no_network_prefix() -> list[str]:
    """``unshare --net`` (a network namespace with only a downed loopback) when permitted."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], check=False).returncode == 0:
        return [unshare, "--net"]
    return []


def _minimal_env(path: str, home: Path) -> list[str]:
    """The prefix that runs a command with nothing but PATH and HOME in its environment."""
    return ["env", "-i", f"PATH={path}", f"HOME={home}"]


def _run_script(script: Path, path: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_no_network_prefix(), *_minimal_env(path, home), f"./{script.name}"],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def organiser_folder(tiny_workflow, tmp_path_factory) -> Path:
    """An empty folder holding a copy of ctc_submission/ and a test dataset without GT."""
    root = tmp_path_factory.mktemp("organiser")
    shutil.copytree(tiny_workflow.workdir / "ctc_submission", root / "ctc_submission")
    truth = root.parent / f"{root.name}-truth" / CTC_NAME
    write_synthetic_dataset(
        truth,
        SyntheticSpec(seed=11, n_frames=3, depth=12, height=96, width=96, n_objects=6),
    )
    for name in SEQUENCES:
        shutil.copytree(truth / name, root / CTC_NAME / name)
    return root


def test_submission_folder_is_complete(organiser_folder: Path) -> None:
    folder = organiser_folder / "ctc_submission"
    for name in SEQUENCES:
        script = folder / f"{CTC_NAME}-{name}.sh"
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        header = script.read_text().split("set -euo pipefail")[0]
        assert "Prerequisites" in header and "./install.sh" in header and "GPU" in header
        assert "encoder initialisation: segmentation: random; centres: random" in header
    models = folder / "models" / CTC_NAME
    for task in ("segmentation", "centres"):
        for suffix in ("keras", "onnx", "json"):
            assert (models / f"{task}.{suffix}").is_file()
    assert (models / "pipeline.json").is_file()
    gpu = (folder / "requirements-gpu.txt").read_text()
    assert "tensorflow[and-cuda]==" in gpu and "keras==" in gpu and "openvino==" in gpu
    cpu = (folder / "requirements-cpu.txt").read_text()
    pins = [line for line in cpu.splitlines() if not line.startswith("#")]
    assert "openvino==2026.4.1" in pins and "onnxruntime==1.31.1" in pins
    assert not [pin for pin in pins if pin.startswith(("tensorflow", "keras"))]
    assert (folder / "install.sh").stat().st_mode & 0o111
    summary = (folder / "SUBMISSION.md").read_text()
    assert "GT (gold truth annotations only)" in summary and "total parameters" in summary
    assert "segmentation: random; centres: random" in summary
    assert (folder / "code" / "efficientcellseg" / "segment.py").is_file()


def test_scripts_write_every_mask_offline(organiser_folder: Path, tmp_path: Path) -> None:
    folder = organiser_folder / "ctc_submission"
    models = folder / "models" / CTC_NAME
    truth = organiser_folder.parent / f"{organiser_folder.name}-truth" / CTC_NAME
    for name in SEQUENCES:
        result = _run_script(
            folder / f"{CTC_NAME}-{name}.sh", f"{VENV_BIN}:/usr/bin:/bin", tmp_path
        )
        assert result.returncode == 0, result.stdout + result.stderr
        res_dir = organiser_folder / CTC_NAME / f"{name}_RES"
        assert f"wrote ../{CTC_NAME}/{name}_RES" in result.stdout
        seq = ctc.open_sequence(organiser_folder / CTC_NAME, name)
        masks = sorted(p.name for p in res_dir.iterdir())
        assert masks == [ctc.mask_name(f, seq.digits) for f in seq.frame_ids]
        for frame in seq.frame_ids:
            mask = ctc.read_image(res_dir / ctc.mask_name(frame, seq.digits))
            assert mask.dtype == np.uint16 and mask.shape == seq.frame_shape
        # The same masks as the repository's own `efficientcellseg predict` with these models.
        expected = tmp_path / f"{name}_expected"
        command = ["efficientcellseg", "predict", "--models", models, seq.path, expected]
        subprocess.run(
            [*_minimal_env(f"{VENV_BIN}:/usr/bin:/bin", tmp_path), *map(str, command)],
            check=True,
            capture_output=True,
        )
        for frame in seq.frame_ids:
            mask = ctc.mask_name(frame, seq.digits)
            np.testing.assert_array_equal(
                ctc.read_image(res_dir / mask), ctc.read_image(expected / mask), err_msg=mask
            )
        # Score against the held-back gold truth.
        shutil.copytree(res_dir, truth / f"{name}_RES", dirs_exist_ok=True)
        assert evaluate_sequence(truth, name).seg > TINY_MIN_SEG
    assert not list(organiser_folder.glob(f"{CTC_NAME}/*.partial"))


def test_scripts_use_only_the_code_in_the_folder(organiser_folder: Path) -> None:
    folder = organiser_folder / "ctc_submission"
    result = subprocess.run(
        [
            "env",
            "-i",
            f"PATH={VENV_BIN}:/usr/bin:/bin",
            f"PYTHONPATH={folder / 'code'}",
            "python3",
            "-c",
            "import efficientcellseg; print(efficientcellseg.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().startswith(str(folder / "code"))


def test_rerun_replaces_the_results_cleanly(organiser_folder: Path, tmp_path: Path) -> None:
    folder = organiser_folder / "ctc_submission"
    res_dir = organiser_folder / CTC_NAME / "01_RES"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "mask999.tif").write_bytes(b"stale")
    result = _run_script(folder / f"{CTC_NAME}-01.sh", f"{VENV_BIN}:/usr/bin:/bin", tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (res_dir / "mask999.tif").exists()


def test_missing_input_fails_with_a_message(organiser_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "ctc_submission"
    shutil.copytree(organiser_folder / "ctc_submission", copy)
    result = _run_script(copy / f"{CTC_NAME}-01.sh", f"{VENV_BIN}:/usr/bin:/bin", tmp_path)
    assert result.returncode != 0
    assert f"input sequence folder ../{CTC_NAME}/01 not found" in result.stderr


def test_broken_environment_fails_with_a_message(organiser_folder: Path, tmp_path: Path) -> None:
    # A Python without the packages: an empty virtual environment.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "bare"], check=True)
    path = f"{tmp_path / 'bare' / 'bin'}:/usr/bin:/bin"
    result = _run_script(organiser_folder / "ctc_submission" / f"{CTC_NAME}-02.sh", path, tmp_path)
    assert result.returncode == 1
    assert "environment check failed" in result.stderr and "numpy" in result.stderr
    assert "run ./install.sh" in result.stderr
