"""Importers into the CTC layout and exporters back (efficientcellseg.formats), on small files
made here: known answers, round trips (import then export gives the source masks), COCOeval on
the exported files against our AP, and clear errors naming the file."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import cv2
import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from efficientcellseg import cli, ctc
from efficientcellseg.formats import FormatError, export_results, import_dataset
from efficientcellseg.formats.layout import paint_instances
from efficientcellseg.formats.rle_csv import decode_runs, encode_labels
from efficientcellseg.metrics import evaluate_sequence


def blobs(shape, *boxes, dtype=np.uint16) -> np.ndarray:
    labels = np.zeros(shape, dtype=dtype)
    for label, where in boxes:
        labels[where] = label
    return labels


def noise(shape, dtype=np.uint16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=shape).astype(dtype)


def results_from_gt(dest, sequence="01"):
    """Copy the imported annotations as result masks (the round trip of the exporters)."""
    seq = ctc.open_sequence(dest, sequence)
    for ann in seq.gt_seg:
        ctc.write_labels(
            dest / f"{sequence}_RES" / ctc.mask_name(ann.frame, seq.digits),
            ctc.read_labels(ann.path),
        )
    return dest / f"{sequence}_RES"


# -- EmbedSeg --------------------------------------------------------------------------------


@pytest.fixture
def embedseg(tmp_path):
    root = tmp_path / "embedseg"
    masks = {
        "train/masks/a.tif": blobs((30, 40), (3, np.s_[2:8, 2:9]), (300, np.s_[10:20, 5:25])),
        "train/masks/b.tif": blobs((20, 50), (1, np.s_[0:5, 40:50])),
        "val/masks/c.tif": blobs((30, 40), (2, np.s_[5:9, 5:9])),
    }
    for name, labels in masks.items():
        ctc.write_tiff(root / name, labels.astype(np.uint16))
        image = name.replace("masks", "images")
        ctc.write_tiff(root / image, noise(labels.shape, seed=len(image)))
    ctc.write_tiff(root / "test" / "images" / "d.tif", noise((30, 40), np.uint8))
    return root, masks


def test_embedseg_splits_become_sequences_with_padding_and_mapping(embedseg, tmp_path):
    root, masks = embedseg
    dest = tmp_path / "ctc"
    mapping = import_dataset("embedseg", [root], dest)
    assert list(mapping["sequences"]) == ["01", "02", "03"]
    train = mapping["sequences"]["01"]
    assert train["split"] == "train" and train["frame_shape"] == [30, 50]
    assert [f["source"] for f in train["frames"]] == ["train/images/a.tif", "train/images/b.tif"]
    assert train["frames"][1] == {
        "frame": 1,
        "source": "train/images/b.tif",
        "shape": [20, 50],
        "labels": "train/masks/b.tif",
        "objects": 1,
    }
    assert json.loads((dest / "import.json").read_text()) == mapping
    seq = ctc.open_sequence(dest, "01")
    assert seq.frame_shape == (30, 50) and [a.frame for a in seq.gt_seg] == [0, 1]
    frame1 = ctc.read_image(dest / "01" / "t001.tif")
    np.testing.assert_array_equal(frame1[:20], noise((20, 50), seed=len("train/images/b.tif")))
    assert not frame1[20:].any()  # padding
    gt0 = ctc.read_labels(dest / "01_GT" / "SEG" / "man_seg000.tif")
    np.testing.assert_array_equal(gt0[:, :40], masks["train/masks/a.tif"])
    assert not gt0[:, 40:].any()
    test = ctc.open_sequence(dest, "03")
    assert test.gt_seg == () and ctc.read_image(dest / "03" / "t000.tif").dtype == np.uint8


def test_embedseg_round_trip_and_evaluation(embedseg, tmp_path):
    root, masks = embedseg
    dest = tmp_path / "ctc"
    import_dataset("embedseg", [root], dest)
    out = tmp_path / "out"
    for seq in ("01", "02"):
        export_results("embedseg", dest, seq, out, ground_truth=True)
    for name, labels in masks.items():
        np.testing.assert_array_equal(ctc.read_labels(out / name), labels)
    # Result masks (here: the annotations themselves) export the same way and score perfectly.
    results = results_from_gt(dest)
    written = export_results("embedseg", dest, "01", tmp_path / "res")
    assert len(written) == 2
    np.testing.assert_array_equal(
        ctc.read_labels(tmp_path / "res" / "train/masks/b.tif"), masks["train/masks/b.tif"]
    )
    evaluation = evaluate_sequence(dest, "01", results)
    assert evaluation.seg == 1.0 and evaluation.det is None
    assert evaluation.instance.ap_50 == pytest.approx(1) and evaluation.instance.accuracy_50 == 1
    assert evaluation.instance.f1_50 == 0.5  # NeurIPS' rule drops b.tif's object on the edge


def test_embedseg_3d_round_trip(tmp_path):
    root = tmp_path / "embedseg3d" / "train"
    labels = blobs((5, 16, 16), (4, np.s_[1:4, 2:6, 2:6]), (9, np.s_[0:5, 10:14, 9:15]))
    ctc.write_tiff(root / "images" / "x.tif", noise(labels.shape))
    ctc.write_tiff(root / "masks" / "x.tif", labels)
    dest = tmp_path / "ctc"
    mapping = import_dataset("embedseg", [root], dest)
    assert mapping["sequences"]["01"]["frame_shape"] == [5, 16, 16]
    assert ctc.open_sequence(dest, "01").ndim == 3
    export_results("embedseg", dest, "01", tmp_path / "out", ground_truth=True)
    np.testing.assert_array_equal(ctc.read_labels(tmp_path / "out/train/masks/x.tif"), labels)


def test_embedseg_errors_name_the_file(embedseg, tmp_path):
    root, _ = embedseg
    (root / "val" / "masks" / "c.tif").unlink()
    with pytest.raises(FormatError, match=r"val/masks/c.tif: missing"):
        import_dataset("embedseg", [root], tmp_path / "ctc")
    with pytest.raises(FormatError, match="no images/ folder"):
        import_dataset("embedseg", [tmp_path], tmp_path / "ctc")
    (root / "val" / "masks" / "c.tif").write_bytes(b"not a tiff")
    with pytest.raises(ctc.CTCFormatError, match=r"c.tif: not a readable TIFF"):
        import_dataset("embedseg", [root], tmp_path / "ctc")
    ctc.write_tiff(root / "val" / "masks" / "c.tif", np.zeros((3, 3), np.uint16))
    with pytest.raises(FormatError, match=r"c.tif: image shape \(30, 40\) fits neither"):
        import_dataset("embedseg", [root], tmp_path / "ctc")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        import_dataset("embedseg", [root / "train"], tmp_path / "full")


# -- NeurIPS-CellSeg ---------------------------------------------------------------------------


def test_neurips_colour_rules_and_round_trip(tmp_path):
    split = tmp_path / "neurips" / "Train_Labeled"
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    (split / "images").mkdir(parents=True)
    cv2.imwrite(str(split / "images" / "cell_00001.png"), rgb[..., ::-1])  # OpenCV writes BGR
    grey_rgb = np.repeat(rng.integers(0, 256, size=(10, 10, 1), dtype=np.uint8), 3, axis=2)
    cv2.imwrite(str(split / "images" / "cell_00002.bmp"), grey_rgb)
    first = rng.integers(0, 4000, size=(3, 8, 9), dtype=np.uint16)  # channels first
    tifffile.imwrite(split / "images" / "cell_00003.tif", first)
    tifffile.imwrite(split / "images" / "cell_00004.tiff", noise((6, 6)))  # no label
    labels = {
        "cell_00001": blobs((12, 16), (1, np.s_[0:4, 0:4]), (2, np.s_[5:9, 5:12])),
        "cell_00002": blobs((10, 10), (7, np.s_[2:5, 2:5])),
        "cell_00003": blobs((8, 9), (1, np.s_[0:8, 0:2])),
    }
    for stem, lab in labels.items():
        ctc.write_tiff(split / "labels" / f"{stem}_label.tiff", lab)

    dest = tmp_path / "ctc"
    mapping = import_dataset("neurips-cellseg", [tmp_path / "neurips"], dest)
    frames = mapping["sequences"]["01"]["frames"]
    assert [f.get("colour") for f in frames] == [
        "luminance",
        "identical channels",
        "luminance",
        None,
    ]
    assert "labels" in frames[0] and frames[3]["labels"] is None and "objects" not in frames[3]
    grey = ctc.read_image(dest / "01" / "t000.tif")[:12, :16]
    expected = 0.2125 * rgb[..., 0] + 0.7154 * rgb[..., 1] + 0.0721 * rgb[..., 2]
    assert grey.dtype == np.uint8 and np.abs(grey - np.rint(expected)).max() <= 1
    np.testing.assert_array_equal(
        ctc.read_image(dest / "01" / "t001.tif")[:10, :10], grey_rgb[..., 0]
    )
    third = ctc.read_image(dest / "01" / "t002.tif")[:8, :9]
    assert third.dtype == np.uint16
    expected = np.tensordot([0.2125, 0.7154, 0.0721], first.astype(float), axes=1)
    assert np.abs(third.astype(float) - expected).max() <= 1

    out = tmp_path / "out"
    assert len(export_results("neurips-cellseg", dest, "01", out, ground_truth=True)) == 3
    for stem, lab in labels.items():
        np.testing.assert_array_equal(
            ctc.read_labels(out / "Train_Labeled" / "labels" / f"{stem}_label.tiff"), lab
        )

    dest_max = tmp_path / "ctc-max"
    import_dataset("neurips-cellseg", [split], dest_max, grey="max")
    np.testing.assert_array_equal(
        ctc.read_image(dest_max / "01" / "t000.tif")[:12, :16], rgb.max(-1)
    )


# -- COCO ------------------------------------------------------------------------------------


def polygon(y0, x0, y1, x1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco_source(tmp_path):
    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    tifffile.imwrite(folder / "images" / "one.tif", noise((20, 30)))
    tifffile.imwrite(folder / "images" / "two.tif", noise((24, 30), seed=2))
    square = blobs((24, 30), (1, np.s_[10:14, 16:22]), dtype=np.uint8)
    rle = mask_utils.encode(np.asfortranarray(square))
    dataset = {
        "images": [  # listed out of id order: frames follow the ids
            {"id": 7, "file_name": "two.tif", "height": 24, "width": 30},
            {"id": 3, "file_name": "one.tif", "height": 20, "width": 30},
        ],
        "annotations": [
            {"id": 10, "image_id": 3, "segmentation": polygon(2, 2, 8, 10), "iscrowd": 0},
            {"id": 11, "image_id": 3, "segmentation": polygon(10, 12, 18, 28), "iscrowd": 0},
            {"id": 12, "image_id": 3, "segmentation": polygon(0, 0, 19, 29), "iscrowd": 1},
            {  # big square and a small one inside it: the small one keeps its pixels
                "id": 20,
                "image_id": 7,
                "segmentation": {"size": [24, 30], "counts": rle["counts"].decode()},
            },
            {"id": 21, "image_id": 7, "segmentation": polygon(0, 0, 20, 20)},
            {"id": 22, "image_id": 7, "segmentation": polygon(3, 3, 6, 6)},
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }
    path = folder / "train.json"
    path.write_text(json.dumps(dataset))
    return path, dataset


def coco_masks(dataset, image_id):
    coco = COCO()
    coco.dataset = {"images": dataset["images"], "annotations": dataset["annotations"]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    anns = [a for a in dataset["annotations"] if a["image_id"] == image_id and not a.get("iscrowd")]
    return [coco.annToMask(a).astype(bool) for a in anns]


def test_coco_import_rasterises_every_kind_and_resolves_overlaps(coco_source, tmp_path):
    path, dataset = coco_source
    dest = tmp_path / "ctc"
    mapping = import_dataset("coco", [path], dest, images=path.parent / "images")
    frames = mapping["sequences"]["01"]["frames"]
    assert [(f["image_id"], f["source"]) for f in frames] == [(3, "one.tif"), (7, "two.tif")]
    assert frames[0]["crowd_skipped"] == 1 and frames[0]["annotation_ids"] == [10, 11]
    one = ctc.read_labels(dest / "01_GT" / "SEG" / "man_seg000.tif")[:20]
    for label, mask in enumerate(coco_masks(dataset, 3), start=1):
        np.testing.assert_array_equal(one == label, mask)
    two = ctc.read_labels(dest / "01_GT" / "SEG" / "man_seg001.tif")
    rle_square, big, small = coco_masks(dataset, 7)
    # Sizes: small < RLE square < big polygon; each pixel goes to the smallest object on it.
    np.testing.assert_array_equal(two == 3, small)
    np.testing.assert_array_equal(two == 1, rle_square)
    np.testing.assert_array_equal(two == 2, big & ~small & ~rle_square)
    assert (big & rle_square).any()
    assert frames[1]["overlap_pixels"] == int((big & small).sum() + (big & rle_square).sum())


def test_coco_round_trip_and_cocoeval_on_exported_files(coco_source, tmp_path):
    path, dataset = coco_source
    dest = tmp_path / "ctc"
    import_dataset("coco", [path], dest)  # images found below the JSON's folder by name
    gt_file = export_results("coco", dest, "01", tmp_path / "gt.json", ground_truth=True)
    exported = json.loads(gt_file.read_text())
    assert [i["id"] for i in exported["images"]] == [3, 7]
    first = [a for a in exported["annotations"] if a["image_id"] == 3]
    for ann, mask in zip(first, coco_masks(dataset, 3), strict=True):
        np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask)

    # A perturbed result: object 1 of image 3 shrunk (IoU 0.6), an extra false positive.
    results = results_from_gt(dest)
    mask0 = ctc.read_labels(results / "mask000.tif")
    mask0[2:5, 2:11] = 0  # polygon 2..8 x 2..10 rasterises to 7x9 pixels; keep 4 of its 7 rows
    mask0[0, 25:30] = 5
    ctc.write_labels(results / "mask000.tif", mask0)
    res_file = export_results("coco", dest, "01", tmp_path / "res.json")
    detections = json.loads(res_file.read_text())
    assert {d["score"] for d in detections} == {1.0} and len(detections) == 6

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        evaluation = COCOeval(gt, gt.loadRes(str(res_file)), iouType="segm")
        evaluation.params.maxDets = [1, 10, 1000]
        evaluation.evaluate()
        evaluation.accumulate()
    reference = evaluation.eval["precision"][:, :, 0, 0, -1].mean(axis=1)
    ours = evaluate_sequence(dest, "01", results).instance
    assert ours.ap_50 == pytest.approx(reference[0], abs=1e-12)
    assert ours.ap_75 == pytest.approx(reference[5], abs=1e-12)
    assert ours.ap_50_95 == pytest.approx(reference.mean(), abs=1e-12)
    assert 0.5 < ours.ap_50_95 < 1, (ours, reference)


def test_coco_errors_name_the_file(coco_source, tmp_path):
    path, dataset = coco_source
    broken = path.with_name("broken.json")
    broken.write_text("{not json")
    with pytest.raises(FormatError, match=r"broken.json: not valid JSON"):
        import_dataset("coco", [broken], tmp_path / "a")
    dataset["annotations"].append({"id": 99, "image_id": 5, "segmentation": polygon(0, 0, 1, 1)})
    path.write_text(json.dumps(dataset))
    with pytest.raises(FormatError, match=r"train.json: annotation 99 refers to image 5"):
        import_dataset("coco", [path], tmp_path / "b")
    dataset["annotations"][-1] = {"id": 98, "image_id": 3, "segmentation": {"counts": "x"}}
    path.write_text(json.dumps(dataset))
    with pytest.raises(FormatError, match=r"train.json: annotation 98 has a segmentation"):
        import_dataset("coco", [path], tmp_path / "c")
    with pytest.raises(FormatError, match=r"image 'one.tif' not found under .*--images"):
        import_dataset("coco", [path], tmp_path / "d", images=tmp_path / "coco" / "nothing")


# -- Kaggle RLE CSV ----------------------------------------------------------------------------


def test_rle_known_answers_in_both_pixel_orders():
    # 3 x 4 image; "1 3 10 2": pixels 1-3 and 10-11 (1-based).
    row_major = np.zeros(12, bool)
    row_major[decode_runs("1 3 10 2", (3, 4), "row")] = True
    assert np.flatnonzero(row_major.reshape(3, 4)).tolist() == [0, 1, 2, 9, 10]
    column = np.zeros((3, 4), bool)
    column.flat[decode_runs("1 3 10 2", (3, 4), "column")] = True
    assert sorted(zip(*np.nonzero(column), strict=True)) == [(0, 0), (0, 3), (1, 0), (1, 3), (2, 0)]
    labels = np.array([[0, 2, 2, 0], [1, 1, 0, 2], [0, 0, 0, 2]], dtype=np.uint16)
    assert encode_labels(labels, "row") == ["5 2", "2 2 8 1 12 1"]
    assert encode_labels(labels, "column") == ["2 1 5 1", "4 1 7 1 11 2"]
    with pytest.raises(ValueError, match="odd count"):
        decode_runs("1 2 3", (3, 4))
    with pytest.raises(ValueError, match="end by pixel 12"):
        decode_runs("11 3", (3, 4))


def write_kaggle(tmp_path, rows, images):
    folder = tmp_path / "kaggle"
    (folder / "train").mkdir(parents=True)
    for image_id, image in images.items():
        cv2.imwrite(str(folder / "train" / f"{image_id}.png"), image)
    path = folder / "train.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "annotation", "width", "height", "cell_type"])
        for image_id, encoding in rows:
            height, width = images[image_id].shape
            writer.writerow([image_id, encoding, width, height, "shsy5y"])
    return path


def read_kaggle(path):
    with path.open(newline="") as fh:
        return [(row["id"], row["predicted"]) for row in csv.DictReader(fh)]


@pytest.mark.parametrize("order", ["row", "column"])
def test_kaggle_round_trip_gives_the_same_strings(tmp_path, order):
    a = blobs((9, 12), (1, np.s_[0:3, 0:4]), (2, np.s_[4:9, 6:12]), (3, np.s_[8, 0:3]))
    b = blobs((9, 12), (1, np.s_[1:2, 1:11]))
    rows = [("aaa", s) for s in encode_labels(a, order)] + [("bbb", encode_labels(b, order)[0])]
    images = {"aaa": noise((9, 12), np.uint8), "bbb": noise((9, 12), np.uint8, seed=3)}
    path = write_kaggle(tmp_path, rows, images)
    dest = tmp_path / "ctc"
    mapping = import_dataset("kaggle-rle", [path], dest, order=order)
    assert mapping["rules"]["rle_order"] == order
    frames = mapping["sequences"]["01"]["frames"]
    assert [(f["id"], f["rows"]) for f in frames] == [("aaa", [2, 3, 4]), ("bbb", [5])]
    np.testing.assert_array_equal(ctc.read_labels(dest / "01_GT/SEG/man_seg000.tif"), a)
    np.testing.assert_array_equal(ctc.read_image(dest / "01/t001.tif"), images["bbb"])
    out = export_results("kaggle-rle", dest, "01", tmp_path / "gt.csv", ground_truth=True)
    assert read_kaggle(out) == rows
    results_from_gt(dest)
    assert read_kaggle(export_results("kaggle-rle", dest, "01", tmp_path / "res.csv")) == rows


def test_kaggle_overlaps_go_to_the_smaller_object(tmp_path):
    image = noise((6, 6), np.uint8)
    big = blobs((6, 6), (1, np.s_[0:4, 0:4]))
    small = blobs((6, 6), (1, np.s_[2:5, 2:5]))
    rows = [("x", encode_labels(big)[0]), ("x", encode_labels(small)[0])]
    rows.append(("x", encode_labels(small)[0]))  # a duplicate: the later copy wins
    dest = tmp_path / "ctc"
    mapping = import_dataset("kaggle-rle", [write_kaggle(tmp_path, rows, {"x": image})], dest)
    frame = mapping["sequences"]["01"]["frames"][0]
    assert frame["overlap_pixels"] == 9 and frame["hidden_rows"] == [3]
    labels = ctc.read_labels(dest / "01_GT/SEG/man_seg000.tif")
    np.testing.assert_array_equal(labels == 3, small > 0)
    np.testing.assert_array_equal(labels == 1, (big > 0) & (small == 0))


def test_kaggle_errors_name_file_and_line(tmp_path):
    path = write_kaggle(tmp_path, [("x", "1 4"), ("x", "3 2 9")], {"x": noise((4, 4), np.uint8)})
    with pytest.raises(FormatError, match=r"train.csv:3: the encoding has an odd count"):
        import_dataset("kaggle-rle", [path], tmp_path / "a")
    path.write_text("image,rle\nx,1 2\n")
    with pytest.raises(FormatError, match=r"train.csv: needs an id column"):
        import_dataset("kaggle-rle", [path], tmp_path / "b")
    path.write_text("id,annotation\ny,1 2\n")
    with pytest.raises(FormatError, match=r"train.csv: no image y.png .* --images"):
        import_dataset("kaggle-rle", [path], tmp_path / "c")


def test_paint_instances_rule():
    objects = [np.array([0, 1, 2, 3]), np.array([2, 3]), np.array([5])]
    labels, overlap, hidden = paint_instances((2, 3), objects)
    assert labels.tolist() == [[1, 1, 2], [2, 0, 3]] and overlap == 2 and hidden == []


# -- command line ----------------------------------------------------------------------------


def test_cli_import_and_export(tmp_path, capsys, caplog):
    a = blobs((5, 7), (1, np.s_[0:2, 0:2]), (2, np.s_[3:5, 3:7]))
    rows = [("img", s) for s in encode_labels(a)]
    path = write_kaggle(tmp_path, rows, {"img": noise((5, 7), np.uint8)})
    dest = tmp_path / "ctc"
    assert cli.main(["import", "kaggle-rle", str(path), str(dest)]) == 0
    out = capsys.readouterr().out
    assert "01: split train, 1 frames of 5x7, 1 annotated" in out
    csv_out = tmp_path / "gt.csv"
    argv = ["export-results", "kaggle-rle", str(dest), "01", str(csv_out), "--ground-truth"]
    assert cli.main(argv) == 0
    assert read_kaggle(csv_out) == rows
    # Errors are one line naming the file, exit status 2.
    shutil.rmtree(dest / "01_GT")
    assert cli.main(["export-results", "coco", str(dest), "01", str(tmp_path / "r.json")]) == 1
    assert "mask000.tif: file does not exist" in caplog.text
    assert cli.main(["import", "coco", str(path), str(tmp_path / "x")]) == 1
    assert "train.csv: not valid JSON" in caplog.text
