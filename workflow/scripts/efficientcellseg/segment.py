"""From raw CTC frames to result masks with a trained model folder: the one inference code path.

The workflow, the ``efficientcellseg predict`` command and the generated CTC executables all
call :func:`segment_sequence` on CTC sequences (``t000.tif`` ... -> ``mask000.tif`` ...);
:func:`segment_images` segments any TIFF files (2D images or 3D stacks) into masks of the same
names, and :class:`Segmenter` segments arrays. A model folder is self-contained::

    segmentation.keras  (+ .json metadata, + .onnx export)
    centres.keras       (only for post-processing kind "centres")
    pipeline.json       post-processing and tiling settings of the dataset

Masks are written atomically (a temporary file renamed into place), and each records in its
TIFF description what it was made from: the input frame (name, size, SHA-256 of its file), the
model folder (SHA-256 of pipeline.json and the network files), the backend and precision that
ran, and the SHA-256 of its own pixels. A run keeps a mask only when it reads back whole and
its record matches what the run would do now, so an interrupted run finishes the missing
frames without redoing the others, while a different input, other models, other inference
settings or another version of the prediction code (:mod:`.versions`) redo them. Temporary
files an interrupted run left behind are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import ctc
from .files import atomic_write_text, remove, temporaries
from .inference import open_predictor, predict_slices, resolve_inference
from .logs import frame_progress
from .postprocess import postprocess_frame
from .pseudocolor import pseudocolor_frame
from .settings import InferenceSettings, PipelineSettings
from .versions import CODE_VERSIONS

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
RECORD_KEY = "efficientcellseg"  # key of a mask's TIFF metadata: what it was made from and how
MODEL_FILES = {"segmentation": "segmentation.keras", "centres": "centres.keras"}


def write_pipeline_settings(model_dir: str | os.PathLike, settings: PipelineSettings) -> Path:
    path = Path(model_dir) / PIPELINE_FILE
    atomic_write_text(path, json.dumps(settings.to_dict(), indent=2) + "\n")
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

    ``inference`` (or keyword overrides of its fields, e.g. ``backend="onnx"``) says how the
    networks run. ``timings`` accumulates seconds per stage over all frames segmented:
    ``pseudocolor``, one entry per network (``segmentation``, ``centres``) and
    ``postprocess``; :func:`segment_sequence` adds ``read`` and ``write``.

    Example
    -------
    >>> segmenter = Segmenter("results/MDA231/models/all")          # doctest: +SKIP
    >>> labels = segmenter.segment(tifffile.imread("t000.tif"))     # doctest: +SKIP
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        inference: InferenceSettings | None = None,
        **overrides: Any,
    ):
        self.model_dir = Path(model_dir)
        self.settings = read_pipeline_settings(self.model_dir)
        self.inference = replace(inference or InferenceSettings(), **overrides)
        self.timings: dict[str, float] = defaultdict(float)
        self.predictors = {}
        for task in self.settings.networks:
            path = network_path(self.model_dir, task)
            self.predictors[task] = open_predictor(
                path,
                self.inference.backend,
                threads=self.inference.threads,
                precision=self.inference.precision,
            )

    @property
    def ran_with(self) -> dict[str, dict[str, str]]:
        """Backend and precision each network runs with (what ran, not what was asked for)."""
        return {task: _ran_with(p.backend, p.precision) for task, p in self.predictors.items()}

    def probabilities(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """Per-slice probability maps of every network, (Z, H, W) float32 (a 2D frame: (H, W)).

        The centre network runs only on slices where the segmentation finds foreground: the
        post-processing reads the centre heatmap nowhere else, so the masks are the same (up to
        float rounding, where a backend's result depends on how slices are batched), and
        the slices above and below the cells of a 3D stack cost one network pass instead of
        two. The heatmap is 0 on the slices skipped.
        """
        with self._timed("pseudocolor"):
            colour = pseudocolor_frame(frame, threads=self.inference.threads)
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
            self.predictors[task],
            slices,
            batch_size=self.inference.batch_size,
            tiles=self.settings.tiles,
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
    inference: InferenceSettings | None = None,
    *,
    frames: Iterable[int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Write ``maskTTT.tif`` (the input's digit count) for every frame (or ``frames``) of a CTC
    sequence, resuming: finished masks (see the module docstring) are kept unless ``overwrite``.

    ``inference`` (or keyword overrides of its fields) says how the networks run. Returns a
    summary: frames written and skipped, the backend and precision of each network, seconds
    per stage.
    """
    sequence_dir = Path(sequence_dir)
    result_dir = Path(result_dir)
    model_dir = Path(model_dir)
    inference = replace(inference or InferenceSettings(), **overrides)
    ctc.check_output(result_dir, inputs=[sequence_dir, model_dir], folder=True)
    seq = ctc.open_sequence(sequence_dir.parent, sequence_dir.name)
    wanted = seq.frame_ids if frames is None else sorted(set(frames))
    unknown = sorted(set(wanted) - set(seq.frame_ids))
    if unknown:
        raise ValueError(f"{sequence_dir}: no frames {unknown}; it has {_span(seq.frame_ids)}")
    pipeline = read_pipeline_settings(model_dir)  # a broken model folder fails before anything
    _remove_temporaries(result_dir, "mask*")
    models, ran_with = _made_with(model_dir, pipeline, inference)
    records = {f: mask_record(seq.frames[f], models, ran_with) for f in wanted}
    finished = set() if overwrite else finished_masks(seq, result_dir, records)
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
    segmenter = Segmenter(model_dir, inference)
    if segmenter.ran_with != ran_with:  # cannot happen: both ask resolve_inference
        raise AssertionError(f"networks run with {segmenter.ran_with}, not {ran_with}")
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
            record = {**records[frame], "pixels": pixels_digest(labels)}
            path = result_dir / ctc.mask_name(frame, seq.digits)
            ctc.write_labels(path, labels, {RECORD_KEY: record})
        log.debug("frame %d: %d objects", frame, int(labels.max()))
    summary["inference"] = segmenter.ran_with
    summary["seconds"] = {k: round(v, 3) for k, v in segmenter.timings.items()}
    log.info("%s: wrote %d masks (%s)", result_dir, len(todo), summary["seconds"])
    return summary


IMAGE_SUFFIXES = (".tif", ".tiff")


def image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The TIFF files ``inputs`` name: files as given, folders by the ``*.tif``/``*.tiff`` files
    directly inside them (sorted by name). Errors name the input that is missing, empty or not
    a TIFF, and two inputs whose masks would have the same name."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if _is_tiff(p) and not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{item}: no .tif/.tiff files in this folder")
            files += found
        elif item.is_file():
            if not _is_tiff(item):
                raise ValueError(f"{item}: not a .tif/.tiff file")
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    by_name: dict[str, Path] = {}
    for path in files:
        if path.name in by_name and by_name[path.name].resolve() != path.resolve():
            raise ValueError(
                f"{by_name[path.name]} and {path} would both give the mask {path.name}: "
                "segment them into different output folders"
            )
        by_name[path.name] = path
    return list(by_name.values())


