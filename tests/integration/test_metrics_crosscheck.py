"""Our SEG and DET against py-ctcmetrics (pinned 1.3.3), an independent implementation.

py-ctcmetrics agrees with the official tools on full 2D/3D annotations, so on those the two must
give the same numbers (to 1e-9) for predictions perturbed in every way that matters: eroded,
dilated, split, merged and deleted objects and false positives. It is wrong for per-slice gold
truth (it stacks the slice files of a time point into one volume, and lists the time point once
per slice), so per-slice data is only used to show that disagreement.

py-ctcmetrics needs ``res_track.txt`` beside the masks (it validates the tracking result before
DET): predictions here get a label of their own per object and frame, and one single-frame track
per label. The data: the synthetic 3D dataset reduced to its full-GT files, the synthetic 2D
dataset, and the real Fluo-N3DH-CHO sample, whose masks sit in ``0X_ST`` and which has no TRA:
markers are made from its masks (the core of each object).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from efficientcellseg import ctc
from efficientcellseg.metrics import DetCounts, evaluate_sequence

ctc_evaluate = pytest.importorskip("ctc_metrics.scripts.evaluate")

FIRST_LABEL = 300  # result labels start above 255 and leave gaps
OPERATIONS = ("keep", "erode", "dilate", "split", "merge", "delete")
CHO_FRAMES = 2  # frames per CHO sequence cross-checked (py-ctcmetrics: ~2 s CPU per file)
FRAME_NUMBER = re.compile(r"^(?:t|man_seg)(\d{3})\.tif$")


# -- data -------------------------------------------------------------------------------------


def _in_plane(labels: np.ndarray) -> np.ndarray:
    """A structuring element that works within each slice (3D) or the plane (2D)."""
    structure = ndimage.generate_binary_structure(2, 1)
    return structure[None] if labels.ndim == 3 else structure


def perturb(labels: np.ndarray, rng: np.random.Generator, n_false_positives: int = 3) -> np.ndarray:
    """A prediction made from ``labels``: each object kept, eroded, dilated, split in two (at a
    random cut, sometimes near its middle), merged into the previous object or deleted; plus
    small false-positive blobs in the background."""
    out = np.zeros(labels.shape, dtype=np.uint16)
    structure = _in_plane(labels)
    boxes = ndimage.find_objects(labels)
    next_label, previous = 1, None
    for obj, box in enumerate(boxes, start=1):
        if box is None:
            continue
        box = tuple(
            slice(s.start, s.stop)
            if axis == 0 and labels.ndim == 3
            else slice(max(s.start - 4, 0), s.stop + 4)
            for axis, s in enumerate(box)
        )
        mask = labels[box] == obj
        op = rng.choice(OPERATIONS)
        if op == "delete":
            continue
        if op == "erode":
            mask = ndimage.binary_erosion(mask, structure, iterations=int(rng.integers(1, 4)))
        elif op == "dilate":
            grown = ndimage.binary_dilation(mask, structure, iterations=int(rng.integers(1, 4)))
            mask = grown & ((labels[box] == 0) | mask)
        target = out[box]
        mask &= target == 0
        if op == "merge" and previous is not None:
            label = previous
        else:
            label = previous = next_label
            next_label += 1
        target[mask] = label
        if op == "split" and mask.any():
            xs = np.nonzero(mask)[-1]
            cut = xs.min() + rng.uniform(0.3, 0.7) * (xs.max() - xs.min() + 1)
            part = mask.copy()
            part[..., : round(cut)] = False
            target[part] = next_label
            next_label += 1
    background = np.argwhere(labels == 0)
    for centre in background[rng.choice(len(background), n_false_positives, replace=False)]:
        blob = tuple(
            slice(c, c + 1) if labels.ndim == 3 and axis == 0 else slice(max(c - 1, 0), c + 2)
            for axis, c in enumerate(centre)
        )
        out[blob][out[blob] == 0] = next_label
        next_label += 1
    return out


def markers_from_masks(labels: np.ndarray) -> np.ndarray:
    """TRA-like markers: each object eroded in-plane by 3 voxels (its centre voxel if that
    leaves nothing)."""
    markers = np.zeros_like(labels)
    structure = _in_plane(labels)
    for obj, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == obj
        core = ndimage.binary_erosion(mask, structure, iterations=3)
        if not core.any():
            points = np.argwhere(mask)
            core = np.zeros_like(mask)
            core[tuple(points[np.argmin(((points - points.mean(0)) ** 2).sum(1))])] = True
        markers[box][core] = obj
    return markers


def write_predictions(dataset: Path, sequence: str, masks: list[np.ndarray]) -> Path:
    """Write masks to ``<sequence>_RES`` with a label per object and frame, and res_track.txt."""
    res_dir = dataset / f"{sequence}_RES"
    next_label, tracks = FIRST_LABEL, []
    for frame, mask in enumerate(masks):
        ids = np.unique(mask)[1:]
        lut = np.zeros(int(mask.max()) + 1, dtype=np.uint16)
        lut[ids] = np.arange(next_label, next_label + 2 * len(ids), 2)  # gaps between labels
        ctc.write_labels(res_dir / ctc.mask_name(frame, 3), lut[mask])
        tracks += [[label, frame, frame, 0] for label in lut[ids]]
        next_label += 2 * len(ids)
    ctc.write_man_track(res_dir / "res_track.txt", np.array(tracks).reshape(-1, 4))
    return res_dir


def add_markers(dataset: Path, sequence: str, masks: list[np.ndarray]) -> None:
    tra = dataset / f"{sequence}_GT" / "TRA"
    for frame, mask in enumerate(masks):
        ctc.write_labels(tra / f"man_track{frame:03d}.tif", markers_from_masks(mask))
    ids = sorted({int(i) for mask in masks for i in np.unique(mask)[1:]})
    ctc.write_man_track(tra / "man_track.txt", np.array([[i, 0, len(masks) - 1, 0] for i in ids]))


def reference_folder(dataset: Path, sequence: str, reference: str, out: Path) -> Path:
    """The ``0X_GT`` folder py-ctcmetrics reads: SEG from ``reference``, TRA from the GT."""
    if reference == "GT":
        return dataset / f"{sequence}_GT"
    gt = out / f"{sequence}_GT"
    shutil.copytree(dataset / f"{sequence}_{reference}" / "SEG", gt / "SEG")
    shutil.copytree(dataset / f"{sequence}_GT" / "TRA", gt / "TRA")
    return gt


def ctcmetrics_scores(res_dir: Path, gt_dir: Path, metrics=("SEG", "DET", "TRA")) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        return ctc_evaluate.evaluate_sequence(str(res_dir), str(gt_dir), list(metrics), threads=1)


def predictions(dataset: Path, sequence: str, seed: int) -> list[np.ndarray]:
    """Perturbed silver truth of every frame (silver truth is full and exists for every frame)."""
    seq = ctc.open_sequence(dataset, sequence)
    rng = np.random.default_rng(seed)
    return [perturb(ctc.read_annotation(a, seq.frame_shape), rng) for a in seq.st_seg]


def full_gt_copy(dataset: Path, out: Path) -> Path:
    """A copy of a dataset without its per-slice annotations (py-ctcmetrics mishandles them)."""
    shutil.copytree(dataset, out, ignore=shutil.ignore_patterns("man_seg_*_*.tif"))
    return out


def assert_same_scores(dataset: Path, sequence: str, reference: str, tmp_path: Path) -> DetCounts:
    """Our scores equal py-ctcmetrics'; returns our detection counts."""
    ours = evaluate_sequence(dataset, sequence, reference=reference)
    theirs = ctcmetrics_scores(
        dataset / f"{sequence}_RES", reference_folder(dataset, sequence, reference, tmp_path)
    )
    assert theirs.get("Valid", 1) != 0, "py-ctcmetrics found the result invalid"
    assert ours.seg == pytest.approx(theirs["SEG"], abs=1e-9)
    assert ours.det == pytest.approx(theirs["DET"], abs=1e-9)
    counts = ours.det_counts
    assert (counts.false_negatives, counts.false_positives, counts.splits) == (
        theirs["AOGM_FN"],
        theirs["AOGM_FP"],
        theirs["AOGM_NS"],
    )
    # The perturbations must not be trivial: some objects matched, some not.
    assert 0.3 < ours.seg < 0.95 and 0.3 < ours.det < 0.99
    assert 0 < sum(1 for o in ours.objects if o.matched_label == 0) < len(ours.objects)
    return counts


