"""Inference: backends agree, batching changes nothing, tiles cover every pixel and blend back.

Tiling is tested with model-free predictors whose answers are known: a constant (any pixel left
out would stay 0), a per-pixel function and a local filter (their tiled result must equal the
whole-slice result), and with the tiny network on tiles of its own input size.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from efficientcellseg import inference
from efficientcellseg.inference import (
    TileSettings,
    choose_backend,
    open_predictor,
    predict_slices,
    tile_starts,
    tile_weights,
)

BACKENDS = ("keras", "onnx", "openvino")


@pytest.fixture(scope="module")
def random_tiny_model(tiny_model, tmp_path_factory):
    """The tiny network with random weights, saved and exported to ONNX."""
    from efficientcellseg.inference import export_onnx
    from efficientcellseg.model import save_model

    model, config = tiny_model
    path = tmp_path_factory.mktemp("random_tiny") / "segmentation.keras"
    save_model(model, path, {"config": config.to_dict(), "task": "segmentation"})
    export_onnx(path)
    return path


@pytest.fixture(scope="module")
def random_predictors(random_tiny_model):
    """Predictors of every backend; "onnx/2", "openvino/2": two slices at a time (streams)."""
    predictors = {backend: open_predictor(random_tiny_model, backend)[0] for backend in BACKENDS}
    for backend in ("onnx", "openvino"):
        predictors[f"{backend}/2"] = open_predictor(random_tiny_model, backend, streams=2)[0]
    return predictors


def pseudocolor_like(shape, seed: int = 0) -> np.ndarray:
    """Smooth random images in [0, 1] (N, H, W, 3): structure at several scales, like slices."""
    rng = np.random.default_rng(seed)
    noise = rng.random(shape, dtype=np.float32)
    smooth = ndimage.gaussian_filter(noise, (0, 4, 4, 0))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (0.7 * smooth + 0.3 * noise).astype(np.float32)


# --- backends -------------------------------------------------------------------------------


def test_backends_agree_to_1e_4(random_predictors) -> None:
    images = pseudocolor_like((3, 150, 170, 3))  # not the network's 128x128: resized inside
    outputs = {b: predict(images) for b, predict in random_predictors.items()}
    reference = outputs["keras"]
    assert reference.shape == (3, 150, 170) and reference.dtype == np.float32
    assert np.ptp(reference) > 0.02  # a non-trivial map (random weights), so agreement matters
    for backend in ("onnx", "openvino", "onnx/2", "openvino/2"):
        assert outputs[backend].shape == reference.shape
        assert outputs[backend].dtype == np.float32
        np.testing.assert_allclose(outputs[backend], reference, rtol=0, atol=1e-4)


def test_openvino_runs_in_f32_even_where_the_cpu_offers_bf16(random_tiny_model) -> None:
    """OpenVINO's CPU default is bf16 on AMX/AVX512-BF16 CPUs: f32 must be asked for."""
    assert inference.openvino_config("CPU", 2)["INFERENCE_PRECISION_HINT"] == "f32"
    assert inference.openvino_config("GPU", 2)["INFERENCE_PRECISION_HINT"] == "f32"
    assert inference.openvino_config("CPU", 2, streams=2)["INFERENCE_PRECISION_HINT"] == "f32"
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(random_tiny_model.with_suffix(".onnx")), "CPU", inference.openvino_config("CPU", 1)
    )
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")


