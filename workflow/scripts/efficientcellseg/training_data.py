"""Training samples: pseudocolored annotated slices, their targets, augmentation and the split.

The CNN works on 2D slices. Every annotated slice of a sequence becomes one sample: the
pseudocolor of that slice (computed from the whole stack, so it carries its z-context) and the
instance labels of the annotation. Full 3D annotations give one sample per slice, empty ones
included, per-slice annotations (``man_seg_TTT_ZZZ.tif``) one sample each, 2D frames one sample
per frame.

Empty slices are all kept because they are the hard negatives: the normalisation stretches
their noise to [0, 1], and next to a slice with cells their context channels show that
neighbour's nuclei. Keeping only every 4th of them let the tiny network, trained on synthetic
sequences, mark 19% of such a slice of a held-out sequence as cell (at most 0.9% in five runs
with all of them).

Samples of one sequence are stored in one ``.npz`` (pseudocolor as float16) by the workflow's
pseudocolor rule; training picks the CTC training configuration GT, ST or GT+ST from it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import ctc
from .files import atomic_output
from .pseudocolor import pseudocolor_frame
from .settings import TASKS, TRAINING_SETS, Augmentation
from .targets import centre_heatmap, foreground_target

log = logging.getLogger(__name__)


@dataclass
class AnnotatedSlices:
    """Annotated slices of one or more sequences, aligned along the first axis."""

    images: np.ndarray  # (N, H, W, 3) float16 pseudocolor
    labels: np.ndarray  # (N, H, W) uint16 instance labels
    sequences: np.ndarray  # (N,) sequence names
    frames: np.ndarray  # (N,) frame numbers
    slices: np.ndarray  # (N,) slice index, -1 for 2D frames
    sources: np.ndarray  # (N,) "GT" or "ST"
    # (N,) True when the slice comes from an annotation of the whole frame (2D or 3D), False
    # for a per-slice annotation (``man_seg_TTT_ZZZ.tif``)
    whole_frame: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, index) -> AnnotatedSlices:
        return AnnotatedSlices(*(getattr(self, name)[index] for name in self.__dataclass_fields__))

    @classmethod
    def concatenate(cls, parts: list[AnnotatedSlices]) -> AnnotatedSlices:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no annotated slices to concatenate")
        shapes = {p.images.shape[1:] for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"sequences have different slice shapes {sorted(shapes)}")
        return cls(
            *(np.concatenate([getattr(p, n) for p in parts]) for n in cls.__dataclass_fields__)
        )


def collect_annotated_slices(
    dataset_dir: str | Path, sequence: str, sources: tuple[str, ...] = ("GT", "ST")
) -> AnnotatedSlices:
    """Pseudocolor every annotated slice of a sequence (each stack is pseudocolored once)."""
    seq = ctc.open_sequence(dataset_dir, sequence)
    by_frame: dict[int, list[tuple[str, ctc.SegAnnotation]]] = defaultdict(list)
    for source in sources:
        for ann in seq.annotations(source):
            by_frame[ann.frame].append((source, ann))
    if not by_frame:
        raise ValueError(f"{seq.path}: no {'/'.join(sources)} segmentation annotations to train on")
    images, labels, frames, slices, kinds, whole = [], [], [], [], [], []
    for frame, frame_annotations in sorted(by_frame.items()):
        colour = pseudocolor_frame(ctc.read_image(seq.frames[frame])).astype(np.float16)
        for source, ann in frame_annotations:
            mask = ctc.read_annotation(ann, seq.frame_shape)
            for z, colour_slice, label_slice in _annotated_slices(colour, mask, ann, seq.ndim):
                images.append(colour_slice)
                labels.append(_as_uint16(label_slice, ann))
                frames.append(frame)
                slices.append(z)
                kinds.append(source)
                whole.append(not ann.is_slice)
    log.info("%s: %d annotated slices from %d frames", seq.path, len(frames), len(by_frame))
    return AnnotatedSlices(
        images=np.stack(images),
        labels=np.stack(labels),
        sequences=np.full(len(frames), sequence),
        frames=np.array(frames),
        slices=np.array(slices),
        sources=np.array(kinds),
        whole_frame=np.array(whole, dtype=bool),
    )


def _as_uint16(labels: np.ndarray, ann: ctc.SegAnnotation) -> np.ndarray:
    """Labels as uint16; a slice with more objects than that is relabelled 1..n (2D only)."""
    if labels.max(initial=0) <= np.iinfo(np.uint16).max:
        return labels.astype(np.uint16)
    unique, inverse = np.unique(labels, return_inverse=True)
    if unique[0] != 0:
        inverse += 1
    if inverse.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{ann.path}: more than 65535 objects in one slice")
    return inverse.reshape(labels.shape).astype(np.uint16)


def _annotated_slices(colour: np.ndarray, mask: np.ndarray, ann: ctc.SegAnnotation, ndim: int):
    if ndim == 2:
        yield -1, colour, mask
    elif ann.is_slice:
        yield ann.slice, colour[ann.slice], mask
    else:
        yield from zip(range(len(mask)), colour, mask, strict=True)


def save_annotated_slices(path: str | Path, data: AnnotatedSlices) -> None:
    """Store as an uncompressed ``.npz`` (float16 barely compresses), written atomically."""
    with atomic_output(path) as tmp:
        np.savez(tmp, **{name: getattr(data, name) for name in data.__dataclass_fields__})


def load_annotated_slices(paths: list[str | Path]) -> AnnotatedSlices:
    """Read and concatenate stored slices (of one or more sequences)."""
    parts = []
    for path in paths:
        with np.load(path, allow_pickle=False) as stored:
            missing = sorted(set(AnnotatedSlices.__dataclass_fields__) - set(stored.files))
            if missing:
                raise ValueError(
                    f"{path}: stored slices lack {missing} (written by an older version); "
                    "delete the file and pseudocolor the sequence again"
                )
            parts.append(
                AnnotatedSlices(**{k: stored[k] for k in AnnotatedSlices.__dataclass_fields__})
            )
    return AnnotatedSlices.concatenate(parts)


def select_training_set(data: AnnotatedSlices, training_set: str) -> AnnotatedSlices:
    """Slices of a CTC training configuration: ``GT``, ``ST`` or ``GT+ST``.

    With GT+ST, gold truth wins where both exist: a frame with a whole-frame gold annotation
    takes no silver slice at all (the gold one says what every slice holds, including empty
    ones), and a per-slice gold annotation replaces the silver truth of that slice only.
    """
    if training_set not in TRAINING_SETS:
        raise ValueError(f"training set {training_set!r} is not one of {TRAINING_SETS}")
    if training_set in ("GT", "ST"):
        keep = data.sources == training_set
    else:
        frames = zip(data.sequences.tolist(), data.frames.tolist(), strict=True)
        keys = [(*frame, z) for frame, z in zip(frames, data.slices.tolist(), strict=True)]
        gold = data.sources == "GT"
        whole_gold = gold & data.whole_frame
        gold_frames = {key[:2] for key, g in zip(keys, whole_gold, strict=True) if g}
        gold_slices = {key for key, g in zip(keys, gold, strict=True) if g}
        keep = gold | np.array(
            [key[:2] not in gold_frames and key not in gold_slices for key in keys], dtype=bool
        )
    if not keep.any():
        raise ValueError(
            f"no {training_set} annotations among the training slices "
            f"(sources present: {sorted(set(data.sources.tolist()))})"
        )
    return data.subset(keep)


def validation_split(
    data: AnnotatedSlices, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation samples, split by whole frames.

    Neighbouring slices of one frame are nearly the same image; splitting by frame keeps the
    validation score honest. With a single frame, slices are split instead.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    groups = sorted(set(zip(data.sequences.tolist(), data.frames.tolist(), strict=True)))
    if len(groups) >= 2:
        n_val = min(len(groups) - 1, max(1, round(fraction * len(groups))))
        chosen = {groups[i] for i in rng.choice(len(groups), n_val, replace=False)}
        is_val = np.array(
            [g in chosen for g in zip(data.sequences.tolist(), data.frames.tolist(), strict=True)]
        )
    else:
        is_val = np.zeros(len(data), dtype=bool)
        n_val = max(1, round(fraction * len(data)))
        is_val[rng.choice(len(data), n_val, replace=False)] = True
    if is_val.all() or not is_val.any():
        raise ValueError(f"need at least 2 annotated slices to hold some apart, got {len(data)}")
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def make_target(labels: np.ndarray, task: str) -> np.ndarray:
    """Network target of one 2D label image: binary cells, or the cell-centre heatmap."""
    if task == "segmentation":
        return foreground_target(labels)
    if task == "centres":
        return centre_heatmap(labels)
    raise ValueError(f"task {task!r} is not one of {TASKS}")


def prepare_sample(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    size: int,
    task: str,
    crop: int | None = None,
    augmentation: Augmentation | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One (input, target) pair at the network's inner size ``size`` x ``size``.

    ``crop`` (pixels of the original slice) cuts a random square first, as for tiled datasets.
    Image and labels go through one affine warp (linear for the image, nearest for labels), and
    the target is computed from the warped labels so that centres stay consistent.
    """
    rng = rng or np.random.default_rng()
    aug = augmentation or Augmentation.none()
    height, width = labels.shape
    scale = rng.uniform(*aug.scale_range)
    # The window of the slice (in its pixels) that maps onto the size x size output; when it is
    # larger than the slice (zooming out), the slice lies somewhere inside it.
    src_h = (min(crop, height) if crop else height) / scale
    src_w = (min(crop, width) if crop else width) / scale
    top = rng.uniform(min(0.0, height - src_h), max(0.0, height - src_h))
    left = rng.uniform(min(0.0, width - src_w), max(0.0, width - src_w))
    matrix = _window_transform(top, left, src_h, src_w, size, aug, rng)
    warped_image = cv2.warpAffine(
        np.ascontiguousarray(image, dtype=np.float32),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
    )
    warped_labels = _warp_labels(labels, matrix, size)
    if aug.gamma_range != (1.0, 1.0) or aug.gain_range != (1.0, 1.0):
        gamma = rng.uniform(*aug.gamma_range)
        gain = rng.uniform(*aug.gain_range)
        warped_image = np.clip(gain * np.power(np.clip(warped_image, 0, 1), gamma), 0, 1)
    target = make_target(warped_labels, task)
    return warped_image.astype(np.float32), target[..., None].astype(np.float32)


def _window_transform(top, left, src_h, src_w, size, aug: Augmentation, rng) -> np.ndarray:
    """2x3 affine matrix: window -> output square, then a random flip and 90-degree rotation."""
    sx, sy = size / src_w, size / src_h
    scale = np.array([[sx, 0, -left * sx], [0, sy, -top * sy], [0, 0, 1]])
    centre = (size - 1) / 2
    to_centre = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]])
    back = np.array([[1, 0, centre], [0, 1, centre], [0, 0, 1]])
    turn = np.eye(3)
    if aug.rotations:
        k = rng.integers(4)
        c, s = np.round(np.cos(k * np.pi / 2)), np.round(np.sin(k * np.pi / 2))
        turn = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if aug.flips and rng.random() < 0.5:
        turn = np.diag([-1.0, 1.0, 1.0]) @ turn
    return (back @ turn @ to_centre @ scale)[:2].astype(np.float64)


def _warp_labels(labels: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour warp of a label image (OpenCV cannot warp uint32 labels directly)."""
    kind = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.float32
    warped = cv2.warpAffine(
        labels.astype(kind),
        matrix,
        (size, size),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
    )
    return warped.astype(np.uint32)
