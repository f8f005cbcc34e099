"""Training targets of the two networks, computed from a 2D instance label image.

The segmentation network learns :func:`foreground_target` (cell vs background, the paper's two
classes). The centre network learns :func:`centre_heatmap`: one Gaussian blob per cell, whose
thresholded peaks later become the markers of a watershed (:mod:`efficientcellseg.postprocess`).
This module is the definition of what the centre network is asked to predict.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

SIGMA_FRACTION = 0.35  # blob sigma, as a fraction of the object's largest inner distance
MIN_SIGMA = 2.0  # pixels: tiny objects still get a blob a network can learn


def foreground_target(labels: np.ndarray) -> np.ndarray:
    """Binary cell mask (float32, 1 = any object) of a 2D label image.

    Touching cells are not separated here: that is the centre network's and the watershed's job.
    """
    _check_labels(labels)
    return (labels > 0).astype(np.float32)


def centre_heatmap(
    labels: np.ndarray,
    sigma_fraction: float = SIGMA_FRACTION,
    min_sigma: float = MIN_SIGMA,
) -> np.ndarray:
    """Cell-centre heatmap (float32 in [0, 1]) of a 2D label image.

    Every object gets a Gaussian blob of value 1 at its most interior pixel (the maximum of the
    object's own Euclidean distance transform) with sigma = max(``min_sigma``,
    ``sigma_fraction`` x that maximum distance), so blobs scale with cell size. The blob is
    clipped to the object's own pixels, so the blobs of touching cells never merge into one
    peak and each cell yields exactly one marker when the prediction is thresholded.

    Why the most interior pixel and not the centroid: the centroid of a non-convex (bent,
    kidney- or C-shaped) cell can lie outside the cell or on its border, where a clipped blob
    would be cut off or missing; the distance maximum always lies inside, as far as possible from
    every neighbour.

    Parameters
    ----------
    labels
        2D integer label image, 0 = background, labels up to 65535 (need not be consecutive).
    sigma_fraction, min_sigma
        Blob width relative to the object's largest inner distance, and its lower bound in
        pixels.
    """
    _check_labels(labels)
    if sigma_fraction <= 0 or min_sigma <= 0:
        raise ValueError(
            f"sigma_fraction ({sigma_fraction}) and min_sigma ({min_sigma}) must be positive"
        )
    heatmap = np.zeros(labels.shape, dtype=np.float32)
    centres, inner_distance = _interior_points(labels)
    if not len(inner_distance):
        return heatmap
    sigma = np.maximum(min_sigma, sigma_fraction * inner_distance)
    # Per-label lookup tables, so that every foreground pixel is evaluated in one vectorised step.
    size = int(labels.max()) + 1
    centre_y, centre_x, two_var = (np.zeros(size), np.zeros(size), np.ones(size))
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=size)[1:]) + 1
    centre_y[present], centre_x[present] = centres[:, 0], centres[:, 1]
    two_var[present] = 2 * sigma**2
    y, x = np.nonzero(labels)
    own = labels[y, x]
    squared = (y - centre_y[own]) ** 2 + (x - centre_x[own]) ** 2
    heatmap[y, x] = np.exp(-squared / two_var[own])
    return heatmap


def _interior_points(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Most interior pixel (N, 2) and its distance to the object's edge (N,) per present label.

    Each object's distance transform is computed in its own bounding box (padded by one pixel of
    background), so that touching neighbours count as edge and the cost stays linear in the
    number of pixels of the objects.
    """
    centres, distances = [], []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = np.pad(labels[box] == index, 1)
        distance = ndimage.distance_transform_edt(inside)
        peak = np.unravel_index(np.argmax(distance), distance.shape)
        centres.append((peak[0] - 1 + box[0].start, peak[1] - 1 + box[1].start))
        distances.append(distance[peak])
    return np.array(centres, dtype=np.float64).reshape(-1, 2), np.array(distances)


def _check_labels(labels: np.ndarray) -> None:
    if labels.ndim != 2:
        raise ValueError(f"expected a 2D label image (H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