def test_bf16_when_asked_for_runs_openvino_in_bf16_and_is_refused_elsewhere(
    random_tiny_model, random_predictors, monkeypatch
) -> None:
    assert inference.openvino_config("CPU", 2, 2, "bf16")["INFERENCE_PRECISION_HINT"] == "bf16"
    with pytest.raises(ValueError, match="needs the openvino backend"):
        open_predictor(random_tiny_model, "onnx", precision="bf16")
    with pytest.raises(ValueError, match="not one of"):
        open_predictor(random_tiny_model, precision="f16")
    if not inference.cpu_has_bf16():
        with pytest.raises(RuntimeError, match="no bfloat16 instructions"):
            open_predictor(random_tiny_model, precision="bf16")
        return
    predict = open_predictor(random_tiny_model, precision="bf16")
    assert (predict.backend, predict.precision) == ("openvino", "bf16")
    with monkeypatch.context() as patch:  # a GPU beats bf16 on the CPU: it runs in f32
        patch.setattr(inference, "gpu_available", lambda: True)
        on_gpu = open_predictor(random_tiny_model, precision="bf16")
        assert (on_gpu.backend, on_gpu.precision) == ("keras", "f32")
    images = pseudocolor_like((3, 150, 170, 3))
    difference = np.abs(predict(images) - random_predictors["keras"](images)).max()
    # bf16 keeps 8 significant bits: visibly different from f32 (1e-6 here), yet close
    # (3.8e-3 measured with random weights)
    assert 1e-4 < difference < 0.05


@pytest.mark.parametrize("backend", [*BACKENDS, "onnx/2", "openvino/2"])
def test_batch_size_does_not_change_the_result(random_predictors, backend) -> None:
    predict = random_predictors[backend]
    images = pseudocolor_like((5, 128, 128, 3), seed=1)
    one_call = predict(images)
    for batch_size in (1, 2, 4):
        batched = predict_slices(predict, images, batch_size=batch_size)
        np.testing.assert_allclose(batched, one_call, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["openvino", "openvino/2"])
def test_output_is_a_fresh_array_each_call(random_predictors, backend) -> None:
    """OpenVINO reuses its output buffers: the predictor must hand out copies."""
    predict = random_predictors[backend]
    first = predict(pseudocolor_like((2, 128, 128, 3), seed=2))
    kept = first.copy()
    predict(pseudocolor_like((2, 128, 128, 3), seed=3))
    np.testing.assert_array_equal(first, kept)


def test_auto_backend_is_the_fastest_cpu_backend_that_can_run(random_tiny_model, tmp_path):
    assert choose_backend(random_tiny_model, "auto") == inference.CPU_PREFERENCE[0]
    keras_only = tmp_path / "segmentation.keras"
    keras_only.symlink_to(random_tiny_model)
    assert choose_backend(keras_only, "auto") == "keras"  # no .onnx beside it
    assert choose_backend(keras_only, "keras") == "keras"
    with pytest.raises(FileNotFoundError, match=r"segmentation\.onnx missing.*export"):
        choose_backend(keras_only, "openvino")
    with pytest.raises(ValueError, match="'tensorrt' is not one of"):
        choose_backend(random_tiny_model, "tensorrt")
    with pytest.raises(RuntimeError, match="no backend can run"):
        choose_backend(tmp_path / "missing.keras", "auto")


def test_threads_are_capped_at_the_available_cores(monkeypatch) -> None:
    monkeypatch.setattr(inference, "available_cores", lambda: 2)
    assert inference.resolve_threads(None) == 2
    assert inference.resolve_threads(8) == 2
    assert inference.resolve_threads(1) == 1


def test_exported_onnx_has_dynamic_batch_height_and_width(random_tiny_model) -> None:
    import onnx

    graph = onnx.load(str(random_tiny_model.with_suffix(".onnx"))).graph
    (image,) = graph.input
    dims = image.type.tensor_type.shape.dim
    assert image.name == "pseudocolor"
    assert [d.dim_value for d in dims] == [0, 0, 0, 3]  # 0: symbolic
    assert not [i.name for i in graph.input if i.name != "pseudocolor"]  # constants frozen


# --- tiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "size", "overlap"),
    [
        (1745, 1024, 128),
        (2440, 1024, 128),
        (1000, 384, 64),
        (385, 384, 64),
        (384, 384, 64),
        (100, 384, 64),
        (2440, 813, 0),
        (4097, 512, 255),
    ],
)
def test_tiles_cover_everything_and_overlap_enough(length, size, overlap) -> None:
    starts = tile_starts(length, min(size, length), overlap)
    size = min(size, length)
    assert starts[0] == 0 and starts[-1] + size == length
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (size - gaps >= overlap).all()
    assert len(starts) == max(1, int(np.ceil((length - overlap) / (size - overlap))))


