"""`snakemake ctc_upload` end to end, then the upload played back as the organisers would.

A local HTTP server stands in for the CTC server (training and challenge zips, via
``ctc_server``) and for Keras' ImageNet weights (a file the test makes, pinned by its own
sha256 in the config). The workflow trains a tiny network from those weights, runs the
generated executables on the challenge set and packs the archive. The test then unpacks the
archive into an empty folder next to the challenge sequences and runs every executable again,
under ``env -i`` and without network: the masks must equal the archive's voxel for voxel. Finally
the software is installed offline from a CPU wheelhouse (``install.sh`` inside a network
namespace with no network) and one executable runs with that environment alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from http_server import FileServer
from workflow_runs import ROOT, run_snakemake, served_dataset_zip, write_config

from efficientcellseg import ctc
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.upload import no_network_prefix
from efficientcellseg.wheelhouse import build_wheelhouse

pytestmark = pytest.mark.slow

NAME = "Served-Upload"
SEQUENCES = ("01", "02")
VENV_BIN = Path(sys.executable).parent
WEIGHTS = "efficientnetb0_notop.h5"
# Small, but with enough annotated slices for a validation split.
TRAINING = SyntheticSpec(seed=3, n_frames=2, depth=8, height=64, width=64, n_objects=4)
CHALLENGE = SyntheticSpec(seed=21, n_frames=2, depth=8, height=64, width=64, n_objects=4)


def _imagenet_like_weights(path: Path) -> None:
    """A stand-in for Keras' ImageNet file of EfficientNetB0 (its layout, random weights)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None)
    with h5py.File(path, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, source)


def _config(server_url: str, weights_sha256: str) -> dict:
    return {
        "ctc_server": server_url,
        "imagenet_weights": {
            "url": f"{server_url}/weights/",
            "files": {"EfficientNetB0": {"checksum": f"sha256:{weights_sha256}"}},
        },
        "submission": ["served"],
        "submission_wheelhouse": [],  # the offline install is tested below, with a cached one
        "datasets": {
            "served": {
                "ctc_name": NAME,
                "source": "ctc",
                "model": {"preset": "tiny", "encoder_weights": "imagenet"},
                "training_set": "GT",
                "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2},
                "postprocess": {"kind": "distance", "min_area": 15, "min_volume": 40},
            }
        },
    }


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> dict:
    """The workflow's `ctc_upload` run against the local server; what it was served."""
    workdir = tmp_path_factory.mktemp("upload")
    weights = workdir.parent / f"{workdir.name}-{WEIGHTS}"
    _imagenet_like_weights(weights)
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    with FileServer() as server:
        server.serve(f"/training-datasets/{NAME}.zip", served_dataset_zip(NAME, TRAINING))
        challenge_zip = served_dataset_zip(NAME, CHALLENGE, challenge=True)
        server.serve(f"/test-datasets/{NAME}.zip", challenge_zip)
        server.serve(f"/weights/{WEIGHTS}", weights.read_bytes())
        write_config(workdir, _config(server.url, sha256))
        run = run_snakemake(workdir, "--cores", "2", "ctc_upload").check()
        requested = {r.path for r in server.requests}
    challenge = workdir.parent / f"{workdir.name}-challenge"
    with zipfile.ZipFile(io.BytesIO(challenge_zip)) as zf:
        zf.extractall(challenge)
    return {
        "workdir": workdir,
        "archive": workdir / "results" / "ctc_upload.zip",
        "output": run.output,
        "requested": requested,
        "weights_sha256": sha256,
        "challenge": challenge / NAME,
    }


