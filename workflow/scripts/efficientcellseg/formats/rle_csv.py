"""Kaggle run-length-encoded CSV (Sartorius Cell Instance Segmentation, Data Science Bowl 2018).

One row per object: an image id and ``start length start length ...``, starts 1-based and
absolute. Pixel order: Sartorius' ``train.csv`` numbers pixels left to right, then top to bottom
(row-major: decoding with ``reshape(height, width)`` gives the masks; its published notebooks and
pycocotools-based converters agree), although Kaggle's usual text (Data Science Bowl 2018) says
top to bottom, then left to right (column-major). ``order="row"`` (default) reads Sartorius,
``order="column"`` the column-major competitions.

Import: each CSV is a split; its images (``<id>.png`` or another image type, in the folder named
after the CSV: ``train.csv`` -> ``train/``) become frames in the order of their first row, their
rows labels 1, 2, ... in row order. Columns: ``id`` (or ``ImageId``) and ``annotation`` (or
``predicted``, ``EncodedPixels``); ``height``/``width`` columns, when present, give the shape
without reading the image. An empty encoding is an image without objects. Overlaps (Sartorius
masks overlap) follow the smallest-object rule of :mod:`.layout`.

Export: ``id,predicted`` rows, objects by increasing label, an image without objects as one row
with an empty encoding (as a Kaggle submission needs it). Masks do not overlap, so an import of
non-overlapping rows exports the same strings.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ..files import atomic_write_text
from .layout import (
    FormatError,
    SourceImage,
    Split,
    exported_masks,
    image_shape,
    paint_instances,
    read_any_image,
    read_mapping,
)

log = logging.getLogger(__name__)

ORDERS = ("row", "column")
ID_COLUMNS = ("id", "ImageId")
RLE_COLUMNS = ("annotation", "predicted", "EncodedPixels")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
ORDER_TEXT = {
    "row": "1-based start/length pairs, pixels numbered left to right, then top to bottom "
    "(Sartorius train.csv)",
    "column": "1-based start/length pairs, pixels numbered top to bottom, then left to right "
    "(Kaggle's usual text, Data Science Bowl 2018)",
}


def rle_csv_splits(
    sources: Sequence[str | os.PathLike],
    images_dir: str | os.PathLike | None = None,
    order: str = "row",
) -> list[Split]:
    """Splits of Kaggle RLE CSV files (module docstring)."""
    _check_order(order)
    if images_dir is not None and len(sources) > 1:
        raise ValueError("--images names one folder; import several CSV files one at a time")
    splits = []
    for source in map(Path, sources):
        rows, shapes = _read_rows(source)
        folder = Path(images_dir) if images_dir else source.parent / source.stem
        images = []
        for image_id, encodings in rows.items():
            path = _image_path(folder, image_id, source)
            shape = shapes.get(image_id) or _grey_shape(image_shape(path))
            images.append(
                SourceImage(
                    name=image_id,
                    shape=shape,
                    load_image=partial(read_any_image, path),
                    load_labels=partial(_labels, encodings, shape, order, source),
                    info={"id": image_id},
                    path=path,
                )
            )
        splits.append(Split(source.stem, images))
    return splits


def export_rle_csv(
    dataset_dir: str | os.PathLike,
    sequence: str,
    out: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    ground_truth: bool = False,
    order: str | None = None,
) -> Path:
    """Write the masks of one imported sequence as ``id,predicted`` rows (module docstring).

    ``order`` defaults to the pixel order the dataset was imported with (else ``"row"``).
    """
    mapping = read_mapping(dataset_dir)  # a clear error before any mask is read
    order = order or mapping["rules"].get("rle_order", "row")
    _check_order(order)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "predicted"])
    objects = 0
    for frame, mask in exported_masks(dataset_dir, sequence, results, ground_truth=ground_truth):
        if mask is None:
            continue
        image_id = frame.get("id", Path(frame["source"]).stem)
        encodings = encode_labels(mask, order)
        objects += len(encodings)
        for encoding in encodings or [""]:
            writer.writerow([image_id, encoding])
    atomic_write_text(out, text.getvalue())
    log.info("%s: %d objects", out, objects)
    return Path(out)


def encode_labels(labels: np.ndarray, order: str = "row") -> list[str]:
    """Run-length encodings of every object of a 2D label image, by increasing label."""
    _check_order(order)
    if labels.ndim != 2:
        raise ValueError(f"RLE CSV masks are 2D; got labels of shape {labels.shape}")
    flat = labels.ravel(order="C" if order == "row" else "F")
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    values = flat[starts]
    keep = values > 0
    starts, lengths, values = starts[keep], lengths[keep], values[keep]
    by_label = np.argsort(values, kind="stable")  # runs of a label stay in pixel order
    starts, lengths, values = starts[by_label], lengths[by_label], values[by_label]
    bounds = np.flatnonzero(np.diff(values)) + 1
    return [
        " ".join(f"{s + 1} {n}" for s, n in zip(s_run.tolist(), n_run.tolist(), strict=True))
        for s_run, n_run in zip(np.split(starts, bounds), np.split(lengths, bounds), strict=True)
        if len(s_run)
    ]


def decode_runs(encoding: str, shape: tuple[int, int], order: str = "row") -> np.ndarray:
    """Flat C-order pixel indices of one encoded object.

    Raises
    ------
    ValueError
        If the text is not pairs of positive integers inside the image.
    """
    _check_order(order)
    try:
        numbers = np.array(encoding.split(), dtype=np.int64)
    except ValueError:
        raise ValueError("the encoding holds something other than integers") from None
    if len(numbers) % 2:
        raise ValueError("the encoding has an odd count of numbers (start/length pairs expected)")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    size = shape[0] * shape[1]
    if len(starts) and (starts.min() < 0 or lengths.min() < 1 or (starts + lengths).max() > size):
        raise ValueError(
            f"runs must start at 1 or later, be at least 1 long and end by pixel {size} "
            f"({shape[0]}x{shape[1]})"
        )
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    index = offsets + np.arange(int(lengths.sum()))
    if order == "column":
        index = (index % shape[0]) * shape[1] + index // shape[0]
    return index


def _read_rows(path: Path) -> tuple[dict[str, list[tuple[int, str]]], dict]:
    """Image id -> [(line number, encoding)], and image id -> (height, width) where given."""
    try:
        with path.open(newline="") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise FormatError(f"{path}: file does not exist") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    id_col = next((c for c in ID_COLUMNS if c in columns), None)
    rle_col = next((c for c in RLE_COLUMNS if c in columns), None)
    if id_col is None or rle_col is None:
        raise FormatError(
            f"{path}: needs an id column ({' or '.join(ID_COLUMNS)}) and an encoding column "
            f"({', '.join(RLE_COLUMNS)}); found {columns}"
        )
    rows: dict[str, list[tuple[int, str]]] = {}
    shapes = {}
    for row in reader:
        line = reader.line_num
        image_id, encoding = row[id_col], row[rle_col]
        if not image_id or encoding is None:
            raise FormatError(f"{path}:{line}: a row needs an id and an encoding")
        rows.setdefault(image_id, [])
        if encoding.strip():
            rows[image_id].append((line, encoding))
        if row.get("height") and row.get("width"):
            try:
                shape = (int(row["height"]), int(row["width"]))
            except ValueError:
                raise FormatError(f"{path}:{line}: height and width must be integers") from None
            if shapes.setdefault(image_id, shape) != shape:
                raise FormatError(f"{path}:{line}: image {image_id} changes its height/width")
    if not rows:
        raise FormatError(f"{path}: no rows")
    return rows, shapes


def _labels(encodings: list[tuple[int, str]], shape, order: str, source: Path):
    objects = []
    for line, encoding in encodings:
        try:
            objects.append(decode_runs(encoding, shape, order))
        except ValueError as exc:
            raise FormatError(f"{source}:{line}: {exc}") from None
    labels, overlap, hidden = paint_instances(shape, objects)
    info = {"rows": [line for line, _ in encodings]}
    if overlap:
        info |= {"overlap_pixels": overlap, "hidden_rows": [encodings[k - 1][0] for k in hidden]}
    return labels, info


def _image_path(folder: Path, image_id: str, source: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise FormatError(
        f"{source}: no image {image_id}.png (or {', '.join(IMAGE_SUFFIXES[1:])}) in {folder}; "
        "pass the images folder with --images"
    )


def _grey_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[:2]


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"RLE pixel order must be one of {ORDERS}, not {order!r}")
