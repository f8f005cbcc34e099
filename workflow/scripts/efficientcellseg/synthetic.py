"""A synthetic CTC dataset with known answers: nucleus-like objects in 3D (or 2D) time-lapse stacks.

It is built to exercise what EfficientCellSeg exists for: anisotropic stacks (few slices per
nucleus) whose nuclei fade towards their top and bottom slices, so that a single slice alone is
ambiguous while its neighbours are not. Some nuclei touch, so instance separation matters.

Per sequence it writes raw frames, full gold truth for some frames and per-slice gold truth for
others (both kinds the CTC uses), tracking markers for every frame with ``man_track.txt``, and a
silver truth for every frame in which some nuclei are one voxel too small (silver truth is
computer-made and imperfect). Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import ctc
from .settings import SyntheticSpec

log = logging.getLogger(__name__)

MARKER_RADIUS = 0.5  # TRA markers: the central part of each nucleus (normalised radius)
SILVER_TRUTH_SHRINK = 0.88  # eroded nuclei in the silver truth keep this normalised radius


@dataclass
class _Nucleus:
    centre: np.ndarray  # (z, y, x) in pixels
    radii: np.ndarray  # (rz, ry, rx)
    angle: float  # rotation in the xy plane
    brightness: float


def generate_sequence(spec: SyntheticSpec, sequence: int) -> dict[str, np.ndarray]:
    """Frames and annotations of one sequence as arrays (T, [Z,] Y, X).

    Returns ``images`` (uint16), ``labels`` (exact instance masks), ``silver`` (silver truth)
    and ``markers`` (TRA markers); labels are the same track ids in every frame.
    """
    rng = np.random.default_rng([spec.seed, sequence])
    volume = (spec.depth if spec.ndim == 3 else 1, spec.height, spec.width)
    nuclei = _place_nuclei(spec, volume, rng)
    eroded = rng.random(len(nuclei)) < 0.3
    images, labels, silver, markers = [], [], [], []
    for frame in range(spec.n_frames):
        if frame:
            _drift(nuclei, spec, volume, rng)
        lab, dist = _rasterise(nuclei, volume)
        intensity = _render(nuclei, lab, dist, spec, volume, rng)
        st = lab.copy()
        shrink = np.isin(lab, np.flatnonzero(eroded) + 1) & (dist > SILVER_TRUTH_SHRINK)
        st[shrink] = 0
        mk = np.where(dist < MARKER_RADIUS, lab, 0).astype(np.uint16)
        squeeze = (lambda a: a[0]) if spec.ndim == 2 else (lambda a: a)
        images.append(squeeze(intensity))
        labels.append(squeeze(lab))
        silver.append(squeeze(st))
        markers.append(squeeze(mk))
    return {
        "images": np.stack(images),
        "labels": np.stack(labels),
        "silver": np.stack(silver),
        "markers": np.stack(markers),
    }


def write_synthetic_dataset(out_dir: str | Path, spec: SyntheticSpec | None = None) -> dict:
    """Write a synthetic dataset in CTC layout; returns a summary of what was written."""
    spec = spec or SyntheticSpec()
    out_dir = Path(out_dir)
    summary = {"path": str(out_dir), "spec": asdict(spec), "sequences": {}}
    with ctc.new_dataset(out_dir) as folder:
        for index in range(spec.n_sequences):
            name = f"{index + 1:02d}"
            data = generate_sequence(spec, index)
            seq_summary = _write_sequence(folder, name, data, spec)
            summary["sequences"][name] = seq_summary
            log.info(
                "sequence %s: %d frames %s, %d full GT, %d slice GT, %d ST files",
                name,
                spec.n_frames,
                "x".join(map(str, spec.shape)),
                seq_summary["gt_full"],
                seq_summary["gt_slices"],
                seq_summary["st"],
            )
        (folder / "README.txt").write_text(
            "Synthetic CTC-layout dataset made by `efficientcellseg synthetic`.\n"
            f"Settings: {asdict(spec)}\n"
            "0X_GT/SEG: exact masks (full masks on even frames; per-slice masks on odd frames\n"
            "  of 3D data).\n"
            "0X_GT/TRA: markers (nucleus centres) of every frame with man_track.txt.\n"
            "0X_ST/SEG: silver truth of every frame: exact masks with ~30% of nuclei one voxel "
            "too small.\n"
        )
    return summary


def _write_sequence(out_dir: Path, name: str, data: dict, spec: SyntheticSpec) -> dict:
    gt_dir = out_dir / f"{name}_GT" / "SEG"
    tra_dir = out_dir / f"{name}_GT" / "TRA"
    st_dir = out_dir / f"{name}_ST" / "SEG"
    counts = {"gt_full": 0, "gt_slices": 0, "st": 0}
    for t in range(spec.n_frames):
        ctc.write_tiff(out_dir / name / ctc.frame_name(t, 3), data["images"][t])
        ctc.write_labels(tra_dir / f"man_track{t:03d}.tif", data["markers"][t])
        ctc.write_labels(st_dir / f"man_seg{t:03d}.tif", data["silver"][t])
        counts["st"] += 1
        labels = data["labels"][t]
        if spec.ndim == 2 or t % 2 == 0:
            ctc.write_labels(gt_dir / f"man_seg{t:03d}.tif", labels)
            counts["gt_full"] += 1
            continue
        for z in range(1, labels.shape[0], 3):
            if labels[z].any():
                ctc.write_labels(gt_dir / f"man_seg_{t:03d}_{z:03d}.tif", labels[z])
                counts["gt_slices"] += 1
    ids = np.unique(data["labels"])
    ids = ids[ids > 0]
    tracks = np.array([[i, 0, spec.n_frames - 1, 0] for i in ids], dtype=np.int64)
    ctc.write_man_track(tra_dir / "man_track.txt", tracks)
    return counts


def _place_nuclei(spec: SyntheticSpec, volume: tuple, rng: np.random.Generator) -> list[_Nucleus]:
    """Random non-overlapping ellipsoids; a fraction is put right next to an earlier one."""
    nuclei: list[_Nucleus] = []
    attempts = 0
    while len(nuclei) < spec.n_objects and attempts < 200 * spec.n_objects:
        attempts += 1
        rxy = rng.uniform(*spec.radius_xy)
        radii = np.array(
            [
                rng.uniform(*spec.radius_z) if spec.ndim == 3 else 1.0,
                rxy * rng.uniform(0.8, 1.0),
                rxy,
            ]
        )
        if nuclei and rng.random() < spec.touching_fraction:
            # touch an earlier nucleus: centre at about the sum of the two radii
            other = nuclei[rng.integers(len(nuclei))]
            direction = rng.uniform(0, 2 * np.pi)
            distance = 0.95 * (other.radii[1:].mean() + radii[1:].mean())
            centre = other.centre + np.array(
                [rng.normal(0, 0.5), distance * np.sin(direction), distance * np.cos(direction)]
            )
        else:
            centre = np.array([rng.uniform(0, s) for s in volume], dtype=float)
        centre = _clip_centre(centre, radii, volume, spec.ndim)
        if any(_overlap(centre, radii, n) for n in nuclei):
            continue
        nuclei.append(_Nucleus(centre, radii, rng.uniform(0, np.pi), rng.uniform(*spec.brightness)))
    if len(nuclei) < spec.n_objects:
        log.warning("only %d of %d nuclei fit; enlarge the image", len(nuclei), spec.n_objects)
    return nuclei


def _overlap(centre: np.ndarray, radii: np.ndarray, other: _Nucleus) -> bool:
    """True when two nuclei would overlap by more than a touching contact."""
    d_xy = np.hypot(*(centre[1:] - other.centre[1:]))
    d_z = abs(centre[0] - other.centre[0])
    return d_xy < 0.85 * (radii[1:].mean() + other.radii[1:].mean()) and d_z < (
        radii[0] + other.radii[0]
    )


def _clip_centre(centre: np.ndarray, radii: np.ndarray, volume: tuple, ndim: int) -> np.ndarray:
    low = np.array([radii[0] if ndim == 3 else 0, radii[1] + 2, radii[2] + 2])
    high = np.array(volume, dtype=float) - 1 - low
    if ndim == 2:
        high[0] = 0
    return np.clip(centre, low, high)


def _drift(nuclei: list[_Nucleus], spec: SyntheticSpec, volume: tuple, rng) -> None:
    for n in nuclei:
        step = rng.normal(0, spec.drift, 3) * np.array([0.2 if spec.ndim == 3 else 0, 1, 1])
        n.centre = _clip_centre(n.centre + step, n.radii, volume, spec.ndim)


def _rasterise(nuclei: list[_Nucleus], volume: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Label each voxel with the nucleus whose normalised ellipsoid distance is smallest (< 1).

    Touching nuclei are thereby split along a natural boundary. Also returns that distance.
    """
    labels = np.zeros(volume, dtype=np.uint16)
    best = np.full(volume, np.inf, dtype=np.float32)
    for label, n in enumerate(nuclei, start=1):
        lo = np.maximum(np.floor(n.centre - n.radii).astype(int), 0)
        hi = np.minimum(np.ceil(n.centre + n.radii).astype(int) + 1, volume)
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        dz = (z - n.centre[0]) / n.radii[0]
        dy, dx = y - n.centre[1], x - n.centre[2]
        c, s = np.cos(n.angle), np.sin(n.angle)
        u = (c * dx + s * dy) / n.radii[2]
        v = (-s * dx + c * dy) / n.radii[1]
        dist = np.sqrt(dz**2 + u**2 + v**2).astype(np.float32)
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        closer = (dist < 1) & (dist < best[box])
        labels[box][closer] = label
        best[box][closer] = dist[closer]
    return labels, best


