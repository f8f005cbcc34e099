"""Running trained networks on pseudocolored slices: backends, batching and tiling.

Backends: ``keras`` (a compiled TensorFlow function), ``onnx`` (ONNX Runtime) and ``openvino``
(OpenVINO, reading the same ONNX file). The ONNX file is exported beside the ``.keras`` model
after training. ``auto`` takes TensorFlow when a GPU is present and otherwise the fastest CPU
backend measured on the reference machine (``benchmarks/bench_inference.py``), falling back when
a runtime or the ONNX file is missing.

Slices larger than ``tile_size`` go through overlapping square tiles whose predictions are
blended with smooth weights; tile positions always reach the right and bottom edges, so no pixel
is left unpredicted (the published code leaves the remainder of an uneven split empty).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("auto", "keras", "onnx", "openvino")
CPU_PREFERENCE = ("openvino", "onnx", "keras")  # fastest first, see benchmarks/bench_inference.py
ONNX_OPSET = 17

Predict = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) float32 -> (N, H, W) float32


def onnx_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".onnx")


def export_onnx(model_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Export a saved ``.keras`` network to ONNX (dynamic batch, height and width)."""
    import tensorflow as tf
    import tf2onnx

    from .model import load_model

    model = load_model(model_path)
    _freeze_normalisation(model)
    out_path = Path(out_path) if out_path else onnx_path(model_path)
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="pseudocolor"),)

    @tf.function(input_signature=spec)
    def serve(x):
        return model(x, training=False)

    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tf2onnx.convert.from_function(serve, input_signature=spec, opset=ONNX_OPSET, output_path=str(tmp))
    os.replace(tmp, out_path)
    log.info("exported %s", out_path)
    return out_path


def _freeze_normalisation(model) -> None:
    """Make the backbone's Normalization layers read their variables, not cached tensors.

    Keras keeps mean and variance as eager tensors that the ONNX converter turns into graph
    *inputs*; pointing the layer at its (broadcast-compatible) variables freezes them as
    constants instead.
    """
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and hasattr(layer, "adapt_mean"):
            layer.mean = layer.adapt_mean
            layer.variance = layer.adapt_variance


def gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def choose_backend(model_path: str | os.PathLike, backend: str = "auto") -> str:
    """Resolve ``auto`` to a backend that can run here; check an explicit choice can."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    if backend != "auto":
        if backend != "keras" and not onnx_path(model_path).is_file():
            raise FileNotFoundError(
                f"{onnx_path(model_path)} missing: export it with "
                "`efficientcellseg export MODEL.keras` or use --backend keras"
            )
        return backend
    if gpu_available():
        return "keras"
    for candidate in CPU_PREFERENCE:
        if candidate == "keras" or (onnx_path(model_path).is_file() and _importable(candidate)):
            return candidate
    return "keras"


def _importable(backend: str) -> bool:
    module = {"onnx": "onnxruntime", "openvino": "openvino"}[backend]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def open_predictor(
    model_path: str | os.PathLike, backend: str = "auto", *, threads: int | None = None
) -> tuple[Predict, str]:
    """A function mapping a batch of pseudocolor slices to probability maps, and its backend."""
    backend = choose_backend(model_path, backend)
    opener = {"keras": _keras_predictor, "onnx": _onnx_predictor, "openvino": _openvino_predictor}
    log.info("%s: backend %s", Path(model_path).name, backend)
    return opener[backend](Path(model_path), threads), backend


def _keras_predictor(model_path: Path, threads: int | None) -> Predict:
    import tensorflow as tf

    from .model import load_model

    if threads:
        set_tensorflow_threads(threads)
    model = load_model(model_path)
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32),)
    run = tf.function(lambda x: model(x, training=False), input_signature=spec)

    def predict(batch: np.ndarray) -> np.ndarray:
        return run(tf.convert_to_tensor(batch, tf.float32)).numpy()[..., 0]

    return predict


def set_tensorflow_threads(threads: int) -> None:
    """Limit TensorFlow to ``threads`` cores (must run before TensorFlow starts computing)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:  # already initialised in this process: keep its setting
        log.debug("TensorFlow threads already set")


