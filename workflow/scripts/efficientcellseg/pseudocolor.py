"""Context-aware pseudocoloring (Wagner & Rohr 2022): each slice of a stack as an RGB image.

Green is the slice itself; red and blue mark where the previous and the next slice hold bright
structures, which lets a 2D network see the z-context of every slice. Per slice ``z``:

1. The neighbour ``n`` (``z - 1`` for red, ``z + 1`` for blue; all zeros beyond the stack ends) is
   contrast-equalised with OpenCV CLAHE (clip limit 10, 16 x 16 tiles) on its raw integer values
   (skipped on an all-zero slice), normalised to [0, 1] and box-blurred 8 x 8 (``cv2.blur``).
2. An adaptive threshold turns it into a mask: the published loop tries t = 0.2, 0.21, ... (at
   most 30 values) and stops at the first t whose foreground fraction lies in (0, 0.03]; when no
   t qualifies the mask of the last t tried (about 0.49) is kept.
3. Multiply-accumulate with the normalised slice ``g``: ``mask * g + g``, normalised again.

This module gives the published result (to float32 rounding; the output is float32) while doing
each step once: the context of a slice depends on that slice alone, so its CLAHE, blur and mask
are computed once and serve both neighbours (the published code computes them twice), and the
loop's stopping point is found by bisection over the fixed sequence of thresholds, which are the
exact floats that repeated ``t += 0.01`` produces. The context steps run in float64 like the
published code, because the threshold comparisons are sensitive to the last bit: blurred values
can equal a threshold mathematically (on the real CHO sample, a float32 context changes masks).
Slices are processed one at a time with reused buffers, which keeps the working set in cache and
is about twice as fast as whole-stack array expressions; slices are spread over threads (OpenCV
and NumPy release the GIL), each with its own buffers, taking the next slice when free. CLAHE
of uint16 slices is OpenCV's result computed at the grey levels present (:mod:`.clahe`; OpenCV
fills a 65536-entry table for each of the 256 tiles), about 5 times less CPU and identical.

One deliberate difference: the published normalisation divides by zero on a constant slice with
positive values and returns NaN; here such a slice normalises to zeros (as a context channel this
changes nothing, because NaN never passes a threshold).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .clahe import clahe
from .inference import resolve_threads

log = logging.getLogger(__name__)

CLAHE_CLIP_LIMIT = 10.0
CLAHE_TILE_GRID = (16, 16)
BLUR_KERNEL = (8, 8)
FIRST_THRESHOLD = 0.2
THRESHOLD_STEP = 0.01
MAX_THRESHOLD_TRIES = 30
MAX_FOREGROUND_FRACTION = 0.03  # about twice the mean foreground fraction of the gold truth
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
OUTPUT_DTYPES = ("float32", "float16", "uint8")

# The thresholds the published loop tries, accumulated exactly as its ``t += 0.01`` does.
THRESHOLDS = np.array(
    list(itertools.accumulate([FIRST_THRESHOLD] + [THRESHOLD_STEP] * (MAX_THRESHOLD_TRIES - 1)))
)


def pseudocolor_stack(stack: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Pseudocolor every slice of a (Z, H, W) uint8/uint16 stack.

    ``threads``: slices computed at once (None: one per available core); the result does not
    depend on it.

    Returns
    -------
    np.ndarray
        (Z, H, W, 3) float32 in [0, 1]: R = context of slice z - 1, G = slice z, B = context of
        slice z + 1. The first slice has no red context and the last no blue context: their
        red/blue channel is the normalised slice itself.

    Raises
    ------
    ValueError
        For anything but a non-empty 3D uint8/uint16 array, with advice on what to pass.
    """
    stack = _checked_intensities(stack, "pseudocolor_stack", ndims=(3,))
    masks = context_masks(stack, threads)
    colour = np.empty((*stack.shape, 3), dtype=np.float32)
    no_context = np.zeros(stack.shape[1:], dtype=bool)

    def colour_slices(slices: Iterator[int]) -> None:
        green = np.empty(stack.shape[1:], dtype=np.float32)
        scratch = np.empty_like(green)
        for z in slices:
            _normalise(stack[z], out=green)
            colour[z, ..., 1] = green
            previous = masks[z - 1] if z > 0 else no_context
            following = masks[z + 1] if z + 1 < len(stack) else no_context
            _context_weighted(green, previous, out=colour[z, ..., 0], scratch=scratch)
            _context_weighted(green, following, out=colour[z, ..., 2], scratch=scratch)

    _spread_slices(colour_slices, len(stack), threads)
    return colour


