"""A dataset's held-out scores: per-sequence SEG/DET combined with the models' parameter counts.

The workflow scores every sequence with models that never saw it (:mod:`.metrics` per sequence)
and summarises them here into ``SEG.txt`` (what a person reads first) and a score table (the
report). The dataset score is the mean over its sequences, as the CTC ranks a dataset by the
mean of its sequences' measures; OP_CSB and PESEG follow from it. The metrics other communities
report (COCO AP, F1, accuracy, foreground Dice/IoU; :mod:`.instance_metrics`) are shown beside
them, per sequence and as the same mean over sequences.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_write_bytes
from .metrics import op_csb, peseg
from .model import encoder_start_text

# scores.json "instance" key -> (SEG.txt/table name, what it is), in the order they are shown.
INSTANCE_COLUMNS = {
    "ap_50": ("AP50", "COCO mask AP at IoU 0.5"),
    "ap_75": ("AP75", "COCO mask AP at IoU 0.75"),
    "ap_50_95": ("AP", "COCO mAP over IoU 0.50:0.05:0.95"),
    "f1_50": ("F1@0.5", "NeurIPS-CellSeg F1, mean of images"),
    "accuracy_50": ("Acc@0.5", "StarDist/EmbedSeg TP/(TP+FP+FN), mean of images"),
    "foreground_dice": ("Dice", "foreground, mean of images"),
    "foreground_iou": ("IoU", "foreground, mean of images"),
}

REFERENCE_NAMES = {
    "GT": "gold truth (0X_GT/SEG)",
    "ST": "silver truth (0X_ST/SEG): computer-made masks, so SEG is a pseudo-SEG",
}


@dataclass(frozen=True)
class SequenceScore:
    """Scores of one sequence and the models that produced its masks."""

    sequence: str
    models: str  # model folder name, e.g. "without-01"
    trained_on: tuple[str, ...]
    seg: float
    det: float | None
    n_reference_objects: int
    parameters: int
    instance: dict[str, float] | None = None  # scores.json "instance" (absent in older files)

    def instance_value(self, key: str) -> float | None:
        return None if self.instance is None else self.instance.get(key)


@dataclass(frozen=True)
class DatasetScores:
    name: str
    ctc_name: str
    reference: str
    sequences: tuple[SequenceScore, ...]
    encoder: str = ""  # what the encoders started from (ImageNet file and sha256, or random)

    @property
    def seg(self) -> float:
        return _mean([s.seg for s in self.sequences])

    @property
    def det(self) -> float | None:
        values = [s.det for s in self.sequences]
        return None if any(v is None for v in values) else _mean(values)

    @property
    def op_csb(self) -> float | None:
        return None if self.det is None else op_csb(self.seg, self.det)

    @property
    def parameters(self) -> int:
        return max(s.parameters for s in self.sequences)

    @property
    def peseg(self) -> float:
        return peseg(self.seg, self.parameters)

    def instance_mean(self, key: str) -> float | None:
        """Mean over the sequences of one instance metric (None if a sequence lacks it)."""
        values = [s.instance_value(key) for s in self.sequences]
        return None if any(v is None for v in values) else _mean(values)


def dataset_scores(
    name: str,
    ctc_name: str,
    reference: str,
    evaluations: dict[str, str | os.PathLike],
    model_metadata: dict[str, list[str | os.PathLike]],
) -> DatasetScores:
    """Combine ``scores.json`` of each sequence with the metadata of the networks that made it.

    Parameters
    ----------
    evaluations
        sequence -> its ``scores.json`` (written by :func:`.metrics.write_evaluation`).
    model_metadata
        sequence -> the metadata JSON of every network of the models that segmented it.
    """
    sequences = []
    starts: list[str] = []
    for sequence, path in sorted(evaluations.items()):
        scores = json.loads(Path(path).read_text())
        networks = [json.loads(Path(p).read_text()) for p in model_metadata[sequence]]
        starts += [
            encoder_start_text(meta) for meta in networks if encoder_start_text(meta) not in starts
        ]
        trained_on = sorted({s for meta in networks for s in meta.get("trained_on", [])})
        if sequence in trained_on:
            raise ValueError(
                f"{name}: the models that segmented sequence {sequence} were trained on it "
                f"({trained_on}); the score would not be held out"
            )
        sequences.append(
            SequenceScore(
                sequence=sequence,
                models=str(networks[0].get("fold", "?")) if networks else "?",
                trained_on=tuple(trained_on),
                seg=float(scores["seg"]),
                det=None if scores.get("det") is None else float(scores["det"]),
                n_reference_objects=int(scores["n_reference_objects"]),
                parameters=sum(int(meta["parameters"]["total"]) for meta in networks),
                instance=scores.get("instance"),
            )
        )
    if not sequences:
        raise ValueError(f"{name}: no sequence scores to summarise")
    return DatasetScores(name, ctc_name, reference, tuple(sequences), "; ".join(starts))


def seg_text(scores: DatasetScores) -> str:
    """The content of ``SEG.txt``: the numbers first, then what was scored against what."""
    det, op = scores.det, scores.op_csb
    per_seq = ", ".join(f"{s.sequence}: {s.seg:.6f}" for s in scores.sequences)
    lines = [
        f"SEG      {scores.seg:.6f}   (mean of sequences; {per_seq})",
        f"DET      {_fmt(det)}",
        f"OP_CSB   {_fmt(op)}",
        f"params   {scores.parameters:,}   (all networks used per sequence)",
        f"PESEG    {scores.peseg:.6f}   (SEG / params x 1e6)",
        *_instance_lines(scores),
        "",
        f"dataset  {scores.name} ({scores.ctc_name})",
        f"against  {REFERENCE_NAMES[scores.reference]}",
        f"encoder  {scores.encoder}   (initialisation of each network)",
        "held out: each sequence was segmented by models that never saw it:",
    ]
    for s in scores.sequences:
        lines.append(
            f"  {s.sequence}: models {s.models} (trained on {', '.join(s.trained_on)}), "
            f"SEG {s.seg:.6f} over {s.n_reference_objects} reference objects, DET {_fmt(s.det)}"
        )
    return "\n".join(lines) + "\n"


def score_table(scores: DatasetScores) -> str:
    """Tab-separated table, one row per sequence and one for the dataset."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(
        ["sequence", "models", "reference", "SEG", "DET", "OP_CSB", "objects", "parameters"]
        + [name for name, _ in INSTANCE_COLUMNS.values()]
    )
    for s in scores.sequences:
        seq_op = None if s.det is None else op_csb(s.seg, s.det)
        writer.writerow(
            [
                s.sequence,
                s.models,
                scores.reference,
                f"{s.seg:.6f}",
                _cell(s.det),
                _cell(seq_op),
                s.n_reference_objects,
                s.parameters,
                *(
                    _cell(None if s.instance is None else s.instance.get(k))
                    for k in INSTANCE_COLUMNS
                ),
            ]
        )
    writer.writerow(
        [
            "mean",
            "held out",
            scores.reference,
            f"{scores.seg:.6f}",
            _cell(scores.det),
            _cell(scores.op_csb),
            sum(s.n_reference_objects for s in scores.sequences),
            scores.parameters,
            *(_cell(scores.instance_mean(key)) for key in INSTANCE_COLUMNS),
        ]
    )
    return buffer.getvalue()


