"""Folders of images beside instance-mask TIFFs: EmbedSeg and NeurIPS 2022 Cell Segmentation.

EmbedSeg (2D and 3D)::

    SRC/train/images/X.tif   SRC/train/masks/X.tif    (same file name; also val/, test/)

NeurIPS-CellSeg (2D; TIFF, PNG, BMP or JPEG images of many modalities, grey or colour)::

    SRC/Train_Labeled/images/cell_00001.png   SRC/Train_Labeled/labels/cell_00001_label.tiff

A source folder holding ``images/`` is one split; otherwise each of its subfolders holding
``images/`` is a split, taken in the order train, val, test, then by name. Images without a mask
become frames without annotation. Exports write each mask under its source path (the mask's,
or the one it would have), relative to the split's parent folder, so exporting the imported
annotations rebuilds the mask files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from .. import ctc
from .layout import FormatError, SourceImage, Split, exported_masks, image_shape, read_any_image
from .layout import split_order as _split_order

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")
NEURIPS_LABEL_SUFFIX = "_label.tiff"


def embedseg_splits(sources: Sequence[str | os.PathLike]) -> list[Split]:
    """Splits of EmbedSeg folders: ``images/X.tif`` annotated by ``masks/X.tif``."""
    splits = []
    for folder in _split_folders(sources):
        images = []
        masks = folder / "masks"
        for path in _image_files(folder / "images"):
            mask = masks / path.name
            if masks.is_dir() and not mask.is_file():
                raise FormatError(f"{mask}: missing; every image of {folder} needs its mask")
            images.append(_source(folder, path, mask if masks.is_dir() else None))
        splits.append(Split(folder.name, images))
    return splits


def neurips_splits(sources: Sequence[str | os.PathLike]) -> list[Split]:
    """Splits of NeurIPS-CellSeg folders: ``images/X.*`` annotated by ``labels/X_label.tiff``."""
    splits = []
    for folder in _split_folders(sources):
        images = []
        for path in _image_files(folder / "images"):
            if path.name.endswith(NEURIPS_LABEL_SUFFIX):
                continue  # labels kept beside the images
            name = path.stem + NEURIPS_LABEL_SUFFIX
            label = next(
                (p for p in (folder / "labels" / name, path.parent / name) if p.is_file()), None
            )
            images.append(_source(folder, path, label))
        splits.append(Split(folder.name, images))
    return splits


def export_label_folder(
    dataset_dir: str | os.PathLike,
    sequence: str,
    out_dir: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    ground_truth: bool = False,
    label_suffix: str | None = None,
) -> list[Path]:
    """Write each frame's mask under its source mask path in ``out_dir`` (uint16 TIFF).

    ``label_suffix`` names masks of frames imported without one: ``X.png`` -> ``X<suffix>``
    in a ``labels/`` folder (NeurIPS), or ``masks/X.tif`` when None (EmbedSeg).
    """
    out_dir = Path(out_dir)
    written = []
    for frame, mask in exported_masks(dataset_dir, sequence, results, ground_truth=ground_truth):
        if mask is None:
            continue
        target = frame.get("labels") or _default_label_path(frame["source"], label_suffix)
        ctc.write_labels(out_dir / target, mask)
        written.append(out_dir / target)
    return written


def _split_folders(sources: Sequence[str | os.PathLike]) -> list[Path]:
    folders = []
    for source in map(Path, sources):
        if not source.is_dir():
            raise FormatError(f"{source}: not a folder")
        if (source / "images").is_dir():
            folders.append(source)
            continue
        found = sorted(
            (p for p in source.iterdir() if (p / "images").is_dir()),
            key=lambda p: _split_order(p.name),
        )
        if not found:
            raise FormatError(
                f"{source}: holds no images/ folder, nor splits (train/, val/, test/) holding one"
            )
        folders.extend(found)
    return folders


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FormatError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def _source(split: Path, image: Path, labels: Path | None) -> SourceImage:
    relative = partial(_relative, split)
    shape = ctc.tiff_shape(labels) if labels else _spatial_shape(image_shape(image))
    return SourceImage(
        name=relative(image),
        shape=shape,
        load_image=partial(read_any_image, image),
        load_labels=partial(ctc.read_labels, labels) if labels is not None else None,
        info={"labels": relative(labels) if labels is not None else None},
        path=image,
    )


def _relative(split: Path, path: Path) -> str:
    return f"{split.name}/{path.relative_to(split).as_posix()}"


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of an unannotated image without its colour axis (2-4 values, last or first)."""
    if len(shape) == 3 and 2 <= shape[-1] <= 4:
        return shape[:-1]
    if len(shape) == 3 and 2 <= shape[0] <= 4 and min(shape[1:]) > 4:
        return shape[1:]
    return shape


def _default_label_path(source: str, label_suffix: str | None) -> str:
    path = Path(source)
    split = path.parts[0]
    if label_suffix is None:
        return f"{split}/masks/{path.stem}.tif"
    return f"{split}/labels/{path.stem}{label_suffix}"
