"""The synthetic dataset: deterministic, CTC layout, and the properties it promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from efficientcellseg import ctc
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import generate_sequence, write_synthetic_dataset


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = generate_sequence(SyntheticSpec(seed=3), 0), generate_sequence(SyntheticSpec(seed=3), 0)
    c = generate_sequence(SyntheticSpec(seed=4), 0)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["images"], c["images"])


def test_sequences_differ() -> None:
    spec = SyntheticSpec()
    first, second = generate_sequence(spec, 0), generate_sequence(spec, 1)
    assert not np.array_equal(first["labels"], second["labels"])


def test_objects_are_nucleus_like_anisotropic_and_fade_towards_their_ends() -> None:
    spec = SyntheticSpec(seed=1)
    data = generate_sequence(spec, 0)
    labels, images = data["labels"][0], data["images"][0].astype(float)
    ids = np.unique(labels)[1:]
    assert len(ids) == spec.n_objects
    fades = []
    for obj, box in zip(ids, ndimage.find_objects(labels), strict=False):
        mask = labels[box] == obj
        z_extent = box[0].stop - box[0].start
        xy_extent = box[1].stop - box[1].start
        assert z_extent < xy_extent / 2  # few slices per nucleus: anisotropic
        per_slice = [images[box][z][mask[z]].mean() for z in range(z_extent)]
        middle = per_slice[len(per_slice) // 2]
        fades.append(min(per_slice[0], per_slice[-1]) / middle)
    assert np.median(fades) < 0.8  # top and bottom slices are dimmer than the middle


def test_some_objects_touch() -> None:
    labels = generate_sequence(SyntheticSpec(seed=0), 0)["labels"][0]
    grown = ndimage.grey_dilation(labels, size=(1, 3, 3))
    touching = (grown != labels) & (labels > 0) & (grown > 0)
    assert touching.any()


def test_markers_lie_inside_their_objects_and_track_ids_persist() -> None:
    data = generate_sequence(SyntheticSpec(seed=2, n_frames=3), 0)
    for labels, markers in zip(data["labels"], data["markers"], strict=True):
        inside = markers > 0
        np.testing.assert_array_equal(markers[inside], labels[inside])
        assert set(np.unique(markers)) == set(np.unique(labels))


def test_silver_truth_is_gt_with_some_objects_smaller() -> None:
    data = generate_sequence(SyntheticSpec(seed=0), 0)
    gt, st = data["labels"][0], data["silver"][0]
    assert np.all((st == gt) | (st == 0))
    assert 0 < np.count_nonzero(gt != st) < 0.2 * np.count_nonzero(gt)


def test_written_dataset_is_valid_ctc_layout(synthetic_dataset: Path) -> None:
    assert ctc.discover_sequences(synthetic_dataset) == ["01", "02"]
    seq = ctc.open_sequence(synthetic_dataset, "01")
    assert seq.frame_ids == [0, 1, 2, 3] and seq.frame_shape == (16, 128, 128)
    full = [a.frame for a in seq.gt_seg if not a.is_slice]
    slices = {a.frame for a in seq.gt_seg if a.is_slice}
    assert full == [0, 2] and slices == {1, 3}
    for ann in seq.gt_seg:
        labels = ctc.read_annotation(ann, seq.frame_shape)
        assert labels.any()
    assert len(seq.st_seg) == 4 and sorted(seq.tra_markers) == [0, 1, 2, 3]
    tracks = ctc.read_man_track(seq.tra_tracks)
    assert len(tracks) == 12 and (tracks[:, 1:] == [0, 3, 0]).all()
    image = ctc.read_image(seq.frames[0])
    assert image.dtype == np.uint16 and image.shape == (16, 128, 128)


def test_2d_variant(synthetic_dataset_2d: Path) -> None:
    seq = ctc.open_sequence(synthetic_dataset_2d, "02")
    assert seq.ndim == 2 and seq.frame_shape == (128, 128)
    assert len(seq.gt_seg) == 4 and not any(a.is_slice for a in seq.gt_seg)


def test_scalable_by_parameters(tmp_path: Path) -> None:
    spec = SyntheticSpec(seed=5, n_sequences=1, n_frames=2, depth=10, height=200, width=150)
    summary = write_synthetic_dataset(tmp_path / "big", spec)
    seq = ctc.open_sequence(tmp_path / "big", "01")
    assert seq.frame_shape == (10, 200, 150) and list(summary["sequences"]) == ["01"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ndim": 4}, r"synthetic\.ndim: 4 is not one of \[2, 3\]"),
        ({"n_frames": 0}, "synthetic.n_frames: 0 is less than the minimum of 1"),
        ({"depth": 4}, "depth 4 is too small"),
        ({"height": 20}, "too small for objects"),
    ],
)
def test_invalid_specs_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticSpec(**kwargs)
