"""Context-aware pseudocoloring equals the plainly written published algorithm, edge cases included.

The yardstick is ``tests/reference_pseudocolor.py``: the published steps slice by slice, with the
threshold loop and CLAHE recomputed for every neighbour. Agreement to 1e-6 means the same
threshold masks everywhere (a single different mask pixel would differ by up to 1).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from reference_pseudocolor import (
    context,
    normalise,
    published_pseudocolor,
    published_pseudocolor_slice,
    threshold_loop,
)

from efficientcellseg import pseudocolor
from efficientcellseg.cli import main
from efficientcellseg.pseudocolor import (
    MAX_THRESHOLD_TRIES,
    THRESHOLDS,
    context_masks,
    pseudocolor_frame,
    pseudocolor_stack,
    threshold_tries,
)
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import generate_sequence

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def synthetic_stack() -> np.ndarray:
    """A (6, 96, 128) uint16 stack of nuclei that fade towards their top and bottom slices.

    Few slices, because uint16 CLAHE costs about as much on a small slice as on a large one.
    """
    spec = SyntheticSpec(
        seed=3, n_frames=1, depth=6, height=96, width=128, n_objects=8, radius_z=(1.5, 2.5)
    )
    return generate_sequence(spec, 0)["images"][0]


def assert_matches_published(stack: np.ndarray) -> np.ndarray:
    colour = pseudocolor_stack(stack)
    expected = published_pseudocolor(stack)
    assert colour.shape == (*stack.shape, 3)
    assert colour.dtype == np.float32
    np.testing.assert_allclose(colour, expected, rtol=0, atol=TOLERANCE)
    return colour


# -- equality with the published algorithm --


# Frames 1 and 13 hold blurred context values within float32 rounding of the chosen threshold:
# a context computed in float32 instead of float64 changes a few mask pixels there.
@pytest.mark.parametrize("frame", [0, 1, 13, 19])
def test_matches_published_on_real_cho_frames(cho_arrays, frame):
    image = cho_arrays[0][frame]  # (5, 443, 512) uint8: 443 rows are not a multiple of 16 tiles
    colour = assert_matches_published(image)
    assert np.count_nonzero(colour[..., 0] != colour[..., 1]) > 1000  # real context, not grey


def test_matches_published_on_synthetic_uint16(synthetic_stack):
    assert synthetic_stack.dtype == np.uint16
    colour = assert_matches_published(synthetic_stack)
    # The ends have no neighbour on one side: that context channel is the slice itself.
    np.testing.assert_allclose(colour[0, ..., 0], colour[0, ..., 1], atol=TOLERANCE)
    np.testing.assert_allclose(colour[-1, ..., 2], colour[-1, ..., 1], atol=TOLERANCE)
    assert not np.allclose(colour[0, ..., 2], colour[0, ..., 1])


@pytest.mark.parametrize(
    "black", [[3], [0], [5], [0, 3, 5]], ids=["middle", "first", "last", "all"]
)
def test_all_black_slices(synthetic_stack, black):
    stack = synthetic_stack.copy()
    stack[black] = 0
    colour = assert_matches_published(stack)
    for z in black:
        assert not colour[z].any()  # a black slice stays black in every channel
        if z + 1 < len(stack):
            np.testing.assert_allclose(colour[z + 1, ..., 0], colour[z + 1, ..., 1], atol=TOLERANCE)
        if z > 0:
            np.testing.assert_allclose(colour[z - 1, ..., 2], colour[z - 1, ..., 1], atol=TOLERANCE)


def test_single_slice_stack_is_grey(synthetic_stack):
    stack = synthetic_stack[3:4]
    colour = assert_matches_published(stack)
    green = normalise(stack[0])
    for channel in range(3):
        np.testing.assert_allclose(colour[0, ..., channel], green, atol=TOLERANCE)


def test_constant_slices_normalise_to_zero(synthetic_stack):
    stack = synthetic_stack.copy()
    stack[2] = 700  # the published code would give NaN here (0 / 0)
    colour = assert_matches_published(stack)
    assert not colour[2].any()
    assert np.isfinite(colour).all()


def test_uint8_stack_with_bright_neighbour_exhausts_threshold_tries():
    """A neighbour bright over half its area keeps > 3 % of pixels above every threshold."""
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 40, size=(3, 64, 80), dtype=np.uint8)
    stack[0, :, :40] += 200
    assert threshold_loop(context(stack[0]))[1] == MAX_THRESHOLD_TRIES
    colour = assert_matches_published(stack)
    masks = context_masks(stack)
    assert masks[0].mean() > 0.03  # the mask of the last threshold tried, too large but kept
    red_boost = colour[1, ..., 0] / np.maximum(colour[1, ..., 1], 1e-9)
    assert red_boost[:, :30].mean() > red_boost[:, 50:].mean()


# -- the adaptive threshold, directly --


def channel_with(values: dict[float, float], size: int = 10_000) -> np.ndarray:
    """A flat float64 channel with the given fraction of pixels at each value, zeros elsewhere."""
    channel = np.zeros(size)
    start = 0
    for value, fraction in values.items():
        count = round(fraction * size)
        channel[start : start + count] = value
        start += count
    return channel.reshape(100, -1)


@pytest.mark.parametrize(
    ("values", "tries"),
    [
        ({}, 30),  # nothing above any threshold: the loop runs out with an empty mask
        ({0.9: 1.0}, 30),  # everything above every threshold: runs out, all-true mask kept
        ({0.305: 0.1}, 30),  # 10 % up to t = 0.30, then nothing: never in (0, 0.03]
        ({0.9: 0.02}, 1),  # 2 % above the first threshold
        ({0.9: 0.03}, 1),  # exactly 3 % is small enough
        ({0.9: 0.0301}, 30),  # just above 3 % at every threshold
        ({0.9: 0.01, 0.25: 0.5}, 6),  # the 50 % at 0.25 drop out at t = 0.25 (sixth try)
        ({float(THRESHOLDS[3]): 0.5, 0.5: 0.02}, 4),  # ties: value == t is not above t
        ({float(np.nextafter(THRESHOLDS[9], 1)): 0.2, 0.6: 0.01}, 11),
    ],
)
def test_threshold_tries_match_the_published_loop(values, tries):
    channel = channel_with(values)
    mask, loop_tries = threshold_loop(channel)
    assert loop_tries == tries
    assert threshold_tries(channel) == tries
    np.testing.assert_array_equal(channel > THRESHOLDS[tries - 1], mask.astype(bool))


def test_threshold_tries_match_the_published_loop_on_random_ramps():
    rng = np.random.default_rng(1)
    for _ in range(200):
        channel = rng.beta(rng.uniform(0.3, 3), rng.uniform(0.3, 8), size=(40, 50))
        channel[rng.random(channel.shape) < rng.uniform(0, 1)] = 0
        assert threshold_tries(channel) == threshold_loop(channel)[1]


def test_thresholds_are_the_floats_the_loop_accumulates():
    t, expected = 0.2, []
    for _ in range(30):
        expected.append(t)
        t += 0.01
    assert THRESHOLDS.tolist() == expected  # exact, not approximately
    assert THRESHOLDS[10] != 0.3  # accumulation drifts from the decimal values


# -- properties --


def test_green_is_the_normalised_slice_and_values_lie_in_0_1(synthetic_stack):
    colour = pseudocolor_stack(synthetic_stack)
    for z, image in enumerate(synthetic_stack):
        np.testing.assert_allclose(colour[z, ..., 1], normalise(image), atol=TOLERANCE)
    assert colour.min() >= 0.0 and colour.max() <= 1.0
    np.testing.assert_array_equal(colour[..., [0, 2]].max(axis=(1, 2)), 1.0)


def test_clahe_runs_once_per_non_black_slice(synthetic_stack, monkeypatch):
    calls = []

    def counting_clahe(image, clip_limit, tile_grid):
        assert (clip_limit, tile_grid) == (10.0, (16, 16))
        calls.append(image.dtype)
        return opencv_clahe(image, clip_limit, tile_grid)

    monkeypatch.setattr(pseudocolor, "clahe", counting_clahe)
    stack = synthetic_stack.copy()
    stack[2] = 0
    pseudocolor_stack(stack)
    assert calls == [np.dtype(np.uint16)] * (len(stack) - 1)  # raw dtype, never normalised


# -- the fast path (CLAHE over the levels present, slices on threads) equals the previous one --


def opencv_clahe(image, clip_limit, tile_grid):
    """CLAHE as the pseudocoloring computed it before efficientcellseg.clahe existed."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid).apply(image)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_fast_path_equals_opencv_clahe_on_one_thread(synthetic_stack, monkeypatch, dtype):
    stack = synthetic_stack.copy()
    if dtype == np.uint8:
        stack = (stack // (int(stack.max()) // 255 + 1)).astype(np.uint8)
    stack[[0, 3]] = 0  # all-zero slices: at an end and inside
    fast = [pseudocolor_stack(stack, threads=threads) for threads in (2, 4)]
    monkeypatch.setattr(pseudocolor, "clahe", opencv_clahe)
    previous = pseudocolor_stack(stack, threads=1)
    assert np.count_nonzero(context_masks(stack, threads=1)) > 1000
    for colour in fast:
        np.testing.assert_array_equal(colour, previous)  # bit for bit


def test_fast_path_equals_opencv_clahe_on_real_cho_frame(cho_arrays, monkeypatch):
    image = cho_arrays[0][13].astype(np.uint16) * 257  # 443 rows: OpenCV pads for its tiles
    fast = pseudocolor_stack(image, threads=2)
    monkeypatch.setattr(pseudocolor, "clahe", opencv_clahe)
    np.testing.assert_array_equal(fast, pseudocolor_stack(image, threads=1))


def test_frame_2d_is_a_one_slice_stack_with_black_neighbours(synthetic_stack):
    frame = synthetic_stack[3]
    colour = pseudocolor_frame(frame)
    assert colour.shape == (*frame.shape, 3)
    expected = published_pseudocolor_slice(frame[np.newaxis], 0)
    np.testing.assert_allclose(colour, expected, atol=TOLERANCE)
    # Grey: no context, so red and blue equal the normalised frame.
    for channel in (0, 2):
        np.testing.assert_array_equal(colour[..., channel], colour[..., 1])


def test_frame_3d_is_the_stack(synthetic_stack):
    np.testing.assert_array_equal(
        pseudocolor_frame(synthetic_stack), pseudocolor_stack(synthetic_stack)
    )


# -- errors --


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((2, 8, 8), np.float32), "got float32 intensities.*do not rescale"),
        (np.full((2, 8, 8), -3, np.int16), r"negative values \(min -3\)"),
        (np.full((2, 8, 8), 9, np.int32), r"values 9..9 fit, convert with .astype\(np.uint16\)"),
        (np.zeros((2, 8, 8), bool), "got bool intensities"),
        (
            np.zeros((8, 8), np.uint8),
            r"\(Z, H, W\) image, got .* shape \(8, 8\).*pseudocolor_frame",
        ),
        (np.zeros((1, 2, 8, 8), np.uint8), r"shape \(1, 2, 8, 8\)"),
        (np.zeros((0, 8, 8), np.uint8), "empty image"),
    ],
)
def test_stack_rejects_unsupported_input(image, message):
    with pytest.raises(ValueError, match=message):
        pseudocolor_stack(image)


