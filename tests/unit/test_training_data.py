"""Training samples: which annotated slices exist, which a training configuration takes, the
validation split, and augmentation that keeps image and target aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from efficientcellseg import ctc
from efficientcellseg.pseudocolor import pseudocolor_frame
from efficientcellseg.settings import Augmentation
from efficientcellseg.targets import centre_heatmap
from efficientcellseg.training_data import (
    AnnotatedSlices,
    collect_annotated_slices,
    load_annotated_slices,
    prepare_sample,
    save_annotated_slices,
    select_training_set,
    validation_split,
)

# The synthetic fixture: 4 frames of 16 slices per sequence; nuclei in slices 1-14 of every
# frame. Full 3D GT on frames 0 and 2, per-slice GT (slices 1, 4, 7, 10, 13) on frames 1 and 3,
# full 3D ST on every frame. A full annotation gives all its slices.
FULL_SLICES = list(range(16))
GT_SLICES = [1, 4, 7, 10, 13]


@pytest.fixture(scope="module")
def collected(synthetic_dataset: Path) -> AnnotatedSlices:
    return collect_annotated_slices(synthetic_dataset, "01")


def keys(data: AnnotatedSlices, source: str | None = None) -> list[tuple[int, int]]:
    chosen = data.sources == source if source else np.ones(len(data), bool)
    return sorted(zip(data.frames[chosen].tolist(), data.slices[chosen].tolist(), strict=True))


def test_collects_full_and_per_slice_gold_truth_and_silver_truth(collected) -> None:
    assert len(collected) == 2 * 16 + 10 + 4 * 16
    assert collected.images.shape == (106, 128, 128, 3)
    assert collected.images.dtype == np.float16 and collected.labels.dtype == np.uint16
    assert set(collected.sequences.tolist()) == {"01"}
    gold = [(f, z) for f in (0, 2) for z in FULL_SLICES] + [
        (f, z) for f in (1, 3) for z in GT_SLICES
    ]
    assert keys(collected, "GT") == sorted(gold)
    assert keys(collected, "ST") == [(f, z) for f in range(4) for z in FULL_SLICES]
    per_slice = ~collected.whole_frame
    assert set(collected.sources[per_slice].tolist()) == {"GT"}
    assert sorted(set(collected.frames[per_slice].tolist())) == [1, 3]


def test_collected_slices_hold_the_annotation_and_the_slice_pseudocolor(
    collected, synthetic_dataset: Path
) -> None:
    colour = pseudocolor_frame(ctc.read_image(synthetic_dataset / "01" / "t001.tif"))
    per_slice = ctc.read_labels(synthetic_dataset / "01_GT" / "SEG" / "man_seg_001_007.tif")
    silver = ctc.read_labels(synthetic_dataset / "01_ST" / "SEG" / "man_seg001.tif")
    for source, z, labels in (("GT", 7, per_slice), ("ST", 7, silver[7]), ("ST", 0, silver[0])):
        (i,) = np.flatnonzero(
            (collected.sources == source) & (collected.frames == 1) & (collected.slices == z)
        )
        np.testing.assert_array_equal(collected.labels[i], labels)
        np.testing.assert_array_equal(collected.images[i], colour[z].astype(np.float16))
    assert not silver[0].any()  # an empty slice kept as a background example


def test_2d_frames_give_one_slice_each(synthetic_dataset_2d: Path) -> None:
    data = collect_annotated_slices(synthetic_dataset_2d, "02", sources=("GT",))
    assert data.images.shape == (4, 128, 128, 3)
    assert data.slices.tolist() == [-1] * 4 and data.frames.tolist() == [0, 1, 2, 3]
    assert data.whole_frame.all()
    # no z-context in 2D: red = green = blue
    np.testing.assert_array_equal(data.images[..., 0], data.images[..., 1])


def test_every_slice_of_a_full_annotation_is_a_sample_empty_ones_too(tmp_path: Path) -> None:
    frame = np.random.default_rng(0).integers(0, 40, (13, 32, 32), dtype=np.uint8)
    labels = np.zeros(frame.shape, np.uint16)
    labels[5:7, 10:20, 10:20] = 3
    ctc.write_tiff(tmp_path / "01" / "t000.tif", frame)
    ctc.write_labels(tmp_path / "01_GT" / "SEG" / "man_seg000.tif", labels)
    data = collect_annotated_slices(tmp_path, "01")
    assert data.slices.tolist() == list(range(13))
    np.testing.assert_array_equal(data.labels, labels)


def test_no_annotations_is_a_clear_error(synthetic_dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "01").mkdir()
    (tmp_path / "01" / "t000.tif").symlink_to(synthetic_dataset / "01" / "t000.tif")
    with pytest.raises(ValueError, match="no GT/ST segmentation annotations"):
        collect_annotated_slices(tmp_path, "01")


def test_training_configurations_gt_st_and_both(collected) -> None:
    gt = select_training_set(collected, "GT")
    st = select_training_set(collected, "ST")
    assert set(gt.sources.tolist()) == {"GT"} and len(gt) == 42
    assert set(st.sources.tolist()) == {"ST"} and len(st) == 64
    both = select_training_set(collected, "GT+ST")
    assert keys(both, "GT") == keys(gt)
    # Gold truth wins: no silver slice of the fully annotated frames 0 and 2, and none of the
    # slices of frames 1 and 3 that have a per-slice gold annotation.
    assert keys(both, "ST") == [(f, z) for f in (1, 3) for z in FULL_SLICES if z not in GT_SLICES]
    assert len(both) == 42 + 22
    assert len(set(keys(both))) == len(both)  # every slice once
    with pytest.raises(ValueError, match="is not one of"):
        select_training_set(collected, "GOLD")
    with pytest.raises(ValueError, match=r"no GT annotations .*sources present: \['ST'\]"):
        select_training_set(st, "GT")


def slices_table(rows: list[tuple[str, int, int, str, bool]]) -> AnnotatedSlices:
    """Tiny AnnotatedSlices from (sequence, frame, slice, source, whole_frame) rows."""
    n = len(rows)
    seq, frame, z, source, whole = zip(*rows, strict=True)
    labels = np.zeros((n, 4, 4), np.uint16)
    labels[:, 0, 0] = np.arange(n)  # tells the rows apart
    return AnnotatedSlices(
        images=np.zeros((n, 4, 4, 3), np.float16),
        labels=labels,
        sequences=np.array(seq),
        frames=np.array(frame),
        slices=np.array(z),
        sources=np.array(source),
        whole_frame=np.array(whole),
    )


def test_whole_frame_gold_truth_replaces_silver_truth_of_its_empty_slices_too() -> None:
    data = slices_table(
        [
            ("01", 0, 2, "GT", True),  # full 3D GT of frame 0; its slice 3 is empty, not kept
            ("01", 0, 3, "ST", True),  # ST sees a cell there: GT says there is none
            ("01", 1, 3, "ST", True),  # frame 1 has no GT: ST is used
            ("02", 0, 3, "ST", True),  # another sequence, same frame number: kept
        ]
    )
    both = select_training_set(data, "GT+ST")
    assert both.labels[:, 0, 0].tolist() == [0, 2, 3]


def test_validation_split_holds_whole_frames_apart(collected) -> None:
    train_index, val_index = validation_split(collected, 0.25, seed=0)
    assert len(train_index) + len(val_index) == len(collected)
    assert not set(train_index) & set(val_index)
    frames = collected.frames
    assert not set(frames[train_index]) & set(frames[val_index])
    assert len(set(frames[val_index])) == 1  # a quarter of 4 frames
    again = validation_split(collected, 0.25, seed=0)
    np.testing.assert_array_equal(again[1], val_index)
    others = {tuple(validation_split(collected, 0.25, seed=s)[1]) for s in range(8)}
    assert len(others) > 1  # the seed chooses the frame
    # frames of two sequences are different groups, even with the same number
    two = slices_table([("01", 0, 0, "GT", True), ("02", 0, 0, "GT", True)] * 2)
    tr, va = validation_split(two, 0.5, seed=1)
    assert set(two.sequences[tr]) != set(two.sequences[va])
    with pytest.raises(ValueError, match="must lie in"):
        validation_split(collected, 1.0, seed=0)


def test_a_single_frame_is_split_by_slices() -> None:
    data = slices_table([("01", 5, z, "GT", True) for z in range(10)])
    train_index, val_index = validation_split(data, 0.2, seed=0)
    assert len(val_index) == 2 and len(train_index) == 8
    with pytest.raises(ValueError, match="at least 2"):
        validation_split(slices_table([("01", 0, 0, "GT", True)]), 0.2, seed=0)


def test_save_load_round_trip(collected, tmp_path: Path) -> None:
    path = tmp_path / "01.npz"
    save_annotated_slices(path, collected)
    loaded = load_annotated_slices([path])
    for name in AnnotatedSlices.__dataclass_fields__:
        original, stored = getattr(collected, name), getattr(loaded, name)
        assert stored.dtype == original.dtype, name
        np.testing.assert_array_equal(stored, original, err_msg=name)
    twice = load_annotated_slices([path, path])
    assert len(twice) == 2 * len(collected)
    assert [p.name for p in tmp_path.iterdir()] == ["01.npz"]  # no temporary file left
    old = tmp_path / "old.npz"
    np.savez(old, **{k: getattr(collected, k) for k in ("images", "labels", "frames")})
    with pytest.raises(ValueError, match="pseudocolor the sequence again"):
        load_annotated_slices([old])


# -- samples and augmentation --


def labelled_image(labels: np.ndarray) -> np.ndarray:
    """A pseudocolor-like image drawn from the labels: channel 0 is the cell mask."""
    rng = np.random.default_rng(0)
    image = rng.random((*labels.shape, 3)).astype(np.float32) * 0.2
    image[..., 0] = labels > 0
    return image


@pytest.fixture(scope="module")
def cells(collected) -> np.ndarray:
    (i,) = np.flatnonzero(
        (collected.sources == "GT") & (collected.frames == 0) & (collected.slices == 7)
    )
    return collected.labels[i]


def dihedral(a: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(a, k) for k in range(4)]
    return turns + [np.flip(t, axis=1) for t in turns]


def test_flips_and_rotations_move_image_and_target_together(cells: np.ndarray) -> None:
    aug = Augmentation(scale_range=(1.0, 1.0), gamma_range=(1.0, 1.0), gain_range=(1.0, 1.0))
    image = labelled_image(cells)
    variants = dihedral(image)
    seen = set()
    rng = np.random.default_rng(3)
    for _ in range(40):
        x, y = prepare_sample(
            image, cells, size=128, task="segmentation", augmentation=aug, rng=rng
        )
        assert x.shape == (128, 128, 3) and y.shape == (128, 128, 1)
        assert x.dtype == np.float32 and y.dtype == np.float32
        matches = [k for k, v in enumerate(variants) if np.array_equal(x, v)]
        assert len(matches) == 1  # exactly one of the 8 flips/rotations, pixel for pixel
        np.testing.assert_array_equal(y[..., 0], dihedral(cells > 0)[matches[0]])
        seen.add(matches[0])
    assert len(seen) == 8


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("crop", [None, 64])
def test_random_scale_and_crop_keep_image_and_target_aligned(cells: np.ndarray, crop) -> None:
    image = labelled_image(cells)
    rng = np.random.default_rng(4)
    scales = []
    for _ in range(12):
        x, y = prepare_sample(
            image,
            cells,
            size=96,
            task="segmentation",
            crop=crop,
            augmentation=Augmentation(),
            rng=rng,
        )
        drawn, target = x[..., 0] > 0.5, y[..., 0] > 0.5
        # The label mask drawn into the image lands where the target says: they differ only
        # in pixels at the cells' edges (interpolation), never by a shift or a turn.
        edge = ndimage.binary_dilation(target, iterations=2) & ~ndimage.binary_erosion(
            target, iterations=2
        )
        assert not (drawn ^ target)[~edge].any()
        if target.sum() > 500:
            assert iou(drawn, target) > 0.85
        scales.append(target.mean())
    assert max(scales) > 1.3 * min(scales)  # zoom and crops really vary


def test_centre_target_follows_the_warped_cells(cells: np.ndarray) -> None:
    image = labelled_image(cells)
    rng = np.random.default_rng(5)
    for _ in range(6):
        x, y = prepare_sample(
            image, cells, size=128, task="centres", augmentation=Augmentation(), rng=rng
        )
        heat = y[..., 0]
        assert heat.max() == 1.0
        assert (x[..., 0][heat > 0.5] > 0.5).mean() > 0.97  # blob peaks lie inside drawn cells
    # without augmentation the target is exactly the heatmap of the labels
    _, y = prepare_sample(image, cells, size=128, task="centres")
    np.testing.assert_array_equal(y[..., 0], centre_heatmap(cells))


def test_intensity_jitter_changes_only_the_image(cells: np.ndarray) -> None:
    aug = Augmentation(flips=False, rotations=False, scale_range=(1.0, 1.0))
    image = np.random.default_rng(6).random((128, 128, 3)).astype(np.float32)
    plain = prepare_sample(image, cells, size=128, task="segmentation")
    np.testing.assert_array_equal(plain[0], image)
    jittered = []
    rng = np.random.default_rng(7)
    for _ in range(5):
        x, y = prepare_sample(
            image, cells, size=128, task="segmentation", augmentation=aug, rng=rng
        )
        np.testing.assert_array_equal(y, plain[1])
        assert x.min() >= 0 and x.max() <= 1
        # gamma and gain are monotonic: the order of the intensities survives
        order = np.argsort(image[..., 1], axis=None)
        assert (np.diff(x[..., 1].ravel()[order]) >= -1e-6).all()
        jittered.append(float(x.mean()))
    assert np.ptp(jittered) > 0.01
