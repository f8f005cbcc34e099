"""Figures a scientist looks at: example slices with input, pseudocolor and predicted masks.

Like figure 6 of the paper: per example, the raw slice, its context-aware pseudocolor, and the
predicted instance masks with the reference outlines drawn on top.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from . import ctc
from .files import atomic_output
from .pseudocolor import pseudocolor_frame

log = logging.getLogger(__name__)


def pick_examples(seq: ctc.Sequence, source: str, count: int) -> list[ctc.SegAnnotation]:
    """Annotations spread over the sequence (first, middle, last ...), ``count`` at most."""
    annotations = list(seq.annotations(source))
    if not annotations:
        return []
    picks = np.linspace(0, len(annotations) - 1, min(count, len(annotations))).round()
    return [annotations[int(i)] for i in dict.fromkeys(picks)]


def overlay_figure(
    dataset_dir: str | Path,
    sequences: list[str],
    results: dict[str, str | Path],
    out_png: str | Path,
    *,
    source: str = "GT",
    per_sequence: int = 2,
) -> None:
    """Rows of (raw, pseudocolor, prediction + reference outlines) for annotated slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for name in sequences:
        seq = ctc.open_sequence(dataset_dir, name)
        for ann in pick_examples(seq, source, per_sequence):
            rows.append((seq, ann, Path(results[name])))
    fig, axes = plt.subplots(
        max(1, len(rows)), 3, figsize=(12, 4 * max(1, len(rows))), squeeze=False
    )
    for (seq, ann, res_dir), row_axes in zip(rows, axes, strict=False):
        _draw_row(seq, ann, res_dir, row_axes)
    if not rows:
        axes[0, 0].text(0.5, 0.5, f"no {source} annotations to show", ha="center")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def _draw_row(seq: ctc.Sequence, ann: ctc.SegAnnotation, res_dir: Path, axes) -> None:
    frame = ctc.read_image(seq.frames[ann.frame])
    reference = ctc.read_annotation(ann, seq.frame_shape)
    colour = pseudocolor_frame(frame)
    mask_path = res_dir / ctc.mask_name(ann.frame, seq.digits)
    predicted = ctc.read_labels(mask_path) if mask_path.is_file() else np.zeros(frame.shape, int)
    if seq.ndim == 3:
        z = ann.slice if ann.is_slice else _busiest_slice(reference)
        frame, colour, predicted = frame[z], colour[z], predicted[z]
        reference = reference if ann.is_slice else reference[z]
        where = f"t={ann.frame} z={z}"
    else:
        where = f"t={ann.frame}"
    axes[0].imshow(frame, cmap="gray")
    axes[0].set_title(f"{seq.name} {where}: raw")
    axes[1].imshow(np.clip(colour, 0, 1))
    axes[1].set_title("context-aware pseudocolor")
    axes[2].imshow(_label_colours(predicted))
    outline = find_boundaries(reference, mode="inner")
    axes[2].contour(outline, levels=[0.5], colors="white", linewidths=0.6)
    axes[2].set_title(f"prediction ({len(np.unique(predicted)) - 1} objects), reference outlined")


def _busiest_slice(labels: np.ndarray) -> int:
    return int(np.argmax([len(np.unique(s)) for s in labels]))


def _label_colours(labels: np.ndarray) -> np.ndarray:
    """Random but stable colour per label on black."""
    rng = np.random.default_rng(0)
    palette = rng.uniform(0.25, 1.0, (int(labels.max()) + 1, 3))
    palette[0] = 0
    return palette[labels]
