"""COCO AP, F1, accuracy and foreground Dice/IoU (efficientcellseg.instance_metrics): known
answers, and pycocotools' COCOeval(iouType="segm") on the same masks as the reference."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from efficientcellseg.instance_metrics import (
    COCO_IOU_THRESHOLDS,
    accuracy,
    coco_average_precision,
    foreground_dice,
    foreground_iou,
    instance_scores,
    match_instances,
    neurips_counts,
    neurips_f1,
)


def row(width: int, *objects: tuple[int, int, int]) -> np.ndarray:
    """A 1 x width label image with ``(label, start, stop)`` runs."""
    labels = np.zeros((1, width), dtype=np.uint16)
    for label, start, stop in objects:
        labels[0, start:stop] = label
    return labels


def framed(labels: np.ndarray, margin: int = 3) -> np.ndarray:
    """The labels inside a background frame, clear of NeurIPS-CellSeg's 2-pixel edge rule."""
    return np.pad(labels, margin)


def test_identical_images_score_one_everywhere():
    labels = framed(row(50, (1, 0, 10), (2, 20, 30), (7, 40, 45)))
    scores = instance_scores([match_instances(labels, labels)])
    assert scores.ap_50 == pytest.approx(1, abs=1e-12)
    assert scores.ap_50_95 == pytest.approx(1, abs=1e-12)
    assert (scores.f1_50, scores.accuracy_50, scores.kaggle_map) == (1, 1, 1)
    assert (scores.foreground_dice, scores.foreground_iou) == (1, 1)
    assert scores.true_positives_50 == 3


def test_one_object_at_iou_081_matches_up_to_080():
    ref = row(100, (1, 0, 100))
    res = row(100, (4, 0, 81))
    matching = match_instances(ref, res)
    assert matching.true_positives.tolist() == [1] * 7 + [0] * 3
    scores = instance_scores([matching])
    assert (scores.ap_50, scores.ap_75) == (pytest.approx(1), pytest.approx(1))
    assert scores.ap_50_95 == pytest.approx(0.7)
    assert scores.kaggle_map == pytest.approx(0.7)
    assert scores.foreground_dice == pytest.approx(2 * 81 / 181)
    assert scores.foreground_iou == pytest.approx(0.81)


def test_equal_scores_make_ap_depend_on_the_order_of_detections():
    # Two reference objects, three result objects of which one is a false positive.
    ref = row(60, (1, 10, 20), (2, 30, 40))
    fp_first = row(60, (1, 50, 55), (2, 10, 20), (3, 30, 40))
    fp_last = row(60, (1, 10, 20), (2, 30, 40), (3, 50, 55))
    ap_first = coco_average_precision([match_instances(ref, fp_first)])
    ap_last = coco_average_precision([match_instances(ref, fp_last)])
    # FP first: precision 0, 1/2, 2/3 -> non-increasing envelope 2/3 at every recall point.
    assert ap_first[0] == pytest.approx(2 / 3)
    # FP last: precision 1 up to full recall.
    assert ap_last[0] == pytest.approx(1)
    # Instance counts do not depend on the order.
    assert neurips_f1(framed(ref), framed(fp_first)) == pytest.approx(0.8)
    assert neurips_f1(framed(ref), framed(fp_last)) == pytest.approx(0.8)
    assert accuracy(ref, fp_first) == pytest.approx(2 / 3)


def test_missed_object_limits_recall():
    ref = row(40, (1, 0, 10), (2, 20, 30))
    res = row(40, (1, 0, 10))
    ap = coco_average_precision([match_instances(ref, res)])
    # Recall 1/2 is reached with precision 1: 51 of the 101 recall points (0.00 .. 0.50).
    assert ap[0] == pytest.approx(51 / 101)
    assert neurips_f1(framed(ref), framed(res)) == pytest.approx(2 / 3)
    assert accuracy(ref, res) == pytest.approx(0.5)


