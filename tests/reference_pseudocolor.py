"""The published context-aware pseudocoloring, written plainly: one slice at a time, with a loop.

This is the yardstick for :mod:`efficientcellseg.pseudocolor` (tests compare to it, the benchmark
times it). It follows the published algorithm (Wagner & Rohr 2022, arXiv:2204.03014, and the
pseudocoloring of their public code) step by step and makes no attempt to be fast: the CLAHE
of a slice is recomputed for each neighbour that uses it, and the adaptive threshold is the
published loop. Everything is float64, as in the published code.

One guard the published code lacks: normalising a constant positive image divides 0 by 0 there
(NaN); here it gives zeros, which is what the library does too.
"""

from __future__ import annotations

import cv2
import numpy as np


def published_pseudocolor(stack: np.ndarray) -> np.ndarray:
    """(Z, H, W, 3) float64 pseudocolor of a (Z, H, W) uint8/uint16 stack, slice by slice."""
    return np.stack([published_pseudocolor_slice(stack, z) for z in range(len(stack))])


def published_pseudocolor_slice(stack: np.ndarray, z: int) -> np.ndarray:
    """(H, W, 3) float64: R = context of slice z - 1, G = slice z, B = context of slice z + 1."""
    missing = np.zeros(stack.shape[1:], dtype=stack.dtype)
    previous = stack[z - 1] if z > 0 else missing
    following = stack[z + 1] if z < len(stack) - 1 else missing
    green = normalise(stack[z])
    red_mask, _ = threshold_loop(context(previous))
    blue_mask, _ = threshold_loop(context(following))
    red = normalise(red_mask * green + green)
    blue = normalise(blue_mask * green + green)
    return np.dstack([red, green, blue])


def context(neighbour: np.ndarray) -> np.ndarray:
    """CLAHE on the raw neighbour (not when it is all zero), normalise, 8 x 8 box blur."""
    if neighbour.max() > 0:
        clahe = cv2.createCLAHE(clipLimit=10.0, tileGridSize=(16, 16))
        neighbour = clahe.apply(neighbour)
    return cv2.blur(normalise(neighbour), (8, 8))


def threshold_loop(channel: np.ndarray) -> tuple[np.ndarray, int]:
    """The published adaptive threshold: raise t from 0.2 by 0.01 until 0 < fraction <= 0.03.

    Returns the mask of the last t tried (as 0/1 float64) and how many t were tried.
    """
    mask = np.zeros(channel.shape)
    t = 0.2
    tries = 0
    while (mask.mean() > 0.03 or mask.mean() == 0) and tries < 30:
        mask = (channel > t).astype(np.float64)
        t += 0.01
        tries += 1
    return mask, tries


def normalise(image: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) as float64 when max > 0 (and max > min); zeros otherwise."""
    image = np.asarray(image)
    low, high = image.min(), image.max()
    if high > 0 and high > low:
        return (image - low) / (high - low)
    return np.zeros(image.shape)
