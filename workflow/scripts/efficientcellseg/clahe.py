"""OpenCV's CLAHE, bit for bit, computed only at the grey levels an image holds.

OpenCV's CLAHE (``cv2.createCLAHE(...).apply``) gives each tile of its grid a lookup table with one
entry per possible value: 65536 for uint16, so a 16 x 16 grid fills 16.8 million entries for every
image however few values it holds (~20 ms of the ~21 ms it takes on a 512 x 512 slice). Each entry
has a closed form in the tile's histogram: ``round(S(v) * (hist_size - 1) / tile_area)``, where
S(v) counts the tile's pixels <= v after clipping (each bin cut to the clip limit) plus the
clipped pixels OpenCV hands back: ``clipped // hist_size`` to every bin and one more to each of
the first ``clipped % hist_size`` bins 0, step, 2 step, ... (``step = hist_size // residual``).
:func:`clahe_by_levels` evaluates the tables at the levels present only and interpolates
between the four nearest tiles with the float32 operations OpenCV performs, in its order,
rounding half to even like ``cv2.saturate_cast``. The result equals OpenCV's exactly
(tests/unit/test_clahe.py compares them on over a hundred images: uint8 and uint16, sizes that
need OpenCV's reflected padding, clip limits that redistribute whole batches) and takes ~2.6 ms
of CPU instead of ~20 ms for a 512 x 512 uint16 slice with ~1000 levels (AMD EPYC, one thread).

:func:`clahe` picks the faster of the two, which for uint16 depends on how many levels the image
holds; uint8 stays with OpenCV (256-entry tables cost little).
"""

from __future__ import annotations

import cv2
import numpy as np

# Beyond this many distinct levels, tables over the levels cost more than OpenCV's full tables
# (measured on 512 x 512 slices: ~10 ms at 8192 levels, ~20 ms at 16384; OpenCV ~20 ms).
MAX_LEVELS = 8192
# Images whose maximum is below this use the values themselves as level indices, which saves
# finding the levels present (at most this many table entries per tile).
DIRECT_LEVELS = 4096


def clahe(image: np.ndarray, clip_limit: float, tile_grid: tuple[int, int]) -> np.ndarray:
    """What ``cv2.createCLAHE(clip_limit, tile_grid).apply(image)`` gives, computed the faster way.

    Parameters
    ----------
    image
        (H, W) uint8 or uint16.
    clip_limit, tile_grid
        As for OpenCV; ``tile_grid`` is (tiles across, tiles down).
    """
    if image.dtype == np.uint16:
        levels = _image_levels(image, tile_grid)
        if levels is not None:
            return _clahe_at_levels(image, clip_limit, tile_grid, *levels)
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid).apply(image)


def clahe_by_levels(image: np.ndarray, clip_limit: float, tile_grid: tuple[int, int]) -> np.ndarray:
    """OpenCV's CLAHE of a (H, W) uint8/uint16 image, with lookup tables over its levels only.

    The same result as OpenCV whatever the image; faster only for uint16 images with few levels
    (:func:`clahe` decides).
    """
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"CLAHE needs a 2D uint8 or uint16 image, got {image.dtype} of shape {image.shape}"
        )
    levels = _image_levels(image, tile_grid, max_levels=None)
    return _clahe_at_levels(image, clip_limit, tile_grid, *levels)


def _padded(image: np.ndarray, tile_grid: tuple[int, int]) -> np.ndarray:
    """The image OpenCV computes its tables from: extended (reflect-101, bottom and right) to a
    multiple of the grid; when either side needs it, OpenCV extends both (one by a full grid)."""
    tiles_x, tiles_y = tile_grid
    height, width = image.shape
    if height % tiles_y == 0 and width % tiles_x == 0:
        return image
    return cv2.copyMakeBorder(
        image, 0, tiles_y - height % tiles_y, 0, tiles_x - width % tiles_x, cv2.BORDER_REFLECT_101
    )