def is_ctc_sequence(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a CTC sequence: its TIFF files are all frames ``t000.tif`` ..."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    names = [p.name for p in folder.iterdir() if _is_tiff(p) and not p.name.startswith(".")]
    return bool(names) and all(ctc.FRAME_PATTERN.match(name) for name in names)


def segment_images(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    inference: InferenceSettings | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Segment TIFF files (2D images or 3D stacks, any names) into masks of the same names.

    ``inputs`` are files and folders (see :func:`image_files`); ``OUT_DIR/<name>`` receives the
    uint16 instance mask of each, as Cellpose and StarDist users expect. Images may differ in
    size and dimensionality. Finished masks are kept as :func:`segment_sequence` keeps them
    (unless ``overwrite``). Returns a summary: names written and skipped, the backend and
    precision of each network, seconds per stage.
    """
    files = image_files(inputs)
    out_dir = Path(out_dir)
    model_dir = Path(model_dir)
    inference = replace(inference or InferenceSettings(), **overrides)
    for path in files:
        if (out_dir / path.name).resolve() == path.resolve():
            raise ValueError(f"{path}: its mask would overwrite it; choose another output folder")
    shapes = {path: _grey_image_shape(path) for path in files}
    pipeline = read_pipeline_settings(model_dir)
    _remove_temporaries(out_dir, "*")
    models, ran_with = _made_with(model_dir, pipeline, inference)
    records = {path: mask_record(path, models, ran_with) for path in files}
    todo = [
        path
        for path in files
        if overwrite or not is_finished(out_dir / path.name, records[path], shapes[path])
    ]
    summary: dict[str, Any] = {
        "results": str(out_dir),
        "written": [p.name for p in todo],
        "skipped": [p.name for p in files if p not in todo],
    }
    if not todo:
        log.info("%s: all %d masks exist already", out_dir, len(files))
        return summary
    segmenter = Segmenter(model_dir, inference)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in frame_progress(todo, progress, desc="images"):
        with segmenter._timed("read"):
            image = ctc.read_image(path)
        labels = segmenter.segment(image)
        with segmenter._timed("write"):
            record = {**records[path], "pixels": pixels_digest(labels)}
            ctc.write_labels(out_dir / path.name, labels, {RECORD_KEY: record})
        log.debug("%s: %d objects", path.name, int(labels.max()))
    summary["inference"] = segmenter.ran_with
    summary["seconds"] = {k: round(v, 3) for k, v in segmenter.timings.items()}
    log.info("%s: wrote %d masks (%s)", out_dir, len(todo), summary["seconds"])
    return summary


def _is_tiff(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _grey_image_shape(path: Path) -> tuple[int, ...]:
    """Shape of a one-channel 2D image or 3D stack, or an error saying what else it holds."""
    shape, axes = ctc.tiff_shape(path), ctc.tiff_axes(path)
    if "S" in axes or len(shape) not in (2, 3):
        raise ValueError(
            f"{path}: holds {'colour samples (RGB), ' if 'S' in axes else ''}axes {axes} of "
            f"shape {shape}; the networks read one channel of one 2D image (Y, X) or 3D stack "
            "(Z, Y, X) per file: save each channel or time point as its own TIFF"
        )
    if set(axes) & {"C", "T"}:
        log.warning("%s: axes %s read as a 3D stack (Z, Y, X) %s", path, axes, shape)
    return shape


def network_path(model_dir: str | os.PathLike, task: str) -> Path:
    """The ``.keras`` file of one network of a model folder, or an error saying it is missing."""
    path = Path(model_dir) / MODEL_FILES[task]
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the model folder needs a {task} model")
    return path


def model_fingerprint(model_dir: str | os.PathLike, networks: Iterable[str]) -> str:
    """SHA-256 over pipeline.json and the files of every network a model folder uses."""
    digest = hashlib.sha256()
    files = [Path(model_dir) / PIPELINE_FILE]
    for task in networks:
        keras_file = network_path(model_dir, task)
        files += [keras_file, keras_file.with_suffix(".onnx")]
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def mask_record(
    frame_path: Path, models: str, ran_with: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """What the mask of a frame is made from: the frame file, the models, the inference, the
    version of the prediction code."""
    with frame_path.open("rb") as fh:
        frame_digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return {
        "frame": {"name": frame_path.name, "bytes": frame_path.stat().st_size,
                  "sha256": frame_digest},
        "models": models,
        "inference": ran_with,
        "code_version": CODE_VERSIONS["prediction"],
    }  # fmt: skip


def pixels_digest(labels: np.ndarray) -> str:
    """SHA-256 of a mask's pixels as stored (uint16, C order): proves it reads back whole."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint16).tobytes()).hexdigest()


def finished_masks(
    seq: ctc.Sequence, result_dir: Path, records: dict[int, dict[str, Any]]
) -> set[int]:
    """Frames (of ``records``) whose mask reads back whole, with the frame's shape, and was made
    from what ``records`` says (the same frame file, models and inference)."""
    return {
        frame
        for frame, expected in records.items()
        if is_finished(result_dir / ctc.mask_name(frame, seq.digits), expected, seq.frame_shape)
    }


def is_finished(mask: Path, expected: dict[str, Any], shape: tuple[int, ...]) -> bool:
    """Whether ``mask`` reads back whole, has ``shape`` and was made from what ``expected``
    (a :func:`mask_record`) says; logs why not when it exists."""
    if not mask.is_file():
        return False
    try:
        stored = ctc.tiff_metadata(mask).get(RECORD_KEY) or {}
        labels = ctc.read_labels(mask, shape)
    except ctc.CTCFormatError as exc:
        log.warning("%s: segmenting again (%s)", mask, exc)
        return False
    made_from = {k: v for k, v in stored.items() if k != "pixels"}
    if made_from != expected:
        changed = sorted(k for k in expected if stored.get(k) != expected[k])
        log.info("%s was made from another %s: segmenting again", mask, "/".join(changed))
        return False
    if stored.get("pixels") != pixels_digest(labels):
        log.warning("%s does not read back as written: segmenting again", mask)
        return False
    return True


def _made_with(
    model_dir: Path, pipeline: PipelineSettings, inference: InferenceSettings
) -> tuple[str, dict[str, dict[str, str]]]:
    """Fingerprint of a model folder and the backend/precision each network will run with
    (cheap: nothing is loaded)."""
    ran_with = {
        task: _ran_with(*resolve_inference(network_path(model_dir, task), inference.backend,
                                           inference.precision))
        for task in pipeline.networks
    }  # fmt: skip
    return model_fingerprint(model_dir, pipeline.networks), ran_with


def _remove_temporaries(folder: Path, name_pattern: str) -> None:
    for tmp in temporaries(folder, name_pattern):
        log.info("removing %s, left by an interrupted run", tmp)
        remove(tmp)


def _ran_with(backend: str, precision: str) -> dict[str, str]:
    return {"backend": backend, "precision": precision}


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of consecutive True values in a 1D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _span(ids: list[int]) -> str:
    return f"frames {ids[0]}..{ids[-1]}" if ids else "no frames"
