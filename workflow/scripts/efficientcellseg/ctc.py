"""Cell Tracking Challenge data layout: find sequences, frames and annotations; read, write masks.

Layout (https://celltrackingchallenge.net/datasets/)::

    <dataset>/01/t000.tif                 raw frames, 2D (Y, X) or 3D (Z, Y, X); 3 or 4 digits
    <dataset>/01_GT/SEG/man_seg000.tif    full gold-truth masks of selected frames
    <dataset>/01_GT/SEG/man_seg_000_012.tif   gold truth of one slice (time 000, slice 012)
    <dataset>/01_GT/TRA/man_track000.tif  tracking markers of every frame, plus man_track.txt
    <dataset>/01_ST/SEG/man_seg000.tif    silver truth (computer-generated)
    <dataset>/01_RES/mask000.tif          results: uint16, one per frame, same shape as the frame

Every reader here checks what it reads and raises :class:`CTCFormatError` naming the file, so
that bad input never surfaces as a traceback from deep inside NumPy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile

from .files import atomic_output, atomic_write_text, remove, temporaries

FRAME_PATTERN = re.compile(r"^t(\d{3,4})\.tiff?$")
MASK_PATTERN = re.compile(r"^mask(\d{3,4})\.tiff?$")
SEG_FULL_PATTERN = re.compile(r"^man_seg(\d{3,4})\.tiff?$")
SEG_SLICE_PATTERN = re.compile(r"^man_seg_(\d{3,4})_(\d{3,4})\.tiff?$")
TRA_PATTERN = re.compile(r"^man_track(\d{3,4})\.tiff?$")
SEQUENCE_PATTERN = re.compile(r"^\d{2}$")
ANNOTATION_FOLDER_PATTERN = re.compile(r"^(\d{2})_(?:GT|ST)$")
MAX_LABEL = np.iinfo(np.uint16).max


class CTCFormatError(ValueError):
    """A file or folder does not follow the CTC conventions; the message names it and says why."""


class OutputPathError(ValueError):
    """An output path that would overwrite an input, write into the frame or annotation folders
    of a CTC dataset, or is a file where a folder is needed (or the reverse); the message names
    it."""


@dataclass(frozen=True)
class SegAnnotation:
    """One segmentation annotation file: a full 2D/3D mask, or one slice of a 3D frame."""

    frame: int
    path: Path
    slice: int | None = None  # None: the file covers the whole frame

    @property
    def is_slice(self) -> bool:
        return self.slice is not None


@dataclass(frozen=True)
class Sequence:
    """One CTC sequence (``01``, ``02``, ...) of a dataset folder and the annotations beside it."""

    dataset_dir: Path
    name: str
    frames: dict[int, Path]
    digits: int
    frame_shape: tuple[int, ...]
    gt_seg: tuple[SegAnnotation, ...] = ()
    st_seg: tuple[SegAnnotation, ...] = ()
    tra_markers: dict[int, Path] = field(default_factory=dict)
    tra_tracks: Path | None = None

    @property
    def path(self) -> Path:
        return self.dataset_dir / self.name

    @property
    def ndim(self) -> int:
        """Spatial dimensionality of the frames (2 or 3)."""
        return len(self.frame_shape)

    @property
    def frame_ids(self) -> list[int]:
        return sorted(self.frames)

    def annotations(self, source: str) -> tuple[SegAnnotation, ...]:
        """Segmentation annotations of one source: ``"GT"`` (gold) or ``"ST"`` (silver)."""
        if source not in ("GT", "ST"):
            raise ValueError(f"annotation source must be 'GT' or 'ST', not {source!r}")
        return self.gt_seg if source == "GT" else self.st_seg


def frame_name(frame: int, digits: int) -> str:
    return f"t{frame:0{digits}d}.tif"


def mask_name(frame: int, digits: int) -> str:
    return f"mask{frame:0{digits}d}.tif"


def discover_sequences(dataset_dir: str | os.PathLike) -> list[str]:
    """Names of the sequences (two-digit folders holding ``t*.tif`` frames) in a dataset folder."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise CTCFormatError(f"{dataset_dir}: dataset folder does not exist")
    names = sorted(
        p.name
        for p in dataset_dir.iterdir()
        if p.is_dir() and SEQUENCE_PATTERN.match(p.name) and _frame_files(p)
    )
    if not names:
        raise CTCFormatError(
            f"{dataset_dir}: no sequence found (expected folders such as 01/ holding t000.tif ...)"
        )
    return names


