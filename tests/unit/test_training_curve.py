"""The training curve marks the epoch whose model was kept, as its metadata JSON counts it."""

from __future__ import annotations

import csv
from pathlib import Path

from efficientcellseg.training import (
    LOG_COLUMNS,
    best_row,
    plot_training_curve,
    read_training_log,
    training_curve_figure,
)


def _history(val_iou: list[float]) -> list[dict[str, float]]:
    return [
        {"epoch": e, "loss": 1 - v, "iou": v, "val_loss": 1 - v, "val_iou": v,
         "learning_rate": 1e-3, "seconds": 1.0}
        for e, v in enumerate(val_iou)
    ]  # fmt: skip


def _marker(fig):
    lines = fig.axes[1].get_lines()
    (line,) = [x for x in lines if x.get_label().startswith("kept model")]
    return line.get_xdata()[0], line.get_label()


def test_marker_is_the_json_best_epoch_counted_from_one() -> None:
    history = _history([0.1, 0.2, 0.5, 0.4, 0.5, 0.3])  # best 0.5 first reached at epoch 2
    best = int(best_row(history)["epoch"])
    assert best == 2  # ties: the first (as training keeps the first better model)
    x, label = _marker(training_curve_figure(history, best, "segmentation"))
    assert x == 3 and label == "kept model: epoch 3 of 6 (best_epoch 2 in its JSON)"


def test_given_best_epoch_wins_and_the_png_is_written(tmp_path: Path) -> None:
    log_csv = tmp_path / "log.csv"
    with log_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(_history([0.1, 0.9, 0.2]))
    assert _marker(training_curve_figure(read_training_log(log_csv), 0, ""))[0] == 1
    plot_training_curve(log_csv, tmp_path / "curve.png", best_epoch=1)
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