def test_f1_accuracy_and_dice_known_counts():
    ref = row(100, (1, 0, 10), (2, 20, 30), (3, 40, 50), (4, 60, 70))
    # Three matches (one at IoU 0.6), one reference object missed, two false positives.
    res = row(100, (1, 0, 10), (2, 20, 30), (3, 40, 46), (5, 80, 85), (6, 90, 95))
    assert neurips_f1(framed(ref), framed(res)) == pytest.approx(2 * 3 / (4 + 5))
    assert accuracy(ref, res) == pytest.approx(3 / (3 + 2 + 1))
    assert foreground_dice(ref, res) == pytest.approx(2 * 26 / (40 + 36))
    assert foreground_iou(ref, res) == pytest.approx(26 / 50)


def test_iou_below_one_half_never_matches():
    ref = row(20, (1, 0, 10))
    res = row(20, (1, 0, 5))  # IoU exactly 0.5 ...
    assert accuracy(ref, res) == 1.0  # ... is a match (pycocotools: IoU >= threshold)
    assert neurips_f1(framed(ref), framed(res)) == 1.0
    res = row(20, (1, 0, 4))  # IoU 0.4
    assert neurips_f1(framed(ref), framed(res)) == 0.0
    assert accuracy(ref, res) == 0.0


def test_exact_tie_at_one_half_goes_to_the_first_result_object():
    ref = row(8, (1, 0, 4))
    res = row(8, (1, 0, 2), (2, 2, 4))  # two halves, IoU 0.5 each
    matching = match_instances(ref, res, (0.5,))
    assert matching.result_matched.tolist() == [[True, False]]
    # The reverse: one result object covering two reference halves takes the later one.
    matching = match_instances(res, ref, (0.5,))
    assert matching.result_matched.tolist() == [[True]]
    assert matching.true_positives.tolist() == [1]


def test_3d_objects_are_matched_by_their_3d_iou():
    ref = np.zeros((4, 6, 6), dtype=np.uint16)
    ref[0:4, 0:3, 0:3] = 1  # 36 voxels
    res = np.zeros_like(ref)
    res[0:3, 0:3, 0:3] = 9  # 27 voxels inside: IoU 0.75
    matching = match_instances(ref, res)
    assert matching.true_positives.tolist() == [1] * 6 + [0] * 4
    assert foreground_iou(ref, res) == pytest.approx(0.75)


def test_empty_images_are_undefined_not_perfect():
    empty = np.zeros((5, 5), dtype=np.uint16)
    assert math.isnan(accuracy(empty, empty))
    assert math.isnan(foreground_dice(empty, empty))
    scores = instance_scores([match_instances(empty, empty)])
    assert math.isnan(scores.ap_50) and math.isnan(scores.accuracy_50)
    assert scores.f1_50 == 0.0  # the NeurIPS script scores an image without TP 0
    # An image without reference objects but with results: AP counts its false positives.
    full = np.ones((5, 5), dtype=np.uint16)
    one = np.zeros((5, 5), dtype=np.uint16)
    one[:2] = 1
    scores = instance_scores([match_instances(empty, full), match_instances(one, one)])
    assert scores.accuracy_50 == pytest.approx(0.5)  # mean of 0 and 1
    assert scores.ap_50 == pytest.approx(0.5, abs=1e-12)  # FP first, then the TP


def test_neurips_f1_ignores_objects_touching_the_two_pixel_frame():
    ref = np.zeros((12, 12), dtype=np.uint16)
    ref[1:4, 4:8] = 1  # reaches row 1: inside the 2-pixel frame, removed
    ref[5:9, 5:9] = 2
    res = np.zeros_like(ref)
    res[5:9, 5:9] = 3
    res[9:12, 0:3] = 4  # a false positive on the edge: removed too
    assert neurips_counts(ref, res) == (1, 0, 0)
    assert neurips_f1(ref, res) == 1.0
    assert accuracy(ref, res) == pytest.approx(1 / 3)  # other metrics count every object
    res[5:9, 5:9] = 0
    res[6, 6] = 5  # IoU 1/16
    assert neurips_counts(ref, res) == (0, 1, 1) and neurips_f1(ref, res) == 0.0
    assert neurips_counts(ref, np.zeros_like(res)) == (0, 0, 0)  # no result object: no FN
    # 3D (our extension): the frame of every slice in Y and X, not the first and last slice.
    volume = np.zeros((3, 12, 12), dtype=np.uint16)
    volume[0:3, 5:9, 5:9] = 1
    assert neurips_counts(volume, volume) == (1, 0, 0)
    volume[1, 0, 0] = 2
    assert neurips_counts(volume, volume) == (1, 0, 0)