def open_sequence(dataset_dir: str | os.PathLike, name: str) -> Sequence:
    """Index one sequence: its frames, their digit count and shape, and every annotation present.

    Only headers are read, so this is cheap even for large datasets.
    """
    dataset_dir = Path(dataset_dir)
    seq_dir = dataset_dir / name
    if not seq_dir.is_dir():
        raise CTCFormatError(f"{seq_dir}: sequence folder does not exist")
    frames, digits = _index_files(_frame_files(seq_dir), FRAME_PATTERN, seq_dir, "frame")
    if not frames:
        raise CTCFormatError(f"{seq_dir}: no frames named t000.tif (or t0000.tif) found")
    frame_shape = tiff_shape(frames[min(frames)])
    gt_seg = _seg_annotations(dataset_dir / f"{name}_GT" / "SEG", digits)
    st_seg = _seg_annotations(dataset_dir / f"{name}_ST" / "SEG", digits)
    tra_dir = dataset_dir / f"{name}_GT" / "TRA"
    tra_markers: dict[int, Path] = {}
    tra_tracks = None
    if tra_dir.is_dir():
        files = [p for p in tra_dir.iterdir() if TRA_PATTERN.match(p.name)]
        tra_markers, _ = _index_files(files, TRA_PATTERN, tra_dir, "marker", digits)
        if (tra_dir / "man_track.txt").is_file():
            tra_tracks = tra_dir / "man_track.txt"
    for ann in (*gt_seg, *st_seg):
        if ann.frame not in frames:
            raise CTCFormatError(
                f"{ann.path}: annotates frame {ann.frame}, but {seq_dir} has no such frame"
            )
    return Sequence(
        dataset_dir=dataset_dir,
        name=name,
        frames=frames,
        digits=digits,
        frame_shape=frame_shape,
        gt_seg=gt_seg,
        st_seg=st_seg,
        tra_markers=tra_markers,
        tra_tracks=tra_tracks,
    )


class TiffHeader(NamedTuple):
    """What a TIFF holds, from its header: the frame's shape (2D or 3D, singleton axes dropped),
    its pixel type, and the JSON metadata tifffile stores with it (``{}`` when there is none)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    metadata: dict


def tiff_header(path: str | os.PathLike) -> TiffHeader:
    """Shape, pixel type and metadata of the grey 2D/3D image in a TIFF, without its pixels.

    The image layout is checked as :func:`read_image` checks it.
    """
    path = Path(path)
    with _tifffile_errors(path), _open_tiff(path) as tif:
        shape, dtype, _ = _grey_layout(tif, path)
        shaped = tif.shaped_metadata
    return TiffHeader(shape, dtype, dict(shaped[0]) if shaped else {})


def tiff_shape(path: Path) -> tuple[int, ...]:
    """Shape of the image in a TIFF file (singleton axes dropped) without reading its pixels."""
    return tiff_header(path).shape


def tiff_axes(path: Path) -> str:
    """Axis letters tifffile reads from a TIFF's metadata, singleton axes dropped (e.g. ``ZYX``,
    ``YXS`` for RGB, ``TZYX`` for an ImageJ hyperstack; ``Q``/``I`` where unknown)."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return "".join(a for a, n in zip(series.axes, series.shape, strict=True) if n > 1)
    except Exception as exc:
        raise CTCFormatError(f"{path}: not a readable TIFF file ({exc})") from exc


def tiff_metadata(path: Path) -> dict:
    """The JSON metadata tifffile stores with an image (``{}`` when there is none)."""
    return tiff_header(path).metadata


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a grey 2D (Y, X) or 3D (Z, Y, X) frame from a TIFF file, singleton axes removed.

    A 3D stack may be one image series or one 2D series per page, as tools that write stacks
    page by page (``tifffile.imwrite(..., append=True)``, some ImageJ exports) store it.
    Colour images and images of more than three dimensions are refused with
    :class:`CTCFormatError` saying what the file holds.
    """
    path = Path(path)
    with _tifffile_errors(path), _open_tiff(path) as tif:
        shape, _, series = _grey_layout(tif, path)
        try:
            if len(series) == 1:
                image = series[0].asarray()
            else:
                image = np.stack([s.asarray() for s in series])
        except Exception as exc:  # truncated or damaged pixel data
            raise CTCFormatError(
                f"{path}: damaged TIFF file, its pixels cannot be read ({exc})"
            ) from exc
    return image.reshape(shape)


@contextlib.contextmanager
def _tifffile_errors(path: Path) -> Iterator[None]:
    """Turn the errors tifffile logs and reads on past (a broken chain of pages, which would
    shorten a stack) into :class:`CTCFormatError`, instead of log lines beside the result."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if records:
        raise CTCFormatError(f"{path}: damaged TIFF file ({records[0].getMessage()})")


