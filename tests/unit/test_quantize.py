"""int8: calibration slices are chosen reproducibly; the quantized tiny network stays close to f32.

The tiny test network computes sigmoid(40 (green - 0.35)) (tests/conftest.py), so an input step of
one int8 level (1/255) moves its probability by up to 40/4/255 = 0.04 at the threshold; the
tolerances below allow for that and for the quantizers of a few layers in a row.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from efficientcellseg.cli import main
from efficientcellseg.inference import open_predictor, predict_slices
from efficientcellseg.metrics import evaluate_sequence, seg_measure
from efficientcellseg.pseudocolor import pseudocolor_frame
from efficientcellseg.quantize import calibration_slices, quantized_path
from efficientcellseg.segment import segment_sequence
from efficientcellseg.training_data import collect_annotated_slices, save_annotated_slices

# Measured on this network and data (AMD EPYC, AVX-512 VNNI, last stage in float):
# max 0.020, mean 0.001, 1.0e-3 of the pixels change class.
MAX_DIFFERENCE, MEAN_DIFFERENCE, CLASS_CHANGES = 0.04, 0.002, 2e-3


@pytest.fixture(scope="module")
def quantized_folder(tiny_model_folder, synthetic_dataset, tmp_path_factory):
    """A copy of the tiny "distance" model folder, quantized with the CLI on 24 of the
    pseudocolored GT slices of sequence 01 (stored as the workflow stores them)."""
    root = tmp_path_factory.mktemp("quantized")
    folder = root / "models"
    shutil.copytree(tiny_model_folder("distance"), folder)
    slices = root / "01.npz"
    save_annotated_slices(slices, collect_annotated_slices(synthetic_dataset, "01", ("GT",)))
    assert main(["quantize", str(folder), "--slices", str(slices), "--count", "24"]) == 0
    return folder


# -- calibration slices --


def test_calibration_slices_are_spread_evenly_over_all_sources(tmp_path):
    def numbered(first: int, count: int) -> np.ndarray:  # slice k is filled with k
        return np.broadcast_to(
            np.arange(first, first + count)[:, None, None, None], (count, 4, 5, 3)
        )

    path = tmp_path / "b.npz"
    np.savez(path, images=numbered(4, 6).astype(np.float16), labels=np.zeros((6, 4, 5)))
    sources = [numbered(0, 4), path, numbered(10, 0).reshape(0, 4, 5, 3), numbered(10, 2)]
    chosen = calibration_slices(sources, count=4)  # of 12: indices 0, 4 (3.67), 7 (7.33), 11
    assert [int(s[0, 0, 0]) for s in chosen] == [0, 4, 7, 11]
    assert chosen[1].dtype == np.float16 and chosen[1].shape == (4, 5, 3)
    assert len(calibration_slices(sources, count=300)) == 12  # all of them, once each
    again = calibration_slices(sources, count=4)
    assert all(np.array_equal(a, b) for a, b in zip(chosen, again, strict=True))


@pytest.mark.parametrize(
    ("sources", "count", "error", "message"),
    [
        (["missing.npz"], 3, FileNotFoundError, "missing.npz missing: pass the training slices"),
        ([np.zeros((3, 8, 8))], 3, ValueError, r"shape \(3, 8, 8\): expected pseudocolor"),
        ([np.zeros((0, 8, 8, 3))], 3, ValueError, "no calibration slices"),
        ([np.zeros((3, 8, 8, 3))], 0, ValueError, "count must be at least 1"),
    ],
)
def test_calibration_slices_refuse_bad_sources(tmp_path, sources, count, error, message):
    sources = [tmp_path / s if isinstance(s, str) else s for s in sources]
    with pytest.raises(error, match=message):
        calibration_slices(sources, count)


def test_npz_without_images_is_named(tmp_path):
    path = tmp_path / "labels_only.npz"
    np.savez(path, labels=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="labels_only.npz holds no 'images'"):
        calibration_slices([path])


# -- the quantized network --


def test_quantized_ir_is_stored_beside_the_onnx_and_holds_int8_weights(quantized_folder):
    import openvino as ov

    model = quantized_folder / "segmentation.keras"
    xml = quantized_path(model)
    assert xml == quantized_folder / "segmentation.int8.xml"
    assert xml.with_suffix(".bin").is_file()
    assert not list(quantized_folder.glob(".*tmp*"))  # nothing half-written left behind
    ops = ov.Core().read_model(xml).get_ops()
    quantizers = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    int8_weights = [
        op for op in ops if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8
    ]
    assert len(quantizers) >= 5 and len(int8_weights) >= 5


def test_int8_probabilities_stay_close_to_f32(quantized_folder, synthetic_dataset):
    from efficientcellseg import ctc

    model = quantized_folder / "segmentation.keras"
    f32 = open_predictor(model, "openvino", precision="f32")
    int8 = open_predictor(model, precision="int8")
    assert (int8.backend, int8.precision) == ("openvino", "int8")
    seq = ctc.open_sequence(synthetic_dataset, "02")  # not calibrated on
    colour = np.concatenate([pseudocolor_frame(ctc.read_image(seq.frames[t])) for t in (0, 2)])
    expected, found = predict_slices(f32, colour), predict_slices(int8, colour)
    difference = np.abs(found - expected)
    assert 1e-4 < difference.max() <= MAX_DIFFERENCE  # quantized: different, but close
    assert difference.mean() <= MEAN_DIFFERENCE
    assert np.mean((found > 0.5) != (expected > 0.5)) <= CLASS_CHANGES
    assert np.count_nonzero(expected > 0.5) > 1000  # cells were found


def test_int8_masks_are_nearly_the_f32_masks(quantized_folder, synthetic_dataset, tmp_path):
    from efficientcellseg import ctc

    masks, scores = {}, {}
    for precision in ("f32", "int8"):
        results = tmp_path / f"02_RES_{precision}"
        segment_sequence(
            synthetic_dataset / "02", results, quantized_folder, backend="openvino",
            precision=precision,
        )  # fmt: skip
        masks[precision] = [ctc.read_image(path) for path in sorted(results.glob("mask*.tif"))]
        scores[precision] = evaluate_sequence(synthetic_dataset, "02", results).seg
    foreground = [(m > 0) for m in masks["f32"]], [(m > 0) for m in masks["int8"]]
    intersection = sum(np.count_nonzero(a & b) for a, b in zip(*foreground, strict=True))
    union = sum(np.count_nonzero(a | b) for a, b in zip(*foreground, strict=True))
    same_objects = [seg_measure(a, b) for a, b in zip(masks["f32"], masks["int8"], strict=True)]
    # Measured: foreground IoU 0.985; per frame 0.76 (one cell split differently), 0.99, 1.0,
    # 1.0; SEG 0.673 (f32) and 0.683 (int8).
    assert intersection / union >= 0.97
    assert np.mean(same_objects) >= 0.9  # int8 objects match the f32 ones (SEG, f32 as truth)
    assert scores["f32"] == pytest.approx(0.67, abs=0.03)  # against the gold truth
    assert scores["int8"] == pytest.approx(scores["f32"], abs=0.02)


def test_int8_without_quantized_ir_names_the_file_and_the_command(tiny_model_folder):
    model = tiny_model_folder("distance") / "segmentation.keras"
    with pytest.raises(
        FileNotFoundError, match=r"segmentation\.int8\.xml.*efficientcellseg quantize"
    ):
        open_predictor(model, precision="int8")
    with pytest.raises(ValueError, match="precision int8 needs the openvino backend, not onnx"):
        open_predictor(model, "onnx", precision="int8")


def test_quantize_command_needs_an_exported_network(tmp_path, caplog):
    slices = tmp_path / "s.npz"
    np.savez(slices, images=np.zeros((2, 8, 8, 3), np.float16))
    assert main(["quantize", str(tmp_path), "--slices", str(slices)]) == 1  # a run-time failure
    assert f"{tmp_path} holds no exported network" in caplog.text
