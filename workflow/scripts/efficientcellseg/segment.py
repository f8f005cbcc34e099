"""From raw CTC frames to result masks with a trained model folder: the one inference code path.

The workflow, the ``efficientcellseg predict`` command and the generated CTC executables all
call :func:`segment_sequence`. A model folder is self-contained::

    segmentation.keras  (+ .json metadata, + .onnx export)
    centres.keras       (only for post-processing kind "centres")
    pipeline.json       post-processing and tiling settings of the dataset

Masks are written atomically, and a frame whose mask exists and is newer than the models is
skipped, so an interrupted run finishes the missing frames without redoing the others, while
new models redo them all.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import ctc
from .inference import TileSettings, open_predictor, predict_slices
from .postprocess import PostprocessSettings, postprocess_frame
from .pseudocolor import pseudocolor_frame

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
MODEL_FILES = {"segmentation": "segmentation.keras", "centres": "centres.keras"}


@dataclass(frozen=True)
class PipelineSettings:
    """What a model folder needs besides its networks to turn frames into masks."""

    postprocess: PostprocessSettings
    tiles: TileSettings | None = None

    @property
    def needs_centres(self) -> bool:
        return self.postprocess.kind == "centres"

    def to_dict(self) -> dict[str, Any]:
        return {
            "postprocess": asdict(self.postprocess),
            "tiles": asdict(self.tiles) if self.tiles else None,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineSettings:
        tiles = values.get("tiles")
        return cls(
            postprocess=PostprocessSettings(**values["postprocess"]),
            tiles=TileSettings(**tiles) if tiles else None,
        )


def write_pipeline_settings(model_dir: str | os.PathLike, settings: PipelineSettings) -> Path:
    path = Path(model_dir) / PIPELINE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    ctc.atomic_write_bytes(path, (json.dumps(settings.to_dict(), indent=2) + "\n").encode())
    return path


def read_pipeline_settings(model_dir: str | os.PathLike) -> PipelineSettings:
    path = Path(model_dir) / PIPELINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {model_dir} is not a complete model folder")
    return PipelineSettings.from_dict(json.loads(path.read_text()))


class Segmenter:
    """Networks and settings of one model folder, loaded once, applied frame by frame."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        backend: str = "auto",
        batch_size: int = 4,
        threads: int | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.settings = read_pipeline_settings(self.model_dir)
        self.batch_size = batch_size
        self.timings: dict[str, float] = defaultdict(float)
        tasks = ["segmentation"] + (["centres"] if self.settings.needs_centres else [])
        self.predictors = {}
        self.backends = {}
        for task in tasks:
            path = self.model_dir / MODEL_FILES[task]
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: the model folder needs a {task} model")
            self.predictors[task], self.backends[task] = open_predictor(
                path, backend, threads=threads
            )

    def segment(self, frame: np.ndarray) -> np.ndarray:
        """Instance mask (uint16, the frame's shape) of one 2D or 3D frame."""
        with self._timed("pseudocolor"):
            colour = pseudocolor_frame(frame)
        slices = colour if frame.ndim == 3 else colour[None]
        maps = {}
        for task, predict in self.predictors.items():
            with self._timed(task):
                maps[task] = predict_slices(
                    predict, slices, batch_size=self.batch_size, tiles=self.settings.tiles
                )
        if frame.ndim == 2:
            maps = {task: probability[0] for task, probability in maps.items()}
        with self._timed("postprocess"):
            return postprocess_frame(
                maps["segmentation"], maps.get("centres"), self.settings.postprocess
            )

    def _timed(self, stage: str):
        return _StageTimer(self.timings, stage)


class _StageTimer:
    def __init__(self, timings: dict[str, float], stage: str):
        self.timings, self.stage = timings, stage

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.stage] += time.perf_counter() - self.start


def segment_sequence(
    sequence_dir: str | os.PathLike,
    result_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    *,
    backend: str = "auto",
    batch_size: int = 4,
    frames: Iterable[int] | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``maskTTT.tif`` for every frame (or ``frames``) of a CTC sequence.

    Returns a summary: frames written and skipped, backends and seconds per stage.
    """
    sequence_dir = Path(sequence_dir)
    result_dir = Path(result_dir)
    seq = ctc.open_sequence(sequence_dir.parent, sequence_dir.name)
    wanted = seq.frame_ids if frames is None else sorted(set(frames))
    unknown = sorted(set(wanted) - set(seq.frame_ids))
    if unknown:
        raise ValueError(f"{sequence_dir}: no frames {unknown}")
    finished = set() if overwrite else _finished_masks(seq, result_dir, Path(model_dir))
    todo = [f for f in wanted if f not in finished]
    summary: dict[str, Any] = {
        "sequence": str(sequence_dir),
        "results": str(result_dir),
        "written": todo,
        "skipped": [f for f in wanted if f not in todo],
    }
    if not todo:
        log.info("%s: all %d masks exist already", result_dir, len(wanted))
        return summary
    segmenter = Segmenter(model_dir, backend=backend, batch_size=batch_size, threads=threads)
    result_dir.mkdir(parents=True, exist_ok=True)
    for frame in _progress(todo, progress, desc=f"{seq.name} frames"):
        image = ctc.read_image(seq.frames[frame])
        if image.shape != seq.frame_shape:
            raise ctc.CTCFormatError(
                f"{seq.frames[frame]}: shape {image.shape} differs from the sequence's "
                f"{seq.frame_shape}"
            )
        labels = segmenter.segment(image)
        with segmenter._timed("write"):
            ctc.write_labels(result_dir / ctc.mask_name(frame, seq.digits), labels)
        log.debug("frame %d: %d objects", frame, int(labels.max()))
    summary["backends"] = segmenter.backends
    summary["seconds"] = {k: round(v, 3) for k, v in segmenter.timings.items()}
    log.info("%s: wrote %d masks (%s)", result_dir, len(todo), summary["seconds"])
    return summary


def _finished_masks(seq: ctc.Sequence, result_dir: Path, model_dir: Path) -> set[int]:
    """Frames whose mask exists and was written after the newest file of the model folder."""
    model_files = [p for p in model_dir.iterdir() if p.is_file()] if model_dir.is_dir() else []
    models_time = max((p.stat().st_mtime for p in model_files), default=float("inf"))
    finished = set()
    for frame in seq.frame_ids:
        mask = result_dir / ctc.mask_name(frame, seq.digits)
        if mask.is_file() and mask.stat().st_mtime >= models_time:
            finished.add(frame)
    return finished


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="frame")