def test_frame_rejects_wrong_ndim():
    with pytest.raises(ValueError, match=r"\(H, W\) or \(Z, H, W\) image, got .* shape \(8,\)"):
        pseudocolor_frame(np.zeros(8, np.uint8))


# -- command line --


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_cli_writes_the_pseudocolor_stack(tmp_path, synthetic_stack, capsys, dtype):
    source, target = tmp_path / "t000.tif", tmp_path / "out" / "pc.tif"
    tifffile.imwrite(source, synthetic_stack)
    assert main(["pseudocolor", str(source), str(target), "--dtype", dtype]) == 0
    written = tifffile.imread(target)
    expected = pseudocolor_stack(synthetic_stack)
    assert written.shape == (*synthetic_stack.shape, 3)
    assert written.dtype == np.dtype(dtype)
    if dtype == "uint8":
        np.testing.assert_array_equal(written, np.round(expected * 255).astype(np.uint8))
    else:
        np.testing.assert_allclose(written, expected, atol=1e-3 if dtype == "float16" else 0)
    assert str(target) in capsys.readouterr().out


def test_cli_2d_frame_and_bad_input(tmp_path, synthetic_stack, caplog):
    source, target = tmp_path / "t000.tif", tmp_path / "pc.tif"
    tifffile.imwrite(source, synthetic_stack[3])
    assert main(["pseudocolor", str(source), str(target)]) == 0
    assert tifffile.imread(target).shape == (*synthetic_stack.shape[1:], 3)
    tifffile.imwrite(source, synthetic_stack.astype(np.float32))
    assert main(["pseudocolor", str(source), str(target)]) == 1  # a bad file, not a bad command
    assert "float32" in caplog.text
