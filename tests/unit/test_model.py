"""The network builder: paper parameter counts, configurable tiny variant, weights, save/load."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from efficientcellseg import model as model_module
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


def test_paper_configuration_has_the_published_parameter_counts() -> None:
    config = resolve_config("paper")
    model = build_model(config)
    assert parameter_counts(model, config) == {
        "total": 6_697_824,
        "encoder": 5_633_631,
        "decoder": 1_064_193,
    }


def test_tiny_configuration_takes_any_input_size(tiny_model) -> None:
    model, config = tiny_model
    counts = parameter_counts(model, config)
    assert counts["total"] < 1_000_000
    assert counts["total"] == counts["encoder"] + counts["decoder"]
    for shape in [(1, 128, 128, 3), (2, 100, 77, 3), (1, 300, 512, 3)]:
        out = np.asarray(model(np.random.default_rng(0).random(shape, dtype=np.float32)))
        assert out.shape == shape[:3] + (1,)
        assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


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


def test_imagenet_weights_are_taken_from_the_keras_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    config = ModelConfig(backbone="EfficientNetB0", encoder_weights="imagenet")
    cached = tmp_path / "models" / "efficientnetb0_notop.h5"
    assert model_module.imagenet_cache_path("EfficientNetB0") == cached
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert resolve_encoder_weights(config) == "imagenet"


def test_missing_imagenet_weights_warn_or_stop(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    config = ModelConfig(backbone="EfficientNetB0", encoder_weights="imagenet")
    with caplog.at_level(logging.WARNING):
        assert resolve_encoder_weights(config) is None
    assert str(tmp_path / "models" / "efficientnetb0_notop.h5") in caplog.text
    strict = ModelConfig(
        backbone="EfficientNetB0", encoder_weights="imagenet", require_encoder_weights=True
    )
    with pytest.raises(WeightsNotFoundError, match="put efficientnetb0_notop.h5"):
        resolve_encoder_weights(strict)


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