def test_blend_weights_of_neighbours_sum_to_one_and_stay_1_at_image_edges() -> None:
    length, size, overlap = 2 * 100 - 32, 100, 32  # two tiles overlapping by exactly 32
    starts = tile_starts(length, size, overlap)
    assert starts == [0, 68]
    total = np.zeros(length, np.float32)
    for start in starts:
        weights = tile_weights(length, size, start, overlap)
        total[start : start + size] += weights
    np.testing.assert_allclose(total, 1, atol=1e-6)
    first = tile_weights(length, size, 0, overlap)
    assert first[0] == 1 and first[-1] == 0  # image edge: full weight; inner edge: none
    assert (first[-overlap // 4 :] == 0).all()
    np.testing.assert_array_equal(tile_weights(100, 100, 0, 32), 1)  # one tile: all ones


def test_no_pixel_is_left_unpredicted_not_even_the_remainder() -> None:
    """The published sliding window splits W into nx tiles of W // nx pixels and never predicts
    the last W % nx columns (likewise rows); here every pixel gets the predictor's answer."""
    height, width = 1001, 1003  # 1003 = 3 * 334 + 1: one remainder column in a 3-way split
    images = np.zeros((1, height, width, 3), np.float32)
    calls = []

    def constant(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return np.full(batch.shape[:3], 0.75, np.float32)

    out = predict_slices(constant, images, batch_size=2, tiles=TileSettings(384, overlap=32))
    np.testing.assert_array_equal(out, 0.75)
    assert out[:, -1, :].min() == 0.75 and out[:, :, -1].min() == 0.75
    assert sum(shape[0] for shape in calls) == 3 * 3
    assert all(shape[0] <= 2 and shape[1:] == (384, 384, 3) for shape in calls)


@pytest.mark.parametrize("shape", [(1, 1745, 2440), (2, 700, 500), (3, 40, 1500)])
def test_tiled_prediction_equals_the_whole_slice_prediction(shape) -> None:
    """A translation-equivariant predictor with a reach of r pixels gives the whole-slice answer
    tiled, when r <= overlap / 4 (the tile margin that gets no weight), everywhere: in the
    interior, along seams and at the image edges. (40 rows: one tile row, thinner than the
    overlap.)"""
    images = pseudocolor_like((*shape, 3), seed=4)
    reach = 8

    def local(batch: np.ndarray) -> np.ndarray:  # a mean over (2r+1)^2 pixels, then squashed
        mean = ndimage.uniform_filter(batch[..., 1], (0, 2 * reach + 1, 2 * reach + 1))
        return (1 / (1 + np.exp(-8 * (mean - 0.5)))).astype(np.float32)

    whole = predict_slices(local, images)
    tiles = TileSettings(512, overlap=4 * reach)
    tiled = predict_slices(local, images, batch_size=3, tiles=tiles)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_tiled_network_prediction_matches_the_per_pixel_answer(tiny_model_folder) -> None:
    """The green-threshold tiny network on tiles of its own input size (128: no resizing) gives
    sigmoid(40 (green - 0.35)) at every pixel of a larger slice, through the real backends."""
    folder = tiny_model_folder("distance")
    images = pseudocolor_like((2, 300, 410, 3), seed=5)
    expected = 1 / (1 + np.exp(-40 * (images[..., 1].astype(np.float64) - 0.35)))
    for backend in ("onnx", "openvino"):
        predict = open_predictor(folder / "segmentation.keras", backend)
        tiled = predict_slices(predict, images, batch_size=4, tiles=TileSettings(128, 32))
        np.testing.assert_allclose(tiled, expected, rtol=0, atol=2e-4)


def test_bad_tile_settings_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap 64"):
        TileSettings(128, overlap=64)
    with pytest.raises(ValueError, match="tiles.size: 8 is less than the minimum of 16"):
        TileSettings(8, overlap=0)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        predict_slices(lambda b: b[..., 0], np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="batch_size"):
        predict_slices(lambda b: b[..., 0], np.zeros((1, 8, 8, 3)), batch_size=0)
