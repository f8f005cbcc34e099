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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_output, atomic_write_text, check_checksum, file_digest
from .settings import ImagenetFile, ImagenetWeights, ModelConfig

log = logging.getLogger(__name__)


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


def build_model(
    config: ModelConfig,
    *,
    name: str = "efficientcellseg",
    encoder: EncoderInitialisation | None = None,
):
    """Build the network; its output is a sigmoid map of the input's height and width.

    Every architecture shares the input and output: pseudocolor slices of any size, resized to
    the inner square size inside the network, and a probability map resized back, so training,
    export and inference treat them alike. ``encoder`` says what an EfficientNet encoder starts
    from (default: :func:`resolve_encoder_weights` of ``config``, which stops when requested
    ImageNet weights are missing); a U-Net starts from random weights.
    """
    import keras
    from keras import layers

    from .keras_parts import ResizeLike, ResizeTo

    encoder = encoder or resolve_encoder_weights(config)
    image = keras.Input((None, None, 3), name="pseudocolor")
    resized = ResizeTo(config.input_size, name="resize_in")(image)
    if config.architecture == "unet":
        x = _unet(config, resized)
    else:
        x = _efficientcellseg_decoder(config, resized, encoder)
    x = layers.Conv2D(1, 1, name="head")(x)
    x = layers.Activation("sigmoid", dtype="float32", name="probability")(x)
    output = ResizeLike(name="resize_out", dtype="float32")([x, image])
    return keras.Model(image, output, name=name)


def _conv_block(x, filters: int, prefix: str):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""
    from keras import layers

    for conv in range(2):
        x = layers.Conv2D(filters, 3, padding="same", name=f"{prefix}_conv{conv}")(x)
        x = layers.BatchNormalization(name=f"{prefix}_bn{conv}")(x)
        x = layers.ReLU(name=f"{prefix}_relu{conv}")(x)
    return x


def _unet(config: ModelConfig, resized):
    """The U-Net of Ronneberger et al. (2015): per level two 3x3 convolutions, max pooling on
    the way down, a 2x2 transposed convolution and the level's skip on the way up. The layers
    of the contracting path (levels and bottom) are named ``enc*``, the others ``dec*``."""
    from keras import layers

    x = layers.Rescaling(config.input_scale, name="input_scale")(resized)
    *levels, bottom = config.unet_filters
    skips = []
    for level, filters in enumerate(levels):
        x = _conv_block(x, filters, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, bottom, "enc_bottom")
    for level in reversed(range(len(levels))):
        filters = levels[level]
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, f"dec{level}")
    return x


def _efficientcellseg_decoder(config: ModelConfig, resized, encoder: EncoderInitialisation):
    """The truncated EfficientNet encoder and the light decoder of Wagner & Rohr (2022)."""
    from keras import layers

    scaled = layers.Rescaling(config.input_scale, name="input_scale")(resized)
    backbone = _backbone(config, scaled, encoder)
    x = backbone.get_layer(config.cut_layer).output
    # The last skip is the resized pseudocolor itself, in [0, 1] whatever the encoder's input
    # scale (the published network, with input_scale 1, cannot tell the difference).
    skips = [backbone.get_layer(n).output for n in config.skip_layers] + [resized]
    for stage, (filters, skip) in enumerate(zip(config.decoder_filters, skips, strict=True)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{stage}_up")(x)
        x = layers.Concatenate(name=f"dec{stage}_concat")([x, skip])
        x = _conv_block(x, filters, f"dec{stage}")
    return x


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
    """Total, encoder (backbone up to the cut layer; a U-Net's contracting path) and decoder
    parameter counts."""
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

    if config.architecture == "unet":
        return {layer.name for layer in model.layers if layer.name.startswith("enc")}
    encoder = keras.Model(
        model.get_layer("input_scale").output, model.get_layer(config.cut_layer).output
    )
    return {layer.name for layer in encoder.layers} - {"input_scale"}


def _backbone(config: ModelConfig, input_tensor, encoder: EncoderInitialisation):
    import keras

    builder = getattr(keras.applications, config.backbone)
    # weights=None always: ImageNet weights are loaded from the verified file below, never
    # fetched by Keras (which would need the internet and checks only its own MD5).
    backbone = builder(include_top=False, weights=None, input_tensor=input_tensor)
    if encoder.file is not None:
        backbone.load_weights(encoder.file)
        if encoder.source == "imagenet":
            _match_keras_imagenet_normalisation(backbone)
        log.info("encoder %s initialised from %s", config.backbone, encoder.describe())
    return backbone


# Keras builds an ImageNet EfficientNet with one more layer after its Normalization layer,
# Rescaling(1 / sqrt(std)) per channel (keras.applications.efficientnet, IMAGENET_STDDEV_RGB),
# to match the original implementation's input scaling.
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _match_keras_imagenet_normalisation(backbone) -> None:
    """Give an encoder loaded from the ImageNet file the input scaling of Keras' own ImageNet
    encoder: ``(x - mean) / sqrt(var) / sqrt(std)`` is ``(x - mean) / sqrt(var * std)``, so the
    variance of the Normalization layer takes the extra factor (same layers either way)."""
    import keras
    import numpy as np

    norm = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_variance.assign(
        np.asarray(norm.adapt_variance) * np.asarray(IMAGENET_STDDEV_RGB, dtype=np.float32)
    )
    norm.finalize_state()  # Normalization keeps the derived tensors it computes from them


def imagenet_cache_path(backbone: str) -> Path:
    """Where Keras keeps the ImageNet weights of ``backbone`` (no-top) it downloaded.

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


@dataclass(frozen=True)
class EncoderInitialisation:
    """What the encoder's weights started from; recorded in the model metadata, SEG.txt and the
    CTC submission's description."""

    source: str  # "imagenet", "file" or "random"
    file: str | None = None
    sha256: str | None = None

    def describe(self) -> str:
        if self.source == "random":
            return "random initialisation (no pretrained weights)"
        what = "ImageNet weights" if self.source == "imagenet" else "weights file"
        return f"{what} {Path(self.file).name} (sha256 {self.sha256})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "file": None if self.file is None else Path(self.file).name,
            "sha256": self.sha256,
        }


