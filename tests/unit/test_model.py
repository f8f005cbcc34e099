"""The network builder: paper parameter counts, configurable tiny variant, weights, save/load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from efficientcellseg import model as model_module
from efficientcellseg.cli import main
from efficientcellseg.files import ChecksumError
from efficientcellseg.model import (
    EncoderInitialisation,
    WeightsNotFoundError,
    build_model,
    load_model,
    parameter_counts,
    read_metadata,
    resolve_encoder_weights,
    save_model,
)
from efficientcellseg.settings import PRESETS, ImagenetWeights, ModelConfig, resolve_model


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


def unet_parameters(filters: tuple[int, ...]) -> dict[str, int]:
    """Parameters of the U-Net counted by hand: 3x3 convolutions (weights and bias), batch
    norms (4 per channel: scale, offset, moving mean and variance), 2x2 transposed
    convolutions, the 1x1 head."""

    def conv(inputs: int, outputs: int, size: int = 3) -> int:
        return size * size * inputs * outputs + outputs

    def block(inputs: int, outputs: int) -> int:  # 2 x (conv, batch norm)
        return conv(inputs, outputs) + 4 * outputs + conv(outputs, outputs) + 4 * outputs

    *levels, bottom = filters
    encoder, channels = 0, 3
    for width in [*levels, bottom]:
        encoder += block(channels, width)
        channels = width
    decoder = 0
    for width in reversed(levels):
        decoder += conv(channels, width, size=2) + block(2 * width, width)
        channels = width
    decoder += conv(channels, 1, size=1)
    return {"total": encoder + decoder, "encoder": encoder, "decoder": decoder}


@pytest.mark.parametrize("preset", ["unet", "unet-small"])
def test_unet_baselines_have_the_parameters_counted_by_hand(preset: str, capsys) -> None:
    """The classic U-Net (31M; Ronneberger et al. 2015, here with batch norms) and a small one."""
    assert main(["params", "--config", preset]) == 0
    counts = printed_counts(capsys.readouterr().out)
    assert counts == unet_parameters(PRESETS[preset].unet_filters)
    if preset == "unet":
        assert 31_000_000 < counts["total"] < 31_100_000
    model = build_model(PRESETS["unet-small"])
    out = np.asarray(model(np.random.default_rng(1).random((2, 90, 70, 3), dtype=np.float32)))
    assert out.shape == (2, 90, 70, 1) and 0 <= out.min() <= out.max() <= 1


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
        ({"backbone": "ResNet50"}, r"model\.backbone: 'ResNet50' is not one of \['EfficientNetB0'"),
        ({"input_size": 100}, "divisible by 2\\*\\*4"),
        ({"skip_layers": ("a",)}, "4 decoder stages need 3 skip layers"),
    ],
)
def test_invalid_configurations_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_configs_resolve_from_presets_files_and_mappings(tmp_path: Path) -> None:
    assert resolve_model("tiny") == PRESETS["tiny"]
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny\ninput_size: 64\n")
    assert resolve_model(path) == ModelConfig(**{**PRESETS["tiny"].to_dict(), "input_size": 64})
    with pytest.raises(ValueError, match="unknown model setting"):
        resolve_model({"preset": "tiny", "filters": 3})
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_model("huge")


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch) -> Path:
    """An empty Keras folder, as if KERAS_HOME pointed there when Keras was imported."""
    from keras.src.backend import config as keras_config

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    return tmp_path


def _pinned_to(path: Path) -> ImagenetWeights:
    """ImageNet settings pinning the B0 file to the checksum of ``path`` (a test's own file)."""
    checksum = f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    return ImagenetWeights.from_dict({"files": {"EfficientNetB0": {"checksum": checksum}}})


def test_imagenet_cache_path_is_where_keras_looks(keras_home: Path) -> None:
    config = ModelConfig(backbone="EfficientNetB0", encoder_weights="imagenet")
    cached = keras_home / "models" / "efficientnetb0_notop.h5"
    assert model_module.imagenet_cache_path("EfficientNetB0") == cached
    cached.parent.mkdir()
    cached.write_bytes(b"weights")
    encoder = resolve_encoder_weights(config, imagenet=_pinned_to(cached))
    assert encoder == EncoderInitialisation(
        "imagenet", str(cached), hashlib.sha256(b"weights").hexdigest()
    )
    assert encoder.to_dict()["file"] == "efficientnetb0_notop.h5"


def test_the_pins_are_keras_own() -> None:
    """URL and MD5 of efficientnetb5_notop.h5 as keras.applications.efficientnet has them."""
    from keras.src.applications import efficientnet

    pinned = ImagenetWeights().file("EfficientNetB5")
    assert pinned.url == efficientnet.BASE_WEIGHTS_PATH + "efficientnetb5_notop.h5"
    assert pinned.checksum == "md5:" + efficientnet.WEIGHTS_HASHES["b5"][1]
    for backbone in ImagenetWeights().files:
        key = "b" + backbone[-1]
        assert ImagenetWeights().file(backbone).checksum[4:] == efficientnet.WEIGHTS_HASHES[key][1]


def _imagenet_like_file(path: Path):
    """A stand-in for Keras' efficientnetb0_notop.h5: Keras' random initialisation with
    ImageNet-like input statistics, in the HDF5 layout Keras downloads."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(4)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None)
    norm = next(x for x in source.layers if isinstance(x, keras.layers.Normalization))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    norm.set_weights([mean, std**2, np.array(1000)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, source)
    return source


def test_imagenet_encoder_equals_keras_own_imagenet_encoder(keras_home: Path, monkeypatch) -> None:
    """The encoder loaded from the verified file computes what Keras' weights="imagenet"
    encoder computes from the same file (an extra Rescaling layer there, folded into the
    normalisation here), and nothing is fetched from the network."""
    import keras
    from keras.src.utils import file_utils

    cached = model_module.imagenet_cache_path("EfficientNetB0")
    source = _imagenet_like_file(cached)

    def no_download(*args, **kwargs):
        raise AssertionError(f"tried to download {args[:1]}")

    monkeypatch.setattr(file_utils, "urlretrieve", no_download)
    config = ModelConfig(**{**PRESETS["tiny"].to_dict(), "encoder_weights": "imagenet"})
    model = build_model(
        config, encoder=resolve_encoder_weights(config, imagenet=_pinned_to(cached))
    )
    for name in ("stem_conv", "block2a_expand_conv", "block3a_expand_conv", "block3a_project_bn"):
        for a, b in zip(
            model.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    # Keras' own route checks its MD5 of the real file: let it accept the stand-in.
    monkeypatch.setattr(file_utils, "validate_file", lambda *args, **kwargs: True)
    reference = keras.applications.EfficientNetB0(
        include_top=False, weights="imagenet", input_shape=(128, 128, 3)
    )
    ours = keras.Model(
        model.get_layer("input_scale").output, model.get_layer(config.cut_layer).output
    )
    theirs = keras.Model(reference.input, reference.get_layer(config.cut_layer).output)
    x = np.random.default_rng(5).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    expected = np.asarray(theirs(x))
    np.testing.assert_allclose(
        np.asarray(ours(x)), expected, rtol=1e-4, atol=1e-4 * abs(expected).max()
    )
    rescalings = [layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(rescalings) == 2  # input_scale and 1/255, as in every other model


def test_missing_imagenet_weights_stop_with_what_to_do(keras_home: Path) -> None:
    config = ModelConfig(**{**PRESETS["tiny"].to_dict(), "encoder_weights": "imagenet"})
    cached = keras_home / "models" / "efficientnetb0_notop.h5"
    for call in (resolve_encoder_weights, build_model):
        with pytest.raises(WeightsNotFoundError) as info:
            call(config)
        message = str(info.value)
        assert f"{cached} does not exist" in message
        assert "snakemake resources/imagenet/efficientnetb0_notop.h5" in message
        assert (
            "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5" in message
        )
        assert "encoder_weights: null" in message  # or random initialisation, said explicitly


def test_imagenet_file_with_another_checksum_is_refused(keras_home: Path) -> None:
    config = ModelConfig(backbone="EfficientNetB0", encoder_weights="imagenet")
    cached = model_module.imagenet_cache_path("EfficientNetB0")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the weights")
    with pytest.raises(ChecksumError, match="md5 is .* but it must be 50bc09e7"):
        resolve_encoder_weights(config)


def test_random_initialisation_is_recorded_as_such() -> None:
    encoder = resolve_encoder_weights(PRESETS["tiny"])
    assert encoder == EncoderInitialisation("random")
    assert encoder.to_dict() == {"source": "random", "file": None, "sha256": None}


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
    assert resolve_encoder_weights(config).to_dict() == {
        "source": "file",
        "file": "encoder.weights.h5",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
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
