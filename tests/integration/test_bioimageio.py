"""BioImage Model Zoo packages of a model folder, checked by bioimageio.core's own test_model."""

from __future__ import annotations

import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from efficientcellseg.cli import main
from efficientcellseg.inference import open_predictor
from efficientcellseg.pseudocolor import pseudocolor_frame
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import generate_sequence

pytestmark = pytest.mark.slow  # bioimageio.core runs each package 7 times (~30-60 s)


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(self, address, *args):
        raise AssertionError(f"network access to {address} during an offline export/validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_packages_pass_bioimageio_test_model_offline(
    tiny_model_folder, tmp_path, offline, capsys
) -> None:
    folder = tiny_model_folder("centres")
    out = tmp_path / "zoo"
    assert main(["bioimageio", str(folder), str(out)]) == 0  # exports, then test_model
    printed = capsys.readouterr().out
    for task in ("segmentation", "centres"):
        package = out / f"{folder.name}-{task}.bioimageio.zip"
        assert f"{package}: passed" in printed
        with zipfile.ZipFile(package) as archive:
            rdf = yaml.safe_load(archive.read("rdf.yaml"))
            test_input = _npy(archive, rdf["inputs"][0]["test_tensor"]["source"])
            test_output = _npy(archive, rdf["outputs"][0]["test_tensor"]["source"])
            names = archive.namelist()
        assert rdf["type"] == "model" and rdf["weights"]["onnx"]["opset_version"] == 17
        assert f"{task}.onnx" in names and "README.md" in names and "cover.png" in names
        # The documented preprocessing: the pseudocolor of the middle slice of the sample.
        frame = generate_sequence(SyntheticSpec(seed=0, n_frames=1), 0)["images"][0]
        expected_input = pseudocolor_frame(frame)[len(frame) // 2][None]
        np.testing.assert_array_equal(test_input, expected_input.astype(np.float32))
        # The test output is what the library's own predictor gives for it.
        predict = open_predictor(folder / f"{task}.keras", "onnx", threads=1)
        np.testing.assert_allclose(test_output[..., 0], predict(test_input), atol=1e-5)
        pipeline = json.loads((folder / "pipeline.json").read_text())
        assert rdf["config"]["efficientcellseg"]["pipeline"] == pipeline


def test_a_broken_package_fails_validation(tiny_model_folder, tmp_path) -> None:
    """The validator is not a rubber stamp: a wrong test output fails it."""
    from efficientcellseg.bioimageio_export import export_bioimageio, validate_package

    (package,) = export_bioimageio(tiny_model_folder("distance"), tmp_path)
    broken = tmp_path / "broken.bioimageio.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(broken, "w") as target:
        rdf = yaml.safe_load(source.read("rdf.yaml"))
        output_name = rdf["outputs"][0]["test_tensor"]["source"]
        rdf["outputs"][0]["test_tensor"].pop("sha256", None)
        for item in source.infolist():
            data = source.read(item)
            if item.filename == output_name:
                data = _npy_bytes(1 - _npy_from_bytes(data))
            elif item.filename == "rdf.yaml":
                data = yaml.safe_dump(rdf).encode()
            target.writestr(item, data)
    summary = validate_package(broken)
    assert summary["status"] == "valid-format"  # a valid description, a failed test
    failed = [d["name"] for d in summary["details"] if d["status"] == "failed"]
    assert failed == ["Reproduce test outputs from test inputs (onnx)"]


def _npy(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    return _npy_from_bytes(archive.read(Path(name).name))


def _npy_from_bytes(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data))


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
