"""What every importer shares: writing splits as CTC sequences, and the mapping file beside them.

An importer describes each split as a list of :class:`SourceImage` (a name, the spatial shape,
and how to load the image and its instance labels); :func:`write_ctc_dataset` writes them as::

    DEST/01/t000.tif ...               one grey frame per source image, in the importer's order
    DEST/01_GT/SEG/man_seg000.tif      its instance labels (uint16), where the source has them
    DEST/02/ ...                       the next split
    DEST/import.json                   which source image became which frame, and every rule used

Rules (recorded in ``import.json``):

* Frames of one CTC sequence share one shape. Images of a split smaller than its largest are
  padded with zeros at the bottom and right (labels with background); their own shape is kept in
  the mapping and exporters crop the masks back to it, so instance masks stay lossless.
* Colour: the label image's shape is the spatial shape, so an image with one more axis of 2-4
  values (first or last) holds channels. Alpha (the last of 2 or 4 channels) is dropped;
  identical channels become that channel; otherwise ``grey="luminance"`` takes ITU-R BT.709
  luminance (``skimage.color.rgb2gray``: 0.2125 R + 0.7154 G + 0.0721 B), rounded back to the
  image's integer type, and ``grey="max"`` the brightest channel (better for multi-stain
  fluorescence, where luminance nearly drops a blue channel).
* Overlapping instances (COCO polygons, Kaggle runs): each pixel goes to the smallest object
  covering it (equal sizes: the later one); objects left with no pixel are listed as hidden.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .. import __version__, ctc
from ..files import atomic_write_text

log = logging.getLogger(__name__)

MAPPING_FILE = "import.json"
GREY_RULES = ("luminance", "max")
MAX_FRAMES = 10_000  # CTC frame names have at most 4 digits
SPLIT_ORDER = ("train", "training", "val", "valid", "validation", "test")


class FormatError(ctc.CTCFormatError):
    """A source file does not follow its format; the message names the file and says why."""


@dataclass(frozen=True)
class SourceImage:
    """One image of a split and how to load it (loaded only when its frame is written)."""

    name: str  # how the source names it (a path relative to the source, an id): for the mapping
    shape: tuple[int, ...]  # spatial shape (Y, X) or (Z, Y, X)
    load_image: Callable[[], np.ndarray]
    # Returns the labels, or the labels and entries for the mapping; None: no annotation.
    load_labels: Callable[[], np.ndarray | tuple[np.ndarray, dict]] | None = None
    info: dict = field(default_factory=dict)  # format-specific entries for the mapping
    path: Path | None = None  # the image file, for error messages


@dataclass(frozen=True)
class Split:
    name: str
    images: Sequence[SourceImage]


def write_ctc_dataset(
    dest: str | os.PathLike,
    fmt: str,
    splits: Sequence[Split],
    *,
    sources: Sequence[str | os.PathLike],
    grey: str = "luminance",
    rules: dict | None = None,
) -> dict:
    """Write splits as CTC sequences 01, 02, ... under ``dest`` and ``dest/import.json``.

    Parameters
    ----------
    dest
        The dataset folder to create; it must not exist or be empty.
    fmt, sources, rules
        Recorded in the mapping (``rules``: format-specific rules, beside the common ones).
    grey
        How colour images become grey: ``"luminance"`` or ``"max"`` (module docstring).

    Returns
    -------
    The mapping, as written to ``import.json``.
    """
    dest = Path(dest)
    if grey not in GREY_RULES:
        raise ValueError(f"grey rule must be one of {GREY_RULES}, not {grey!r}")
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest}: the destination exists and is not empty; choose a new one")
    if not splits or not any(split.images for split in splits):
        raise FormatError(f"{', '.join(map(str, sources))}: no images found to import")
    mapping = {
        "format": fmt,
        "sources": [str(Path(s).resolve()) for s in sources],
        "created_by": f"efficientcellseg {__version__}",
        "rules": {
            "padding": "zeros at the bottom/right up to the largest image of the split; "
            "exports crop back to each image's own shape",
            "grey": _GREY_TEXT[grey],
            **(rules or {}),
        },
        "sequences": {},
    }
    for index, split in enumerate(s for s in splits if s.images):
        sequence = f"{index + 1:02d}"
        mapping["sequences"][sequence] = _write_split(dest, sequence, split, grey)
    atomic_write_text(dest / MAPPING_FILE, json.dumps(mapping, indent=1) + "\n")
    return mapping


def read_mapping(dataset_dir: str | os.PathLike) -> dict:
    """The ``import.json`` of an imported dataset folder."""
    path = Path(dataset_dir) / MAPPING_FILE
    try:
        mapping = json.loads(path.read_text())
    except FileNotFoundError:
        raise FormatError(
            f"{path}: no import mapping; export-results needs a dataset made by "
            "'efficientcellseg import'"
        ) from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(mapping, dict) or "sequences" not in mapping:
        raise FormatError(f"{path}: not an import mapping (no 'sequences')")
    return mapping


def exported_masks(
    dataset_dir: str | os.PathLike,
    sequence: str,
    results: str | os.PathLike | None = None,
    *,
    ground_truth: bool = False,
) -> Iterator[tuple[dict, np.ndarray | None]]:
    """Each frame's mapping entry and its mask, cropped back to the source image's shape.

    Parameters
    ----------
    results
        Folder of ``mask###.tif`` (default ``DATASET_DIR/SEQ_RES``).
    ground_truth
        Yield the imported ``SEQ_GT/SEG`` masks instead (None for frames without one).
    """
    dataset_dir = Path(dataset_dir)
    mapping = read_mapping(dataset_dir)
    if sequence not in mapping["sequences"]:
        raise FormatError(
            f"{dataset_dir / MAPPING_FILE}: no sequence {sequence!r} "
            f"(it has {', '.join(mapping['sequences'])})"
        )
    entry = mapping["sequences"][sequence]
    digits, frame_shape = entry["digits"], tuple(entry["frame_shape"])
    if ground_truth:
        folder, prefix = dataset_dir / f"{sequence}_GT" / "SEG", "man_seg"
    else:
        folder, prefix = Path(results) if results else dataset_dir / f"{sequence}_RES", "mask"
    for frame in entry["frames"]:
        path = folder / f"{prefix}{frame['frame']:0{digits}d}.tif"
        if ground_truth and not path.is_file():
            yield frame, None
            continue
        labels = ctc.read_labels(path, frame_shape)
        yield frame, labels[tuple(slice(0, n) for n in frame["shape"])]


def paint_instances(
    shape: tuple[int, ...], objects: Sequence[np.ndarray]
) -> tuple[np.ndarray, int, list[int]]:
    """Label image from possibly overlapping objects: the smallest object covering a pixel gets it.

    Parameters
    ----------
    objects
        Flat (C-order) pixel indices of each object; object k becomes label k + 1.

    Returns
    -------
    The labels (uint16), the number of pixels covered by more than one object, and the labels of
    objects left with no pixel.
    """
    if len(objects) > ctc.MAX_LABEL:
        raise ValueError(f"{len(objects)} objects do not fit uint16 labels (at most 65535)")
    labels = np.zeros(int(np.prod(shape)), dtype=np.uint16)
    coverage = np.zeros(labels.size, dtype=np.uint16)
    sizes = np.array([len(o) for o in objects], dtype=np.int64)
    # Largest first, so smaller objects overwrite; stable, so the later of equal sizes wins.
    for k in np.argsort(-sizes, kind="stable"):
        labels[objects[k]] = k + 1
        coverage[objects[k]] += 1
    present = np.zeros(len(objects) + 1, dtype=bool)
    present[labels] = True
    hidden = [k + 1 for k in range(len(objects)) if sizes[k] and not present[k + 1]]
    return labels.reshape(shape), int(np.count_nonzero(coverage > 1)), hidden


def read_any_image(path: Path) -> np.ndarray:
    """An image file: TIFF through tifffile, PNG/BMP/JPEG through OpenCV (channels as RGB)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return ctc.read_image(path)
    if not path.is_file():
        raise FormatError(f"{path}: file does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FormatError(f"{path}: not an image OpenCV can read (PNG, BMP, JPEG or TIFF)")
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[..., ::-1]  # OpenCV's BGR
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(image)


def image_shape(path: Path) -> tuple[int, ...]:
    """Shape of an image file (TIFF: from its header), channels included."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return ctc.tiff_shape(path)
    return read_any_image(path).shape


def to_grey(image: np.ndarray, shape: tuple[int, ...], grey: str, path: Path) -> tuple:
    """The grey image of the spatial ``shape`` and how it was made (module docstring rule)."""
    if image.shape == shape:
        return image, "grey"
    if image.ndim == len(shape) + 1 and image.shape[:-1] == shape and 2 <= image.shape[-1] <= 4:
        channels = image
    elif image.ndim == len(shape) + 1 and image.shape[1:] == shape and 2 <= image.shape[0] <= 4:
        channels = np.moveaxis(image, 0, -1)
    else:
        raise FormatError(
            f"{path}: image shape {image.shape} fits neither its labels' shape {shape} nor that "
            "shape with 2-4 colour channels"
        )
    how = []
    if channels.shape[-1] in (2, 4):
        channels = channels[..., :-1]
        how.append("alpha dropped")
    if all(np.array_equal(channels[..., 0], channels[..., c]) for c in range(channels.shape[-1])):
        return channels[..., 0].copy(), ", ".join([*how, "identical channels"])
    if channels.shape[-1] == 3 and grey == "luminance":
        from skimage.color import rgb2gray

        value = rgb2gray(channels)  # floats in [0, 1] of the integer type's range
        if np.issubdtype(image.dtype, np.integer):
            value = np.rint(value * np.iinfo(image.dtype).max).astype(image.dtype)
        return value, ", ".join([*how, "luminance"])
    return channels.max(axis=-1), ", ".join([*how, "max of channels"])


def split_order(name: str) -> tuple[int, str]:
    """Sort key of split folders: train, val, test first, then the others by name."""
    lower = name.lower()
    return (SPLIT_ORDER.index(lower) if lower in SPLIT_ORDER else len(SPLIT_ORDER), name)


_GREY_TEXT = {
    "luminance": "channel axis = the one the labels lack; alpha dropped; identical channels kept "
    "as one; else ITU-R BT.709 luminance (skimage.color.rgb2gray), rounded to the image's type",
    "max": "channel axis = the one the labels lack; alpha dropped; identical channels kept as "
    "one; else the maximum over the channels",
}


def _write_split(dest: Path, sequence: str, split: Split, grey: str) -> dict:
    images = split.images
    if len(images) > MAX_FRAMES:
        raise FormatError(
            f"split {split.name}: {len(images)} images exceed the {MAX_FRAMES} frames a CTC "
            "sequence can number; split the source"
        )
    ndims = {len(image.shape) for image in images}
    if len(ndims) > 1:
        raise FormatError(f"split {split.name}: mixes 2D and 3D images; import them separately")
    frame_shape = tuple(int(n) for n in np.max([image.shape for image in images], axis=0))
    digits = 3 if len(images) <= 1000 else 4
    frames = []
    padded = 0
    for t, source in enumerate(images):
        where = source.path or source.name
        image, colour = to_grey(source.load_image(), tuple(source.shape), grey, Path(where))
        pad = [(0, full - own) for full, own in zip(frame_shape, source.shape, strict=True)]
        padded += any(after for _, after in pad)
        ctc.write_tiff(dest / sequence / ctc.frame_name(t, digits), np.pad(image, pad))
        entry = {"frame": t, "source": source.name, "shape": list(source.shape), **source.info}
        if colour != "grey":
            entry["colour"] = colour
        if source.load_labels is not None:
            labels = source.load_labels()
            labels, found = labels if isinstance(labels, tuple) else (labels, {})
            if labels.size and labels.max() > ctc.MAX_LABEL:
                raise FormatError(
                    f"{where}: labels reach {labels.max()}, above the 65535 a CTC mask holds; "
                    "number the objects from 1"
                )
            if labels.shape != tuple(source.shape):
                raise FormatError(
                    f"{where}: labels of shape {labels.shape} for an image of shape {source.shape}"
                )
            name = f"man_seg{t:0{digits}d}.tif"
            ctc.write_labels(dest / f"{sequence}_GT" / "SEG" / name, np.pad(labels, pad))
            entry["objects"] = len(np.unique(labels[labels > 0]))
            entry |= found
        frames.append(entry)
    log.info(
        "split %s -> sequence %s: %d frames of %s%s",
        split.name,
        sequence,
        len(frames),
        "x".join(map(str, frame_shape)),
        f" ({padded} padded to that shape)" if padded else "",
    )
    return {
        "split": split.name,
        "digits": digits,
        "frame_shape": list(frame_shape),
        "padded_frames": padded,
        "frames": frames,
    }
