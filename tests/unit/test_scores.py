"""SEG.txt and scores.tsv (efficientcellseg.scores) show the instance metrics per sequence and
as their mean, beside SEG/DET; files written before those metrics existed still summarise."""

from __future__ import annotations

import dataclasses
import json

import pytest

from efficientcellseg.scores import comparison_table, dataset_scores, score_table, seg_text


def write_inputs(tmp_path, instance: dict[str, dict | None]):
    evaluations, models = {}, {}
    for seq, values in instance.items():
        other = "02" if seq == "01" else "01"
        scores = {"seg": 0.5 if seq == "01" else 0.7, "det": None, "n_reference_objects": 10}
        if values is not None:
            scores["instance"] = values
        evaluations[seq] = tmp_path / f"{seq}.json"
        evaluations[seq].write_text(json.dumps(scores))
        meta = tmp_path / f"model-{seq}.json"
        meta.write_text(
            json.dumps(
                {"fold": f"without-{seq}", "trained_on": [other], "parameters": {"total": 1000}}
            )
        )
        models[seq] = [meta]
    return evaluations, models


def metrics(ap50: float, f1: float) -> dict:
    return {
        "ap_50": ap50,
        "ap_75": ap50 / 2,
        "ap_50_95": ap50 / 3,
        "f1_50": f1,
        "accuracy_50": f1 / 2,
        "foreground_dice": 0.9,
        "foreground_iou": 0.8,
    }


def test_seg_txt_and_table_show_instance_metrics_per_sequence_and_mean(tmp_path):
    evaluations, models = write_inputs(tmp_path, {"01": metrics(0.6, 0.8), "02": metrics(0.8, 0.6)})
    scores = dataset_scores("ds", "Fluo-X", "GT", evaluations, models)
    text = seg_text(scores)
    assert "AP50     0.700000   (COCO mask AP at IoU 0.5; 01: 0.600000, 02: 0.800000)" in text
    assert "\nF1@0.5   0.700000   (NeurIPS-CellSeg F1, mean of images;" in text
    assert "\nIoU      0.800000   (foreground, mean of images;" in text
    assert text.startswith("SEG      0.600000")
    header, row1, row2, mean = (line.split("\t") for line in score_table(scores).splitlines())
    assert header[8:] == ["AP50", "AP75", "AP", "F1@0.5", "Acc@0.5", "Dice", "IoU"]
    assert row1[8] == "0.600000" and row2[11] == "0.600000"
    assert mean[0] == "mean" and mean[8] == "0.700000" and mean[10] == "0.233333"


def test_scores_without_instance_metrics_still_summarise(tmp_path):
    evaluations, models = write_inputs(tmp_path, {"01": metrics(0.6, 0.8), "02": None})
    scores = dataset_scores("ds", "Fluo-X", "GT", evaluations, models)
    assert "AP50" not in seg_text(scores)
    mean = score_table(scores).splitlines()[-1].split("\t")
    assert mean[8:] == ["NA"] * 7


def test_models_compare_side_by_side_with_their_parameter_efficiency(tmp_path):
    evaluations, models = write_inputs(tmp_path, {"01": None, "02": None})
    small = dataset_scores("cells", "Fluo-X", "GT", evaluations, models)
    large = dataset_scores("cells-unet", "Fluo-X", "GT", evaluations, models)
    large = dataclasses.replace(
        large,
        sequences=tuple(dataclasses.replace(s, parameters=100_000) for s in large.sequences),
    )
    rows = [
        line.split("\t")
        for line in comparison_table([(large, "U-Net"), (small, "ECS")]).splitlines()
    ]
    assert rows[0] == ["dataset", "model", "parameters", "SEG", "DET", "OP_CSB", "PESEG",
                       "reference"]  # fmt: skip
    # fewest parameters first; SEG 0.6 (mean of 0.5 and 0.7) per million parameters
    assert rows[1] == ["cells", "ECS", "1000", "0.600000", "NA", "NA", "600.000000", "GT"]
    assert rows[2][:3] == ["cells-unet", "U-Net", "100000"] and rows[2][6] == "6.000000"
    other = dataclasses.replace(small, reference="ST")
    with pytest.raises(ValueError, match="not scored alike"):
        comparison_table([(small, "ECS"), (other, "ECS on ST")])
