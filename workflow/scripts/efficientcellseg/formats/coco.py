"""COCO instance segmentation JSON (LIVECell and others): import annotations, export masks.

Import: each JSON file is a split. Its images, taken by increasing image id (the order
pycocotools evaluates them in), become the frames; their annotations become labels 1, 2, ... in
the order the file lists them (polygons, uncompressed or compressed RLE, rasterised by
pycocotools' ``annToRLE``). ``iscrowd`` annotations mark regions, not cells: they are skipped and
counted. Overlaps follow the smallest-object rule of :mod:`.layout`; the mapping lists, per frame,
the annotation id behind each label. Category is not kept (cells are one class here).

Export: the masks of a sequence as a COCO results list (one compressed-RLE entry per object,
``score`` 1.0, in image then label order), or with ``ground_truth=True`` as a COCO dataset
(images, annotations with area, bbox and ``iscrowd`` 0, categories) that pycocotools' COCOeval
takes as ground truth. Images keep their source ids and file names.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..files import atomic_write_text
from .layout import FormatError, SourceImage, Split, exported_masks, paint_instances, read_any_image

log = logging.getLogger(__name__)

OVERLAP_RULE = "each pixel to the smallest annotation covering it (equal sizes: the later one)"


def coco_splits(
    sources: Sequence[str | os.PathLike], images_dir: str | os.PathLike | None = None
) -> list[Split]:
    """Splits of COCO JSON files; images are looked up under ``images_dir`` (default: the JSON's
    folder) by ``file_name``, or by its base name anywhere below."""
    splits = []
    for source in map(Path, sources):
        dataset = _load(source)
        root = Path(images_dir) if images_dir else source.parent
        coco = _index(dataset)
        by_image = defaultdict(list)
        for ann in dataset["annotations"]:
            by_image[ann["image_id"]].append(ann)
        lookup = _ImageLookup(root, source)
        images = []
        for info in sorted(dataset["images"], key=lambda image: image["id"]):
            shape = (int(info["height"]), int(info["width"]))
            path = lookup.find(info["file_name"])
            annotations = by_image.get(info["id"], [])
            images.append(
                SourceImage(
                    name=info["file_name"],
                    shape=shape,
                    load_image=partial(read_any_image, path),
                    load_labels=partial(_labels, coco, annotations, shape, source),
                    info=_frame_info(info, annotations),
                    path=path,
                )
            )
        splits.append(Split(source.stem, images))
    return splits


def export_coco(
    dataset_dir: str | os.PathLike,
    sequence: str,
    out: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    ground_truth: bool = False,
) -> Path:
    """Write the masks of one imported sequence as COCO JSON (module docstring)."""
    images, annotations = [], []
    for frame, mask in exported_masks(dataset_dir, sequence, results, ground_truth=ground_truth):
        image_id = frame.get("image_id", frame["frame"] + 1)
        height, width = frame["shape"]
        images.append(
            {
                "id": image_id,
                "file_name": Path(frame["source"]).name,
                "height": height,
                "width": width,
            }
        )
        if mask is None:
            continue
        for rle in mask_rles(mask):
            entry = {"image_id": image_id, "category_id": 1, "segmentation": rle}
            if ground_truth:
                entry |= {
                    "id": len(annotations) + 1,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            else:
                entry["score"] = 1.0
            annotations.append(entry)
    if ground_truth:
        document = {
            "info": {"description": f"exported from {Path(dataset_dir).resolve()} {sequence}"},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "cell"}],
        }
    else:
        document = annotations
    log.info("%s: %d objects on %d images", out, len(annotations), len(images))
    atomic_write_text(out, json.dumps(document))
    return Path(out)


def mask_rles(labels: np.ndarray) -> list[dict]:
    """Compressed COCO RLE of every object of a 2D label image, by increasing label."""
    if labels.ndim != 2:
        raise ValueError(f"COCO masks are 2D; got labels of shape {labels.shape}")
    from scipy import ndimage

    rles = []
    scratch = np.zeros(labels.shape, dtype=np.uint8, order="F")
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        scratch[box] = labels[box] == label
        rle = mask_utils.encode(scratch)
        rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
        scratch[box] = 0
    return rles


def _load(path: Path) -> dict:
    try:
        dataset = json.loads(path.read_text())
    except FileNotFoundError:
        raise FormatError(f"{path}: file does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise FormatError(f"{path}: not a COCO dataset (needs an 'images' list)")
    dataset.setdefault("annotations", [])
    ids = set()
    for index, image in enumerate(dataset["images"]):
        missing = [k for k in ("id", "file_name", "height", "width") if k not in image]
        if missing:
            raise FormatError(f"{path}: images[{index}] lacks {', '.join(missing)}")
        if image["id"] in ids:
            raise FormatError(f"{path}: image id {image['id']} appears twice")
        ids.add(image["id"])
    for index, ann in enumerate(dataset["annotations"]):
        missing = [k for k in ("id", "image_id", "segmentation") if k not in ann]
        if missing:
            raise FormatError(f"{path}: annotations[{index}] lacks {', '.join(missing)}")
        if ann["image_id"] not in ids:
            raise FormatError(
                f"{path}: annotation {ann['id']} refers to image {ann['image_id']}, not listed"
            )
    return dataset


def _index(dataset: dict) -> COCO:
    coco = COCO()
    # Images and annotations only: rasterising needs no categories (nor do they need ids here).
    coco.dataset = {"images": dataset["images"], "annotations": dataset["annotations"]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _frame_info(info: dict, annotations: list[dict]) -> dict:
    crowd = sum(1 for ann in annotations if ann.get("iscrowd", 0))
    return {"image_id": info["id"], "crowd_skipped": crowd} if crowd else {"image_id": info["id"]}


def _labels(coco: COCO, annotations: list[dict], shape: tuple[int, int], source: Path):
    objects, ids = [], []
    for ann in annotations:
        if ann.get("iscrowd", 0):
            continue
        try:
            mask = coco.annToMask(ann)
        except Exception as exc:  # pycocotools raises bare errors on malformed segmentations
            raise FormatError(
                f"{source}: annotation {ann['id']} has a segmentation pycocotools cannot "
                f"rasterise ({type(exc).__name__}: {exc})"
            ) from exc
        if mask.shape != shape:
            raise FormatError(
                f"{source}: annotation {ann['id']} has a mask of shape {mask.shape}, its image "
                f"is {shape}"
            )
        objects.append(np.flatnonzero(mask))
        ids.append(ann["id"])
    labels, overlap, hidden = paint_instances(shape, objects)
    if overlap:
        log.debug("%s: %d pixels covered by several annotations", source, overlap)
    info = {"annotation_ids": ids}
    if overlap:
        info |= {"overlap_pixels": overlap, "hidden_annotation_ids": [ids[k - 1] for k in hidden]}
    return labels, info


class _ImageLookup:
    """Finds an image by its COCO ``file_name`` under a folder, or by its base name below it."""

    def __init__(self, root: Path, source: Path) -> None:
        self.root, self.source, self._by_name = root, source, None

    def find(self, file_name: str) -> Path:
        direct = self.root / file_name
        if direct.is_file():
            return direct
        if self._by_name is None:
            self._by_name = {p.name: p for p in self.root.rglob("*") if p.is_file()}
        found = self._by_name.get(Path(file_name).name)
        if found is None:
            raise FormatError(
                f"{self.source}: image {file_name!r} not found under {self.root}; "
                "pass the images folder with --images"
            )
        return found
