"""From raw CTC frames to result masks with a trained model folder: the one inference code path.

The workflow, the ``efficientcellseg predict`` command and the generated CTC executables all
call :func:`segment_sequence`. A model folder is self-contained::

    segmentation.keras  (+ .json metadata, + .onnx export)
    centres.keras       (only for post-processing kind "centres")
    pipeline.json       post-processing and tiling settings of the dataset

Masks are written atomically (a temporary file renamed into place), and a frame whose mask
exists, has the frame's shape, is newer than every file of the model folder and was made with
the same backend and precision (recorded in each mask's TIFF description) is skipped, so an
interrupted run finishes the missing frames without redoing the others, while new models or
other inference settings redo them all. Temporary files an interrupted run left behind are
removed.
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
from .inference import DEFAULT_BATCH_SIZE, TileSettings, open_predictor, predict_slices
from .logs import frame_progress
from .postprocess import PostprocessSettings, postprocess_frame
from .pseudocolor import pseudocolor_frame

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
MADE_WITH = "efficientcellseg_inference"  # key of a mask's metadata: the backend and precision
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
    """The settings in ``MODEL_DIR/pipeline.json``; errors name the file and what is wrong."""
    path = Path(model_dir) / PIPELINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {model_dir} is not a complete model folder")
    try:
        return PipelineSettings.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} is not valid pipeline settings ({type(exc).__name__}: {exc}); rewrite it "
            "with segment.write_pipeline_settings (the workflow's pipeline_settings rule)"
        ) from exc


class Segmenter:
    """Networks and settings of one model folder, loaded once, applied frame by frame.

    ``timings`` accumulates seconds per stage over all frames segmented: ``pseudocolor``, one
    entry per network (``segmentation``, ``centres``) and ``postprocess``;
    :func:`segment_sequence` adds ``read`` and ``write``.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        backend: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        precision: str = "f32",
    ):
        self.model_dir = Path(model_dir)
        self.settings = read_pipeline_settings(self.model_dir)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        self.threads = threads
        self.timings: dict[str, float] = defaultdict(float)
        tasks = ["segmentation"] + (["centres"] if self.settings.needs_centres else [])
        self.predictors = {}
        self.backends = {}
        for task in tasks:
            path = self.model_dir / MODEL_FILES[task]
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: the model folder needs a {task} model")
            self.predictors[task], self.backends[task] = open_predictor(
                path, backend, threads=threads, precision=precision
            )

    def probabilities(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """Per-slice probability maps of every network, (Z, H, W) float32 (a 2D frame: (H, W)).

        The centre network runs only on slices where the segmentation finds foreground: the
        post-processing reads the centre heatmap nowhere else, so the masks are the same (up to
        float rounding, where a backend's result depends on how slices are batched), and
        the slices above and below the cells of a 3D stack cost one network pass instead of
        two. The heatmap is 0 on the slices skipped.
        """
        with self._timed("pseudocolor"):
            colour = pseudocolor_frame(frame, threads=self.threads)
        slices = colour if frame.ndim == 3 else colour[None]
        with self._timed("segmentation"):
            maps = {"segmentation": self._predict("segmentation", slices)}
        if "centres" in self.predictors:
            with self._timed("centres"):
                occupied = (maps["segmentation"] > self.settings.postprocess.threshold).any((1, 2))
                maps["centres"] = np.zeros_like(maps["segmentation"])
                for start, stop in _runs(occupied):  # views: copying the slices costs ~5%
                    maps["centres"][start:stop] = self._predict("centres", slices[start:stop])
            log.debug("centre network on %d of %d slices", occupied.sum(), len(occupied))
        del colour, slices
        if frame.ndim == 2:
            maps = {task: probability[0] for task, probability in maps.items()}
        return maps

    def _predict(self, task: str, slices: np.ndarray) -> np.ndarray:
        return predict_slices(
            self.predictors[task], slices, batch_size=self.batch_size, tiles=self.settings.tiles
        )

    def segment(self, frame: np.ndarray) -> np.ndarray:
        """Instance mask (uint16, the frame's shape) of one 2D (H, W) or 3D (Z, H, W) frame."""
        maps = self.probabilities(frame)
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
    batch_size: int = DEFAULT_BATCH_SIZE,
    frames: Iterable[int] | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    precision: str = "f32",
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``maskTTT.tif`` (the input's digit count) for every frame (or ``frames``) of a CTC
    sequence, resuming: finished masks (see the module docstring) are kept unless ``overwrite``.

    Returns a summary: frames written and skipped, backends and seconds per stage.
    """
    sequence_dir = Path(sequence_dir)
    result_dir = Path(result_dir)
    model_dir = Path(model_dir)
    seq = ctc.open_sequence(sequence_dir.parent, sequence_dir.name)
    wanted = seq.frame_ids if frames is None else sorted(set(frames))
    unknown = sorted(set(wanted) - set(seq.frame_ids))
    if unknown:
        raise ValueError(f"{sequence_dir}: no frames {unknown}; it has {_span(seq.frame_ids)}")
    read_pipeline_settings(model_dir)  # a broken model folder fails before anything else
    _remove_stale_temporaries(result_dir)
    made_with = {"backend": backend, "precision": precision}
    finished = set() if overwrite else finished_masks(seq, result_dir, model_dir, made_with)
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
    segmenter = Segmenter(
        model_dir, backend=backend, batch_size=batch_size, threads=threads, precision=precision
    )
    result_dir.mkdir(parents=True, exist_ok=True)
    for frame in frame_progress(todo, progress, desc=f"{seq.name} frames"):
        with segmenter._timed("read"):
            image = ctc.read_image(seq.frames[frame])
        if image.shape != seq.frame_shape:
            raise ctc.CTCFormatError(
                f"{seq.frames[frame]}: shape {image.shape} differs from the sequence's "
                f"{seq.frame_shape}"
            )
        labels = segmenter.segment(image)
        with segmenter._timed("write"):
            ctc.write_labels(
                result_dir / ctc.mask_name(frame, seq.digits), labels, {MADE_WITH: made_with}
            )
        log.debug("frame %d: %d objects", frame, int(labels.max()))
    summary["backends"] = segmenter.backends
    summary["seconds"] = {k: round(v, 3) for k, v in segmenter.timings.items()}
    log.info("%s: wrote %d masks (%s)", result_dir, len(todo), summary["seconds"])
    return summary


def finished_masks(
    seq: ctc.Sequence, result_dir: Path, model_dir: Path, made_with: dict[str, str]
) -> set[int]:
    """Frames whose mask exists, has the frame's shape, is newer than every model file and was
    made with the inference settings ``made_with``."""
    model_files = [p for p in model_dir.iterdir() if p.is_file()] if model_dir.is_dir() else []
    models_time = max((p.stat().st_mtime for p in model_files), default=float("inf"))
    finished = set()
    for frame in seq.frame_ids:
        mask = result_dir / ctc.mask_name(frame, seq.digits)
        if not mask.is_file() or mask.stat().st_mtime < models_time:
            continue
        try:
            shape, metadata = ctc.tiff_header(mask)
        except ctc.CTCFormatError:
            log.warning("%s is unreadable: segmenting frame %d again", mask, frame)
            continue
        if shape != seq.frame_shape:
            log.warning("%s has shape %s, not %s: segmenting again", mask, shape, seq.frame_shape)
        elif metadata.get(MADE_WITH) != made_with:
            log.info(
                "%s was made with %s, not %s: segmenting again",
                mask, metadata.get(MADE_WITH), made_with,
            )  # fmt: skip
        else:
            finished.add(frame)
    return finished


def _remove_stale_temporaries(result_dir: Path) -> None:
    """Delete the temporary files of masks whose writing was interrupted (``.mask*.part``)."""
    if result_dir.is_dir():
        for tmp in result_dir.glob(".mask*.part"):
            log.info("removing %s, left by an interrupted run", tmp)
            tmp.unlink(missing_ok=True)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of consecutive True values in a 1D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _span(ids: list[int]) -> str:
    return f"frames {ids[0]}..{ids[-1]}" if ids else "no frames"