def _open_tiff(path: Path) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except FileNotFoundError:
        raise CTCFormatError(f"{path}: file does not exist") from None
    except IsADirectoryError:
        raise CTCFormatError(f"{path}: is a folder, not a TIFF file") from None
    except Exception as exc:
        raise CTCFormatError(f"{path}: not a readable TIFF file ({exc})") from exc


def _grey_layout(tif: tifffile.TiffFile, path: Path) -> tuple[tuple[int, ...], np.dtype, list]:
    """The frame's shape and pixel type, and the image series that hold it (one, or one 2D
    series per page of a stack written page by page); :class:`CTCFormatError` for anything
    that is not one grey 2D or 3D image."""
    try:
        series = list(tif.series)
    except Exception as exc:
        raise CTCFormatError(f"{path}: not a readable TIFF file ({exc})") from exc
    if not series or 0 in series[0].shape:
        raise CTCFormatError(f"{path}: not a readable TIFF file (it holds no image data)")
    first = series[0]
    shape, axes = tuple(first.shape), first.axes
    if len(series) > 1:
        alike = all(s.shape == first.shape and s.dtype == first.dtype for s in series)
        if not alike or len(_squeezed_shape(shape)) != 2:
            found = ", ".join(f"{s.shape} {s.dtype}" for s in series[:4])
            raise CTCFormatError(
                f"{path}: holds {len(series)} separate images ({found}"
                f"{', ...' if len(series) > 4 else ''}); a CTC frame is one grey 2D or 3D image: "
                "save it as one (Z, Y, X) stack"
            )
        shape, axes = (len(series), *shape), "I" + axes
    found = f"shape {shape}, axes {axes}, {first.dtype}"
    # Interleaved samples (axes ...YXS) are colour; separate planes (SYX) are read as slices,
    # because tifffile.imwrite stores any stack of 3 or 4 slices as planar RGB(A).
    samples = shape[-1] if axes.endswith("S") else 1
    if samples > 1:
        raise CTCFormatError(
            f"{path}: a colour image ({samples} samples per pixel; {found}); CTC frames are "
            "grey: save one channel as a 2D (Y, X) or 3D (Z, Y, X) image"
        )
    squeezed = _squeezed_shape(shape)
    if len(squeezed) not in (2, 3):
        raise CTCFormatError(
            f"{path}: a {len(squeezed)}D image ({found}); CTC frames are grey 2D (Y, X) or "
            "3D (Z, Y, X) images: save one time point and channel per file"
        )
    if len(squeezed) == 3 and squeezed[-1] <= 4 < squeezed[-2]:
        raise CTCFormatError(
            f"{path}: an image {squeezed[-1]} pixels wide ({found}) looks like colour channels "
            "stored as pixels; CTC frames are grey: save one channel as a 2D (Y, X) or 3D "
            "(Z, Y, X) image"
        )
    return squeezed, np.dtype(first.dtype), series


def read_labels(path: str | os.PathLike, expected_shape: Iterable[int] | None = None) -> np.ndarray:
    """Read an instance label image, checking it is integer, non-negative and of the right shape.

    Returns the labels as uint16 when they fit (the CTC mask type), else as uint32/int64.
    """
    path = Path(path)
    labels = read_image(path)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise CTCFormatError(
            f"{path}: label images must hold integers, found {labels.dtype} "
            "(save masks as uint16 with one positive value per object)"
        )
    if expected_shape is not None and labels.shape != tuple(expected_shape):
        raise CTCFormatError(
            f"{path}: shape {labels.shape} does not match its image shape {tuple(expected_shape)}"
        )
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise CTCFormatError(f"{path}: label images must not hold negative values")
    if labels.dtype == bool or (labels.size and labels.max() <= MAX_LABEL):
        return labels.astype(np.uint16, copy=False)
    return labels