def assert_every_error_kind(counts: DetCounts) -> None:
    assert counts.false_negatives and counts.false_positives and counts.splits, counts


# -- cross-checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(("sequence", "reference"), [("01", "GT"), ("02", "ST")])
def test_synthetic_3d_full_gt_agrees(synthetic_dataset, tmp_path, sequence, reference):
    dataset = full_gt_copy(synthetic_dataset, tmp_path / "Synthetic-3D")
    write_predictions(dataset, sequence, predictions(dataset, sequence, seed=int(sequence)))
    assert_every_error_kind(assert_same_scores(dataset, sequence, reference, tmp_path / "ref"))


def test_synthetic_2d_agrees(synthetic_dataset_2d, tmp_path):
    dataset = full_gt_copy(synthetic_dataset_2d, tmp_path / "Synthetic-2D")
    total = DetCounts(0, 0, 0, 0)
    for index, sequence in enumerate(("01", "02")):
        write_predictions(dataset, sequence, predictions(dataset, sequence, seed=10 + index))
        for reference in ("GT", "ST"):
            out = tmp_path / sequence / reference
            total += assert_same_scores(dataset, sequence, reference, out)
    assert_every_error_kind(total)


def test_real_cho_sample_agrees(cho_dataset, tmp_path):
    """Real nuclei; the first frames of each sequence only, to keep py-ctcmetrics' time low."""
    dataset = tmp_path / "CHO"

    def later_frames(folder, names):
        return [n for n in names if (m := FRAME_NUMBER.match(n)) and int(m[1]) >= CHO_FRAMES]

    shutil.copytree(cho_dataset, dataset, ignore=later_frames)
    total = DetCounts(0, 0, 0, 0)
    for index, sequence in enumerate(("01", "02")):
        seq = ctc.open_sequence(dataset, sequence)
        add_markers(
            dataset, sequence, [ctc.read_annotation(a, seq.frame_shape) for a in seq.st_seg]
        )
        write_predictions(dataset, sequence, predictions(dataset, sequence, seed=20 + index))
        total += assert_same_scores(dataset, sequence, "ST", tmp_path / f"ref{sequence}")
    assert_every_error_kind(total)


