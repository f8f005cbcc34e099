"""Overlaps of every pair of labels of two label images, from one sparse contingency table.

The CTC measures (:mod:`.metrics`) and the instance-matching metrics (:mod:`.instance_metrics`)
both start from this table: the two labels of every foreground voxel are packed into one code and
counted by a single ``np.unique``, so a frame costs a few passes over its voxels whatever its
number of objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ctc


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
    pair_ref, pair_res, counts = _contingency(ref, res)
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


def _contingency(ref: np.ndarray, res: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of two flat label images: (reference label, result label, voxels)
    for every pair that occurs, background included, except (0, 0).

    Labels up to 65535 are packed into one uint32 code per voxel (reference in the high half),
    so one ``np.unique`` (a vectorised sort) of the foreground voxels counts every pair at once.
    """
    empty = np.zeros(0, dtype=np.int64)
    if ref.size == 0:
        return empty, empty, empty
    if int(ref.max()) <= ctc.MAX_LABEL and int(res.max()) <= ctc.MAX_LABEL:
        ref = ref.astype(np.uint16, copy=False)
        res = res.astype(np.uint16, copy=False)
        foreground = (ref | res) != 0
        codes = (ref[foreground].astype(np.uint32) << 16) | res[foreground]
        del foreground
        pairs, counts = np.unique(codes, return_counts=True)
        return (pairs >> 16).astype(np.int64), (pairs & 0xFFFF).astype(np.int64), counts
    # Wider labels: number the labels that occur first, then pack those numbers.
    foreground = (ref != 0) | (res != 0)
    ref_values, ref_index = np.unique(ref[foreground], return_inverse=True)
    res_values, res_index = np.unique(res[foreground], return_inverse=True)
    del foreground
    codes = ref_index.astype(np.int64) * len(res_values) + res_index
    pairs, counts = np.unique(codes, return_counts=True)
    return (
        ref_values[pairs // len(res_values)].astype(np.int64),
        res_values[pairs % len(res_values)].astype(np.int64),
        counts,
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
