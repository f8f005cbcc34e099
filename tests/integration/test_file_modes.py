"""Every output gets the mode the umask gives, so that a lab's colleagues and the CTC organisers
can read it: files 0666 & ~umask, folders (and the CTC executables) 0777 & ~umask.

Temporary names made by ``tempfile.mkstemp``/``mkdtemp`` would give 0600/0700 whatever the umask;
the library writes through :func:`efficientcellseg.files.atomic_output` instead. The umask is
the process's, so it is set for the duration of one test and restored.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from efficientcellseg.cli import main
from efficientcellseg.metrics import evaluate_sequence, write_evaluation
from efficientcellseg.model import read_metadata, write_metadata
from efficientcellseg.scores import dataset_scores, write_dataset_scores
from efficientcellseg.submission import SubmissionDataset, build_submission
from efficientcellseg.training import plot_training_curve
from efficientcellseg.training_data import collect_annotated_slices, save_annotated_slices


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and of everything below it."""
    return {
        p.relative_to(root.parent).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in [root, *root.rglob("*")]
    }


def expected_mode(path: Path, umask: int) -> int:
    executable = path.is_dir() or (path.suffix == ".sh" and path.parent.name == "ctc_submission")
    return (0o777 if executable else 0o666) & ~umask


@pytest.fixture(params=[0o022, 0o027], ids=["umask-022", "umask-027"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_outputs_of_every_stage_get_the_umasks_mode(
    umask, tiny_model_folder, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    dataset = out / "Synthetic"
    argv = ["synthetic", str(dataset), "--sequences", "1", "--frames", "2", "--depth", "8",
            "--height", "48", "--width", "48", "--objects", "2"]  # fmt: skip
    assert main(argv) == 0
    frame = dataset / "01" / "t000.tif"
    assert main(["pseudocolor", str(frame), str(out / "pc" / "colour.tif")]) == 0
    models = out / "models"
    shutil.copytree(tiny_model_folder("distance"), models, copy_function=shutil.copyfile)
    for path in [models, *models.iterdir()]:  # as training would have written them
        path.chmod(0o777 & ~umask if path.is_dir() else 0o666 & ~umask)
    metadata = read_metadata(models / "segmentation.keras")
    write_metadata(models / "segmentation.keras", {**metadata, "parameters": {"total": 1000}})
    results = dataset / "01_RES"
    assert main(["predict", "--models", str(models), str(dataset / "01"), str(results)]) == 0
    assert main(["evaluate", str(dataset), "01", "--out", str(out / "eval" / "01")]) == 0
    evaluation = evaluate_sequence(dataset, "01")
    write_evaluation(evaluation, out / "eval" / "again")
    scores = dataset_scores(
        "syn", "Synthetic", "GT", {"01": out / "eval" / "01" / "scores.json"},
        {"01": [models / "segmentation.json"]},
    )  # fmt: skip
    write_dataset_scores(scores, out / "SEG.txt", out / "eval" / "scores.tsv")
    save_annotated_slices(out / "slices" / "01.npz", collect_annotated_slices(dataset, "01"))
    log_csv = out / "curve" / "log.csv"
    log_csv.parent.mkdir()
    log_csv.write_text("epoch,loss,iou,val_loss,val_iou,learning_rate,seconds\n0,1,0.1,1,0.1,1,1\n")
    plot_training_curve(log_csv, out / "curve" / "curve.png")
    build_submission(
        out / "ctc_submission", [SubmissionDataset("Synthetic", ("01",), models, "GT")]
    )
    assert (out / "ctc_submission" / "Synthetic-01.sh").is_file()
    json.loads((out / "eval" / "01" / "scores.json").read_text())  # complete files

    wrong = {
        name: oct(mode)
        for name, mode in modes(out).items()
        if mode != expected_mode(tmp_path / name, umask)
    }
    assert wrong == {}, f"umask {umask:04o}: modes differ from the umask's"
    assert len(modes(out)) > 60  # every stage wrote something


def test_exported_networks_get_the_umasks_mode(tiny_model, tmp_path: Path) -> None:
    from efficientcellseg.inference import export_onnx
    from efficientcellseg.model import save_model

    model, config = tiny_model
    path = tmp_path / "models" / "segmentation.keras"
    old, umask = os.umask(0o027), 0o027  # the ONNX export takes 10 s: one umask only
    try:
        save_model(model, path, {"config": config.to_dict()})
        export_onnx(path)
    finally:
        os.umask(old)
    assert modes(tmp_path / "models") == {
        "models": 0o777 & ~umask,
        **{f"models/segmentation.{ext}": 0o666 & ~umask for ext in ("keras", "json", "onnx")},
    }