def _onnx_predictor(model_path: Path, threads: int | None) -> Predict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    session = ort.InferenceSession(str(onnx_path(model_path)), options, providers=providers)
    name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0][..., 0]

    return predict


def _openvino_predictor(model_path: Path, threads: int | None) -> Predict:
    import openvino as ov

    core = ov.Core()
    device = "GPU" if "GPU" in core.available_devices else "CPU"
    config = {"INFERENCE_NUM_THREADS": threads} if threads and device == "CPU" else {}
    compiled = core.compile_model(str(onnx_path(model_path)), device, config)
    request = compiled.create_infer_request()

    def predict(batch: np.ndarray) -> np.ndarray:
        result = request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return np.asarray(result[compiled.output(0)])[..., 0].copy()

    return predict


# --- whole slices and tiles -----------------------------------------------------------------


@dataclass(frozen=True)
class TileSettings:
    """Square tiles of ``size`` slice pixels, neighbours overlapping by ``overlap`` pixels."""

    size: int
    overlap: int = 64

    def __post_init__(self) -> None:
        if self.size < 16 or not 0 <= self.overlap < self.size // 2:
            raise ValueError(
                f"tile size {self.size} must be >= 16 and overlap {self.overlap} in [0, size/2)"
            )


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``0..length`` completely; the last ends at ``length``."""
    if length <= size:
        return [0]
    count = math.ceil((length - overlap) / (size - overlap))
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def blend_weights(size_y: int, size_x: int, overlap: int) -> np.ndarray:
    """Weights of one tile: 1 inside, ramping down over the overlap, never 0 (edges count)."""

    def ramp(n: int) -> np.ndarray:
        w = np.ones(n, np.float32)
        if overlap:
            edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
            w[:overlap] = np.minimum(w[:overlap], edge)
            w[-overlap:] = np.minimum(w[-overlap:], edge[::-1])
        return w

    return np.outer(ramp(size_y), ramp(size_x))


def predict_slices(
    predict: Predict,
    images: np.ndarray,
    *,
    batch_size: int = 4,
    tiles: TileSettings | None = None,
) -> np.ndarray:
    """Probability map (N, H, W) float32 for pseudocolor slices (N, H, W, 3)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected pseudocolor slices (N, H, W, 3), got shape {images.shape}")
    n, height, width, _ = images.shape
    if tiles is None or (height <= tiles.size and width <= tiles.size):
        out = np.empty((n, height, width), np.float32)
        for start in range(0, n, batch_size):
            out[start : start + batch_size] = predict(images[start : start + batch_size])
        return out
    return _predict_tiled(predict, images, batch_size, tiles)


def _predict_tiled(predict: Predict, images: np.ndarray, batch_size: int, tiles: TileSettings):
    n, height, width, _ = images.shape
    size_y, size_x = min(tiles.size, height), min(tiles.size, width)
    weights = blend_weights(size_y, size_x, tiles.overlap)
    total = np.zeros((n, height, width), np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    windows = [
        (y, x)
        for y in tile_starts(height, size_y, tiles.overlap)
        for x in tile_starts(width, size_x, tiles.overlap)
    ]
    for y, x in windows:
        weight_sum[y : y + size_y, x : x + size_x] += weights
    jobs = [(i, y, x) for i in range(n) for y, x in windows]
    for chunk in _chunks(jobs, batch_size):
        batch = np.stack([images[i, y : y + size_y, x : x + size_x] for i, y, x in chunk])
        for (i, y, x), probability in zip(chunk, predict(batch), strict=True):
            total[i, y : y + size_y, x : x + size_x] += probability * weights
    return total / weight_sum


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