def write_dataset_scores(
    scores: DatasetScores, seg_txt: str | os.PathLike, table: str | os.PathLike
) -> None:
    atomic_write_bytes(Path(seg_txt), seg_text(scores).encode())
    atomic_write_bytes(Path(table), score_table(scores).encode())


def comparison_table(compared: list[tuple[DatasetScores, str]]) -> str:
    """Models side by side on one dataset (TSV): each row a configured dataset entry with its
    model label, parameters of all its networks, held-out SEG, DET, OP_CSB and PESEG.

    The entries must score the same sequences against the same reference, so that the figures
    are comparable; PESEG (SEG per million parameters) is the parameter efficiency the
    EfficientCellSeg paper claims.
    """
    if not compared:
        raise ValueError("nothing to compare")
    first = compared[0][0]
    for scores, _ in compared[1:]:
        same = (scores.reference, [s.sequence for s in scores.sequences]) == (
            first.reference,
            [s.sequence for s in first.sequences],
        )
        if not same:
            raise ValueError(
                f"{scores.name} and {first.name} are not scored alike (reference, sequences): "
                "their figures cannot be compared"
            )
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(
        ["dataset", "model", "parameters", "SEG", "DET", "OP_CSB", "PESEG", "reference"]
    )
    for scores, label in sorted(compared, key=lambda item: item[0].parameters):
        writer.writerow(
            [
                scores.name,
                label,
                scores.parameters,
                f"{scores.seg:.6f}",
                _cell(scores.det),
                _cell(scores.op_csb),
                f"{scores.peseg:.6f}",
                scores.reference,
            ]
        )
    return buffer.getvalue()


def summary_dict(scores: DatasetScores) -> dict[str, Any]:
    return {
        "seg": scores.seg,
        "det": scores.det,
        "op_csb": scores.op_csb,
        "parameters": scores.parameters,
        "peseg": scores.peseg,
    }


def _instance_lines(scores: DatasetScores) -> list[str]:
    lines = []
    for key, (name, meaning) in INSTANCE_COLUMNS.items():
        mean = scores.instance_mean(key)
        if mean is None:
            continue
        per_seq = ", ".join(f"{s.sequence}: {s.instance[key]:.6f}" for s in scores.sequences)
        lines.append(f"{name:<8s} {mean:.6f}   ({meaning}; {per_seq})")
    return lines


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _fmt(value: float | None) -> str:
    return "n/a (no TRA markers)" if value is None else f"{value:.6f}"


def _cell(value: float | None) -> str:
    return "NA" if value is None else f"{value:.6f}"
