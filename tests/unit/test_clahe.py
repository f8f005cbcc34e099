"""CLAHE over the levels an image holds equals OpenCV's CLAHE bit for bit.

OpenCV is the independent implementation: every case compares ``efficientcellseg.clahe`` with
``cv2.createCLAHE(...).apply`` on the same image, including the paths where OpenCV pads the image
to a multiple of the grid, clips nothing (limit 0) or hands back whole batches of clipped pixels
to every bin (tiles larger than the histogram).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from efficientcellseg.clahe import MAX_LEVELS, _image_levels, clahe, clahe_by_levels

PIPELINE = (10.0, (16, 16))  # the pseudocoloring's clip limit and grid


def opencv(image, clip_limit, tile_grid):
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid).apply(image)


def images(dtype, shape, rng):
    """Flat noise, skewed noise (most pixels dark, as in fluorescence), a few levels spread
    over the whole range, and a constant image."""
    top = np.iinfo(dtype).max
    yield rng.integers(0, 1000 if dtype == np.uint16 else 200, shape).astype(dtype)
    yield (rng.random(shape) ** 6 * top).astype(dtype)
    yield rng.choice(np.array([0, 7, 300, 4097, 40000, top]).astype(dtype), shape)
    yield np.full(shape, 9, dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(
    "shape",
    [(64, 80), (37, 53), (48, 100), (100, 48), (16, 16), (5, 9)],
    ids=["divisible", "padded", "pad-width", "pad-height", "one-pixel-tiles", "smaller-than-grid"],
)
def test_equals_opencv_with_the_pipeline_settings(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    for image in images(dtype, shape, rng):
        expected = opencv(image, *PIPELINE)
        np.testing.assert_array_equal(clahe_by_levels(image, *PIPELINE), expected)
        np.testing.assert_array_equal(clahe(image, *PIPELINE), expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(
    ("clip_limit", "tile_grid", "shape"),
    [
        (0.0, (4, 4), (40, 44)),  # no clipping at all
        (2.5, (8, 4), (64, 90)),  # grid (across, down) not square
        (1.0, (2, 2), (600, 600)),  # tiles of 90000 pixels: whole batches handed back
        (40.0, (3, 5), (61, 64)),
    ],
)
def test_equals_opencv_with_other_settings(dtype, clip_limit, tile_grid, shape):
    rng = np.random.default_rng(1)
    for image in images(dtype, shape, rng):
        expected = opencv(image, clip_limit, tile_grid)
        np.testing.assert_array_equal(clahe_by_levels(image, clip_limit, tile_grid), expected)


def test_equals_opencv_on_synthetic_nuclei_slices(synthetic_slices):
    for image in synthetic_slices:
        np.testing.assert_array_equal(clahe(image, *PIPELINE), opencv(image, *PIPELINE))


def test_many_levels_go_to_opencv_and_agree_either_way():
    image = np.random.default_rng(2).permutation(np.arange(128 * 128, dtype=np.uint16) * 3)
    image = image.reshape(128, 128)  # 16384 distinct levels
    assert _image_levels(image, PIPELINE[1]) is None  # too many: clahe() asks OpenCV
    expected = opencv(image, *PIPELINE)
    np.testing.assert_array_equal(clahe(image, *PIPELINE), expected)
    np.testing.assert_array_equal(clahe_by_levels(image, *PIPELINE), expected)
    assert MAX_LEVELS < 16384


def test_direct_and_ranked_levels_agree():
    """Values below 4096 index the tables directly; others by rank among the values present."""
    image = np.random.default_rng(3).integers(0, 3000, (64, 64)).astype(np.uint16)
    shifted = image + np.uint16(5000)  # same rank order, ranked path
    assert len(_image_levels(image, PIPELINE[1])[2]) == int(image.max()) + 1
    assert len(_image_levels(shifted, PIPELINE[1])[2]) == len(np.unique(image))
    np.testing.assert_array_equal(clahe(image, *PIPELINE), opencv(image, *PIPELINE))
    np.testing.assert_array_equal(clahe(shifted, *PIPELINE), opencv(shifted, *PIPELINE))


@pytest.mark.parametrize(
    "image", [np.zeros((8, 8), np.float32), np.zeros((2, 8, 8), np.uint16), np.zeros(8, np.uint8)]
)
def test_rejects_what_opencv_rejects(image):
    with pytest.raises(ValueError, match="2D uint8 or uint16 image"):
        clahe_by_levels(image, *PIPELINE)


@pytest.fixture(scope="module")
def synthetic_slices() -> np.ndarray:
    from efficientcellseg.synthetic import SyntheticSpec, generate_sequence

    spec = SyntheticSpec(seed=4, n_frames=1, depth=8, height=256, width=200, n_objects=12)
    return generate_sequence(spec, 0)["images"][0]
