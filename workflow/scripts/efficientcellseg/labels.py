"""Label images: the overlap table of two of them, the objects' overlaps, and renumbering.
Shared by the post-processing (linking slices) and the metrics (matching objects): a pair of
frames costs a few passes over its voxels whatever its number of objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_DENSE_PAIRS = 1 << 22  # label pairs counted with np.bincount; beyond, by sorting


def overlap_table(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of two non-negative label images of one shape.

    Returns ``(label in a, label in b, pixels)`` (int64) for every pair of labels that share
    pixels, background (0) included, except (0, 0): the sizes of the objects are sums over the
    rows, and the pairs with both labels positive are the overlaps. Few labels are counted at
    once with ``np.bincount``; many (or large) labels by sorting packed pair codes.
    """
    if a.shape != b.shape:
        raise ValueError(f"label images of shapes {a.shape} and {b.shape} cannot be compared")
    empty = np.zeros(0, dtype=np.int64)
    if a.size == 0:
        return empty, empty, empty
    a, b = a.ravel(), b.ravel()
    top_a, top_b = int(a.max()), int(b.max())
    if (top_a + 1) * (top_b + 1) <= MAX_DENSE_PAIRS:
        counts = np.bincount(
            a.astype(np.int64) * (top_b + 1) + b, minlength=(top_a + 1) * (top_b + 1)
        )
        counts[0] = 0  # (0, 0): background in both
        codes = np.flatnonzero(counts)
        return codes // (top_b + 1), codes % (top_b + 1), counts[codes]
    foreground = (a != 0) | (b != 0)
    a, b = a[foreground], b[foreground]
    if max(top_a, top_b) <= np.iinfo(np.uint16).max:  # pack both into one uint32 per pixel
        codes = (a.astype(np.uint32) << 16) | b.astype(np.uint32)
        pairs, counts = np.unique(codes, return_counts=True)
        return (pairs >> 16).astype(np.int64), (pairs & 0xFFFF).astype(np.int64), counts
    # Wide labels: number the labels that occur first, then pack those numbers.
    a_values, a_index = np.unique(a, return_inverse=True)
    b_values, b_index = np.unique(b, return_inverse=True)
    pairs, counts = np.unique(
        a_index.astype(np.int64) * len(b_values) + b_index, return_counts=True
    )
    return (
        a_values[pairs // len(b_values)].astype(np.int64),
        b_values[pairs % len(b_values)].astype(np.int64),
        counts,
    )


def renumber(
    labels: np.ndarray, keep: np.ndarray | None = None, dtype=np.int32
) -> tuple[np.ndarray, int]:
    """Labels renumbered 1..n in the order of their values (0 stays 0), and n.

    ``keep`` (boolean, indexed by label value) drops the labels where it is False. Labels that
    are already 1..n and all kept come back unchanged, without a relabelling pass.
    """
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    top = int(labels.max(initial=0))
    if keep is None and top > labels.size:  # sparse large values: no lookup table that large
        values, inverse = np.unique(labels, return_inverse=True)
        shift = 0 if values[0] == 0 else 1
        return (inverse.reshape(labels.shape) + shift).astype(dtype), len(values) - 1 + shift
    present = np.bincount(labels.ravel(), minlength=top + 1) > 0
    if keep is not None:
        present &= keep[: top + 1]
    present[0] = False
    count = int(present.sum())
    if count == top:  # already 1..top, all kept
        return labels.astype(dtype, copy=False), count
    if count > np.iinfo(dtype).max:
        raise ValueError(f"{count} labels do not fit {np.dtype(dtype).name}")
    new_label = np.zeros(top + 1, dtype=dtype)
    new_label[present] = np.arange(1, count + 1, dtype=dtype)
    return new_label[labels], count


@dataclass(frozen=True)
class LabelOverlaps:
    """Labels of two images, their sizes, and the overlap of every pair of labels that touch."""

    ref_labels: np.ndarray  # sorted positive labels present in the reference
    ref_sizes: np.ndarray
    res_labels: np.ndarray
    res_sizes: np.ndarray
    pair_ref: np.ndarray  # index into ref_labels
    pair_res: np.ndarray  # index into res_labels
    pair_count: np.ndarray  # voxels shared by the pair (> 0)

    def matched(self) -> np.ndarray:
        """Pairs whose result object covers more than half of the reference object (strictly).

        At most one pair per reference object can pass: two would need more than all of it.
        """
        return 2 * self.pair_count > self.ref_sizes[self.pair_ref]

    def pair_iou(self) -> np.ndarray:
        """Intersection over union of every overlapping pair (same order as ``pair_count``)."""
        union = self.ref_sizes[self.pair_ref] + self.res_sizes[self.pair_res] - self.pair_count
        return self.pair_count / union


def label_overlaps(reference: np.ndarray, result: np.ndarray) -> LabelOverlaps:
    """Every positive label of two label images of equal shape, its size, and every overlap.

    Parameters
    ----------
    reference, result
        Integer (or boolean) label images of the same shape; 0 is background.
    """
    if np.shape(reference) != np.shape(result):
        raise ValueError(
            f"reference shape {np.shape(reference)} differs from result shape {np.shape(result)}"
        )
    ref = _flat_labels(reference, "reference")
    res = _flat_labels(result, "result")
    pair_ref, pair_res, counts = overlap_table(ref, res)
    ref_labels, ref_sizes = _marginal(pair_ref, counts)
    res_labels, res_sizes = _marginal(pair_res, counts)
    both = (pair_ref != 0) & (pair_res != 0)
    return LabelOverlaps(
        ref_labels,
        ref_sizes,
        res_labels,
        res_sizes,
        np.searchsorted(ref_labels, pair_ref[both]),
        np.searchsorted(res_labels, pair_res[both]),
        counts[both],
    )


def _marginal(labels: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positive labels of one side of the table and their sizes (voxel counts)."""
    values, index = np.unique(labels, return_inverse=True)
    sizes = np.zeros(len(values), dtype=np.int64)
    np.add.at(sizes, index, counts)
    keep = values != 0
    return values[keep], sizes[keep]


def _flat_labels(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} labels must be integers, not {labels.dtype}")
    flat = labels.reshape(-1)
    if flat.size and np.issubdtype(flat.dtype, np.signedinteger) and flat.min() < 0:
        raise ValueError(f"{what} labels must not be negative")
    return flat
