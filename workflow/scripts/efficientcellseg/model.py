"""The EfficientCellSeg network: a truncated Keras EfficientNet encoder with a light U-Net decoder.

Paper configuration (Wagner & Rohr 2022): EfficientNetB5 cut at ``block6a_expand_activation``,
skips from ``block4a/3a_expand_activation``, ``block1a_activation`` and the resized input,
decoder stages of 64/48/32/16 filters, 6,697,824 parameters. Inputs of any height and width
are resized to the inner size inside the model and the output back to the input size, so the
same file serves whole slices and tiles.

The architecture is described by :class:`efficientcellseg.settings.ModelConfig` (presets
``paper`` and ``tiny``). TensorFlow is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from .files import atomic_output, atomic_write_text
from .settings import ModelConfig

log = logging.getLogger(__name__)

IMAGENET_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/"


class WeightsNotFoundError(FileNotFoundError):
    """Requested encoder weights are not available offline."""


class ModelFileError(RuntimeError):
    """A network file exists but cannot be loaded (damaged, or not a network); the message
    names it and says what to do."""

    def __init__(self, path: str | os.PathLike, runtime: str, exc: BaseException) -> None:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[-1] if lines else type(exc).__name__)[:160]  # the gist comes last
        super().__init__(
            f"{path}: {runtime} cannot load this network, the file is damaged or not a network "
            f"({detail}); train the model again, or copy the file again"
        )


# --- building -------------------------------------------------------------------------------


def build_model(config: ModelConfig, *, name: str = "efficientcellseg"):
    """Build the network; its output is a sigmoid map of the input's height and width."""
    import keras
    from keras import layers

    from .keras_parts import ResizeLike, ResizeTo

    image = keras.Input((None, None, 3), name="pseudocolor")
    resized = ResizeTo(config.input_size, name="resize_in")(image)
    scaled = layers.Rescaling(config.input_scale, name="input_scale")(resized)
    backbone = _backbone(config, scaled)
    x = backbone.get_layer(config.cut_layer).output
    # The last skip is the resized pseudocolor itself, in [0, 1] whatever the encoder's input
    # scale (the published network, with input_scale 1, cannot tell the difference).
    skips = [backbone.get_layer(n).output for n in config.skip_layers] + [resized]
    for stage, (filters, skip) in enumerate(zip(config.decoder_filters, skips, strict=True)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{stage}_up")(x)
        x = layers.Concatenate(name=f"dec{stage}_concat")([x, skip])
        for conv in range(2):
            x = layers.Conv2D(filters, 3, padding="same", name=f"dec{stage}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"dec{stage}_bn{conv}")(x)
            x = layers.ReLU(name=f"dec{stage}_relu{conv}")(x)
    x = layers.Conv2D(1, 1, name="head")(x)
    x = layers.Activation("sigmoid", dtype="float32", name="probability")(x)
    output = ResizeLike(name="resize_out", dtype="float32")([x, image])
    return keras.Model(image, output, name=name)


def set_green_threshold_weights(model, config: ModelConfig, level: float, sharpness: float) -> None:
    """Make a built network compute sigmoid(sharpness * (green - level)) at every pixel.

    A stand-in for a trained network, for tests and benchmarks: its output is known, it finds
    the bright cells of synthetic data, and it does all the work of the real one. The encoder
    keeps its (random) weights but is cut off: the last decoder stage reads only the
    green channel of the input skip (the resized pseudocolor), through identity
    convolutions and batch norms. The whole network still runs, on every backend.
    """
    import numpy as np

    last = len(config.decoder_filters) - 1
    upsampled_channels = config.decoder_filters[last - 1]
    skip = model.get_layer(f"dec{last}_concat").input[1]._keras_history.operation
    skip_scale = config.input_scale if skip.name == "input_scale" else 1.0  # scaled or not
    eps = {}
    for conv in range(2):
        layer = model.get_layer(f"dec{last}_conv{conv}")
        kernel, bias = (np.zeros_like(w) for w in layer.get_weights())
        source = upsampled_channels + 1 if conv == 0 else 0  # the green input channel
        kernel[1, 1, source, 0] = 1.0 / skip_scale if conv == 0 else 1.0
        layer.set_weights([kernel, bias])
        norm = model.get_layer(f"dec{last}_bn{conv}")
        gamma, beta, mean, variance = norm.get_weights()
        norm.set_weights(
            [np.ones_like(gamma), np.zeros_like(beta), np.zeros_like(mean), np.ones_like(variance)]
        )
        eps[conv] = norm.epsilon
    head = model.get_layer("head")
    kernel, bias = (np.zeros_like(w) for w in head.get_weights())
    kernel[0, 0, 0, 0] = sharpness * np.sqrt((1 + eps[0]) * (1 + eps[1]))
    bias[0] = -sharpness * level
    head.set_weights([kernel, bias])


def parameter_counts(model, config: ModelConfig) -> dict[str, int]:
    """Total, encoder (backbone up to the cut layer) and decoder parameter counts."""
    import keras

    backbone_layers = _encoder_layer_names(model, config)
    encoder = sum(
        int(sum(keras.ops.size(w) for w in layer.weights))
        for layer in model.layers
        if layer.name in backbone_layers
    )
    total = int(model.count_params())
    return {"total": total, "encoder": encoder, "decoder": total - encoder}


def _encoder_layer_names(model, config: ModelConfig) -> set[str]:
    """Names of layers between the input scaling and the cut layer (the truncated encoder)."""
    import keras

    encoder = keras.Model(
        model.get_layer("input_scale").output, model.get_layer(config.cut_layer).output
    )
    return {layer.name for layer in encoder.layers} - {"input_scale"}


def _backbone(config: ModelConfig, input_tensor):
    import keras

    builder = getattr(keras.applications, config.backbone)
    weights = resolve_encoder_weights(config)
    backbone = builder(include_top=False, weights=weights, input_tensor=input_tensor)
    if weights is not None:
        log.info("encoder %s initialised from %s", config.backbone, weights)
    return backbone


def imagenet_cache_path(backbone: str) -> Path:
    """Where Keras looks for the ImageNet weights of ``backbone`` (no-top) before downloading.

    That is ``$KERAS_HOME/models`` (default ``~/.keras/models``), as Keras read it when it was
    imported; Keras falls back to ``/tmp/.keras`` when that folder is not writable.
    """
    return _keras_home() / "models" / f"{backbone.lower()}_notop.h5"


def _keras_home() -> Path:
    home = None
    if "keras" in sys.modules:  # Keras fixed its folder when it was imported: ask it
        try:
            from keras.src.backend.config import keras_home

            home = Path(keras_home())
        except (ImportError, AttributeError):  # a Keras without that accessor
            pass
    if home is None and "KERAS_HOME" in os.environ:
        home = Path(os.environ["KERAS_HOME"])
    if home is None:
        home = (Path.home() if os.access(Path.home(), os.W_OK) else Path("/tmp")) / ".keras"
    return home if os.access(home.expanduser(), os.W_OK) else Path("/tmp/.keras")


def resolve_encoder_weights(config: ModelConfig) -> str | None:
    """What to pass as ``weights=`` to the Keras backbone builder, decided offline.

    ``imagenet`` is used only when the file is already in the Keras cache (offline the download
    fails with an unhelpful error); a path must exist; ``None`` means random initialisation.
    """
    spec = config.encoder_weights
    if spec in (None, "", "none"):
        return None
    if spec == "imagenet":
        cached = imagenet_cache_path(config.backbone)
        if cached.is_file():
            return "imagenet"
        message = (
            f"ImageNet weights for {config.backbone} are not in the Keras cache: put "
            f"{cached.name} (from {IMAGENET_WEIGHTS_URL}) at {cached}, or set KERAS_HOME"
        )
        if config.require_encoder_weights:
            raise WeightsNotFoundError(message)
        log.warning("%s; training the encoder from random initialisation instead", message)
        return None
    path = Path(spec)
    if not path.is_file():
        raise WeightsNotFoundError(f"encoder weights file {path} does not exist")
    return str(path)


# --- saving and loading ---------------------------------------------------------------------


def save_model(model, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Save ``model`` as ``.keras`` with a JSON sidecar (config, task, counts) beside it."""
    with atomic_output(path) as tmp:
        model.save(tmp)
    write_metadata(path, metadata)


def write_metadata(model_path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    atomic_write_text(
        metadata_path(model_path), json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    )


def metadata_path(model_path: str | os.PathLike) -> Path:
    model_path = Path(model_path)
    return model_path.with_suffix(".json")


def read_metadata(model_path: str | os.PathLike) -> dict[str, Any]:
    sidecar = metadata_path(model_path)
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"{sidecar}: model metadata missing (the model must be saved by train)"
        )
    return json.loads(sidecar.read_text())


def load_model(path: str | os.PathLike):
    """Load a saved network (compile state is not needed for inference)."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file does not exist")
    from . import keras_parts  # noqa: F401 - registers the custom layers

    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise ModelFileError(path, "Keras", ValueError("not a zip archive, as .keras files are"))
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ModelFileError(path, "Keras", exc) from exc