def _image_levels(
    image: np.ndarray, tile_grid: tuple[int, int], max_levels: int | None = MAX_LEVELS
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(padded image, level index of each of its pixels, value of each level), or None when the
    image holds more than ``max_levels`` levels."""
    padded = _padded(image, tile_grid)
    top = int(padded.max())
    if top < DIRECT_LEVELS:
        return padded, padded.astype(np.intp), np.arange(top + 1, dtype=np.float32)
    present = np.zeros(np.iinfo(image.dtype).max + 1, dtype=bool)
    present[padded] = True
    values = np.flatnonzero(present)
    if max_levels is not None and len(values) > max_levels:
        return None
    rank = np.cumsum(present, dtype=np.intp)
    rank -= 1
    return padded, rank[padded], values.astype(np.float32)


def _clahe_at_levels(
    image: np.ndarray,
    clip_limit: float,
    tile_grid: tuple[int, int],
    padded: np.ndarray,
    levels: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    tiles_x, tiles_y = tile_grid
    tile_height, tile_width = padded.shape[0] // tiles_y, padded.shape[1] // tiles_x
    tables = _tile_tables(
        levels, values, tile_grid, (tile_height, tile_width), clip_limit, image.dtype
    )
    return _interpolate(tables, levels, len(values), tile_grid, (tile_height, tile_width), image)


def _tile_tables(
    levels: np.ndarray,
    values: np.ndarray,
    tile_grid: tuple[int, int],
    tile_shape: tuple[int, int],
    clip_limit: float,
    dtype: np.dtype,
) -> np.ndarray:
    """(tiles, levels) float32: OpenCV's lookup table of every tile at every level's value."""
    tiles_x, tiles_y = tile_grid
    tile_height, tile_width = tile_shape
    hist_size = np.iinfo(dtype).max + 1
    area = tile_height * tile_width
    n_levels = len(values)
    keys = levels.reshape(tiles_y, tile_height, tiles_x, tile_width) + (
        np.arange(tiles_y * tiles_x) * n_levels
    ).reshape(tiles_y, 1, tiles_x, 1)
    counts = np.bincount(keys.ravel(), minlength=tiles_y * tiles_x * n_levels)
    counts = counts.reshape(-1, n_levels)
    if clip_limit > 0:  # OpenCV: limit clip_limit * area / hist_size, truncated, at least 1
        np.minimum(counts, max(int(clip_limit * area / hist_size), 1), out=counts)
    cumulative = np.cumsum(counts, axis=1, out=counts)
    batch, residual = np.divmod(area - cumulative[:, -1], hist_size)  # 0 without clipping
    if batch.any():
        cumulative += batch[:, None] * (values.astype(np.intp) + 1)
    # Residual bins <= v: min(residual, v // step + 1). v // step is exact as floor(v / step) in
    # float32: v / step is either an integer or at least 1 / step < 2**-16 below the next one,
    # and for v, step < 2**16 float32 division cannot round across an integer.
    step = np.maximum(hist_size // np.maximum(residual, 1), 1).astype(np.float32)
    handed_back = values / step[:, None]
    np.floor(handed_back, out=handed_back)
    handed_back += 1
    np.minimum(handed_back, residual[:, None].astype(np.float32), out=handed_back)
    tables = cumulative.astype(np.float32)  # counts <= area: exact in float32
    tables += handed_back
    tables *= np.float32(hist_size - 1) / np.float32(area)  # OpenCV's float lutScale
    np.rint(tables, out=tables)
    return np.clip(tables, 0, hist_size - 1, out=tables)


def _interpolate(
    tables: np.ndarray,
    levels: np.ndarray,
    n_levels: int,
    tile_grid: tuple[int, int],
    tile_shape: tuple[int, int],
    image: np.ndarray,
) -> np.ndarray:
    """Bilinear blend of the four nearest tiles' tables, as OpenCV's float32 arithmetic does it:
    ``(t11 * (1 - xa) + t12 * xa) * (1 - ya) + (t21 * (1 - xa) + t22 * xa) * ya``."""
    tiles_x, tiles_y = tile_grid
    height, width = image.shape
    tables = tables.ravel()
    row_1, row_2, ya, ya_1 = _tile_weights(height, tile_shape[0], tiles_y)
    col_1, col_2, xa, xa_1 = _tile_weights(width, tile_shape[1], tiles_x)
    index = levels[:height, :width] + (row_1 * (tiles_x * n_levels))[:, None]
    index += (col_1 * n_levels)[None, :]
    right = ((col_2 - col_1) * n_levels)[None, :]
    down = ((row_2 - row_1) * (tiles_x * n_levels))[:, None]
    upper = tables[index] * xa_1
    upper += tables[index + right] * xa
    index += down
    lower = tables[index] * xa_1
    index += right
    lower += tables[index] * xa
    upper *= ya_1[:, None]
    lower *= ya[:, None]
    upper += lower
    np.rint(upper, out=upper)
    np.clip(upper, 0, np.iinfo(image.dtype).max, out=upper)
    return upper.astype(image.dtype)


def _tile_weights(
    length: int, tile: int, tiles: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel along one axis: first and second tile (clamped to the grid) and the weights of
    the second and the first, from ``pos = x * (1 / tile) - 0.5`` in float32 as in OpenCV."""
    position = np.arange(length, dtype=np.float32) * (np.float32(1) / np.float32(tile))
    position -= np.float32(0.5)
    first = np.floor(position)
    weight = position - first
    first = first.astype(np.intp)
    second = np.minimum(first + 1, tiles - 1)
    np.maximum(first, 0, out=first)
    return first, second, weight, np.float32(1) - weight
