"""The network builder: paper parameter counts, configurable tiny variant, weights, save/load."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from efficientcellseg import model as model_module
from efficientcellseg.cli import main
from efficientcellseg.model import (
    PRESETS,
    ModelConfig,
    WeightsNotFoundError,
    build_model,
    load_model,
    parameter_counts,
    read_metadata,
    resolve_config,
    resolve_encoder_weights,
    save_model,
)


def printed_counts(text: str) -> dict[str, int]:
    rows = (line.split() for line in text.splitlines() if line.strip())
    return {name: int(value.replace(",", "")) for name, value in rows}


def test_paper_configuration_has_the_published_parameter_counts(capsys) -> None:
    """``efficientcellseg params`` builds the paper network (no weights needed) and counts."""
    assert main(["params"]) == 0
    text = capsys.readouterr().out
    assert "6,697,824" in text and "5,633,631" in text and "1,064,193" in text
    assert printed_counts(text) == {"total": 6_697_824, "encoder": 5_633_631, "decoder": 1_064_193}


def test_params_command_takes_presets_and_settings_files(tiny_model, tmp_path, capsys) -> None:
    model, config = tiny_model
    assert main(["params", "--config", "tiny"]) == 0
    assert printed_counts(capsys.readouterr().out) == parameter_counts(model, config)
    path = tmp_path / "wider.yaml"
    path.write_text("preset: tiny\ndecoder_filters: [32, 16, 8]\n")
    assert main(["params", "--config", str(path)]) == 0
    wider = printed_counts(capsys.readouterr().out)
    assert wider["encoder"] == parameter_counts(model, config)["encoder"]
    # wider decoder stages: more decoder parameters, the same encoder
    assert wider["decoder"] > parameter_counts(model, config)["decoder"]
    assert main(["params", "--config", "huge"]) == 2


def test_tiny_configuration_takes_any_input_size(tiny_model) -> None:
    model, config = tiny_model
    counts = parameter_counts(model, config)
    assert counts["total"] < 1_000_000
    assert counts["total"] == counts["encoder"] + counts["decoder"]
    for shape in [(1, 128, 128, 3), (2, 100, 77, 3), (1, 300, 512, 3)]:
        out = np.asarray(model(np.random.default_rng(0).random(shape, dtype=np.float32)))
        assert out.shape == (*shape[:3], 1)
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


def test_other_backbones_and_decoders_are_configurable() -> None:
    config = ModelConfig(
        backbone="EfficientNetB1",
        input_size=64,
        cut_layer="block3a_expand_activation",
        skip_layers=("block2a_expand_activation",),
        decoder_filters=(8, 4),
        encoder_weights=None,
    )
    model = build_model(config)
    assert model.get_layer("dec0_conv0").filters == 8
    assert model.get_layer("dec1_conv1").filters == 4
    assert np.asarray(model(np.zeros((1, 50, 70, 3), np.float32))).shape == (1, 50, 70, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "ResNet50"}, "is not one of EfficientNetB0"),
        ({"input_size": 100}, "divisible by 2\\*\\*4"),
        ({"skip_layers": ("a",)}, "4 decoder stages need 3 skip layers"),
    ],
)
def test_invalid_configurations_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_configs_resolve_from_presets_files_and_mappings(tmp_path: Path) -> None:
    assert resolve_config("tiny") == PRESETS["tiny"]
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny\ninput_size: 64\n")
    assert resolve_config(path) == ModelConfig(**{**PRESETS["tiny"].to_dict(), "input_size": 64})
    with pytest.raises(ValueError, match="unknown model setting"):
        resolve_config({"preset": "tiny", "filters": 3})
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_config("huge")


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch) -> Path:
    """An empty Keras folder, as if KERAS_HOME pointed there when Keras was imported."""
    from keras.src.backend import config as keras_config

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    return tmp_path


def test_imagenet_cache_path_is_where_keras_looks(keras_home: Path) -> None:
    config = ModelConfig(backbone="EfficientNetB0", encoder_weights="imagenet")
    cached = keras_home / "models" / "efficientnetb0_notop.h5"
    assert model_module.imagenet_cache_path("EfficientNetB0") == cached
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert resolve_encoder_weights(config) == "imagenet"


def test_imagenet_weights_in_the_keras_cache_are_used_offline(
    keras_home: Path, monkeypatch
) -> None:
    """A stand-in for the ImageNet file (random weights in the HDF5 layout Keras downloads) in
    the cache is loaded into the encoder, and nothing is fetched from the network."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import file_utils

    source = keras.applications.EfficientNetB0(include_top=False, weights=None)
    rng = np.random.default_rng(3)
    source.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in source.get_weights()])
    cached = model_module.imagenet_cache_path("EfficientNetB0")
    cached.parent.mkdir(parents=True)
    with h5py.File(cached, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, source)

    def no_download(*args, **kwargs):
        raise AssertionError(f"tried to download {args[:1]}")

    # Keras checks the real file's SHA-256 before use: accept the stand-in instead.
    monkeypatch.setattr(file_utils, "validate_file", lambda *args, **kwargs: True)
    monkeypatch.setattr(file_utils, "urlretrieve", no_download)
    config = ModelConfig(**{**PRESETS["tiny"].to_dict(), "encoder_weights": "imagenet"})
    model = build_model(config)
    for name in ("stem_conv", "block2a_expand_conv", "block3a_expand_conv", "block3a_project_bn"):
        for a, b in zip(
            model.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    # the ImageNet route adds the rescaling to ImageNet's standard deviation
    rescalings = [layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(rescalings) == 3  # input_scale, 1/255 and 1/std


def test_missing_imagenet_weights_warn_or_stop(keras_home: Path, caplog) -> None:
    config = ModelConfig(backbone="EfficientNetB0", encoder_weights="imagenet")
    with caplog.at_level(logging.WARNING):
        assert resolve_encoder_weights(config) is None
    assert str(keras_home / "models" / "efficientnetb0_notop.h5") in caplog.text
    assert "random initialisation" in caplog.text
    strict = ModelConfig(
        backbone="EfficientNetB0", encoder_weights="imagenet", require_encoder_weights=True
    )
    with pytest.raises(WeightsNotFoundError, match="put efficientnetb0_notop.h5"):
        resolve_encoder_weights(strict)
    with pytest.raises(WeightsNotFoundError, match=str(keras_home)):
        build_model(
            ModelConfig(
                **{
                    **PRESETS["tiny"].to_dict(),
                    "encoder_weights": "imagenet",
                    "require_encoder_weights": True,
                }
            )
        )


def test_encoder_weights_load_from_a_file(tmp_path: Path) -> None:
    import keras

    source = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    rng = np.random.default_rng(1)
    source.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in source.get_weights()])
    path = tmp_path / "encoder.weights.h5"
    source.save_weights(path)
    tiny = PRESETS["tiny"]
    config = ModelConfig(**{**tiny.to_dict(), "encoder_weights": str(path)})
    model = build_model(config)
    for name in ("stem_conv", "block2a_expand_conv", "block3a_expand_conv"):
        loaded = model.get_layer(name).get_weights()
        expected = source.get_layer(name).get_weights()
        for a, b in zip(loaded, expected, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_model(ModelConfig(**{**tiny.to_dict(), "encoder_weights": str(tmp_path / "no.h5")}))


def test_saved_model_reloads_with_identical_output_and_metadata(tiny_model, tmp_path) -> None:
    model, config = tiny_model
    path = tmp_path / "segmentation.keras"
    save_model(model, path, {"task": "segmentation", "model_config": config.to_dict()})
    again = load_model(path)
    x = np.random.default_rng(2).random((2, 96, 80, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), atol=1e-6)
    metadata = read_metadata(path)
    assert ModelConfig.from_dict(metadata["model_config"]) == config
    assert json.loads(path.with_suffix(".json").read_text())["task"] == "segmentation"
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model file does not exist"):
        load_model(tmp_path / "none.keras")


def test_dice_loss_is_one_overlap_over_the_batch() -> None:
    import tensorflow as tf

    from efficientcellseg.keras_parts import dice_loss

    truth = np.zeros((2, 8, 8, 1), np.float32)
    truth[0, :4, :4] = 1  # 16 cell pixels in the first image, none in the second
    assert np.asarray(dice_loss(truth, truth)).tolist() == [0.0, 0.0]
    prediction = truth.copy()
    prediction[1] = 1.0  # the whole empty image predicted as cell: 64 false positives
    expected = 1 - (2 * 16 + 1) / (16 + 16 + 64 + 1)
    np.testing.assert_allclose(np.asarray(dice_loss(truth, prediction)), [expected] * 2, rtol=1e-6)
    # false positives on the empty image get a real gradient (per-image Dice: ~1e-4)
    p = tf.Variable(np.full((2, 8, 8, 1), 0.9, np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(dice_loss(truth, p))
    gradient = tape.gradient(loss, p).numpy()
    assert gradient[1].min() > 1e-3
    assert (gradient[0][truth[0] > 0] < 0).all()  # cell pixels are pushed up


def test_thresholded_iou_accepts_soft_targets() -> None:
    from efficientcellseg.keras_parts import ThresholdedIoU

    metric = ThresholdedIoU()
    heat = np.array([[0.0, 0.4, 0.6, 0.9]], np.float32)  # a centre heatmap: targets > 0.5 count
    metric.update_state(heat, np.array([[0.0, 0.7, 0.8, 0.2]], np.float32))
    assert float(metric.result()) == pytest.approx(1 / 3)  # 1 in both, 3 in either
    metric.reset_state()
    assert float(metric.result()) == 0.0


def _error_vs_signal(output, reference) -> float:
    """||output - reference|| over the variation of ``reference`` about its channel means."""
    output, reference = (np.asarray(a, np.float64) for a in (output, reference))
    signal = reference - reference.mean(axis=(0, 1, 2), keepdims=True)
    return float(np.linalg.norm(output - reference) / np.linalg.norm(signal))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_the_imagenet_normalised_input_in_float32(policy) -> None:
    """Pseudocolor in [0, 1] with input_scale 1 reaches the stem as ~-2.1 + 0.017 * value after
    ImageNet normalisation: bfloat16 (spacing 0.0156 near 2) loses the image there, float16
    most of it; with ``keep_input_in_float32`` the stem computes exactly as in float32."""
    import keras

    from efficientcellseg.model import keep_input_in_float32

    config = ModelConfig(**{**PRESETS["tiny"].to_dict(), "input_scale": 1.0, "input_size": 32})
    x = np.random.default_rng(4).random((2, 32, 32, 3), dtype=np.float32)

    def built(mixed_policy: str | None, keep: bool = False):
        previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(mixed_policy or "float32")
        try:
            model = build_model(config)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        if keep:
            changed = keep_input_in_float32(model)
            assert changed[:2] == ["resize_in", "input_scale"] and changed[-1] == "stem_bn"
        norm = next(la for la in model.layers if isinstance(la, keras.layers.Normalization))
        *_, count = norm.get_weights()  # ImageNet mean and variance, as its weights bring
        norm.set_weights([np.array([0.485, 0.456, 0.406]), np.square([0.229, 0.224, 0.225]), count])
        norm.finalize_state()
        return model, keras.Model(model.inputs, [norm.output, model.get_layer("stem_bn").output])

    reference, reference_probe = built(None)
    weights = reference.get_weights()
    expected_norm, expected_stem = reference_probe(x)
    lost = {"mixed_bfloat16": 1.0, "mixed_float16": 0.1}[policy]  # measured: 2.99 and 0.24
    mixed, probe = built(policy)
    mixed.set_weights(weights)
    assert _error_vs_signal(probe(x)[0], expected_norm) > lost
    fixed, probe = built(policy, keep=True)
    fixed.set_weights(weights)
    norm, stem = probe(x)
    np.testing.assert_allclose(np.asarray(norm), np.asarray(expected_norm), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(stem), np.asarray(expected_stem), rtol=1e-5, atol=1e-6)
    assert fixed.get_layer("block1a_dwconv").compute_dtype == policy.removeprefix("mixed_")