def pseudocolor_frame(frame: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Pseudocolor a 2D (H, W) or 3D (Z, H, W) uint8/uint16 frame.

    A 3D frame gives (Z, H, W, 3), as :func:`pseudocolor_stack`. A 2D frame has no z-neighbours,
    so it is treated as a one-slice stack whose missing neighbours are all zeros (the rule for the
    ends of a stack): both context masks are empty and red = blue = green, the normalised frame.
    The result is (H, W, 3), a grey image, which keeps the network's 3-channel input and
    encodes "no context". ``threads`` as for :func:`pseudocolor_stack`.
    """
    frame = _checked_intensities(frame, "pseudocolor_frame", ndims=(2, 3))
    if frame.ndim == 2:
        return pseudocolor_stack(frame[np.newaxis], threads)[0]
    return pseudocolor_stack(frame, threads)


def cast_pseudocolor(colour: np.ndarray, dtype: str) -> np.ndarray:
    """Pseudocolor in one of OUTPUT_DTYPES: floats keep [0, 1], uint8 maps it to 0..255 (rounded).

    float16 is the compact type for training data; uint8 is for looking at the result.
    """
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"pseudocolor can be stored as {', '.join(OUTPUT_DTYPES)}, not {dtype!r}")
    if dtype == "uint8":
        return np.rint(colour * 255).astype(np.uint8)
    return colour.astype(dtype, copy=False)


def context_masks(stack: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The adaptive-threshold mask of every slice as a context channel, (Z, H, W) bool.

    Slice k's mask is the red channel's mask of slice k + 1 and the blue one's of slice k - 1.
    An all-zero slice gets an empty mask: it skips CLAHE, stays zero and no threshold passes.
    ``threads`` as for :func:`pseudocolor_stack`.
    """
    stack = _checked_intensities(stack, "context_masks", ndims=(3,))
    masks = np.zeros(stack.shape, dtype=bool)
    tries = np.zeros(len(stack), dtype=int)  # 0: an all-zero slice

    def mask_slices(slices: Iterator[int]) -> None:
        normalised = np.empty(stack.shape[1:], dtype=np.float64)
        blurred = np.empty_like(normalised)
        for z in slices:
            if not stack[z].any():
                continue
            _normalise(clahe(stack[z], CLAHE_CLIP_LIMIT, CLAHE_TILE_GRID), out=normalised)
            cv2.blur(normalised, BLUR_KERNEL, dst=blurred)
            tries[z] = threshold_tries(blurred)
            np.greater(blurred, THRESHOLDS[tries[z] - 1], out=masks[z])

    _spread_slices(mask_slices, len(stack), threads)
    log.debug(
        "context masks of %d slices (%d all zero, %d ran out of threshold tries)",
        len(stack),
        np.count_nonzero(tries == 0),
        np.count_nonzero(tries == MAX_THRESHOLD_TRIES),
    )
    return masks


def _spread_slices(work: Callable[[Iterator[int]], None], count: int, threads: int | None) -> None:
    """Run ``work`` on one thread per worker (at most ``threads``, None: one per available core),
    each taking the next of ``range(count)`` when it is free and allocating its buffers once.

    Taking slices as they come (rather than a fixed share each) keeps a thread whose core is
    busy with other work from holding up the whole stack.
    """
    workers = min(resolve_threads(threads), count)
    if workers == 1:
        work(iter(range(count)))
        return
    indices, lock = iter(range(count)), threading.Lock()

    def shared() -> Iterator[int]:
        while True:
            with lock:
                index = next(indices, None)
            if index is None:
                return
            yield index

    with ThreadPoolExecutor(workers, thread_name_prefix="pseudocolor") as pool:
        for _ in pool.map(lambda _: work(shared()), range(workers)):
            pass  # re-raises a worker's exception


def threshold_tries(context: np.ndarray) -> int:
    """How many thresholds the published loop tries on a blurred context channel (1 to 30).

    The loop stops after the first threshold t whose mask ``context > t`` covers a fraction of
    the pixels in (0, MAX_FOREGROUND_FRACTION]; the mask it keeps is that of the last t tried.
    The fraction never grows with t, so the first t with fraction <= the limit is found by
    bisection; if that mask is empty, every later one is too and the loop runs to the end.
    The bisection counts among the pixels above the first threshold only (usually a few %).
    """
    size = context.size
    candidates = context[context > THRESHOLDS[0]]

    @functools.cache
    def foreground(index: int) -> int:
        return np.count_nonzero(candidates > THRESHOLDS[index])

    low, high = 0, MAX_THRESHOLD_TRIES  # the first small-enough index lies in [low, high]
    while low < high:
        middle = (low + high) // 2
        if foreground(middle) / size <= MAX_FOREGROUND_FRACTION:
            high = middle
        else:
            low = middle + 1
    if low < MAX_THRESHOLD_TRIES and foreground(low) > 0:
        return low + 1
    return MAX_THRESHOLD_TRIES


def _normalise(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) of an integer image, computed in the float type of ``out``.

    In float64 this is bit for bit what NumPy gives for the expression on the integer image.
    An all-zero or constant image becomes zeros.
    """
    low, high = int(image.min()), int(image.max())
    np.subtract(image, low, out=out, dtype=out.dtype)
    if high > low:
        np.divide(out, high - low, out=out)
    return out


def _context_weighted(
    green: np.ndarray, mask: np.ndarray, out: np.ndarray, scratch: np.ndarray
) -> None:
    """Write ``normalise(mask * green + green)`` into ``out``.

    Green is exactly 0 at the slice's minimum, so the sum's minimum is 0 and normalising it
    divides by its maximum.
    """
    np.multiply(green, mask, out=scratch)
    scratch += green
    peak = scratch.max()
    if peak > 0:
        np.divide(scratch, peak, out=out)
    else:
        out[...] = 0


def _checked_intensities(image: np.ndarray, caller: str, ndims: tuple[int, ...]) -> np.ndarray:
    """The image as an array, or a ValueError saying what was wrong and what to pass instead."""
    image = np.asarray(image)
    shapes = " or ".join({2: "(H, W)", 3: "(Z, H, W)"}[n] for n in ndims)
    if image.ndim not in ndims:
        hint = " (use pseudocolor_frame for 2D frames)" if image.ndim == 2 else ""
        raise ValueError(
            f"{caller} expects a {shapes} image, got an array of shape {image.shape}{hint}"
        )
    if image.size == 0:
        raise ValueError(f"{caller} got an empty image of shape {image.shape}")
    if image.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{caller} got {image.dtype} intensities: {_dtype_advice(image)}")
    return image


def _dtype_advice(image: np.ndarray) -> str:
    need = "it needs raw uint8 or uint16 intensities, as read from the TIFF (CLAHE works on those)"
    if np.issubdtype(image.dtype, np.floating):
        return (
            f"{need}; do not rescale or normalise beforehand; integral float values can be "
            "converted with .astype(np.uint16)"
        )
    if np.issubdtype(image.dtype, np.signedinteger):
        low, high = int(image.min()), int(image.max())
        if low < 0:
            return f"{need}; this image holds negative values (min {low}): shift or clip them first"
        if high <= np.iinfo(np.uint16).max:
            return f"{need}; its values {low}..{high} fit, convert with .astype(np.uint16)"
        return f"{need}; its values reach {high}: rescale them to 0..65535 first"
    return need
