"""From the networks' per-slice probability maps to one CTC instance mask per frame.

The networks see 2D slices, so a 3D frame arrives as a stack of per-slice maps (Z, H, W): the
cell (foreground) probability and, for kind ``"centres"``, the cell-centre heatmap. Each slice is
cut into 2D segments, and segments of adjacent slices are then linked into one label per 3D
cell, as the CTC requires of 3D results (one unique label per object and frame, uint16).

Kinds (:class:`PostprocessSettings`):

``"single"``
    One cell per frame (Fluo-C3DH-A549): the largest connected foreground component.
``"distance"``
    The published EfficientCellSeg post-processing (Fluo-N3DL-TRIC): threshold 0.5, distance
    transform, ``peak_local_max`` with a 12x12 footprint as markers, watershed on the negative
    distance inside the mask; per slice.
``"centres"``
    Markers from the centre network (Fluo-C3DL-MDA231): connected regions of the heatmap above
    ``centre_threshold`` inside the foreground, watershed on the negative distance inside the mask.

Then, in this order: 2D segments smaller than ``min_area`` are dropped, segments are linked
across z (:func:`link_slices`), 3D objects smaller than ``min_volume`` and objects lying
entirely in the CTC field-of-interest border band are dropped, and labels are renumbered 1..N.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from .ctc import MAX_LABEL
from .labels import overlap_table, renumber
from .settings import PostprocessSettings

log = logging.getLogger(__name__)

# Pixels touching diagonally belong together everywhere in 2D (markers, flooding, regions
# without a marker), so that a marker never spans two regions the flood treats as separate.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def postprocess_frame(
    foreground: np.ndarray, centres: np.ndarray | None, settings: PostprocessSettings
) -> np.ndarray:
    """Instance mask (uint16, labels 1..N, one per cell) of one 2D (H, W) or 3D (Z, H, W) frame.

    Parameters
    ----------
    foreground
        Cell probability per pixel in [0, 1]; a 3D frame as a stack of per-slice maps.
    centres
        Cell-centre heatmap in [0, 1] of the same shape; required for kind ``"centres"``,
        ignored (but checked) otherwise.
    settings
        The dataset's post-processing settings.
    """
    foreground = np.asarray(foreground)
    centres = None if centres is None else np.asarray(centres)
    _check_maps(foreground, centres, settings)
    mask = foreground > settings.threshold
    if settings.kind == "single":
        objects = largest_component(mask)
    else:
        stack_centres = None if centres is None else _as_stack(centres)
        segments = segment_slices(_as_stack(mask), stack_centres, settings)
        objects = link_slices(segments, settings.link_iou) if mask.ndim == 3 else segments[0]
    min_size = settings.min_volume if mask.ndim == 3 else settings.min_area
    result = select_objects(objects, min_size=min_size, foi_border=settings.foi_border)
    log.debug("%s: %d objects in a frame of shape %s", settings.kind, result.max(), mask.shape)
    return result


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (any connectivity) of a 2D or 3D mask, labelled 1."""
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count == 0:
        return np.zeros(mask.shape, dtype=np.uint8)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return (components == np.argmax(sizes)).astype(np.uint8)


def segment_slices(
    mask: np.ndarray, centres: np.ndarray | None, settings: PostprocessSettings
) -> np.ndarray:
    """2D instance labels (Z, H, W) int32 of a stack of foreground masks, numbered per slice.

    Every slice is cut by the watershed of ``settings.kind``; foreground regions that received no
    marker keep one label of their own (no cell is lost for want of a marker), and segments
    smaller than ``settings.min_area`` are dropped.
    """
    if settings.kind == "centres" and centres is None:
        raise ValueError("post-processing kind 'centres' needs the centre heatmap, got None")
    segments = np.zeros(mask.shape, dtype=np.int32)
    for z, slice_mask in enumerate(mask):
        if not slice_mask.any():
            continue
        if settings.kind == "centres":
            labels = centre_watershed(slice_mask, centres[z], settings.centre_threshold)
        elif settings.kind == "distance":
            labels = distance_watershed(slice_mask, settings.footprint)
        else:
            raise ValueError(f"kind {settings.kind!r} has no per-slice segmentation")
        labels = _label_unmarked(labels, slice_mask)
        segments[z] = _drop_small(labels, settings.min_area)
    return segments