def read_annotation(ann: SegAnnotation, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Read one SEG annotation and check it against the frame it annotates."""
    if ann.slice is None:
        return read_labels(ann.path, frame_shape)
    if len(frame_shape) != 3:
        raise CTCFormatError(f"{ann.path}: a per-slice annotation needs 3D frames")
    if not 0 <= ann.slice < frame_shape[0]:
        raise CTCFormatError(
            f"{ann.path}: slice {ann.slice} is outside the frame's {frame_shape[0]} slices"
        )
    return read_labels(ann.path, frame_shape[1:])


def read_man_track(path: str | os.PathLike) -> np.ndarray:
    """Read ``man_track.txt`` (one ``L B E P`` line per track) as an (N, 4) int array."""
    path = Path(path)
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
            raise CTCFormatError(f"{path}:{number}: expected 'L B E P' (4 integers), got {line!r}")
        rows.append([int(p) for p in parts])
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def marker_frames(seq: Sequence) -> dict[int, Path]:
    """The TRA marker file of every frame the tracking annotation covers (what DET scores).

    The frames come from the annotation itself, not from the files that happen to exist: the
    spans ``B..E`` of the tracks in ``man_track.txt`` (plus any other marker file), or, without
    ``man_track.txt``, every frame of the sequence. A missing marker file is an error naming it,
    so that a lost file cannot shrink the score's basis unnoticed. ``{}``: no TRA annotation.
    """
    if not seq.tra_markers and seq.tra_tracks is None:
        return {}
    tra_dir = seq.dataset_dir / f"{seq.name}_GT" / "TRA"
    if seq.tra_tracks is None:
        wanted, why = set(seq.frame_ids), f"{tra_dir / 'man_track.txt'} is missing"
    else:
        wanted = set()
        for label, begin, end, _ in read_man_track(seq.tra_tracks):
            if not 0 <= begin <= end:
                raise CTCFormatError(
                    f"{seq.tra_tracks}: track {label} spans frames {begin}..{end}; "
                    "a track needs 0 <= B <= E"
                )
            wanted.update(range(begin, end + 1))
        why = f"{seq.tra_tracks} has tracks in it"
    outside = sorted((wanted | set(seq.tra_markers)) - set(seq.frames))
    if outside:
        raise CTCFormatError(
            f"{tra_dir}: markers of frames {_listed(outside)}, which {seq.path} does not have; "
            "the annotation belongs to another sequence, or frames are missing"
        )
    missing = sorted(wanted - set(seq.tra_markers))
    if missing:
        name = f"man_track{missing[0]:0{seq.digits}d}.tif"
        raise CTCFormatError(
            f"{tra_dir / name}: missing ({len(missing)} marker files missing, frames "
            f"{_listed(missing)}); DET needs the markers of every annotated frame ({why}): "
            "restore them from the dataset's zip"
        )
    return {f: seq.tra_markers[f] for f in sorted(wanted | set(seq.tra_markers))}


def _listed(numbers: list[int], most: int = 8) -> str:
    shown = ", ".join(map(str, numbers[:most]))
    return shown + (", ..." if len(numbers) > most else "")


def write_man_track(path: str | os.PathLike, tracks: np.ndarray) -> None:
    text = "".join(f"{int(a)} {int(b)} {int(c)} {int(d)}\n" for a, b, c, d in tracks)
    atomic_write_text(path, text)


def write_labels(path: str | os.PathLike, labels: np.ndarray, metadata: dict | None = None) -> None:
    """Write labels as a uint16 TIFF, atomically: no half-written file survives an interrupt.

    ``metadata`` (JSON-serialisable) is stored in the TIFF's description, beside the shape.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(
            f"{path}: labels must lie in 0..{MAX_LABEL} to be stored as uint16, "
            f"got {labels.min()}..{labels.max()}"
        )
    write_tiff(path, labels.astype(np.uint16, copy=False), metadata=metadata or {})


def write_tiff(path: str | os.PathLike, image: np.ndarray, **kwargs) -> None:
    """Write a TIFF atomically (see :mod:`efficientcellseg.files`)."""
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, image, **kwargs)


