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
from dataclasses import dataclass
from numbers import Integral, Real

import cv2
import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

log = logging.getLogger(__name__)

KINDS = ("single", "distance", "centres")
MAX_LABEL = int(np.iinfo(np.uint16).max)
MAX_DENSE_CONTINGENCY = 1 << 22  # label pairs counted with np.bincount; beyond, with np.unique
# Pixels touching diagonally belong together everywhere in 2D (markers, flooding, regions
# without a marker), so that a marker never spans two regions the flood treats as separate.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PostprocessSettings:
    """How probability maps become instance masks; one set per dataset (config ``postprocess``).

    Attributes
    ----------
    kind
        ``"single"``, ``"distance"`` or ``"centres"`` (see the module docstring).
    threshold
        Foreground where the cell probability is above this (paper: 0.5).
    centre_threshold
        Marker where the centre heatmap is above this (kind ``"centres"``).
    min_area
        2D segments with fewer pixels are dropped (before linking; in 2D frames the objects).
    min_volume
        3D objects with fewer voxels are dropped (3D frames only).
    footprint
        Edge of the square ``peak_local_max`` footprint of kind ``"distance"`` (paper: 12).
    foi_border
        CTC field-of-interest border E in pixels: objects with no pixel in [E, H-E) x [E, W-E)
        are dropped, as the CTC annotations ignore them.
    link_iou
        Segments of adjacent slices are linked (one-to-one) when their IoU is at least this.
        The default is low on purpose: the top and bottom slices of a nucleus have a much smaller
        cross-section than their neighbour (IoU 0.1-0.3 is common for ellipsoids a few slices
        high), whereas two distinct cells stacked exactly above each other are rare.
    """

    kind: str
    threshold: float = 0.5
    centre_threshold: float = 0.5
    min_area: int = 0
    min_volume: int = 0
    footprint: int = 12
    foi_border: int = 0
    link_iou: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"post-processing kind {self.kind!r} is not one of {list(KINDS)}")
        for name in ("threshold", "centre_threshold", "link_iou"):
            _check_setting(name, getattr(self, name), Real, 0, 1)
        for name in ("min_area", "min_volume", "foi_border"):
            _check_setting(name, getattr(self, name), Integral, 0)
        _check_setting("footprint", self.footprint, Integral, 1)


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
    per_slice = [_consecutive(labels) for labels in segments]
    counts = [count for _, count in per_slice]
    # Segment j of slice z is node offsets[z] + j of one graph over the stack; node 0 is unused.
    offsets = np.concatenate([[0], np.cumsum(counts)])
    upper, lower = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for z in range(len(segments) - 1):
        a, b = _match_by_iou(per_slice[z][0], per_slice[z + 1][0], counts[z + 1], link_iou)
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
    flat = objects.ravel()
    top = int(flat.max(initial=0))
    keep = np.bincount(flat, minlength=top + 1) >= max(min_size, 1)
    if foi_border:
        interior = objects[..., foi_border:-foi_border, foi_border:-foi_border]
        keep &= np.bincount(interior.ravel(), minlength=top + 1) > 0
    keep[0] = False
    count = int(keep.sum())
    if count > MAX_LABEL:
        raise ValueError(
            f"{count} objects in one frame do not fit the CTC's uint16 masks (at most "
            f"{MAX_LABEL}): raise min_area/min_volume or the thresholds"
        )
    new_label = np.zeros(top + 1, dtype=np.uint16)
    new_label[keep] = np.arange(1, count + 1, dtype=np.uint16)
    return new_label[objects]


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
    keep = np.bincount(labels.ravel()) >= max(min_area, 1)
    keep[0] = False
    if keep[1:].all():  # already labels 1..n (watershed output usually is): no relabelling pass
        return labels.astype(np.int32, copy=False)
    new_label = np.zeros(len(keep), dtype=np.int32)
    new_label[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_label[labels]


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 1..n (int32) in the order of their values (0 stays 0), and n."""
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    top = int(labels.max(initial=0))
    if top <= labels.size:  # a lookup table no larger than the image
        present = np.bincount(labels.ravel(), minlength=top + 1) > 0
        present[0] = False
        if present[1:].all():  # already 1..top: skip the relabelling pass
            return labels.astype(np.int32, copy=False), top
        count = int(present.sum())
        new_label = np.zeros(top + 1, dtype=np.int32)
        new_label[present] = np.arange(1, count + 1, dtype=np.int32)
        return new_label[labels], count
    values, inverse = np.unique(labels, return_inverse=True)
    shift = 0 if values[0] == 0 else 1
    return (inverse.reshape(labels.shape) + shift).astype(np.int32), len(values) - 1 + shift


def _match_by_iou(
    upper: np.ndarray, lower: np.ndarray, n_lower: int, link_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one links (upper labels, lower labels) between two adjacent 2D label images.

    Labels are consecutive (0 = background, ``lower`` holds 1..n_lower). Greedy matching: the
    pair with the highest IoU is linked first, then the best pair of still unlinked segments.
    """
    a, b, overlap = _overlaps(upper, lower, n_lower)
    area_upper = np.bincount(upper.ravel())
    area_lower = np.bincount(lower.ravel())
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


def _overlaps(
    upper: np.ndarray, lower: np.ndarray, n_lower: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label pairs (a, b), both > 0, that share pixels, and how many: a sparse contingency table."""
    both = (upper > 0) & (lower > 0)
    pair_code = upper[both].astype(np.int64) * (n_lower + 1) + lower[both]
    n_codes = (int(upper.max(initial=0)) + 1) * (n_lower + 1)
    if n_codes <= MAX_DENSE_CONTINGENCY:
        counts = np.bincount(pair_code, minlength=n_codes)
        codes = np.flatnonzero(counts)
        counts = counts[codes]
    else:  # very many segments per slice: sort the pairs rather than count every possible pair
        codes, counts = np.unique(pair_code, return_counts=True)
    return codes // (n_lower + 1), codes % (n_lower + 1), counts


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


def _check_setting(name: str, value, kind: type, least: float, most: float | None = None) -> None:
    """Raise a ValueError naming the setting unless ``value`` is a ``kind`` in [least, most]."""
    what = "a number" if kind is Real else "an integer"
    limits = f">= {least}" if most is None else f"in [{least}, {most}]"
    valid = isinstance(value, kind) and not isinstance(value, bool)
    if not valid or value < least or (most is not None and value > most):
        raise ValueError(f"post-processing {name} must be {what} {limits}, not {value!r}")
