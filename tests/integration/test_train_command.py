"""`efficientcellseg train`: a complete model folder from a CTC dataset, without Snakemake."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from efficientcellseg import ctc
from efficientcellseg.cli import main
from efficientcellseg.model import read_metadata
from efficientcellseg.training import training_sources

pytestmark = pytest.mark.slow


def test_train_then_predict(synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    args = ["train", "--sequences", "02", str(synthetic_dataset), str(models), "--model", "tiny",
            "--training-set", "GT", "--kind", "distance", "--epochs", "1"]  # fmt: skip
    assert main(args) == 0
    assert "segmentation: best val IoU" in capsys.readouterr().out
    assert sorted(p.name for p in models.iterdir()) == [
        "pipeline.json", "segmentation.json", "segmentation.keras", "segmentation.onnx",
        "segmentation_curve.png", "segmentation_log.csv",
    ]  # fmt: skip
    metadata = read_metadata(models / "segmentation.keras")
    assert metadata["trained_on_sequences"] == ["02"]
    assert metadata["training"]["training_set"] == "GT" and metadata["epochs_run"] == 1
    assert json.loads((models / "pipeline.json").read_text())["postprocess"]["kind"] == "distance"
    # Done already with the same settings: kept, not trained again.
    before = (models / "segmentation.keras").stat().st_mtime_ns
    assert main(args) == 0
    assert (models / "segmentation.keras").stat().st_mtime_ns == before
    # The network records the files it learnt from: another dataset with the same sequence
    # names (one annotation differs) would not count as trained already.
    other = tmp_path / "other"
    shutil.copytree(synthetic_dataset, other)
    gt = next((other / "02_GT" / "SEG").glob("man_seg0*.tif"))
    ctc.write_labels(gt, ctc.read_labels(gt)[::-1].copy())
    sources = read_metadata(models / "segmentation.keras")["training_sources"]
    assert sources == training_sources(synthetic_dataset, ["02"])
    assert sources != training_sources(other, ["02"])
    result = tmp_path / "01_RES"
    assert main(["predict", "--models", str(models), str(synthetic_dataset / "01"),
                 str(result)]) == 0  # fmt: skip
    seq = ctc.open_sequence(synthetic_dataset, "01")
    assert sorted(p.name for p in result.iterdir()) == [
        ctc.mask_name(f, seq.digits) for f in seq.frame_ids
    ]


def test_train_takes_a_workflow_config_entry(tmp_path: Path, caplog) -> None:
    config = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
    args = ["train", str(tmp_path / "nowhere"), str(tmp_path / "models"), "--config", str(config)]
    assert main(args) == 2
    assert "--config and --dataset go together" in caplog.text
    assert main([*args, "--dataset", "NOPE"]) == 2
    assert "no dataset 'NOPE'" in caplog.text