def check_output(
    path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), folder: bool = False
) -> Path:
    """``path`` if it may receive an output (a ``folder``, else a file), else
    :class:`OutputPathError`: no output may replace one of ``inputs`` or go into the frame or
    annotation folders of a CTC dataset, the data everything else is made from."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} is a file, not a folder: give a folder for the output")
    if not folder and path.is_dir():
        raise OutputPathError(f"{path} is a folder: give the name of the file to write")
    for source in inputs:
        if _same_path(path, Path(source)):
            raise OutputPathError(f"{path} is the input {source}: write the output somewhere else")
    protected = dataset_input_folder(path if folder else path.parent)
    if protected is not None:
        raise OutputPathError(
            f"{path} is in {protected}, a folder of a CTC dataset's frames or annotations: "
            "nothing is written there; write the output somewhere else"
        )
    return path


@contextlib.contextmanager
def new_dataset(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder to write a dataset into; it becomes ``out_dir`` when the block
    succeeds, so an interrupted run leaves no half-written dataset. ``out_dir`` must not exist
    yet or be empty: a dataset is never written over another one."""
    out_dir = check_new_dataset(out_dir)
    for stale in temporaries(out_dir.parent, out_dir.name):  # left by a killed run
        remove(stale)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        yield tmp


def check_new_dataset(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` if a new dataset may be written there (it does not exist or is empty), else
    :class:`OutputPathError`."""
    out_dir = check_output(out_dir, folder=True)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputPathError(
            f"{out_dir} exists and is not empty: choose a new folder (or delete it to write "
            "the dataset again)"
        )
    return out_dir


def dataset_input_folder(path: str | os.PathLike) -> Path | None:
    """The folder of a CTC dataset's frames (``01/`` holding ``t000.tif`` ...) or annotations
    (``01_GT/``, ``01_ST/`` beside it) that is ``path`` or holds it, else None."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if match := ANNOTATION_FOLDER_PATTERN.match(folder.name):
            raw = folder.with_name(match.group(1))
            if raw.is_dir() and _frame_files(raw):
                return folder
        elif SEQUENCE_PATTERN.match(folder.name) and folder.is_dir() and _frame_files(folder):
            return folder
    return None


def _same_path(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def result_dir(seq: Sequence) -> Path:
    return seq.dataset_dir / f"{seq.name}_RES"


def missing_masks(seq: Sequence, res_dir: str | os.PathLike) -> list[int]:
    """Frames of ``seq`` that have no result mask in ``res_dir`` yet (for resuming)."""
    res_dir = Path(res_dir)
    return [f for f in seq.frame_ids if not (res_dir / mask_name(f, seq.digits)).is_file()]


def _frame_files(seq_dir: Path) -> list[Path]:
    return [p for p in seq_dir.iterdir() if FRAME_PATTERN.match(p.name)]


def _index_files(
    files: Iterable[Path],
    pattern: re.Pattern,
    folder: Path,
    what: str,
    digits: int | None = None,
) -> tuple[dict[int, Path], int]:
    """Map frame number -> file, checking that every name uses the same digit count."""
    index: dict[int, Path] = {}
    seen_digits = set()
    for path in files:
        number = pattern.match(path.name).group(1)
        seen_digits.add(len(number))
        index[int(number)] = path
    if len(seen_digits) > 1:
        raise CTCFormatError(
            f"{folder}: {what} names mix {sorted(seen_digits)} digits; use one digit count"
        )
    found = seen_digits.pop() if seen_digits else (digits or 3)
    if digits is not None and index and found != digits:
        raise CTCFormatError(
            f"{folder}: {what} names use {found} digits but the frames use {digits}"
        )
    return dict(sorted(index.items())), found


def _seg_annotations(seg_dir: Path, digits: int) -> tuple[SegAnnotation, ...]:
    if not seg_dir.is_dir():
        return ()
    annotations = []
    for path in sorted(seg_dir.iterdir()):
        if m := SEG_FULL_PATTERN.match(path.name):
            annotations.append(SegAnnotation(int(m.group(1)), path))
            numbers = [m.group(1)]
        elif m := SEG_SLICE_PATTERN.match(path.name):
            annotations.append(SegAnnotation(int(m.group(1)), path, int(m.group(2))))
            numbers = [m.group(1)]
        else:
            continue
        if len(numbers[0]) != digits:
            raise CTCFormatError(
                f"{path}: frame number has {len(numbers[0])} digits but the frames use {digits}"
            )
    return tuple(annotations)


def _squeezed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop singleton axes beyond the last two (a 3D stack of one slice stays 3D only if Z>1)."""
    if len(shape) <= 2:
        return shape
    kept = tuple(s for s in shape[:-2] if s != 1)
    return kept + shape[-2:]
