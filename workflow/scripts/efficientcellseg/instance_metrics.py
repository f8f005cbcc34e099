"""Instance and semantic metrics other communities report, beside the CTC's SEG and DET.

Each is computed from the contingency table of :mod:`.overlaps` (one pass over the voxels, then
arithmetic on the pairs of labels that touch), for 2D images and 3D frames alike; a 3D frame is
one image whose objects are compared by their 3D IoU (voxels), not slice by slice.

* COCO mask AP (LIVECell's benchmark; the Sartorius data as COCO JSON): the definition
  of pycocotools' ``COCOeval(iouType="segm")``. At each IoU threshold 0.50:0.05:0.95, result
  objects are taken in order and each claims the still unmatched reference object of highest IoU
  >= the threshold; the precision/recall curve over all images (precision made non-increasing)
  is read at 101 recall points and averaged. Segmentation masks carry no scores: every object
  gets the same score, so, as in pycocotools, the order is that of the images (the order the
  frames are passed in) and, within an image, of increasing result label. pycocotools caps the
  detections per image (``maxDets``, 100 by default); nothing is capped here (set ``maxDets``
  above the object count to compare). No object is a crowd region, and every area counts.
* F1 at IoU 0.5 (NeurIPS 2022 Cell Segmentation challenge, as its evaluation script computes
  it): objects touching the 2-pixel frame of the image are removed from both images first;
  images of 5000 x 5000 pixels or more are cut into 2000 x 2000 tiles (zero-padded), each
  treated so and their TP/FP/FN summed, a tile without result objects adding nothing; F1 =
  ``2 TP / (2 TP + FP + FN)``, 0 when TP = 0 (also for two empty images). Mean (and median) over
  images. 3D frames (not part of the challenge): objects touching the 2-voxel frame of any slice
  in Y or X are removed, no tiling. In frames that ``efficientcellseg import`` padded, the frame
  is the padded image's: score exported (cropped) masks for the challenge's exact figure.
* Accuracy at IoU 0.5 (StarDist / EmbedSeg, which call it AP): per image ``TP / (TP + FP + FN)``,
  then the mean over images. Averaged over the thresholds 0.50:0.05:0.95 it is the Sartorius
  Kaggle score.
* Foreground Dice ``2|A n B| / (|A| + |B|)`` and IoU ``|A n B| / |A u B|`` of the union of all
  objects (U-Net projects), per image, then the mean over images.

Matches are one-to-one at every threshold >= 0.5 because label images do not overlap: a
reference object can share more than half of the union with one result object at most. IoU
equal to a threshold counts as a match (pycocotools' and the NeurIPS script's rule; Kaggle's
"IoU > t" differs only on exact ties). The other per-image means skip images with neither
reference nor result objects (the measures are undefined there); they are NaN when no image has
any.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .labels import LabelOverlaps, label_overlaps

# The exact thresholds and recall points of pycocotools' Params (not rounded), so that IoU values
# equal to a threshold are decided the same way.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
_AP50, _AP75 = 0, 5  # indices of 0.5 and 0.75 in COCO_IOU_THRESHOLDS
# The NeurIPS-CellSeg evaluation: objects within this many pixels of the image (or tile) edge are
# removed; images of at least NEURIPS_TILED_PIXELS pixels are evaluated in square tiles.
NEURIPS_BORDER = 2
NEURIPS_TILED_PIXELS = 5000 * 5000
NEURIPS_TILE = 2000


@dataclass(frozen=True)
class InstanceMatching:
    """Matches of one reference image with its result at each IoU threshold.

    ``result_matched[t, j]`` tells whether the j-th result object (by increasing label) matches
    a reference object at ``thresholds[t]``.
    """

    thresholds: np.ndarray
    n_reference: int
    n_result: int
    result_matched: np.ndarray  # (len(thresholds), n_result) bool
    reference_foreground: int  # voxels of the union of the reference objects
    result_foreground: int
    foreground_overlap: int  # voxels in both
    neurips_counts: tuple[int, int, int]  # TP, FP, FN of the NeurIPS-CellSeg F1 at IoU 0.5

    @property
    def true_positives(self) -> np.ndarray:
        """Matched pairs at each threshold."""
        return self.result_matched.sum(axis=1)

    def accuracy(self) -> np.ndarray:
        """``TP / (TP + FP + FN)`` at each threshold (NaN without any object)."""
        tp = self.true_positives
        return _ratio(tp, self.n_reference + self.n_result - tp)

    def neurips_f1(self) -> float:
        """F1 at IoU 0.5 as the NeurIPS-CellSeg evaluation computes it (module docstring)."""
        tp, fp, fn = self.neurips_counts
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    def dice(self) -> float:
        """Foreground Dice (NaN when both images are empty)."""
        total = self.reference_foreground + self.result_foreground
        return float(_ratio(2 * self.foreground_overlap, total))

    def iou(self) -> float:
        """Foreground IoU (NaN when both images are empty)."""
        union = self.reference_foreground + self.result_foreground - self.foreground_overlap
        return float(_ratio(self.foreground_overlap, union))


@dataclass(frozen=True)
class InstanceScores:
    """The metrics of a set of images (a sequence's annotated frames), as in ``scores.json``."""

    ap_50: float
    ap_75: float
    ap_50_95: float
    f1_50: float
    f1_50_median: float
    accuracy_50: float
    kaggle_map: float
    foreground_dice: float
    foreground_iou: float
    images: int
    reference_objects: int
    result_objects: int
    true_positives_50: int

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def lines(self) -> list[str]:
        """The scores as the command line prints them, one per line, saying what each is."""
        return [
            f"AP50     {self.ap_50:.6f}   (COCO mask AP at IoU 0.5, equal scores)",
            f"AP75     {self.ap_75:.6f}",
            f"AP       {self.ap_50_95:.6f}   (COCO mAP over IoU 0.50:0.05:0.95)",
            f"F1@0.5   {self.f1_50:.6f}   (NeurIPS-CellSeg, mean of {self.images} images; "
            f"median {self.f1_50_median:.6f})",
            f"Acc@0.5  {self.accuracy_50:.6f}   (StarDist/EmbedSeg TP/(TP+FP+FN), mean of images)",
            f"Kaggle   {self.kaggle_map:.6f}   (Sartorius: TP/(TP+FP+FN) over IoU 0.50:0.95)",
            f"Dice     {self.foreground_dice:.6f}   (foreground, mean of images)",
            f"IoU      {self.foreground_iou:.6f}   (foreground, mean of images)",
        ]


def match_instances(
    reference: np.ndarray,
    result: np.ndarray,
    thresholds: Iterable[float] = COCO_IOU_THRESHOLDS,
    *,
    overlaps: LabelOverlaps | None = None,
) -> InstanceMatching:
    """Match the objects of two label images one-to-one at each IoU threshold (pycocotools' rule).

    Parameters
    ----------
    reference, result
        Label images of equal shape, 2D or 3D (0 = background).
    thresholds
        IoU thresholds, each >= 0.5 (below it matches are no longer unique and order-dependent
        in ways this vectorised rule does not follow).
    overlaps
        Their contingency table when already computed (:func:`.overlaps.label_overlaps`).

    Returns
    -------
    The matches of each result object at each threshold, the foreground overlap and the counts
    of the NeurIPS-CellSeg F1.
    """
    thresholds = np.asarray(list(thresholds), dtype=np.float64)
    if thresholds.size == 0 or thresholds.min() < 0.5 or thresholds.max() > 1:
        raise ValueError(f"IoU thresholds must lie in [0.5, 1], got {thresholds.tolist()}")
    if overlaps is None:
        overlaps = label_overlaps(reference, result)
    n_res = len(overlaps.res_labels)
    iou = overlaps.pair_iou()
    matched = np.zeros((len(thresholds), n_res), dtype=bool)
    for index, threshold in enumerate(thresholds):
        # pycocotools compares against min(t, 1 - 1e-10) so that t = 1 still matches identity.
        candidate = iou >= min(threshold, 1 - 1e-10)
        matched[index, _one_to_one(overlaps, candidate, iou)] = True
    return InstanceMatching(
        thresholds=thresholds,
        n_reference=len(overlaps.ref_labels),
        n_result=n_res,
        result_matched=matched,
        reference_foreground=int(overlaps.ref_sizes.sum()),
        result_foreground=int(overlaps.res_sizes.sum()),
        foreground_overlap=int(overlaps.pair_count.sum()),
        neurips_counts=neurips_counts(reference, result, overlaps=overlaps),
    )


def neurips_counts(
    reference: np.ndarray, result: np.ndarray, *, overlaps: LabelOverlaps | None = None
) -> tuple[int, int, int]:
    """TP, FP, FN at IoU 0.5 after the NeurIPS-CellSeg border and tiling rules (module docstring).

    Removing objects leaves the others' sizes, so the IoU of the pairs kept does not change: the
    contingency table of the whole image serves, filtered by the labels touching the frame.
    """
    reference, result = np.asarray(reference), np.asarray(result)
    if reference.ndim == 2 and reference.size >= NEURIPS_TILED_PIXELS:
        return _neurips_tiled(reference, result)
    if overlaps is None:
        overlaps = label_overlaps(reference, result)
    keep_ref = ~np.isin(overlaps.ref_labels, _frame_labels(reference))
    keep_res = ~np.isin(overlaps.res_labels, _frame_labels(result))
    n_ref, n_res = int(keep_ref.sum()), int(keep_res.sum())
    if n_res == 0:
        return 0, 0, 0  # the script's rule for an image (or tile) without result objects
    iou = overlaps.pair_iou()
    candidate = (iou >= 0.5) & keep_ref[overlaps.pair_ref] & keep_res[overlaps.pair_res]
    tp = len(_one_to_one(overlaps, candidate, iou))
    return tp, n_res - tp, n_ref - tp


def coco_average_precision(matchings: Sequence[InstanceMatching]) -> np.ndarray:
    """COCO mask AP at each threshold over a set of images, as pycocotools accumulates it.

    Parameters
    ----------
    matchings
        One :func:`match_instances` result per image, in the order pycocotools would take the
        images (increasing image id); all with the same thresholds.

    Returns
    -------
    AP per threshold (NaN everywhere when the images hold no reference object).
    """
    if not matchings:
        raise ValueError("COCO AP needs at least one image")
    thresholds = matchings[0].thresholds
    if any(not np.array_equal(m.thresholds, thresholds) for m in matchings):
        raise ValueError("all images must be matched at the same IoU thresholds")
    n_reference = sum(m.n_reference for m in matchings)
    if n_reference == 0:
        return np.full(len(thresholds), np.nan)
    # Equal scores: pycocotools' stable sort keeps the detections in image, then label order.
    matched = np.concatenate([m.result_matched for m in matchings], axis=1)
    tp = np.cumsum(matched, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched, axis=1, dtype=np.float64)
    recall = tp / n_reference
    precision = tp / (tp + fp + np.spacing(1))  # pycocotools' guard, kept for equal results
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    ap = np.zeros(len(thresholds))
    for index in range(len(thresholds)):
        # Precision at the first detection reaching each recall point; 0 where none does.
        at = np.searchsorted(recall[index], COCO_RECALL_POINTS, side="left")
        reached = at < matched.shape[1]
        ap[index] = precision[index, at[reached]].sum() / len(COCO_RECALL_POINTS)
    return ap


def instance_scores(matchings: Sequence[InstanceMatching]) -> InstanceScores:
    """Every metric of the module over a set of images matched at :data:`COCO_IOU_THRESHOLDS`."""
    if matchings and not np.array_equal(matchings[0].thresholds, COCO_IOU_THRESHOLDS):
        raise ValueError("instance_scores needs matchings at COCO_IOU_THRESHOLDS")
    ap = coco_average_precision(matchings)
    f1 = np.array([m.neurips_f1() for m in matchings])
    accuracy = np.array([m.accuracy() for m in matchings]).reshape(len(matchings), -1)
    return InstanceScores(
        ap_50=float(ap[_AP50]),
        ap_75=float(ap[_AP75]),
        ap_50_95=float(ap.mean()),
        f1_50=float(f1.mean()) if f1.size else math.nan,
        f1_50_median=float(np.median(f1)) if f1.size else math.nan,
        accuracy_50=_nanmean(accuracy[:, _AP50]),
        kaggle_map=_nanmean(accuracy.mean(axis=1)),
        foreground_dice=_nanmean(np.array([m.dice() for m in matchings])),
        foreground_iou=_nanmean(np.array([m.iou() for m in matchings])),
        images=len(matchings),
        reference_objects=sum(m.n_reference for m in matchings),
        result_objects=sum(m.n_result for m in matchings),
        true_positives_50=int(sum(m.true_positives[_AP50] for m in matchings)),
    )


def neurips_f1(reference: np.ndarray, result: np.ndarray) -> float:
    """F1 of one image at IoU 0.5 as the NeurIPS-CellSeg evaluation computes it."""
    tp, fp, fn = neurips_counts(reference, result)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def accuracy(reference: np.ndarray, result: np.ndarray, threshold: float = 0.5) -> float:
    """``TP / (TP + FP + FN)`` of one image at an IoU threshold (StarDist/EmbedSeg "AP")."""
    return float(match_instances(reference, result, (threshold,)).accuracy()[0])


def foreground_dice(reference: np.ndarray, result: np.ndarray) -> float:
    """Dice of the foregrounds (every object) of two label images."""
    return match_instances(reference, result, (0.5,)).dice()


def foreground_iou(reference: np.ndarray, result: np.ndarray) -> float:
    """IoU of the foregrounds (every object) of two label images."""
    return match_instances(reference, result, (0.5,)).iou()


def _one_to_one(overlaps: LabelOverlaps, candidate: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Result indices matched among candidate pairs (IoU >= a threshold >= 0.5)."""
    ref_index, res_index = overlaps.pair_ref[candidate], overlaps.pair_res[candidate]
    if _unique(ref_index) and _unique(res_index):
        return res_index
    # IoU exactly 0.5 to two objects. Such ties form stars (one object, halves of it), where
    # pycocotools' greedy rule also finds the most matches, as the NeurIPS script's Hungarian.
    return _greedy_matches(ref_index, res_index, iou[candidate])


def _frame_labels(labels: np.ndarray) -> np.ndarray:
    """Labels within NEURIPS_BORDER pixels of the edge in Y or X (every slice of a 3D frame)."""
    b = NEURIPS_BORDER
    edges = [labels[..., :b, :], labels[..., -b:, :], labels[..., :, :b], labels[..., :, -b:]]
    return np.unique(np.concatenate([edge.ravel() for edge in edges]))


def _neurips_tiled(reference: np.ndarray, result: np.ndarray) -> tuple[int, int, int]:
    """The script's rule for large 2D images: zero-padded tiles, each with its own frame rule."""
    tile = NEURIPS_TILE
    padded = [-(-n // tile) * tile for n in reference.shape]
    pad = [(0, p - n) for p, n in zip(padded, reference.shape, strict=True)]
    reference, result = np.pad(reference, pad), np.pad(result, pad)
    totals = np.zeros(3, dtype=np.int64)
    for y in range(0, padded[0], tile):
        for x in range(0, padded[1], tile):
            window = np.s_[y : y + tile, x : x + tile]
            totals += neurips_counts(reference[window], result[window])
    return tuple(int(v) for v in totals)


def _greedy_matches(ref_index: np.ndarray, res_index: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """pycocotools' greedy rule on candidate pairs: result objects in order, each takes the free
    reference object of highest IoU (the later one on ties). Only exact IoU ties reach here."""
    taken: set[int] = set()
    chosen = []
    order = np.lexsort((-ref_index, -iou, res_index))  # by result, best IoU, later reference
    current = -1
    for k in order:
        if res_index[k] == current or int(ref_index[k]) in taken:
            continue
        current = int(res_index[k])
        taken.add(int(ref_index[k]))
        chosen.append(current)
    return np.array(chosen, dtype=np.int64)


def _unique(values: np.ndarray) -> bool:
    return len(np.unique(values)) == len(values)


def _ratio(numerator, denominator):
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    defined = denominator > 0
    return np.where(defined, numerator / np.where(defined, denominator, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan
