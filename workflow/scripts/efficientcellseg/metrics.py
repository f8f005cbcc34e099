"""The Cell Tracking Challenge SEG and DET measures, with the official semantics, in NumPy.

Scores reported for a CTC submission must mean what the organisers' SEG and DET executables
compute, so this module follows their rules exactly (the official EvaluationSoftware of the
CTC; Ulman et al., Nature Methods 2017; Maška et al., Nature Methods 2023):

* SEG: a result object S matches a reference object R iff ``|R n S| > 0.5 |R|`` (strictly);
  ``J = |R n S| / |R u S|`` if matched, else 0. SEG is the sum of J over every reference object
  of every annotation file divided by the number of those objects (not a mean of per-frame
  means). Result objects that match nothing are ignored. A per-slice annotation
  ``man_seg_TTT_ZZZ.tif`` is compared with slice ZZZ of mask TTT on its own: label numbers of
  different slice files are unrelated objects, even when they repeat.
* DET (AOGM-D) over the TRA markers of every frame: a marker is detected by the one result object
  holding more than half of its voxels. Each undetected marker is a false negative (weight 10),
  each result object that detects no marker a false positive (weight 1; not counted for
  Fluo-N3DL-DRO/TRIC/TRIF in the CSB), each result object detecting k > 1 markers costs k - 1
  splits (weight 5). ``DET = 1 - min(AOGM-D, AOGM-D0) / AOGM-D0`` with ``AOGM-D0 = 10 x markers``.

Beside SEG and DET, the same annotation files give the metrics other communities report (COCO
AP, F1, accuracy, foreground Dice/IoU; :mod:`.instance_metrics`): each annotation file is one image
there, a full 3D annotation compares 3D objects (IoU of voxels), a per-slice annotation its slice.

Overlaps of all label pairs of a frame come from one sparse contingency table
(:func:`efficientcellseg.labels.label_overlaps`), computed once per annotation file for every
measure; frames are read one at a time.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import ctc
from .files import atomic_write_bytes
from .instance_metrics import InstanceScores, instance_scores, match_instances
from .labels import LabelOverlaps, label_overlaps
from .logs import frame_progress

log = logging.getLogger(__name__)

FN_WEIGHT = 10
FP_WEIGHT = 1
SPLIT_WEIGHT = 5
# CSB rule: false positives are not penalised for these datasets (their GT marks few cells).
NO_FP_PENALTY_DATASETS = ("Fluo-N3DL-DRO", "Fluo-N3DL-TRIC", "Fluo-N3DL-TRIF")
SCORES_FILE = "scores.json"
OBJECTS_FILE = "objects.csv"


class ResultsError(ctc.CTCFormatError):
    """A result folder is not a valid CTC result; the message lists every problem, one a line."""

    def __init__(self, result_dir: str | os.PathLike, problems: list[str]) -> None:
        self.result_dir = Path(result_dir)
        self.problems = tuple(problems)
        title = f"{self.result_dir}: not a valid CTC result folder"
        if len(problems) == 1:
            super().__init__(f"{title}: {problems[0]}")
        else:
            super().__init__(
                f"{title} ({len(problems)} problems):\n" + "\n".join(f"  {p}" for p in problems)
            )


@dataclass(frozen=True)
class ObjectMatch:
    """One reference object of one annotation file and the result object matching it."""

    frame: int
    slice: int | None  # None: a full 2D/3D annotation; else the slice of a per-slice one
    reference_label: int
    matched_label: int  # 0: no result object covers more than half of the reference object
    jaccard: float


@dataclass(frozen=True)
class DetCounts:
    """Detection errors (AOGM-D terms) of one frame or summed over a sequence."""

    markers: int
    false_negatives: int
    false_positives: int
    splits: int
    penalise_fp: bool = True  # False: the CSB rule for Fluo-N3DL-DRO/TRIC/TRIF

    def __add__(self, other: DetCounts) -> DetCounts:
        if not isinstance(other, DetCounts):
            return NotImplemented
        return DetCounts(
            self.markers + other.markers,
            self.false_negatives + other.false_negatives,
            self.false_positives + other.false_positives,
            self.splits + other.splits,
            self.penalise_fp and other.penalise_fp,
        )

    @property
    def aogm(self) -> float:
        """AOGM-D: weighted cost of the detection errors."""
        fp = self.false_positives * FP_WEIGHT if self.penalise_fp else 0
        return float(self.false_negatives * FN_WEIGHT + fp + self.splits * SPLIT_WEIGHT)

    @property
    def aogm0(self) -> float:
        """AOGM-D0: cost of building the reference from nothing (every marker missed)."""
        return float(self.markers * FN_WEIGHT)

    @property
    def det(self) -> float:
        """DET = 1 - min(AOGM-D, AOGM-D0) / AOGM-D0; undefined without markers."""
        if self.markers == 0:
            raise ValueError("DET is undefined without any TRA marker")
        return 1.0 - min(self.aogm, self.aogm0) / self.aogm0

    def to_dict(self) -> dict:
        return {
            "markers": self.markers,
            "false_negatives": self.false_negatives,
            "false_positives": self.false_positives,
            "splits": self.splits,
            "penalise_fp": self.penalise_fp,
            "aogm": self.aogm,
            "aogm0": self.aogm0,
        }


@dataclass(frozen=True)
class SequenceEvaluation:
    """SEG (and DET when the sequence has TRA markers) of one result folder."""

    dataset: str
    sequence: str
    reference: str  # "GT" (gold truth) or "ST" (silver truth): the SEG annotations used
    seg: float
    n_reference_objects: int
    jaccard_sum: float
    det: float | None  # None: the sequence has no TRA markers
    det_counts: DetCounts | None
    det_penalise_fp: bool
    objects: tuple[ObjectMatch, ...]
    # COCO AP, F1, accuracy, Dice/IoU over the same annotations (None: not computed)
    instance: InstanceScores | None = None

    def to_dict(self) -> dict:
        """Scores as JSON-able values, without the per-object rows."""
        return {
            "dataset": self.dataset,
            "sequence": self.sequence,
            "reference": self.reference,
            "seg": self.seg,
            "n_reference_objects": self.n_reference_objects,
            "n_matched_objects": sum(1 for o in self.objects if o.matched_label),
            "jaccard_sum": self.jaccard_sum,
            "det": self.det,
            "det_counts": self.det_counts.to_dict() if self.det_counts else None,
            "det_penalise_fp": self.det_penalise_fp,
            "instance": self.instance.to_dict() if self.instance else None,
        }


def seg_frame(
    reference: np.ndarray,
    result: np.ndarray,
    *,
    frame: int = 0,
    slice: int | None = None,
) -> list[ObjectMatch]:
    """Match every object of one reference image with the result (CTC SEG rule).

    Parameters
    ----------
    reference, result
        Label images of equal shape (0 = background). For a per-slice annotation pass the 2D
        annotation and the matching slice of the 3D result.
    frame, slice
        Only copied into the returned rows.

    Returns
    -------
    One :class:`ObjectMatch` per reference object, by increasing reference label.
    """
    return _seg_rows(label_overlaps(reference, result), frame, slice)


def seg_measure(reference: np.ndarray, result: np.ndarray) -> float:
    """SEG of a single reference image: mean Jaccard over its objects (NaN if it has none)."""
    rows = seg_frame(reference, result)
    return math.fsum(r.jaccard for r in rows) / len(rows) if rows else float("nan")


def _seg_rows(overlaps: LabelOverlaps, frame: int, slice: int | None) -> list[ObjectMatch]:
    n_ref = len(overlaps.ref_labels)
    matched_label = np.zeros(n_ref, dtype=np.int64)
    jaccard = np.zeros(n_ref, dtype=np.float64)
    hit = overlaps.matched()
    i, j, shared = overlaps.pair_ref[hit], overlaps.pair_res[hit], overlaps.pair_count[hit]
    union = overlaps.ref_sizes[i] + overlaps.res_sizes[j] - shared
    matched_label[i] = overlaps.res_labels[j]
    jaccard[i] = shared / union
    return [
        ObjectMatch(frame, slice, int(label), int(match), float(value))
        for label, match, value in zip(
            overlaps.ref_labels.tolist(), matched_label.tolist(), jaccard.tolist(), strict=True
        )
    ]


def det_frame(markers: np.ndarray, result: np.ndarray) -> DetCounts:
    """Detection errors of one frame: TRA markers against the result (CTC DET rule)."""
    overlaps = label_overlaps(markers, result)
    hit = overlaps.matched()
    detections = np.bincount(overlaps.pair_res[hit], minlength=len(overlaps.res_labels))
    n_markers = len(overlaps.ref_labels)
    return DetCounts(
        markers=n_markers,
        false_negatives=n_markers - int(hit.sum()),
        false_positives=int(np.count_nonzero(detections == 0)),
        splits=int(np.maximum(detections - 1, 0).sum()),
    )


def validate_results(
    seq: ctc.Sequence, result_dir: str | os.PathLike, *, digits: int | None = None
) -> None:
    """Check a result folder as the CTC does, reading only TIFF headers.

    Every frame of ``seq`` needs ``mask<frame>.tif`` named with ``digits`` digits (default: as the
    input frames), stored as uint16, of the frame's shape.

    Raises
    ------
    ResultsError
        Listing every problem found, one per line.
    """
    result_dir = Path(result_dir)
    digits = seq.digits if digits is None else digits
    if result_dir.exists() and not result_dir.is_dir():
        raise ResultsError(result_dir, [f"{result_dir} is a file: give the folder of the masks"])
    if not result_dir.is_dir():
        raise ResultsError(result_dir, [f"{result_dir}: result folder does not exist"])
    found: dict[int, list[str]] = defaultdict(list)
    for path in result_dir.iterdir():
        if m := ctc.MASK_PATTERN.match(path.name):
            found[int(m.group(1))].append(path.name)
    problems = []
    for frame in seq.frame_ids:
        name = ctc.mask_name(frame, digits)
        path = result_dir / name
        if not path.is_file():
            others = sorted(n for n in found.get(frame, []) if n != name)
            if others:
                problems.append(
                    f"{name}: missing; found {', '.join(others)} instead (masks must be named "
                    f"with {digits}-digit frame numbers like the input frames, ending in .tif)"
                )
            else:
                problems.append(f"{name}: missing (every frame needs a mask)")
            continue
        problems.extend(_mask_header_problems(path, seq.frame_shape))
    if problems:
        raise ResultsError(result_dir, problems)


def evaluate_sequence(
    dataset_dir: str | os.PathLike,
    sequence: str,
    result_dir: str | os.PathLike | None = None,
    *,
    reference: str = "GT",
    det_penalise_fp: bool = True,
    digits: int | None = None,
    progress: bool = False,
) -> SequenceEvaluation:
    """SEG and DET of the result masks of one sequence, as the CTC evaluation computes them.

    Parameters
    ----------
    dataset_dir, sequence
        The dataset folder and the sequence name (``"01"``).
    result_dir
        Folder of ``mask*.tif`` (default ``<dataset_dir>/<sequence>_RES``); checked first with
        :func:`validate_results`.
    reference
        SEG annotations to score against: ``"GT"`` (``0X_GT/SEG``) or ``"ST"`` (``0X_ST/SEG``).
        DET always uses the markers of ``0X_GT/TRA``.
    det_penalise_fp
        False for the CSB rule of Fluo-N3DL-DRO/TRIC/TRIF (false positives cost nothing).
    digits
        Digit count of the mask names (default: that of the input frames).
    progress
        Show a progress bar over the frames.
    """
    seq = ctc.open_sequence(dataset_dir, sequence)
    result_dir = ctc.result_dir(seq) if result_dir is None else Path(result_dir)
    annotations = seq.annotations(reference)
    if not annotations:
        raise ctc.CTCFormatError(
            f"{seq.dataset_dir / f'{seq.name}_{reference}' / 'SEG'}: no SEG annotations "
            f"(man_seg*.tif) to evaluate against; choose another reference (GT or ST)"
        )
    validate_results(seq, result_dir, digits=digits)
    digits = seq.digits if digits is None else digits
    by_frame: dict[int, list[ctc.SegAnnotation]] = defaultdict(list)
    for ann in annotations:
        by_frame[ann.frame].append(ann)
    markers = ctc.marker_frames(seq)
    frames = sorted(set(by_frame) | set(markers))

    objects: list[ObjectMatch] = []
    matchings = []  # one per annotation file, in frame (then slice) order: COCO's image order
    det_total = DetCounts(0, 0, 0, 0) if markers else None
    for frame in frame_progress(frames, progress, f"evaluate {seq.name}"):
        result = ctc.read_labels(result_dir / ctc.mask_name(frame, digits), seq.frame_shape)
        for ann in by_frame.get(frame, []):
            ref = ctc.read_annotation(ann, seq.frame_shape)
            res = result if ann.slice is None else result[ann.slice]
            overlaps = label_overlaps(ref, res)
            objects.extend(_seg_rows(overlaps, frame, ann.slice))
            matchings.append(match_instances(ref, res, overlaps=overlaps))
        if frame in markers:
            det_total = det_total + det_frame(
                ctc.read_labels(markers[frame], seq.frame_shape), result
            )
        del result

    if not objects:
        raise ctc.CTCFormatError(
            f"{annotations[0].path.parent}: the annotations hold no objects; SEG is undefined"
        )
    jaccard_sum = math.fsum(o.jaccard for o in objects)
    seg = jaccard_sum / len(objects)
    det = None
    if det_total is not None:
        if det_total.markers == 0:
            raise ctc.CTCFormatError(
                f"{markers[min(markers)].parent}: the marker files hold no "
                "markers; DET is undefined"
            )
        det_total = replace(det_total, penalise_fp=det_penalise_fp)
        det = det_total.det
    evaluation = SequenceEvaluation(
        dataset=seq.dataset_dir.name,
        sequence=seq.name,
        reference=reference,
        seg=seg,
        n_reference_objects=len(objects),
        jaccard_sum=jaccard_sum,
        det=det,
        det_counts=det_total,
        det_penalise_fp=det_penalise_fp,
        objects=tuple(objects),
        instance=instance_scores(matchings),
    )
    log.info(
        "%s/%s vs %s: SEG %.6f over %d objects%s",
        evaluation.dataset,
        seq.name,
        reference,
        seg,
        len(objects),
        "" if det is None else f", DET {det:.6f} over {det_total.markers} markers",
    )
    return evaluation


def write_evaluation(
    evaluation: SequenceEvaluation, out_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """Write ``scores.json`` and ``objects.csv`` (one row per reference object) atomically."""
    out_dir = Path(out_dir)
    scores = out_dir / SCORES_FILE
    table = out_dir / OBJECTS_FILE
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["frame", "slice", "reference_label", "matched_label", "jaccard"])
    for o in evaluation.objects:
        slice_ = "" if o.slice is None else o.slice
        writer.writerow([o.frame, slice_, o.reference_label, o.matched_label, repr(o.jaccard)])
    atomic_write_bytes(table, text.getvalue().encode())
    atomic_write_bytes(scores, (json.dumps(evaluation.to_dict(), indent=2) + "\n").encode())
    return scores, table


def op_csb(seg: float, det: float) -> float:
    """OP_CSB, the CTC's segmentation benchmark score: (SEG + DET) / 2."""
    return (seg + det) / 2


def peseg(seg: float, parameters: int) -> float:
    """SEG per million network parameters: SEG / parameters * 1e6."""
    if parameters <= 0:
        raise ValueError(f"parameters must be positive, not {parameters}")
    return seg / parameters * 1e6


def penalises_false_positives(dataset: str) -> bool:
    """Whether the CSB counts DET false positives for a dataset (not for DRO/TRIC/TRIF)."""
    return not any(dataset.startswith(name) for name in NO_FP_PENALTY_DATASETS)


def _mask_header_problems(path: Path, frame_shape: tuple[int, ...]) -> list[str]:
    try:
        shape, dtype, _ = ctc.tiff_header(path)
    except ctc.CTCFormatError as exc:
        return [f"{path.name}: {str(exc).removeprefix(f'{path}: ')}"]
    problems = []
    if dtype != np.uint16:
        problems.append(f"{path.name}: stored as {dtype}, the CTC requires uint16")
    if shape != tuple(frame_shape):
        problems.append(f"{path.name}: shape {shape} differs from the frame shape {frame_shape}")
    return problems