def _render(nuclei, labels, dist, spec: SyntheticSpec, volume: tuple, rng) -> np.ndarray:
    """Fluorescence image: nuclei fade towards their top/bottom slices, blurred, noisy."""
    brightness = np.array([0.0] + [n.brightness for n in nuclei], dtype=np.float32)[labels]
    if spec.ndim == 3:
        centre_z = np.array([0.0] + [n.centre[0] for n in nuclei], dtype=np.float32)[labels]
        radius_z = np.array([1.0] + [n.radii[0] for n in nuclei], dtype=np.float32)[labels]
        z = np.arange(volume[0], dtype=np.float32)[:, None, None]
        fade = 1 - spec.z_falloff * np.clip(np.abs(z - centre_z) / radius_z, 0, 1) ** 2
    else:
        fade = 1.0
    texture = 1 - 0.25 * np.minimum(dist, 1) ** 2
    signal = brightness * fade * texture
    sigma = (spec.blur_z if spec.ndim == 3 else 0, spec.blur_xy, spec.blur_xy)
    signal = ndimage.gaussian_filter(signal, sigma)
    ramp = np.linspace(0, 1, volume[1], dtype=np.float32)[None, :, None]
    image = spec.background * (1 + 0.3 * ramp) + signal
    image += rng.normal(0, spec.noise, volume).astype(np.float32)
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16)