def test_bad_thresholds_and_shapes_are_refused():
    labels = row(5, (1, 0, 2))
    with pytest.raises(ValueError, match="thresholds"):
        match_instances(labels, labels, (0.3,))
    with pytest.raises(ValueError, match="shape"):
        match_instances(labels, row(6, (1, 0, 2)))
    with pytest.raises(ValueError, match="at least one image"):
        coco_average_precision([])


# -- cross-check against pycocotools ------------------------------------------------------------


def random_labels(rng: np.random.Generator, shape, n_objects: int) -> np.ndarray:
    """Overlapping random rectangles painted in order (so objects take irregular shapes)."""
    labels = np.zeros(shape, dtype=np.uint16)
    for label in range(1, n_objects + 1):
        y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(5, 16, size=2)
        labels[y : y + h, x : x + w] = label
    return labels


def perturbed(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A plausible segmentation: objects shifted, eroded, dropped, merged, plus false positives."""
    result = np.zeros_like(labels)
    next_label = 1
    for label in rng.permutation(np.unique(labels[labels > 0])):
        if rng.random() < 0.15:
            continue  # missed
        mask = labels == label
        dy, dx = rng.integers(-1, 2, size=2)
        mask = np.roll(mask, (dy, dx), axis=(0, 1))
        result[mask & (result == 0)] = next_label
        next_label += 1
    for _ in range(rng.integers(0, 4)):  # false positives
        y, x = rng.integers(0, labels.shape[0] - 5), rng.integers(0, labels.shape[1] - 5)
        result[y : y + 4, x : x + 5] = next_label
        next_label += 1
    # Relabel in raster order of first appearance, a realistic order unrelated to the reference.
    values, first = np.unique(result.ravel(), return_index=True)
    order = values[np.argsort(first)]
    order = order[order > 0]
    relabel = np.zeros(int(result.max()) + 1, dtype=np.uint16)
    relabel[order] = np.arange(1, len(order) + 1)
    return relabel[result]


def coco_objects(labels: np.ndarray, image_id: int, first_id: int, score: float | None):
    objects = []
    for k, label in enumerate(np.unique(labels[labels > 0])):
        rle = mask_utils.encode(np.asfortranarray((labels == label).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        entry = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": 1,
            "segmentation": rle,
            "area": float(mask_utils.area(rle)),
            "bbox": mask_utils.toBbox(rle).tolist(),
            "iscrowd": 0,
        }
        if score is not None:
            entry["score"] = score
        objects.append(entry)
    return objects


def pycocotools_ap(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """AP per IoU threshold from COCOeval(iouType="segm"), every result scored 1.0."""
    images, gts, dts = [], [], []
    for image_id, (ref, res) in enumerate(pairs, start=1):
        images.append({"id": image_id, "height": ref.shape[0], "width": ref.shape[1]})
        gts += coco_objects(ref, image_id, len(gts) + 1, None)
        dts += coco_objects(res, image_id, len(dts) + 1, 1.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1}]}
        gt.createIndex()
        dt = gt.loadRes(dts) if dts else COCO()
        evaluation = COCOeval(gt, dt, iouType="segm")
        evaluation.params.maxDets = [1, 10, 10_000]  # no cap on objects per image
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, 0, 0, -1]  # (T, R) for area "all"
    return precision.mean(axis=1)


@pytest.mark.parametrize("seed", range(6))
def test_coco_ap_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(rng.integers(1, 5)):
        ref = random_labels(rng, (48, 64), int(rng.integers(1, 25)))
        pairs.append((ref, perturbed(rng, ref)))
    ours = coco_average_precision([match_instances(ref, res) for ref, res in pairs])
    reference = pycocotools_ap(pairs)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)
    assert 0 < reference.mean() < 1  # the draw exercises partial matches


def test_coco_ap_equals_pycocotools_on_exact_ties_and_empty_images():
    ref_tie = row(8, (1, 0, 4), (2, 4, 8))
    res_tie = row(8, (1, 0, 2), (2, 2, 4), (3, 4, 8))  # halves of object 1 at IoU 0.5
    empty = np.zeros((1, 8), dtype=np.uint16)
    pairs = [(ref_tie, res_tie), (empty, row(8, (1, 0, 3))), (ref_tie, empty), (empty, empty)]
    ours = coco_average_precision([match_instances(ref, res) for ref, res in pairs])
    np.testing.assert_allclose(ours, pycocotools_ap(pairs), rtol=0, atol=1e-12)


def neurips_script_counts(ref: np.ndarray, res: np.ndarray, tiled=5000 * 5000, tile=2000):
    """TP, FP, FN the way the NeurIPS-CellSeg evaluation script computes them, written
    independently from its published steps: per object loops, sequential relabelling,
    a dense IoU matrix and the Hungarian algorithm."""
    from scipy.optimize import linear_sum_assignment
    from skimage.segmentation import relabel_sequential

    def strip(mask):
        mask = mask.astype(np.int32).copy()
        frame = np.ones(mask.shape, bool)
        frame[2:-2, 2:-2] = False
        for label in np.unique(mask[frame]):
            if label:
                mask[mask == label] = 0
        return relabel_sequential(mask)[0]

    def confusion(gt, pred):
        n_gt, n_pred = int(gt.max()), int(pred.max())
        if n_pred == 0:
            return 0, 0, 0
        iou = np.zeros((n_gt, n_pred))
        for i in range(1, n_gt + 1):
            for j in range(1, n_pred + 1):
                inter = np.sum((gt == i) & (pred == j))
                iou[i - 1, j - 1] = inter / np.sum((gt == i) | (pred == j))
        if n_gt == 0:
            return 0, n_pred, 0
        costs = -(iou >= 0.5).astype(float) - iou / (2 * min(iou.shape))
        rows, cols = linear_sum_assignment(costs)
        tp = int(np.sum(iou[rows, cols] >= 0.5))
        return tp, n_pred - tp, n_gt - tp

    if ref.size < tiled:
        return confusion(strip(ref), strip(res))
    height = -(-ref.shape[0] // tile) * tile
    width = -(-ref.shape[1] // tile) * tile
    gt = np.zeros((height, width), ref.dtype)
    pred = np.zeros((height, width), res.dtype)
    gt[: ref.shape[0], : ref.shape[1]], pred[: res.shape[0], : res.shape[1]] = ref, res
    total = np.zeros(3, int)
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            window = np.s_[y : y + tile, x : x + tile]
            total += confusion(strip(gt[window]), strip(pred[window]))
    return tuple(total.tolist())


@pytest.mark.parametrize("seed", range(4))
def test_neurips_counts_equal_the_scripts_steps(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    ref = random_labels(rng, (48, 64), 20)
    res = perturbed(rng, ref)
    assert neurips_counts(ref, res) == neurips_script_counts(ref, res)
    # Large images are tiled: shrink the rule's sizes so that a small image takes that path.
    from efficientcellseg import instance_metrics

    monkeypatch.setattr(instance_metrics, "NEURIPS_TILED_PIXELS", 1000)
    monkeypatch.setattr(instance_metrics, "NEURIPS_TILE", 20)
    tiled = neurips_counts(ref, res)
    assert tiled == neurips_script_counts(ref, res, tiled=1000, tile=20)
    assert tiled != neurips_script_counts(ref, res)  # the tile edges removed objects


def test_thresholds_are_those_of_pycocotools():
    from pycocotools.cocoeval import Params

    np.testing.assert_array_equal(COCO_IOU_THRESHOLDS, Params(iouType="segm").iouThrs)
