"""Datasets in the formats other cell segmentation projects use, to and from the CTC layout.

``import_dataset`` converts EmbedSeg folders, COCO JSON (LIVECell), Kaggle RLE CSV (Sartorius)
and NeurIPS-CellSeg folders into CTC sequences (one per split) plus ``import.json``, the record
of which source image became which frame; ``export_results`` writes a sequence's result (or
imported ground-truth) masks back as COCO JSON, RLE CSV or mask folders, cropped to each source
image. The rules shared by all formats are in :mod:`.layout`, each format's in its module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .coco import OVERLAP_RULE, coco_splits, export_coco
from .folders import NEURIPS_LABEL_SUFFIX, embedseg_splits, export_label_folder, neurips_splits
from .layout import MAPPING_FILE, FormatError, read_mapping, write_ctc_dataset
from .rle_csv import ORDER_TEXT, export_rle_csv, rle_csv_splits

IMPORT_FORMATS = ("embedseg", "coco", "kaggle-rle", "neurips-cellseg")
EXPORT_FORMATS = ("coco", "kaggle-rle", "embedseg", "neurips-cellseg")

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "MAPPING_FILE",
    "FormatError",
    "export_results",
    "import_dataset",
    "read_mapping",
]


def import_dataset(
    fmt: str,
    sources: Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    grey: str = "luminance",
    order: str = "row",
) -> dict:
    """Convert a dataset into the CTC layout under ``dest``; returns the ``import.json`` mapping.

    Parameters
    ----------
    fmt
        One of :data:`IMPORT_FORMATS`.
    sources
        EmbedSeg / NeurIPS-CellSeg: folders (a split, or a folder of splits); COCO: JSON files;
        Kaggle: CSV files. Each split becomes one sequence, in the order given.
    images
        COCO and Kaggle: the folder holding the images (default: beside the JSON; the folder
        named after the CSV).
    grey
        Colour images to grey: ``"luminance"`` (BT.709) or ``"max"`` of the channels.
    order
        Kaggle: pixel order of the runs, ``"row"`` (Sartorius) or ``"column"``.
    """
    rules = {}
    if fmt == "embedseg":
        splits = embedseg_splits(sources)
    elif fmt == "neurips-cellseg":
        splits = neurips_splits(sources)
    elif fmt == "coco":
        splits = coco_splits(sources, images)
        rules["overlaps"] = OVERLAP_RULE
    elif fmt == "kaggle-rle":
        splits = rle_csv_splits(sources, images, order)
        rules |= {"overlaps": OVERLAP_RULE, "rle": ORDER_TEXT[order], "rle_order": order}
    else:
        raise ValueError(f"unknown import format {fmt!r}; choose one of {IMPORT_FORMATS}")
    if images is not None and fmt in ("embedseg", "neurips-cellseg"):
        raise ValueError(f"--images is for COCO and Kaggle sources, not {fmt}")
    return write_ctc_dataset(dest, fmt, splits, sources=sources, grey=grey, rules=rules)


def export_results(
    fmt: str,
    dataset_dir: str | os.PathLike,
    sequence: str,
    out: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    ground_truth: bool = False,
    order: str | None = None,
) -> Path | list[Path]:
    """Write one sequence's masks of an imported dataset in a source format.

    Parameters
    ----------
    fmt
        One of :data:`EXPORT_FORMATS`: ``coco`` and ``kaggle-rle`` write the file ``out``, the
        folder formats write masks under the folder ``out``.
    results
        Folder of ``mask###.tif`` (default ``DATASET_DIR/SEQ_RES``).
    ground_truth
        Export the imported ``SEQ_GT/SEG`` masks instead (COCO: as a dataset with images).
    order
        Kaggle: pixel order of the runs (default: as imported, else ``"row"``).
    """
    if fmt == "coco":
        return export_coco(dataset_dir, sequence, out, results=results, ground_truth=ground_truth)
    if fmt == "kaggle-rle":
        return export_rle_csv(
            dataset_dir, sequence, out, results=results, ground_truth=ground_truth, order=order
        )
    if fmt in ("embedseg", "neurips-cellseg"):
        suffix = NEURIPS_LABEL_SUFFIX if fmt == "neurips-cellseg" else None
        return export_label_folder(
            dataset_dir,
            sequence,
            Path(out),
            results=results,
            ground_truth=ground_truth,
            label_suffix=suffix,
        )
    raise ValueError(f"unknown export format {fmt!r}; choose one of {EXPORT_FORMATS}")
