"""CTC SEG and DET (efficientcellseg.metrics): known answers for each rule in REFERENCE sec. 4."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from efficientcellseg import cli, ctc, metrics
from efficientcellseg.instance_metrics import instance_scores, match_instances
from efficientcellseg.metrics import (
    DetCounts,
    ObjectMatch,
    ResultsError,
    det_frame,
    evaluate_sequence,
    op_csb,
    peseg,
    seg_frame,
    seg_measure,
    validate_results,
    write_evaluation,
)


def boxes(shape, *objects) -> np.ndarray:
    """A uint16 label image with ``(label, slices)`` boxes painted in order."""
    labels = np.zeros(shape, dtype=np.uint16)
    for label, where in objects:
        labels[where] = label
    return labels


def jaccards(rows: list[ObjectMatch]) -> dict[int, float]:
    return {r.reference_label: r.jaccard for r in rows}


def brute_force_seg(reference: np.ndarray, result: np.ndarray) -> dict[int, tuple[int, float]]:
    """Reference label -> (matched label, Jaccard), one object at a time (slow, obvious)."""
    out = {}
    for r in np.unique(reference[reference > 0]):
        obj = reference == r
        labels, counts = np.unique(result[obj], return_counts=True)
        out[int(r)] = (0, 0.0)
        for s, n in zip(labels, counts, strict=True):
            if s and 2 * n > obj.sum():
                out[int(r)] = (int(s), n / np.count_nonzero(obj | (result == s)))
    return out


def brute_force_det(markers: np.ndarray, result: np.ndarray) -> tuple[int, int, int, int]:
    detected = {}
    ids = np.unique(markers[markers > 0])
    for m in ids:
        labels, counts = np.unique(result[markers == m], return_counts=True)
        for s, n in zip(labels, counts, strict=True):
            if s and 2 * n > counts.sum():
                detected[int(m)] = int(s)
    per_object = {int(s): 0 for s in np.unique(result[result > 0])}
    for s in detected.values():
        per_object[s] += 1
    fp = sum(1 for k in per_object.values() if k == 0)
    splits = sum(k - 1 for k in per_object.values() if k > 1)
    return len(ids), len(ids) - len(detected), fp, splits


# -- one frame --------------------------------------------------------------------------------


def test_identical_images_score_one():
    ref = boxes((20, 20), (1, np.s_[0:5, 0:5]), (2, np.s_[10:20, 3:9]), (7, np.s_[6:8, 15:19]))
    rows = seg_frame(ref, ref)
    assert [(r.reference_label, r.matched_label, r.jaccard) for r in rows] == [
        (1, 1, 1.0),
        (2, 2, 1.0),
        (7, 7, 1.0),
    ]
    assert det_frame(ref, ref) == DetCounts(3, 0, 0, 0)
    assert det_frame(ref, ref).det == 1.0


def test_disjoint_objects_score_zero():
    ref = boxes((10, 10), (1, np.s_[0:3, 0:3]), (2, np.s_[5:8, 5:8]))
    res = boxes((10, 10), (1, np.s_[0:3, 6:9]), (4, np.s_[6:9, 0:3]))
    assert [(r.matched_label, r.jaccard) for r in seg_frame(ref, res)] == [(0, 0.0), (0, 0.0)]
    counts = det_frame(ref, res)
    assert counts == DetCounts(markers=2, false_negatives=2, false_positives=2, splits=0)
    assert counts.aogm == 22 and counts.aogm0 == 20 and counts.det == 0.0  # capped at AOGM-D0


def test_exactly_half_is_not_a_match():
    ref = boxes((4, 4), (1, np.s_[0:2, 0:4]))  # 8 pixels
    res = boxes((4, 4), (3, np.s_[0:2, 0:2]))  # 4 of them: exactly half
    assert seg_frame(ref, res) == [ObjectMatch(0, None, 1, 0, 0.0)]
    assert det_frame(ref, res) == DetCounts(1, 1, 1, 0)


def test_just_over_half_gives_its_jaccard():
    ref = boxes((1, 20), (1, np.s_[0, 0:10]))  # 10 pixels
    res = boxes((1, 20), (5, np.s_[0, 4:12]))  # 6 inside, 2 outside
    (row,) = seg_frame(ref, res, frame=3)
    assert row == ObjectMatch(3, None, 1, 5, 6 / 12)
    assert det_frame(ref, res) == DetCounts(1, 0, 0, 0)


def test_split_object_keeps_its_larger_part():
    ref = boxes((1, 10), (1, np.s_[0, 0:10]))
    res = boxes((1, 10), (1, np.s_[0, 0:6]), (2, np.s_[0, 6:10]))
    assert seg_frame(ref, res) == [ObjectMatch(0, None, 1, 1, 0.6)]
    assert det_frame(ref, res) == DetCounts(1, 0, 1, 0)  # the smaller part is a false positive
    halves = boxes((1, 10), (1, np.s_[0, 0:5]), (2, np.s_[0, 5:10]))
    assert seg_frame(ref, halves)[0].jaccard == 0.0
    assert det_frame(ref, halves) == DetCounts(1, 1, 2, 0)


def test_merged_objects_each_match_the_merged_label_and_cost_splits():
    ref = boxes((1, 12), (1, np.s_[0, 0:2]), (2, np.s_[0, 3:6]), (3, np.s_[0, 7:12]))
    res = boxes((1, 12), (9, np.s_[0, 0:12]))
    assert [(r.matched_label, r.jaccard) for r in seg_frame(ref, res)] == [
        (9, 2 / 12),
        (9, 3 / 12),
        (9, 5 / 12),
    ]
    counts = det_frame(ref, res)  # one object holds 3 markers: 2 splits
    assert counts == DetCounts(markers=3, false_negatives=0, false_positives=0, splits=2)
    assert counts.aogm == 10 and counts.det == pytest.approx(1 - 10 / 30)


def test_extra_objects_are_ignored_by_seg_but_false_positives_for_det():
    ref = boxes((10, 10), (1, np.s_[0:4, 0:4]))
    res = boxes((10, 10), (1, np.s_[0:4, 0:4]), (2, np.s_[6:9, 6:9]), (3, np.s_[0, 9]))
    assert jaccards(seg_frame(ref, res)) == {1: 1.0}
    counts = det_frame(ref, res)
    assert counts == DetCounts(1, 0, 2, 0)
    assert counts.det == pytest.approx(1 - 2 / 10)
    no_fp = DetCounts(1, 0, 2, 0, penalise_fp=False)
    assert no_fp.aogm == 0 and no_fp.det == 1.0


def test_empty_result_frame():
    ref = boxes((6, 6), (1, np.s_[0:2, 0:2]), (2, np.s_[3:6, 3:6]))
    empty = np.zeros_like(ref)
    assert [r.jaccard for r in seg_frame(ref, empty)] == [0.0, 0.0]
    assert det_frame(ref, empty) == DetCounts(2, 2, 0, 0)
    assert seg_frame(empty, ref) == []
    assert det_frame(empty, ref) == DetCounts(0, 0, 2, 0)
    assert np.isnan(seg_measure(empty, ref))


def test_labels_above_255_up_to_65535():
    ref = boxes((8, 8), (256, np.s_[0:4, 0:4]), (65535, np.s_[4:8, 4:8]), (1000, np.s_[0:2, 6:8]))
    res = boxes((8, 8), (65535, np.s_[0:4, 0:3]), (300, np.s_[4:8, 4:8]), (65534, np.s_[0, 7]))
    rows = seg_frame(ref, res)
    assert [(r.reference_label, r.matched_label, r.jaccard) for r in rows] == [
        (256, 65535, 12 / 16),
        (1000, 0, 0.0),
        (65535, 300, 1.0),
    ]
    assert det_frame(ref, res) == DetCounts(3, 1, 1, 0)


@pytest.mark.parametrize("offset", [0, 1 << 31])
def test_random_labels_match_brute_force(offset):
    """Both contingency paths (uint16 codes; wider labels numbered first) agree with a loop."""
    rng = np.random.default_rng(1)
    for ndim in (2, 3):
        shape = (6, 24, 24) if ndim == 3 else (48, 48)
        ref = rng.integers(0, 9, size=np.prod(shape) // 8).repeat(8).reshape(shape)
        noise = np.linspace(0, 1, 9)[rng.permutation(9)][ref]  # noise fraction per object
        res = np.where(rng.random(shape) < noise, rng.integers(0, 7, shape), ref)
        res = res.astype(np.int64) * 7000  # labels up to 56000, gaps between them
        res[res > 0] += offset
        rows = seg_frame(ref.astype(np.uint16), res)
        expected = brute_force_seg(ref, res)
        assert [r.reference_label for r in rows] == sorted(expected)
        assert [r.matched_label for r in rows] == [expected[r.reference_label][0] for r in rows]
        assert [r.jaccard for r in rows] == pytest.approx(
            [expected[r.reference_label][1] for r in rows], abs=1e-15
        )
        assert any(r.matched_label for r in rows) and not all(r.matched_label for r in rows)
        counts = det_frame(ref, res)
        assert (counts.markers, counts.false_negatives, counts.false_positives, counts.splits) == (
            brute_force_det(ref, res)
        )


def test_many_objects_and_wide_label_types():
    """Thousands of objects, and labels beyond uint16 on both sides."""
    ref = np.arange(1, 4001, dtype=np.uint32).repeat(4).reshape(80, 200) * 20
    res = ref.astype(np.int64) + (1 << 31)  # same objects, huge labels
    res[:, ::4] = 0  # each object loses 1 of its 4 pixels: J = 3/4
    rows = seg_frame(ref, res)
    assert len(rows) == 4000
    assert rows[-1].reference_label == 80000
    assert all(r.matched_label == r.reference_label + (1 << 31) for r in rows)
    assert seg_measure(ref, res) == 0.75
    assert det_frame(ref, res) == DetCounts(4000, 0, 0, 0)
    ref16 = (ref // 20 * 16).astype(np.uint16)  # 4000 objects labelled up to 64000
    res16 = (65535 - ref16) * (res > 0)
    assert [r.matched_label for r in seg_frame(ref16, res16)] == list(range(65519, 1534, -16))
    assert seg_measure(ref16, res16) == 0.75


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="shape"):
        seg_frame(np.zeros((4, 4), np.uint16), np.zeros((4, 5), np.uint16))
    with pytest.raises(ValueError, match="integers"):
        det_frame(np.zeros((4, 4), np.uint16), np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="negative"):
        seg_frame(np.full((2, 2), -1), np.zeros((2, 2), np.int64))


def test_det_counts_and_combined_scores():
    total = DetCounts(4, 1, 3, 1) + DetCounts(6, 0, 2, 0)
    assert total == DetCounts(10, 1, 5, 1)
    assert total.aogm == 10 + 5 + 5 and total.aogm0 == 100
    assert total.det == pytest.approx(0.8)
    assert total.to_dict()["aogm"] == 20.0
    with pytest.raises(ValueError, match="marker"):
        _ = DetCounts(0, 0, 1, 0).det
    assert op_csb(0.7, 0.9) == pytest.approx(0.8)
    assert peseg(0.8, 6_697_824) == pytest.approx(0.8 / 6.697824)
    with pytest.raises(ValueError):
        peseg(0.8, 0)
    assert not metrics.penalises_false_positives("Fluo-N3DL-TRIC")
    assert metrics.penalises_false_positives("Fluo-C3DL-MDA231")


# -- sequences on disk ------------------------------------------------------------------------


def write_dataset(root, frames, *, gt=None, gt_slices=None, st=None, tra=None, results=None):
    """A CTC dataset ``root`` with sequence 01: ``frames`` label-shaped arrays give the shapes.

    ``gt``/``st``: {frame: labels}; ``gt_slices``: {(frame, z): labels}; ``tra``: list of marker
    images, one per frame; ``results``: list of masks written to 01_RES.
    """
    for t, frame in enumerate(frames):
        ctc.write_tiff(root / "01" / ctc.frame_name(t, 3), np.zeros(frame.shape, np.uint8))
    for t, labels in (gt or {}).items():
        ctc.write_labels(root / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", labels)
    for (t, z), labels in (gt_slices or {}).items():
        ctc.write_labels(root / "01_GT" / "SEG" / f"man_seg_{t:03d}_{z:03d}.tif", labels)
    for t, labels in (st or {}).items():
        ctc.write_labels(root / "01_ST" / "SEG" / f"man_seg{t:03d}.tif", labels)
    for t, labels in enumerate(tra or []):
        ctc.write_labels(root / "01_GT" / "TRA" / f"man_track{t:03d}.tif", labels)
    for t, labels in enumerate(results or []):
        ctc.write_labels(root / "01_RES" / ctc.mask_name(t, 3), labels)
    return root


def test_seg_pools_all_objects_of_all_frames(tmp_path):
    """SEG = sum of J over every reference object / their number, not a mean of frame means."""
    one = boxes((8, 8), (1, np.s_[0:2, 0:2]))
    three = boxes((8, 8), (1, np.s_[0:2, 0:2]), (2, np.s_[4:6, 0:2]), (3, np.s_[4:6, 4:6]))
    result = [one, boxes((8, 8), (1, np.s_[0:2, 0:2]))]  # frame 1: only its object 1 found
    root = write_dataset(tmp_path / "DS", [one, one], gt={0: one, 1: three}, results=result)
    evaluation = evaluate_sequence(root, "01")
    assert evaluation.n_reference_objects == 4
    assert evaluation.jaccard_sum == 2.0
    assert evaluation.seg == 0.5  # the mean of frame means would be (1 + 1/3) / 2
    assert evaluation.det is None and evaluation.det_counts is None


def test_per_slice_gt_with_repeated_labels(tmp_path):
    """Each slice file is matched with its slice of the 3D mask on its own; label 1 of slice 0
    and label 1 of slice 2 are different objects (py-ctcmetrics stacks them into one)."""
    shape = (3, 6, 6)
    result = boxes(shape, (10, np.s_[0, 0:3, 0:3]), (20, np.s_[2, 3:6, 3:6]), (30, np.s_[2, 0, 0]))
    slice0 = boxes(shape[1:], (1, np.s_[0:3, 0:3]))
    slice2 = boxes(shape[1:], (1, np.s_[3:6, 2:6]), (2, np.s_[0:2, 0:2]))  # 1 is 12 px, 9 in 20
    root = write_dataset(
        tmp_path / "DS",
        [result],
        gt_slices={(0, 0): slice0, (0, 2): slice2},
        results=[result],
    )
    evaluation = evaluate_sequence(root, "01")
    assert evaluation.objects == (
        ObjectMatch(0, 0, 1, 10, 1.0),
        ObjectMatch(0, 2, 1, 20, 9 / 12),
        ObjectMatch(0, 2, 2, 0, 0.0),  # 30 covers 1 of its 4 pixels
    )
    assert evaluation.seg == pytest.approx((1 + 0.75) / 3)


def test_full_3d_gt_st_reference_and_det(tmp_path):
    shape = (4, 8, 8)
    gt = boxes(shape, (1, np.s_[0:2, 0:4, 0:4]), (2, np.s_[2:4, 4:8, 4:8]))  # 32 voxels each
    st = boxes(shape, (5, np.s_[0:2, 0:4, 0:4]))
    markers = boxes(shape, (1, np.s_[0:2, 1:3, 1:3]), (2, np.s_[2:4, 5:7, 5:7]))
    res = boxes(shape, (1, np.s_[0:2, 0:4, 0:2]), (2, np.s_[2:4, 4:8, 4:8]), (3, np.s_[3, 0, 0]))
    res[0:2, 0:4, 2:4] = 4  # object 1 split in halves: not matched, its marker neither
    res[0, 1, 2] = 1  # now label 1 holds 17 of 32 voxels and 5 of 8 marker voxels
    root = write_dataset(
        tmp_path / "DS", [gt], gt={0: gt}, st={0: st}, tra=[markers], results=[res]
    )
    evaluation = evaluate_sequence(root, "01")
    assert jaccards(evaluation.objects) == {1: 17 / 32, 2: 1.0}
    assert evaluation.det_counts == DetCounts(2, 0, 2, 0)  # labels 3 and 4 detect nothing
    assert evaluation.det == pytest.approx(1 - 2 / 20)
    assert evaluate_sequence(root, "01", reference="ST").seg == 17 / 32
    lenient = evaluate_sequence(root, "01", det_penalise_fp=False)
    assert lenient.det == 1.0 and lenient.det_counts.false_positives == 2
    assert lenient.to_dict()["det_counts"]["penalise_fp"] is False


def test_2d_sequence_with_markers_and_empty_frame(tmp_path):
    gt = boxes((10, 10), (1, np.s_[0:4, 0:4]), (2, np.s_[5:10, 5:10]))
    markers = boxes((10, 10), (1, np.s_[1:3, 1:3]), (2, np.s_[6:9, 6:9]))
    root = write_dataset(
        tmp_path / "DS",
        [gt, gt],
        gt={0: gt, 1: gt},
        tra=[markers, markers],
        results=[gt, np.zeros_like(gt)],
    )
    evaluation = evaluate_sequence(root, "01")
    assert evaluation.seg == 0.5
    assert evaluation.det_counts == DetCounts(4, 2, 0, 0)
    assert evaluation.det == 0.5


def test_validate_results_lists_every_problem(tmp_path):
    shape = (3, 8, 8)
    frame = np.zeros(shape, np.uint16)
    root = write_dataset(tmp_path / "DS", [frame] * 5, gt={0: frame}, results=[frame])
    res = root / "01_RES"
    ctc.write_tiff(res / "mask001.tif", frame.astype(np.uint8))  # wrong dtype
    ctc.write_labels(res / "mask002.tif", np.zeros((3, 8, 9), np.uint16))  # wrong shape
    ctc.write_labels(res / "mask0003.tif", frame)  # wrong digit count; mask004 missing
    seq = ctc.open_sequence(root, "01")
    with pytest.raises(ResultsError) as info:
        validate_results(seq, res)
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert "mask001.tif" in problems[0] and "uint8" in problems[0] and "uint16" in problems[0]
    assert "mask002.tif" in problems[1] and "(3, 8, 9)" in problems[1]
    assert (
        "mask003.tif" in problems[2] and "mask0003.tif" in problems[2] and "3-digit" in problems[2]
    )
    assert problems[3].startswith("mask004.tif: missing")
    assert str(res) in str(info.value) and str(info.value).count("\n") == 4
    assert isinstance(info.value, ValueError)
    with pytest.raises(ResultsError, match="does not exist"):
        validate_results(seq, root / "02_RES")
    with pytest.raises(ResultsError, match="mask003.tif: missing"):
        evaluate_sequence(root, "01")


def test_missing_reference_is_a_clear_error(tmp_path):
    frame = boxes((4, 4), (1, np.s_[0:2, 0:2]))
    root = write_dataset(tmp_path / "DS", [frame], gt={0: frame}, results=[frame])
    with pytest.raises(ctc.CTCFormatError, match="01_ST.*no SEG annotations"):
        evaluate_sequence(root, "01", reference="ST")


def test_write_evaluation_files(tmp_path):
    shape = (3, 6, 6)
    result = boxes(shape, (10, np.s_[0, 0:3, 0:3]))
    root = write_dataset(
        tmp_path / "DS",
        [result],
        gt={0: result},
        gt_slices={(0, 0): result[0]},
        results=[result],
    )
    evaluation = evaluate_sequence(root, "01")
    scores, objects = write_evaluation(evaluation, tmp_path / "out")
    assert json.loads(scores.read_text()) == evaluation.to_dict()
    assert json.loads(scores.read_text())["seg"] == 1.0
    with objects.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [
        {
            "frame": "0",
            "slice": "",
            "reference_label": "10",
            "matched_label": "10",
            "jaccard": "1.0",
        },
        {
            "frame": "0",
            "slice": "0",
            "reference_label": "10",
            "matched_label": "10",
            "jaccard": "1.0",
        },
    ]
    assert not list((tmp_path / "out").glob(".*part"))


def test_cli_evaluate(tmp_path, capsys):
    gt = boxes((10, 10), (1, np.s_[0:4, 0:4]), (2, np.s_[5:10, 5:10]))
    markers = boxes((10, 10), (1, np.s_[1:3, 1:3]), (2, np.s_[6:9, 6:9]))
    res = boxes((10, 10), (1, np.s_[0:4, 0:3]), (2, np.s_[5:10, 5:10]), (3, np.s_[0, 9]))
    root = write_dataset(tmp_path / "DS", [gt], gt={0: gt}, tra=[markers], results=[res])
    assert cli.main(["evaluate", str(root), "01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["SEG measure: 0.875000", "DET measure: 0.950000"]
    # Two of two objects found (IoU 0.75 and 1), one false positive.
    assert out[2].startswith("AP50     1.000000") and out[6].startswith("Acc@0.5  0.666667")
    scores = json.loads((root / "01_EVAL" / "scores.json").read_text())
    assert scores["seg"] == 0.875 and scores["det"] == pytest.approx(0.95)
    assert scores["instance"]["accuracy_50"] == pytest.approx(2 / 3)
    assert (root / "01_EVAL" / "objects.csv").read_text().count("\n") == 3
    assert sorted(p.name for p in (root / "01_RES").iterdir()) == ["mask000.tif"]

    out_dir = tmp_path / "eval"
    argv = ["evaluate", str(root), "01", "--no-fp-penalty", "--out", str(out_dir)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1] == "DET measure: 1.000000"
    assert json.loads((out_dir / "scores.json").read_text())["det_penalise_fp"] is False


def test_cli_evaluate_bad_input(tmp_path, capsys, caplog):
    frame = boxes((4, 4), (1, np.s_[0:2, 0:2]))
    root = write_dataset(tmp_path / "DS", [frame, frame], gt={0: frame}, results=[frame])
    # exit code 1: the command line is right, the files are not
    assert cli.main(["evaluate", str(root), "01", "--results", str(root / "01_RES")]) == 1
    assert "mask001.tif: missing" in caplog.text
    assert cli.main(["evaluate", str(root), "01", "--reference", "ST"]) == 1
    assert cli.main(["evaluate", str(root), "01", "--digits", "4"]) == 1
    assert "mask0000.tif: missing; found mask000.tif" in caplog.text
    assert capsys.readouterr().out == ""
    assert not (root / "01_EVAL").exists()


def test_instance_metrics_take_each_slice_file_as_an_image(tmp_path):
    """COCO AP, F1, accuracy: a per-slice annotation is one image compared with its slice."""
    shape = (3, 6, 6)
    result = boxes(shape, (10, np.s_[0, 0:3, 0:3]), (20, np.s_[2, 3:6, 3:6]), (30, np.s_[2, 0, 0]))
    slice0 = boxes(shape[1:], (1, np.s_[0:3, 0:3]))
    slice2 = boxes(shape[1:], (1, np.s_[3:6, 2:6]), (2, np.s_[0:2, 0:2]))
    root = write_dataset(
        tmp_path / "DS", [result], gt_slices={(0, 0): slice0, (0, 2): slice2}, results=[result]
    )
    instance = evaluate_sequence(root, "01").instance
    assert instance == instance_scores(
        [match_instances(slice0, result[0]), match_instances(slice2, result[2])]
    )
    assert instance.images == 2 and instance.reference_objects == 3
    assert instance.accuracy_50 == pytest.approx((1 + 1 / 3) / 2)  # slice 2: 1 TP, 1 FP, 1 FN
    assert instance.f1_50 == 0.0  # NeurIPS' rule drops every object here: all touch the frame


def test_instance_metrics_of_full_3d_frames_use_3d_iou(tmp_path):
    shape = (4, 8, 8)
    gt = boxes(shape, (1, np.s_[0:2, 0:4, 0:4]), (2, np.s_[2:4, 4:8, 4:8]))  # 32 voxels each
    res = boxes(shape, (1, np.s_[0:2, 0:4, 0:2]), (2, np.s_[2:4, 4:8, 4:8]), (3, np.s_[3, 0, 0]))
    res[0:2, 0:4, 2:4] = 4
    res[0, 1, 2] = 1  # label 1: 17 of the 32 voxels of object 1 (IoU 0.53), label 4: 15
    root = write_dataset(tmp_path / "DS", [gt], gt={0: gt}, results=[res])
    evaluation = evaluate_sequence(root, "01")
    instance = evaluation.instance
    assert (instance.reference_objects, instance.result_objects) == (2, 4)
    assert instance.true_positives_50 == 2
    assert instance.f1_50 == 0.0  # every object touches the 2-voxel frame (NeurIPS' rule)
    assert instance.accuracy_50 == pytest.approx(2 / 4)
    assert instance.foreground_dice == pytest.approx(2 * 64 / (64 + 65))
    assert instance.foreground_iou == pytest.approx(64 / 65)
    # Detections in label order: TP, TP, FP, FP at 0.5, so AP50 = 1. At 0.75 label 1 is an FP
    # before the TP: precision 1/2 up to recall 1/2, i.e. 51 of 101 recall points at 0.5.
    assert instance.ap_50 == pytest.approx(1)
    assert instance.ap_75 == pytest.approx(51 * 0.5 / 101)
    saved = evaluation.to_dict()["instance"]
    assert saved["accuracy_50"] == 0.5 and saved["images"] == 1