def encoder_start_text(metadata: dict[str, Any]) -> str:
    """``<task>: ImageNet (<file>, sha256 <hex>)`` (or ``random``) from a network's metadata."""
    encoder = metadata.get("encoder_initialisation")
    task = metadata.get("task", "network")
    if encoder is None:
        return f"{task}: not recorded (trained before the initialisation was recorded)"
    if encoder["source"] == "random":
        return f"{task}: random"
    what = "ImageNet" if encoder["source"] == "imagenet" else "weights file"
    return f"{task}: {what} ({encoder['file']}, sha256 {encoder['sha256']})"


def imagenet_weights_advice(pinned: ImagenetFile, where: str | os.PathLike) -> str:
    """How to provide the ImageNet file, or do without it (for error messages)."""
    return (
        f"fetch it with `snakemake resources/imagenet/{pinned.file_name}` (the workflow does "
        f"this by itself for models with encoder_weights: imagenet) or download {pinned.url} "
        f"({pinned.checksum}) to {where}; or train from random initialisation: set "
        "`encoder_weights: null` in the model settings (config.yaml: "
        "`model: {preset: paper, encoder_weights: null}`)"
    )


def resolve_encoder_weights(
    config: ModelConfig,
    imagenet_file: str | os.PathLike | None = None,
    imagenet: ImagenetWeights | None = None,
) -> EncoderInitialisation:
    """Decide, offline, what the encoder starts from; never falls back silently.

    ``encoder_weights: imagenet`` reads ``imagenet_file`` (default: the file in the Keras cache,
    :func:`imagenet_cache_path`) after checking it has the checksum ``imagenet`` pins for the
    backbone; a path must exist; ``None`` means random initialisation.

    Raises
    ------
    WeightsNotFoundError
        The file is missing; the message says how to provide it or choose random weights.
    efficientcellseg.files.ChecksumError
        The ImageNet file is not the pinned one.
    """
    spec = config.encoder_weights
    if spec in (None, "", "none"):
        return EncoderInitialisation("random")
    if spec == "imagenet":
        pinned = (imagenet or ImagenetWeights()).file(config.backbone)
        path = Path(imagenet_file) if imagenet_file else imagenet_cache_path(config.backbone)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"the {config.backbone} encoder is to start from ImageNet weights "
                f"(encoder_weights: imagenet), but {path} does not exist: "
                + imagenet_weights_advice(pinned, path)
            )
        check_checksum(path, pinned.checksum)
        return EncoderInitialisation("imagenet", str(path), file_digest(path))
    path = Path(spec)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"encoder weights file {path} does not exist (model setting encoder_weights); "
            "give an existing file, imagenet, or null for random initialisation"
        )
    return EncoderInitialisation("file", str(path), file_digest(path))


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
