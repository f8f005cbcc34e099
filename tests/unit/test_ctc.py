"""CTC layout: discovery, digits, annotation kinds, atomic writes, clear errors on bad input."""

from __future__ import annotations

import os
import re
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tifffile

from efficientcellseg import ctc


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A 3D dataset: two sequences of three 4x20x30 frames, full and per-slice GT, TRA, ST."""
    root = tmp_path / "Fluo-X"
    for seq in ("01", "02"):
        for t in range(3):
            _write(root / seq / f"t{t:03d}.tif", np.full((4, 20, 30), t, np.uint16))
    _write(root / "01_GT" / "SEG" / "man_seg000.tif", np.ones((4, 20, 30), np.uint16))
    _write(root / "01_GT" / "SEG" / "man_seg_002_001.tif", np.ones((20, 30), np.uint16))
    _write(root / "01_GT" / "SEG" / "man_seg_002_003.tif", np.ones((20, 30), np.uint16))
    for t in range(3):
        _write(root / "01_GT" / "TRA" / f"man_track{t:03d}.tif", np.zeros((4, 20, 30), np.uint16))
        _write(root / "01_ST" / "SEG" / f"man_seg{t:03d}.tif", np.zeros((4, 20, 30), np.uint16))
    (root / "01_GT" / "TRA" / "man_track.txt").write_text("1 0 2 0\n2 1 2 1\n")
    return root


def test_discovers_sequences_frames_and_every_annotation_kind(dataset: Path) -> None:
    assert ctc.discover_sequences(dataset) == ["01", "02"]
    seq = ctc.open_sequence(dataset, "01")
    assert seq.frame_ids == [0, 1, 2]
    assert seq.digits == 3
    assert seq.frame_shape == (4, 20, 30)
    assert seq.ndim == 3
    assert [(a.frame, a.slice) for a in seq.gt_seg] == [(0, None), (2, 1), (2, 3)]
    assert [a.frame for a in seq.st_seg] == [0, 1, 2]
    assert sorted(seq.tra_markers) == [0, 1, 2]
    np.testing.assert_array_equal(ctc.read_man_track(seq.tra_tracks), [[1, 0, 2, 0], [2, 1, 2, 1]])
    other = ctc.open_sequence(dataset, "02")
    assert other.gt_seg == () and other.st_seg == () and other.tra_tracks is None


def test_four_digit_frames_give_four_digit_masks(tmp_path: Path) -> None:
    for t in range(2):
        _write(tmp_path / "01" / f"t{t:04d}.tif", np.zeros((8, 9), np.uint8))
    _write(tmp_path / "01_GT" / "SEG" / "man_seg0001.tif", np.zeros((8, 9), np.uint16))
    seq = ctc.open_sequence(tmp_path, "01")
    assert seq.digits == 4 and seq.ndim == 2
    assert ctc.mask_name(1, seq.digits) == "mask0001.tif"
    assert ctc.missing_masks(seq, tmp_path / "01_RES") == [0, 1]
    ctc.write_labels(tmp_path / "01_RES" / "mask0000.tif", np.zeros((8, 9), np.int64))
    assert ctc.missing_masks(seq, tmp_path / "01_RES") == [1]


def test_labels_are_written_as_uint16_and_read_back_exactly(tmp_path: Path) -> None:
    labels = np.arange(3 * 4 * 5, dtype=np.int32).reshape(3, 4, 5) * 1000
    path = tmp_path / "01_RES" / "mask000.tif"
    ctc.write_labels(path, labels)
    back = tifffile.imread(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


def test_interrupted_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "mask000.tif"
    with (
        mock.patch.object(tifffile, "imwrite", side_effect=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt),
    ):
        ctc.write_labels(path, np.zeros((4, 4), np.uint16))
    assert list(tmp_path.iterdir()) == []


def test_existing_mask_survives_an_interrupted_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "mask000.tif"
    ctc.write_labels(path, np.full((4, 4), 7, np.uint16))
    with (
        mock.patch.object(tifffile, "imwrite", side_effect=OSError("disk full")),
        pytest.raises(OSError),
    ):
        ctc.write_labels(path, np.zeros((4, 4), np.uint16))
    np.testing.assert_array_equal(tifffile.imread(path), 7)
    assert [p.name for p in tmp_path.iterdir()] == ["mask000.tif"]


def test_write_labels_rejects_values_that_do_not_fit_uint16(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        ctc.write_labels(tmp_path / "m.tif", np.array([[70000]]))
    with pytest.raises(ValueError, match="integers"):
        ctc.write_labels(tmp_path / "m.tif", np.zeros((2, 2), np.float32))


# --- bad input: every error names the file and says what is wrong ---------------------------


def test_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(ctc.CTCFormatError, match=re.escape(str(tmp_path / "nope"))):
        ctc.discover_sequences(tmp_path / "nope")


def test_dataset_without_sequences(tmp_path: Path) -> None:
    (tmp_path / "01").mkdir()
    with pytest.raises(ctc.CTCFormatError, match="no sequence found"):
        ctc.discover_sequences(tmp_path)


def test_missing_sequence_folder(dataset: Path) -> None:
    with pytest.raises(ctc.CTCFormatError, match="03: sequence folder does not exist"):
        ctc.open_sequence(dataset, "03")


def test_mixed_digit_counts(tmp_path: Path) -> None:
    _write(tmp_path / "01" / "t000.tif", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "01" / "t0001.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(ctc.CTCFormatError, match=r"mix \[3, 4\] digits"):
        ctc.open_sequence(tmp_path, "01")


def test_annotation_digits_must_match_frames(dataset: Path) -> None:
    _write(dataset / "02_GT" / "SEG" / "man_seg0001.tif", np.zeros((4, 20, 30), np.uint16))
    with pytest.raises(ctc.CTCFormatError, match="man_seg0001.tif: frame number has 4 digits"):
        ctc.open_sequence(dataset, "02")


def test_annotation_of_a_missing_frame(dataset: Path) -> None:
    _write(dataset / "02_GT" / "SEG" / "man_seg007.tif", np.zeros((4, 20, 30), np.uint16))
    with pytest.raises(ctc.CTCFormatError, match="annotates frame 7"):
        ctc.open_sequence(dataset, "02")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((4, 20, 30), 0.5, np.float32), "must hold integers, found float32"),
        (np.full((4, 20, 30), -1, np.int16), "must not hold negative values"),
        (np.zeros((4, 20, 31), np.uint16), r"shape \(4, 20, 31\) does not match .*\(4, 20, 30\)"),
    ],
)
def test_bad_label_images(dataset: Path, array: np.ndarray, message: str) -> None:
    path = _write(dataset / "01_GT" / "SEG" / "man_seg001.tif", array)
    seq = ctc.open_sequence(dataset, "01")
    ann = next(a for a in seq.gt_seg if a.frame == 1)
    with pytest.raises(ctc.CTCFormatError, match=re.escape(str(path)) + ".*" + message):
        ctc.read_annotation(ann, seq.frame_shape)


def test_per_slice_annotation_shape_and_slice_index_are_checked(dataset: Path) -> None:
    seq = ctc.open_sequence(dataset, "01")
    _write(dataset / "01_GT" / "SEG" / "man_seg_001_009.tif", np.ones((20, 30), np.uint16))
    ann = ctc.SegAnnotation(1, dataset / "01_GT" / "SEG" / "man_seg_001_009.tif", 9)
    with pytest.raises(ctc.CTCFormatError, match="slice 9 is outside the frame's 4 slices"):
        ctc.read_annotation(ann, seq.frame_shape)
    good = next(a for a in seq.gt_seg if a.is_slice)
    assert ctc.read_annotation(good, seq.frame_shape).shape == (20, 30)


def test_corrupt_tiff(dataset: Path) -> None:
    bad = dataset / "01" / "t001.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(ctc.CTCFormatError, match=re.escape(str(bad)) + ": not a readable TIFF"):
        ctc.read_image(bad)


def test_corrupt_first_frame_is_reported_when_opening(dataset: Path) -> None:
    (dataset / "02" / "t000.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ctc.CTCFormatError, match="t000.tif: not a readable TIFF"):
        ctc.open_sequence(dataset, "02")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ctc.CTCFormatError, match="does not exist"):
        ctc.read_image(tmp_path / "t000.tif")


def test_frames_of_wrong_dimensionality(tmp_path: Path) -> None:
    _write(tmp_path / "01" / "t000.tif", np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(ctc.CTCFormatError, match=r"2D \(Y, X\) or 3D \(Z, Y, X\)"):
        ctc.open_sequence(tmp_path, "01")


def test_malformed_man_track(tmp_path: Path) -> None:
    path = tmp_path / "man_track.txt"
    path.write_text("1 0 3 0\n2 0 x 0\n")
    with pytest.raises(ctc.CTCFormatError, match=r"man_track.txt:2: expected 'L B E P'"):
        ctc.read_man_track(path)


def test_temporary_files_do_not_count_as_frames(dataset: Path) -> None:
    (dataset / "01" / ".t003.tif.123.part").write_bytes(b"")
    assert ctc.open_sequence(dataset, "01").frame_ids == [0, 1, 2]
    assert not any(p.name.startswith(".") for p in (dataset / "01").iterdir() if p.suffix == ".tif")
    assert os.path.exists(dataset / "01" / ".t003.tif.123.part")


# -- image layouts: what the frame is, not what the first page is --

STACK = np.arange(5 * 12 * 16, dtype=np.uint16).reshape(5, 12, 16)


def _page_by_page(path: Path, stack: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    for page in stack:
        tifffile.imwrite(path, page, append=True, **kwargs)
    return path


@pytest.mark.parametrize(
    "write",
    [
        lambda path: _write(path, STACK),
        lambda path: _page_by_page(path, STACK),  # one series per page
        lambda path: _page_by_page(path, STACK, metadata=None),  # one generic series
        lambda path: tifffile.imwrite(path, STACK, imagej=True),  # ImageJ calls it channels
        lambda path: tifffile.imwrite(path, STACK, imagej=True, metadata={"axes": "ZYX"}),
        lambda path: tifffile.imwrite(path, STACK, imagej=True, metadata={"axes": "TYX"}),
        lambda path: tifffile.imwrite(path, STACK[:, None], imagej=True),  # a singleton axis
    ],
    ids=["one-series", "appended", "appended-plain", "imagej", "imagej-z", "imagej-t", "5d-1"],
)
def test_3d_stacks_read_as_3d_however_they_are_stored(tmp_path: Path, write) -> None:
    path = tmp_path / "t000.tif"
    write(path)
    assert ctc.tiff_shape(path) == (5, 12, 16)
    np.testing.assert_array_equal(ctc.read_image(path), STACK)


def test_stacks_written_page_by_page_make_a_3d_sequence(tmp_path: Path) -> None:
    for t in range(2):
        _page_by_page(tmp_path / "01" / f"t00{t}.tif", STACK + t)
    _page_by_page(tmp_path / "01_GT" / "SEG" / "man_seg000.tif", (STACK > 500).astype(np.uint16))
    seq = ctc.open_sequence(tmp_path, "01")
    assert seq.frame_shape == (5, 12, 16) and seq.ndim == 3
    labels = ctc.read_annotation(seq.gt_seg[0], seq.frame_shape)
    assert labels.shape == (5, 12, 16) and labels.sum() == (STACK > 500).sum()


@pytest.mark.parametrize(
    ("array", "kwargs", "message"),
    [
        (np.zeros((64, 64, 3), np.uint8), {}, r"a colour image \(3 samples per pixel"),
        (np.zeros((64, 64, 4), np.uint16), {}, r"a colour image \(4 samples per pixel"),
        (np.zeros((4, 64, 64, 3), np.uint8), {}, r"a colour image \(3 samples per pixel"),
        (np.zeros((64, 64, 3), np.uint8), {"photometric": "minisblack"}, "an image 3 pixels wide"),
        (np.zeros((2, 5, 12, 16), np.uint8), {}, r"a 4D image \(shape \(2, 5, 12, 16\)"),
        (STACK[:, None].repeat(2, 1), {"imagej": True}, r"a 4D image .*axes ZCYX"),
    ],
    ids=["rgb", "rgba", "rgb-stack", "rgb-as-pixels", "4d", "imagej-channels"],
)
def test_layouts_that_are_not_grey_frames_are_refused(tmp_path, array, kwargs, message) -> None:
    path = _write(tmp_path / "t000.tif", np.zeros(1))  # replaced below
    tifffile.imwrite(path, array, **kwargs)
    for read in (ctc.read_image, ctc.tiff_shape):
        with pytest.raises(ctc.CTCFormatError, match=re.escape(str(path)) + ": " + message):
            read(path)


def test_separate_images_of_different_shapes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t000.tif"
    tifffile.imwrite(path, STACK[0], append=True)
    tifffile.imwrite(path, STACK[0, :6], append=True)
    with pytest.raises(ctc.CTCFormatError, match=r"holds 2 separate images"):
        ctc.read_image(path)


def test_a_stack_whose_pages_are_cut_off_is_damaged(tmp_path: Path) -> None:
    path = _page_by_page(tmp_path / "t000.tif", STACK, metadata=None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])  # the last pages' entries are gone
    with pytest.raises(ctc.CTCFormatError, match=re.escape(str(path)) + ": damaged TIFF"):
        ctc.read_image(path)


# -- TRA markers: the frames DET scores come from the annotation --


def test_marker_frames_follow_man_track(dataset: Path) -> None:
    seq = ctc.open_sequence(dataset, "01")
    assert ctc.marker_frames(seq) == seq.tra_markers
    assert ctc.marker_frames(ctc.open_sequence(dataset, "02")) == {}  # no TRA at all


def test_a_missing_marker_file_is_an_error_naming_it(dataset: Path) -> None:
    (dataset / "01_GT" / "TRA" / "man_track001.tif").unlink()
    seq = ctc.open_sequence(dataset, "01")
    missing = dataset / "01_GT" / "TRA" / "man_track001.tif"
    with pytest.raises(ctc.CTCFormatError, match=re.escape(f"{missing}: missing")):
        ctc.marker_frames(seq)


def test_without_man_track_every_frame_needs_markers(dataset: Path) -> None:
    tra = dataset / "01_GT" / "TRA"
    (tra / "man_track.txt").unlink()
    assert sorted(ctc.marker_frames(ctc.open_sequence(dataset, "01"))) == [0, 1, 2]
    (tra / "man_track002.tif").unlink()
    with pytest.raises(ctc.CTCFormatError, match=r"man_track002.tif: missing .*is missing"):
        ctc.marker_frames(ctc.open_sequence(dataset, "01"))


def test_marker_frames_outside_the_sequence_are_errors(dataset: Path) -> None:
    tra = dataset / "01_GT" / "TRA"
    (tra / "man_track.txt").write_text("1 0 5 0\n")
    with pytest.raises(ctc.CTCFormatError, match=r"TRA: markers of frames 3, 4, 5"):
        ctc.marker_frames(ctc.open_sequence(dataset, "01"))
    (tra / "man_track.txt").write_text("1 2 1 0\n")
    with pytest.raises(ctc.CTCFormatError, match=r"track 1 spans frames 2\.\.1"):
        ctc.marker_frames(ctc.open_sequence(dataset, "01"))


# -- outputs never replace inputs nor go into a dataset's frame or annotation folders --


def test_check_output(dataset: Path, tmp_path: Path) -> None:
    frame = dataset / "01" / "t000.tif"
    with pytest.raises(ctc.OutputPathError, match=re.escape(f"{frame} is the input")):
        ctc.check_output(frame, inputs=[frame])
    link = tmp_path / "link.tif"
    link.symlink_to(frame)
    with pytest.raises(ctc.OutputPathError, match="is the input"):
        ctc.check_output(link, inputs=[frame])
    for path in (dataset / "01" / "new.tif", dataset / "01" / "sub" / "deeper" / "x.tif"):
        with pytest.raises(ctc.OutputPathError, match=r"a folder of a CTC dataset's frames"):
            ctc.check_output(path)
    with pytest.raises(ctc.OutputPathError, match="frames or annotations"):
        ctc.check_output(dataset / "01", folder=True)
    with pytest.raises(ctc.OutputPathError, match=re.escape(f"is in {dataset / '01_GT'}")):
        ctc.check_output(dataset / "01_GT" / "SEG" / "man_seg000.tif")
    (dataset / "02_RES").mkdir()
    with pytest.raises(ctc.OutputPathError, match="is a folder: give the name of the file"):
        ctc.check_output(dataset / "02_RES")
    with pytest.raises(ctc.OutputPathError, match="is a file, not a folder"):
        ctc.check_output(frame, folder=True)
    assert ctc.check_output(dataset / "01_RES", folder=True) == dataset / "01_RES"
    assert ctc.check_output(dataset / "results.tif") == dataset / "results.tif"
    assert ctc.dataset_input_folder(dataset / "02" / "a" / "b") == (dataset / "02").resolve()
    assert ctc.dataset_input_folder(dataset / "02_GT" / "SEG") == (dataset / "02_GT").resolve()
    assert ctc.dataset_input_folder(dataset / "01_RES") is None
    assert ctc.dataset_input_folder(dataset / "07_GT") is None  # no sequence 07 beside it


def test_new_dataset_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "DS"
    with pytest.raises(RuntimeError), ctc.new_dataset(out) as folder:
        ctc.write_tiff(folder / "01" / "t000.tif", np.zeros((4, 4), np.uint8))
        raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".DS.1234abcd.part").mkdir()  # as a killed run leaves it
    with ctc.new_dataset(out) as folder:
        ctc.write_tiff(folder / "01" / "t000.tif", np.zeros((4, 4), np.uint8))
    assert ctc.discover_sequences(out) == ["01"]
    assert [p.name for p in tmp_path.iterdir()] == ["DS"]
    with pytest.raises(ctc.OutputPathError, match="exists and is not empty"), ctc.new_dataset(out):
        pass