def _extract(archive: Path, dest: Path) -> None:
    """Unpack like `unzip` does: with the file modes stored in the archive."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                path.chmod(mode & 0o777)


def _archived_masks(archive: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(archive) as zf:
        return {
            name: tifffile.imread(zf.open(name))
            for name in zf.namelist()
            if name.startswith(f"{NAME}/") and name.endswith(".tif")
        }


def _run_as_organiser(script: Path, path: str, home: Path) -> subprocess.CompletedProcess:
    prefix = no_network_prefix()
    if not prefix:
        pytest.skip("this system does not allow a process without network (unshare)")
    return subprocess.run(
        [*prefix, "env", "-i", f"PATH={path}", f"HOME={home}", "PIP_CONFIG_FILE=/dev/null",
         f"./{script.name}"],
        cwd=script.parent, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def test_data_and_weights_came_from_the_configured_servers(upload: dict) -> None:
    assert upload["requested"] >= {
        f"/training-datasets/{NAME}.zip",
        f"/test-datasets/{NAME}.zip",
        f"/weights/{WEIGHTS}",
    }
    challenge = upload["workdir"] / "resources" / "ctc-test" / NAME
    assert sorted(p.name for p in challenge.glob("[!.]*")) == list(SEQUENCES)  # no annotations
    fetched = upload["workdir"] / "resources" / "imagenet" / WEIGHTS
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == upload["weights_sha256"]


def test_archive_holds_every_mask_and_the_software(upload: dict) -> None:
    with zipfile.ZipFile(upload["archive"]) as zf:
        names = set(zf.namelist())
        modes = {info.filename: info.external_attr >> 16 for info in zf.infolist()}
    for sequence in SEQUENCES:
        seq = ctc.open_sequence(upload["challenge"], sequence)
        masks = {n for n in names if n.startswith(f"{NAME}/{sequence}_RES/")}
        assert masks == {
            f"{NAME}/{sequence}_RES/{ctc.mask_name(f, seq.digits)}" for f in seq.frame_ids
        }
        assert f"SW/{NAME}-{sequence}.sh" in names
        assert modes[f"SW/{NAME}-{sequence}.sh"] & 0o111
    for name in ("install.sh", "requirements-cpu.txt", "requirements-gpu.txt", "SUBMISSION.md"):
        assert f"SW/{name}" in names
    for suffix in ("keras", "onnx", "json"):
        assert f"SW/models/{NAME}/segmentation.{suffix}" in names
    assert "SW/code/efficientcellseg/segment.py" in names
    assert not [n for n in names if "__pycache__" in n or "/venv/" in n or n.endswith(".partial")]
    assert {n.split("/")[0] for n in names} == {NAME, "SW"}
    for mask in _archived_masks(upload["archive"]).values():
        assert mask.dtype == np.uint16 and mask.shape == (CHALLENGE.depth, 64, 64)


def test_imagenet_start_is_recorded_in_metadata_and_description(upload: dict) -> None:
    sha256 = upload["weights_sha256"]
    with zipfile.ZipFile(upload["archive"]) as zf:
        metadata = json.loads(zf.read(f"SW/models/{NAME}/segmentation.json"))
        summary = zf.read("SW/SUBMISSION.md").decode()
        header = zf.read(f"SW/{NAME}-01.sh").decode().split("set -euo")[0]
    assert metadata["encoder_initialisation"] == {
        "source": "imagenet",
        "file": WEIGHTS,
        "sha256": sha256,
    }
    assert f"segmentation: ImageNet ({WEIGHTS}, sha256 {sha256})" in summary
    assert f"ImageNet ({WEIGHTS}, sha256 {sha256})" in header
    assert "GT (gold truth annotations only)" in summary
    total = metadata["parameters"]["total"]
    assert f"| {total:,} |" in summary and f"{total:,} parameters" in header


def test_unpacked_archive_remakes_its_masks_offline(upload: dict, tmp_path: Path) -> None:
    """The organisers' run: unpack, add the challenge sequences, run each script from SW/."""
    root = tmp_path / "organiser"
    _extract(upload["archive"], root)
    for sequence in SEQUENCES:
        shutil.copytree(upload["challenge"] / sequence, root / NAME / sequence)
    archived = _archived_masks(upload["archive"])
    for sequence in SEQUENCES:
        shutil.rmtree(root / NAME / f"{sequence}_RES")  # made again below
        result = _run_as_organiser(
            root / "SW" / f"{NAME}-{sequence}.sh", f"{VENV_BIN}:/usr/bin:/bin", tmp_path
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "device: no GPU visible to TensorFlow, the networks run on the CPU" in result.stdout
    remade = {
        f"{NAME}/{p.parent.name}/{p.name}": tifffile.imread(p)
        for p in sorted((root / NAME).glob("*_RES/*.tif"))
    }
    assert remade.keys() == archived.keys()
    for name, mask in archived.items():
        np.testing.assert_array_equal(remade[name], mask, err_msg=name)
    assert any(mask.max() > 0 for mask in archived.values())


@pytest.fixture(scope="module")
def cpu_wheelhouse(upload: dict) -> Path:
    """The wheels of requirements-cpu.txt (pip download from the package index once; kept in
    .cache/ under the requirements' hash, since they do not change between runs)."""
    with zipfile.ZipFile(upload["archive"]) as zf:
        requirements = zf.read("SW/requirements-cpu.txt")
    digest = hashlib.sha256(requirements).hexdigest()[:12]
    folder = ROOT / ".cache" / f"wheelhouse-cpu-{digest}"
    if not folder.is_dir():
        path = folder.with_name(folder.name + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(requirements)
        build_wheelhouse(path, folder)
    return folder


def test_software_installs_offline_from_its_wheelhouse(
    upload: dict, cpu_wheelhouse: Path, tmp_path: Path
) -> None:
    """install.sh in a network namespace with no network, then one executable with that venv
    and a system Python only: the same masks as in the archive."""
    root = tmp_path / "organiser"
    _extract(upload["archive"], root)
    shutil.copytree(upload["challenge"] / "01", root / NAME / "01")
    shutil.rmtree(root / NAME / "01_RES")
    (root / "SW" / "wheelhouse").mkdir()
    (root / "SW" / "wheelhouse" / "cpu").symlink_to(cpu_wheelhouse, target_is_directory=True)
    install = _run_as_organiser(root / "SW" / "install.sh", "/usr/bin:/bin", tmp_path)
    output = install.stdout + install.stderr
    assert install.returncode == 0, output[-5000:]
    assert "installing the cpu variant from wheelhouse/cpu (no network)" in output
    assert "the networks run on the CPU with openvino" in output
    run = _run_as_organiser(root / "SW" / f"{NAME}-01.sh", "/usr/bin:/bin", tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    venv_python = str(root / "SW" / "venv" / "bin" / "python")
    tensorflow = subprocess.run([venv_python, "-c", "import tensorflow"], capture_output=True)
    assert tensorflow.returncode != 0  # the CPU variant goes without TensorFlow
    archived = _archived_masks(upload["archive"])
    for path in sorted((root / NAME / "01_RES").glob("*.tif")):
        np.testing.assert_array_equal(tifffile.imread(path), archived[f"{NAME}/01_RES/{path.name}"])