def test_identical_predictions_score_one_in_both(synthetic_dataset_2d, tmp_path):
    dataset = full_gt_copy(synthetic_dataset_2d, tmp_path / "Synthetic-2D")
    seq = ctc.open_sequence(dataset, "01")
    write_predictions(dataset, "01", [ctc.read_annotation(a, seq.frame_shape) for a in seq.st_seg])
    ours = evaluate_sequence(dataset, "01", reference="ST")
    theirs = ctcmetrics_scores(dataset / "01_RES", reference_folder(dataset, "01", "ST", tmp_path))
    assert ours.seg == theirs["SEG"] == 1.0
    assert ours.det == theirs["DET"] == 1.0
    assert ours.det_counts == DetCounts(ours.det_counts.markers, 0, 0, 0)


def test_ctcmetrics_is_wrong_for_per_slice_gt_with_repeated_labels(tmp_path):
    """Two slice files of one time point both annotate a label 1, as unrelated objects, each
    found exactly by its own 3D result object. The official rule (each slice file on its own)
    gives SEG 1; py-ctcmetrics stacks the slices so that its "object 1" is split between two
    result objects, neither holding more than half, and scores 0."""
    dataset = tmp_path / "DS"
    shape = (3, 8, 8)
    ctc.write_tiff(dataset / "01" / "t000.tif", np.zeros(shape, np.uint8))
    result = np.zeros(shape, np.uint16)
    result[0, 0:4, 0:4] = 300
    result[2, 4:8, 4:8] = 301
    ctc.write_labels(dataset / "01_RES" / "mask000.tif", result)
    seg_dir = dataset / "01_GT" / "SEG"
    ctc.write_labels(seg_dir / "man_seg_000_000.tif", (result[0] > 0).astype(np.uint16))
    ctc.write_labels(seg_dir / "man_seg_000_002.tif", (result[2] > 0).astype(np.uint16))
    ctc.write_labels(dataset / "01_GT" / "TRA" / "man_track000.tif", result)  # it needs TRA

    ours = evaluate_sequence(dataset, "01")
    assert [(o.slice, o.reference_label, o.matched_label) for o in ours.objects] == [
        (0, 1, 300),
        (2, 1, 301),
    ]
    assert ours.seg == 1.0
    theirs = ctcmetrics_scores(dataset / "01_RES", dataset / "01_GT", metrics=["SEG"])
    assert theirs["SEG"] == 0.0


def test_perturbations_cover_the_error_kinds():
    """The perturbation helper itself: known objects in, every operation out."""
    labels = np.zeros((3, 40, 200), np.uint16)
    for i in range(12):
        labels[:, 5:35, 2 + 16 * i : 14 + 16 * i] = i + 1
    out = perturb(labels, np.random.default_rng(0))
    assert out.dtype == np.uint16 and out.shape == labels.shape
    assert len(np.unique(out)) > 4 and (out[labels == 0] > 0).any()
    markers = markers_from_masks(labels)
    assert set(np.unique(markers)) == set(np.unique(labels))
    assert np.all((markers == 0) | (markers == labels))
