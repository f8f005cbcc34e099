"""The EfficientCellSeg network: a truncated Keras EfficientNet encoder with a light U-Net decoder.

Paper configuration (Wagner & Rohr 2022): EfficientNetB5 cut at ``block6a_expand_activation``,
skips from ``block4a/3a_expand_activation``, ``block1a_activation`` and the resized input,
decoder stages of 64/48/32/16 filters, 6,697,824 parameters. Inputs of any height and width
are resized to the inner size inside the model and the output back to the input size, so the
same file serves whole slices and tiles.

TensorFlow is imported lazily: this module can be imported (for :class:`ModelConfig`) by tools
that never build a network.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BACKBONES = tuple(f"EfficientNetB{i}" for i in range(8))
IMAGENET_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/"


class WeightsNotFoundError(FileNotFoundError):
    """Requested encoder weights are not available offline."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one EfficientCellSeg network (JSON-serialisable, stored beside the model).

    ``skip_layers`` are listed deepest first; the resized input image is always the last skip,
    so there is one decoder stage per skip layer plus one.
    """

    backbone: str = "EfficientNetB5"
    input_size: int = 384
    cut_layer: str = "block6a_expand_activation"
    skip_layers: tuple[str, ...] = (
        "block4a_expand_activation",
        "block3a_expand_activation",
        "block1a_activation",
    )
    decoder_filters: tuple[int, ...] = (64, 48, 32, 16)
    # Pseudocolor in [0, 1] is multiplied by this before the backbone's own 1/255 rescaling and
    # ImageNet normalisation. The published models used 1.0; 255.0 matches what ImageNet
    # weights expect.
    input_scale: float = 1.0
    encoder_weights: str | None = "imagenet"
    # False: fall back to random initialisation (with a warning) when ImageNet weights are
    # not in the Keras cache; True: stop with an error saying where to put the file.
    require_encoder_weights: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.input_size < 32 or self.input_size % 2 ** len(self.decoder_filters):
            raise ValueError(
                f"input_size {self.input_size} must be >= 32 and divisible by "
                f"2**{len(self.decoder_filters)} (one halving per decoder stage)"
            )
        if len(self.decoder_filters) != len(self.skip_layers) + 1:
            raise ValueError(
                f"{len(self.decoder_filters)} decoder stages need {len(self.decoder_filters) - 1} "
                f"skip layers (the input image is the last skip), got {len(self.skip_layers)}"
            )
        object.__setattr__(self, "skip_layers", tuple(self.skip_layers))
        object.__setattr__(self, "decoder_filters", tuple(int(f) for f in self.decoder_filters))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    # Same code path, ~150k parameters: for tests, the demo and quick experiments on a CPU.
    "tiny": ModelConfig(
        backbone="EfficientNetB0",
        input_size=128,
        cut_layer="block4a_expand_activation",
        skip_layers=("block3a_expand_activation", "block2a_expand_activation"),
        decoder_filters=(16, 16, 8),
        input_scale=255.0,
        encoder_weights=None,
    ),
}


def resolve_config(spec: str | os.PathLike | dict | ModelConfig) -> ModelConfig:
    """A :class:`ModelConfig` from a preset name, a JSON/YAML file, a dict or a config."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        base = spec.get("preset")
        values = {k: v for k, v in spec.items() if k != "preset"}
        if base is not None:
            return ModelConfig.from_dict({**resolve_config(base).to_dict(), **values})
        return ModelConfig.from_dict(values)
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"model config {str(spec)!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
        )
    import yaml

    return resolve_config(yaml.safe_load(path.read_text()))


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


def keep_input_in_float32(model) -> list[str]:
    """Under a mixed-precision policy, compute the input resize and scaling, the encoder's own
    rescaling and ImageNet normalisation and its stem (convolution, batch norm) in float32.

    With ImageNet normalisation and ``input_scale`` 1 (the published setting), pseudocolor in
    [0, 1] reaches the stem as about -2.1 + 0.017 * value: bfloat16, whose spacing near 2 is
    0.0156, keeps one or two grey levels of the image, float16 about nine. The stem's batch norm
    removes the offset; from its output on, the reduced precision sees the image again.
    ``benchmarks/bench_mixed_precision.py --config tiny --input-scale 1 --normalisation
    imagenet`` (one batch, random weights, AMD EPYC with AVX512-BF16), bfloat16 / float16:
    error of the normalised input 2.99 / 0.24 times its signal (0 with this function); network
    output in training mode 0.61 / 0.22 (0.063 / 0.009); median error of the weight gradients
    1.11 / 0.49 (0.24 / 0.06; rounding only the input to bfloat16 in float32 gives 0.055).
    The layers changed are a small part of the computation. Returns their names.
    """
    import keras

    changed = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        layer.dtype_policy = "float32"
        if hasattr(layer, "finalize_state"):  # Normalization caches mean and variance in
            layer.finalize_state()  # its compute dtype: bfloat16 rounds 0.485 to 0.486
        changed.append(layer.name)
        if layer.name == "stem_bn":
            return changed
    raise ValueError(f"{model.name} has no layer named stem_bn: not an EfficientNet encoder")


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)
    write_metadata(path, metadata)


def write_metadata(model_path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    sidecar = metadata_path(model_path)
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)


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

    return keras.models.load_model(path, compile=False)
