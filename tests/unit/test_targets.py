"""Training targets: the binary cell mask and the cell-centre heatmap, checked value by value."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import generate_sequence
from efficientcellseg.targets import MIN_SIGMA, SIGMA_FRACTION, centre_heatmap, foreground_target


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    y, x = np.ogrid[: shape[0], : shape[1]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def test_foreground_target_is_the_binary_cell_mask() -> None:
    labels = np.array([[0, 3, 3], [0, 300, 0]], dtype=np.uint16)
    target = foreground_target(labels)
    assert target.dtype == np.float32
    np.testing.assert_array_equal(target, [[0, 1, 1], [0, 1, 0]])


def test_disc_gets_a_gaussian_of_value_one_at_its_centre_scaled_to_its_size() -> None:
    labels = disc((64, 64), (30, 33), 10).astype(np.uint16)
    heat = centre_heatmap(labels)
    assert heat.dtype == np.float32
    assert heat[30, 33] == 1.0
    assert np.unravel_index(np.argmax(heat), heat.shape) == (30, 33)
    sigma = SIGMA_FRACTION * ndimage.distance_transform_edt(np.pad(labels, 1)).max()
    for dy, dx in ((0, 5), (4, -3), (-7, 0)):
        expected = np.exp(-(dy**2 + dx**2) / (2 * sigma**2))
        assert heat[30 + dy, 33 + dx] == pytest.approx(expected, rel=1e-5)
    assert not heat[labels == 0].any()  # clipped to the object


def test_blob_width_grows_with_the_cell() -> None:
    small = centre_heatmap(disc((80, 80), (40, 40), 8).astype(np.uint8))
    large = centre_heatmap(disc((80, 80), (40, 40), 20).astype(np.uint8))
    # 6 px from the centre: a small cell's blob has mostly faded, a large cell's has not
    assert small[40, 46] < 0.3 < 0.6 < large[40, 46]


def test_tiny_objects_keep_the_minimum_sigma() -> None:
    labels = np.zeros((9, 9), dtype=np.uint16)
    labels[3:6, 3:6] = 7  # inner distance 2 -> 0.35 * 2 < MIN_SIGMA
    labels[0, 8] = 9  # a single pixel
    heat = centre_heatmap(labels)
    assert heat[4, 4] == 1.0 and heat[0, 8] == 1.0
    assert heat[3, 3] == pytest.approx(np.exp(-2 / (2 * MIN_SIGMA**2)), rel=1e-6)


def test_touching_cells_get_separate_blobs_clipped_to_their_own_pixels() -> None:
    labels = np.zeros((30, 50), dtype=np.uint16)
    labels[5:25, 5:25] = 1
    labels[5:25, 25:45] = 2  # shares a border with cell 1: together one 20x40 rectangle
    heat = centre_heatmap(labels)
    for cell in (1, 2):
        inside = labels == cell
        assert heat[inside].max() == 1.0
        assert ndimage.label((heat > 0.5) & inside)[1] == 1
    # one peak region per cell, not one for the rectangle as a whole (as a distance map gives)
    assert ndimage.label(heat > 0.5)[1] == 2
    # pixels at the shared border belong to their own cell's blob, far from both centres
    assert heat[15, 24] < 0.1 and heat[15, 25] < 0.1


def test_centre_of_a_non_convex_cell_lies_inside_it_unlike_its_centroid() -> None:
    ring = disc((60, 60), (30, 30), 20) & ~disc((60, 60), (30, 30), 10)
    c_shape = ring & ~((np.arange(60)[None, :] > 30) & (np.abs(np.arange(60)[:, None] - 30) < 8))
    labels = c_shape.astype(np.uint16)
    centroid = np.round(ndimage.center_of_mass(c_shape)).astype(int)
    assert not c_shape[tuple(centroid)]
    heat = centre_heatmap(labels)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert c_shape[peak] and heat[peak] == 1.0
    # the most interior point lies mid-way through the 10 px thick wall, opposite the gap
    assert 14 <= np.hypot(peak[0] - 30, peak[1] - 30) <= 16 and peak[1] < 30


def test_labels_above_255_and_up_to_65535_non_consecutive() -> None:
    labels = np.zeros((40, 40), dtype=np.uint16)
    labels[2:12, 2:12] = 300
    labels[20:35, 20:35] = 65535
    heat = centre_heatmap(labels)
    assert heat[labels == 300].max() == 1.0 and heat[labels == 65535].max() == 1.0
    assert ndimage.label(heat > 0.5)[1] == 2


def test_every_synthetic_cell_gives_exactly_one_marker_region() -> None:
    """What post-processing relies on: each cell's heatmap above 0.5 is one region, inside it."""
    labels = generate_sequence(SyntheticSpec(seed=2, n_objects=20), 0)["labels"][0]
    for slice_labels in labels:
        heat = centre_heatmap(slice_labels)
        ids = np.unique(slice_labels)[1:]
        assert heat.min() >= 0 and heat.max() <= 1
        markers, count = ndimage.label(heat > 0.5)
        assert count == len(ids)
        # each marker lies inside a single cell, and every cell holds one
        owner = ndimage.maximum(slice_labels, markers, np.arange(1, count + 1))
        lowest = ndimage.minimum(slice_labels, markers, np.arange(1, count + 1))
        np.testing.assert_array_equal(owner, lowest)
        assert sorted(owner.astype(int)) == ids.tolist()


def test_empty_image_gives_an_empty_heatmap() -> None:
    heat = centre_heatmap(np.zeros((16, 16), dtype=np.uint16))
    assert heat.dtype == np.float32 and not heat.any()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((2, 8, 8), dtype=np.uint16), "2D label image"),
        (np.zeros((8, 8), dtype=np.float32), "integers"),
        (-np.ones((8, 8), dtype=np.int32), "negative"),
    ],
)
def test_bad_label_images_are_refused(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        centre_heatmap(labels)
    with pytest.raises(ValueError, match=message):
        foreground_target(labels)