def distance_watershed(mask: np.ndarray, footprint: int = 12) -> np.ndarray:
    """Published EfficientCellSeg split of a 2D mask: watershed of -distance from its peaks.

    Peaks of the distance transform within a ``footprint`` x ``footprint`` window are markers.
    Peak pixels that touch, also diagonally, form one marker: the distance ridge of an elongated
    cell often holds several equal maxima side by side (on a diagonal, too), which would otherwise
    split the cell. Unlike scikit-image's default, peaks on the image border are kept, so cells
    cut by the image edge get a marker too.
    """
    distance = distance_to_background(mask)
    peaks = peak_local_max(
        distance,
        footprint=np.ones((footprint, footprint), dtype=bool),
        labels=mask.astype(np.int32),
        exclude_border=False,
    )
    peak_mask = np.zeros(mask.shape, dtype=bool)
    peak_mask[tuple(peaks.T)] = True
    markers, _ = ndimage.label(peak_mask, structure=EIGHT_CONNECTED)
    return watershed(-distance, markers, mask=mask, connectivity=2)


def centre_watershed(mask: np.ndarray, centres: np.ndarray, centre_threshold: float) -> np.ndarray:
    """Split a 2D mask with markers from the centre heatmap: watershed of -distance.

    Markers are the connected regions of ``centres > centre_threshold`` inside the mask. The
    landscape is the negative distance transform of the mask, not the heatmap: the heatmap is
    trained to be near zero over the outer part of every cell (sigma ~ 0.35 x the cell's inner
    radius), so flooding it would leave the border between touching cells to the tie-breaking
    order of a flat plateau, whereas the distance transform has its saddle at the neck between
    touching cells, where their border is.
    """
    markers, _ = ndimage.label((centres > centre_threshold) & mask, structure=EIGHT_CONNECTED)
    distance = distance_to_background(mask)
    return watershed(-distance, markers, mask=mask, connectivity=2)


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance (float32) of every mask pixel to the nearest background pixel.

    OpenCV's exact algorithm (``DIST_MASK_PRECISE``) gives the same values as
    ``scipy.ndimage.distance_transform_edt`` (up to float32 rounding, also at the image edge)
    in about a quarter of the time, and it runs once per slice. Its last float32 bit varies
    from one process to the next, which moves tied watershed boundaries; squared exact
    distances are integers, so rounding them makes the result reproducible.
    """
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.sqrt(np.rint(np.square(distance, dtype=np.float64))).astype(np.float32)


def link_slices(segments: np.ndarray, link_iou: float) -> np.ndarray:
    """Link per-slice 2D labels (Z, H, W) into 3D objects (int32 labels, not consecutive).

    Labels may restart in every slice. For each pair of adjacent slices the overlap of every
    pair of segments is counted at once (a contingency table of label pairs), and segments are
    matched one-to-one greedily by decreasing IoU, down to ``link_iou``. Chains of matched
    segments become one 3D object; a segment with no match upwards starts a new object.
    """
    if segments.ndim != 3:
        raise ValueError(f"expected per-slice labels (Z, H, W), got shape {segments.shape}")
    per_slice = [renumber(labels) for labels in segments]
    counts = [count for _, count in per_slice]
    # Segment j of slice z is node offsets[z] + j of one graph over the stack; node 0 is unused.
    offsets = np.concatenate([[0], np.cumsum(counts)])
    upper, lower = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for z in range(len(segments) - 1):
        a, b = _match_by_iou(per_slice[z][0], per_slice[z + 1][0], link_iou)
        upper.append(a + offsets[z])
        lower.append(b + offsets[z + 1])
    upper, lower = np.concatenate(upper), np.concatenate(lower)
    n_nodes = int(offsets[-1]) + 1
    graph = sparse.coo_matrix((np.ones(len(upper)), (upper, lower)), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    object_of = component.astype(np.int32) + 1  # node 0 has no links: no object shares its id
    objects = np.zeros(segments.shape, dtype=np.int32)
    for z, (labels, _) in enumerate(per_slice):
        lookup = np.concatenate([[0], object_of[offsets[z] + 1 : offsets[z + 1] + 1]])
        objects[z] = lookup[labels]
    return objects


def select_objects(objects: np.ndarray, *, min_size: int = 0, foi_border: int = 0) -> np.ndarray:
    """Drop small and border-band objects and renumber the rest 1..N as uint16.

    An object is kept when it has at least ``min_size`` pixels (voxels) and at least one pixel in
    the field of interest [E, H-E) x [E, W-E) of any slice (E = ``foi_border``).

    Raises
    ------
    ValueError
        If more than 65535 objects remain (the CTC's uint16 masks cannot hold them).
    """
    sizes = np.bincount(objects.ravel())
    keep = sizes >= max(min_size, 1)
    if foi_border:
        interior = objects[..., foi_border:-foi_border, foi_border:-foi_border]
        keep &= np.bincount(interior.ravel(), minlength=len(sizes)) > 0
    count = int(keep[1:].sum())
    if count > MAX_LABEL:
        raise ValueError(
            f"{count} objects in one frame do not fit the CTC's uint16 masks (at most "
            f"{MAX_LABEL}): raise min_area/min_volume or the thresholds"
        )
    return renumber(objects, keep, dtype=np.uint16)[0]


def _as_stack(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 3 else array[None]


def _label_unmarked(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give every foreground region the watershed could not reach (no marker) a label of its own."""
    unmarked = mask & (labels == 0)
    if not unmarked.any():
        return labels
    extra, _ = ndimage.label(unmarked, structure=EIGHT_CONNECTED)
    labels = labels.astype(np.int32, copy=True)
    labels[unmarked] = extra[unmarked] + labels.max()
    return labels


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Labels 1..n (int32) of the segments with at least ``min_area`` pixels; the others 0."""
    return renumber(labels, np.bincount(labels.ravel()) >= max(min_area, 1))[0]


def _match_by_iou(
    upper: np.ndarray, lower: np.ndarray, link_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one links (upper labels, lower labels) between two adjacent 2D label images.

    Greedy matching: the pair with the highest IoU is linked first, then the best pair of
    still unlinked segments.
    """
    a, b, count = overlap_table(upper, lower)
    area_upper = np.bincount(a, weights=count)
    area_lower = np.bincount(b, weights=count)
    both = (a > 0) & (b > 0)
    a, b, overlap = a[both], b[both], count[both]
    iou = overlap / (area_upper[a] + area_lower[b] - overlap)
    candidates = np.flatnonzero(iou >= link_iou)
    order = candidates[np.lexsort((b[candidates], a[candidates], -iou[candidates]))]
    pairs = zip(order.tolist(), a[order].tolist(), b[order].tolist(), strict=True)
    linked_upper, linked_lower, chosen = set(), set(), []
    for pair, first, second in pairs:
        if first not in linked_upper and second not in linked_lower:
            linked_upper.add(first)
            linked_lower.add(second)
            chosen.append(pair)
    chosen = np.array(chosen, dtype=np.int64)
    return a[chosen], b[chosen]


def _check_maps(
    foreground: np.ndarray, centres: np.ndarray | None, settings: PostprocessSettings
) -> None:
    if foreground.ndim not in (2, 3) or foreground.size == 0:
        raise ValueError(
            f"foreground map must be a non-empty 2D (H, W) or 3D (Z, H, W) array, "
            f"got shape {foreground.shape}"
        )
    _check_probabilities(foreground, "foreground map")
    if centres is None:
        if settings.kind == "centres":
            raise ValueError(
                "post-processing kind 'centres' needs the centre heatmap, got None: "
                "run the centre model or use kind 'distance'"
            )
    else:
        if centres.shape != foreground.shape:
            raise ValueError(
                f"centre heatmap shape {centres.shape} differs from foreground map shape "
                f"{foreground.shape}"
            )
        _check_probabilities(centres, "centre heatmap")
    height, width = foreground.shape[-2:]
    if 2 * settings.foi_border >= min(height, width):
        raise ValueError(
            f"foi_border {settings.foi_border} leaves no field of interest in a "
            f"{height}x{width} frame"
        )


def _check_probabilities(values: np.ndarray, name: str) -> None:
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, got dtype {values.dtype}")
    low, high = values.min(), values.max()
    if not (low >= 0 and high <= 1):  # also catches NaN
        raise ValueError(f"{name} must hold probabilities in [0, 1], got [{low}, {high}]")
