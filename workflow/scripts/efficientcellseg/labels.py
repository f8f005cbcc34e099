"""Label images: the overlap table of two of them, and renumbering. Shared by the
post-processing (linking slices) and the metrics (matching objects).
"""

from __future__ import annotations

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
