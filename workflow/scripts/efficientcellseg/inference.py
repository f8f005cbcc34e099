"""Running trained networks on pseudocolored slices: backends, batching and tiling.

Backends: ``keras`` (a compiled TensorFlow function on the ``.keras`` file), ``onnx`` (ONNX
Runtime) and ``openvino`` (OpenVINO, reading the same ONNX file). The ONNX file is exported
beside the ``.keras`` model after training (:func:`export_onnx`). All three compute in float32
and agree to 1e-4 (tested; about 1e-5 with random weights); on request (``precision="bf16"``)
OpenVINO computes in bfloat16 on CPUs with AMX or AVX512-BF16, about twice as fast, and
(``precision="int8"``) runs the int8 OpenVINO IR that :mod:`.quantize` stores beside the ONNX
file (made once per model with ``efficientcellseg quantize``). ``auto``
(:func:`choose_backend`) takes TensorFlow when it sees a GPU, and otherwise the fastest CPU
backend measured with ``benchmarks/bench_inference.py`` that can run here (OpenVINO, then ONNX
Runtime, then TensorFlow).

CPU settings that matter (measured on a 2-core Xeon with AMX, see the benchmark):

* OpenVINO runs in bfloat16 by default on CPUs with AMX or AVX512-BF16, which changes the
  probabilities (trained tiny / paper networks: by up to 0.08 / 0.10, 5e-5 / 2e-4 of the pixels
  change class, held-out SEG by 2e-4 / 6e-4; ``benchmarks/bench_precision.py``); precision is
  pinned to f32 (``INFERENCE_PRECISION_HINT``) unless bf16 is asked for.
* Threads are limited to the cores this process may use (``os.sched_getaffinity``): more threads
  than cores (the workflow may ask for more) slow every runtime down.
* ONNX Runtime's worker threads spin while waiting by default; on cores shared with other work
  that steals the time the computation needs, so spinning is off.
* Two slices computed at once (``streams``), each with half the threads, beat one slice with
  all threads: each stream runs without waiting for the other at every layer.

Slices larger than ``tile_size`` go through overlapping square tiles (:class:`TileSettings`)
whose predictions are blended (:func:`tile_weights`); tile positions always reach the right and
bottom edges, so no pixel is left unpredicted (the published code leaves the remainder of an
uneven split empty).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .files import atomic_output
from .settings import BACKENDS, PRECISIONS, InferenceSettings, TileSettings

log = logging.getLogger(__name__)

CPU_PREFERENCE = ("openvino", "onnx", "keras")  # fastest first, see benchmarks/bench_inference.py
RUNTIME_MODULES = {"keras": "tensorflow", "onnx": "onnxruntime", "openvino": "openvino"}
DEFAULT_STREAMS = 2  # slices computed at once by the ONNX backends on a CPU (see the benchmark)
ONNX_OPSET = 17

Predict = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) float32 -> (N, H, W) float32


class Predictor(NamedTuple):
    """A network ready to run: ``predict`` maps a batch of pseudocolor slices (N, H, W, 3)
    float32 in [0, 1] to probability maps (N, H, W) float32, computed by ``backend`` in
    ``precision`` (what actually runs, not what was asked for)."""

    predict: Predict
    backend: str
    precision: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.predict(batch)


def onnx_path(model_path: str | os.PathLike) -> Path:
    """The ONNX export that belongs to a ``.keras`` file (same name, suffix ``.onnx``)."""
    return Path(model_path).with_suffix(".onnx")


def export_onnx(model_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Export a saved ``.keras`` network to ONNX (dynamic batch, height and width), atomically.

    Returns the path written (default: beside the model, suffix ``.onnx``).
    """
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

    with atomic_output(out_path) as tmp:
        tf2onnx.convert.from_function(
            serve, input_signature=spec, opset=ONNX_OPSET, output_path=str(tmp)
        )
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


# --- choosing a backend ---------------------------------------------------------------------


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_threads(threads: int | None) -> int:
    """Threads to give a runtime: the request, capped at the available cores (None: all)."""
    cores = available_cores()
    if threads is None or threads <= 0:
        return cores
    if threads > cores:
        log.info("%d threads requested, %d cores available: using %d", threads, cores, cores)
    return min(threads, cores)


def gpu_available() -> bool:
    """Whether TensorFlow can use a GPU (without importing it when no NVIDIA device exists)."""
    if not any(Path("/dev").glob("nvidia[0-9]*")) and "CUDA_VISIBLE_DEVICES" not in os.environ:
        return False
    if not runtime_importable("keras"):
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def runtime_importable(backend: str) -> bool:
    """Whether the runtime module of ``backend`` imports here."""
    try:
        __import__(RUNTIME_MODULES[backend])
    except Exception:  # a broken install raises more than ImportError
        return False
    return True


def choose_backend(model_path: str | os.PathLike, backend: str = "auto") -> str:
    """Resolve ``auto`` to a backend that can run here; check an explicit choice can.

    ``auto``: ``keras`` when TensorFlow sees a GPU, else the first of :data:`CPU_PREFERENCE`
    whose runtime imports and whose input (the ONNX file, or the ``.keras`` file) exists.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    if backend != "auto":
        _check_runnable(model_path, backend)
        return backend
    if gpu_available():
        return "keras"
    for candidate in CPU_PREFERENCE:
        if _model_file(model_path, candidate).is_file() and runtime_importable(candidate):
            return candidate
    raise RuntimeError(
        f"no backend can run {model_path}: install openvino or onnxruntime and export "
        f"{onnx_path(model_path).name} (`efficientcellseg export`), or install tensorflow"
    )


def _model_file(model_path: str | os.PathLike, backend: str) -> Path:
    return Path(model_path) if backend == "keras" else onnx_path(model_path)


def _check_runnable(model_path: str | os.PathLike, backend: str) -> None:
    path = _model_file(model_path, backend)
    if not path.is_file():
        advice = (
            "train the model first"
            if backend == "keras"
            else f"export it with `efficientcellseg export {Path(model_path).name}` or use "
            "--backend keras"
        )
        raise FileNotFoundError(f"{path} missing for backend {backend}: {advice}")
    if not runtime_importable(backend):
        raise RuntimeError(
            f"backend {backend} needs the Python package {RUNTIME_MODULES[backend]}, which "
            "does not import here: install it or choose another --backend"
        )


# --- predictors -----------------------------------------------------------------------------


def resolve_inference(
    model_path: str | os.PathLike,
    backend: str = InferenceSettings.backend,
    precision: str = InferenceSettings.precision,
) -> tuple[str, str]:
    """The backend and precision that will run ``model_path`` here for the settings asked for.

    ``bf16`` and ``int8`` need OpenVINO (``int8`` its quantized IR beside the model, made by
    ``efficientcellseg quantize``); with ``auto`` and a GPU that TensorFlow sees, the GPU runs
    in f32. Cheap (nothing is loaded), so callers can decide before loading whether finished
    work was made the same way.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision in ("bf16", "int8"):
        if backend not in ("auto", "openvino"):
            raise ValueError(f"precision {precision} needs the openvino backend, not {backend}")
        if backend == "auto" and gpu_available():
            log.info("a GPU is present: using it in f32 (precision %s is for CPUs)", precision)
            precision = "f32"
        else:
            backend = "openvino"
    if precision == "int8":
        _check_quantized(Path(model_path))
    return choose_backend(model_path, backend), precision


def open_predictor(
    model_path: str | os.PathLike,
    backend: str = InferenceSettings.backend,
    *,
    threads: int | None = None,
    streams: int | None = None,
    precision: str = InferenceSettings.precision,
) -> Predictor:
    """Load a network for inference with the backend and precision of :func:`resolve_inference`.

    Parameters
    ----------
    model_path
        The ``.keras`` file; ONNX backends read the ``.onnx`` file beside it.
    backend
        One of :data:`~efficientcellseg.settings.BACKENDS`.
    threads
        CPU threads for the runtime; None (or more than there are): all available cores.
    streams
        ONNX backends on a CPU: slices computed at the same time, each with
        ``threads // streams`` threads (default :data:`DEFAULT_STREAMS`, at most ``threads``).
        Ignored by ``keras`` and on a GPU.
    precision
        ``f32`` (all backends) or ``bf16`` (OpenVINO on a CPU with AMX or AVX512-BF16): about
        twice as fast; probabilities move (by up to 0.1 for trained networks, where 5e-5 to
        2e-4 of the pixels changed class). ``int8``: OpenVINO on the CPU runs
        ``<model>.int8.xml`` (:func:`.quantize.quantized_path`); the layers left in float run
        in f32.
    """
    backend, precision = resolve_inference(model_path, backend, precision)
    threads = resolve_threads(threads)
    streams = max(1, min(threads, DEFAULT_STREAMS if streams is None else streams))
    log.info(
        "%s: backend %s (%s), %d threads, %d streams",
        Path(model_path).name, backend, precision, threads, streams,
    )  # fmt: skip
    if backend == "keras":
        predict = _keras_predictor(Path(model_path), threads)
    elif backend == "onnx":
        predict = _onnx_predictor(Path(model_path), threads, streams)
    else:
        predict = _openvino_predictor(Path(model_path), threads, streams, precision)
    return Predictor(predict, backend, precision)


def _check_quantized(model_path: Path) -> None:
    from .quantize import quantized_path

    path = quantized_path(model_path)
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(
            f"{path} (and its .bin) missing for precision int8: quantize the model folder once "
            f"with `efficientcellseg quantize {model_path.parent} --slices TRAINING_SLICES.npz "
            "...` (the pseudocolored training slices, e.g. results/<ds>/pseudocolor/*.npz), or "
            "use precision f32"
        )
    if not runtime_importable("openvino"):
        raise RuntimeError("precision int8 needs the Python package openvino: install it")


def _keras_predictor(model_path: Path, threads: int) -> Predict:
    import tensorflow as tf

    from .model import load_model

    if not tf.config.list_physical_devices("GPU"):
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


def onnxruntime_session(path: str | os.PathLike, threads: int, *, spinning: bool = False):
    """An ONNX Runtime session: all graph optimisations, ``threads`` intra-op threads (which
    do not spin while waiting, unless ``spinning``), CUDA when ``onnxruntime-gpu`` provides it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    options.log_severity_level = 3  # errors only
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), options, providers=providers)


def _onnx_predictor(model_path: Path, threads: int, streams: int) -> Predict:
    from .model import ModelFileError

    try:
        session = onnxruntime_session(onnx_path(model_path), max(1, threads // streams))
    except Exception as exc:
        raise ModelFileError(onnx_path(model_path), "ONNX Runtime", exc) from exc
    name = session.get_inputs()[0].name
    on_gpu = session.get_providers()[0] == "CUDAExecutionProvider"

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0][..., 0]

    if streams == 1 or on_gpu:
        return run
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(streams, thread_name_prefix="onnxruntime")  # run() is thread-safe

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.concatenate(list(pool.map(run, np.split(batch, len(batch)))))

    return predict


def cpu_has_bf16() -> bool:
    """Whether OpenVINO can compute in bfloat16 on this CPU (AMX or AVX512-BF16)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_config(
    device: str, threads: int, streams: int = 1, precision: str = "f32"
) -> dict[str, str]:
    """OpenVINO compile settings: ``precision`` always (the CPU default is bf16 where
    AMX/AVX512-BF16 exist, the GPU default f16); on a CPU ``threads`` threads shared by
    ``streams`` streams."""
    config = {"INFERENCE_PRECISION_HINT": precision}
    if device != "CPU":
        return {**config, "PERFORMANCE_HINT": "LATENCY"}
    config["INFERENCE_NUM_THREADS"] = str(threads)
    if streams == 1:
        return {**config, "PERFORMANCE_HINT": "LATENCY"}
    return {**config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(streams)}


def _openvino_predictor(model_path: Path, threads: int, streams: int, precision: str) -> Predict:
    import openvino as ov

    core = ov.Core()
    device = "GPU" if "GPU" in core.available_devices and precision == "f32" else "CPU"
    has_bf16 = cpu_has_bf16()
    if precision == "bf16" and not has_bf16:
        raise RuntimeError(
            "precision bf16: this CPU has no bfloat16 instructions (AMX or AVX512-BF16); "
            "use precision f32"
        )
    if device == "CPU" and precision == "f32" and has_bf16:
        log.info("this CPU supports bfloat16: precision bf16 would be about twice as fast")
    streams = streams if device == "CPU" else 1
    network, hint = onnx_path(model_path), precision
    if precision == "int8":  # int8 where NNCF quantized, the other layers in f32
        from .quantize import quantized_path

        network, hint = quantized_path(model_path), "f32"
    try:
        network = core.read_model(str(network))
    except Exception as exc:
        from .model import ModelFileError

        raise ModelFileError(network, "OpenVINO", exc) from exc
    compiled = core.compile_model(network, device, openvino_config(device, threads, streams, hint))
    if streams == 1:
        request = compiled.create_infer_request()

        def predict(batch: np.ndarray) -> np.ndarray:
            result = request.infer({0: np.ascontiguousarray(batch, np.float32)})
            return np.array(result[0][..., 0])  # a copy: the request reuses its buffer

        return predict
    queue = ov.AsyncInferQueue(compiled, streams)

    def predict(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)  # alive until every request is done
        out = np.empty(batch.shape[:3], np.float32)

        def store(request, index: int) -> None:
            out[index] = request.get_output_tensor(0).data[0, ..., 0]

        queue.set_callback(store)
        for index in range(len(batch)):
            queue.start_async({0: batch[index : index + 1]}, index)
        queue.wait_all()
        return out

    return predict


# --- whole slices and tiles -----------------------------------------------------------------


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``0..length`` completely; the last ends at ``length``.

    Tiles are spread evenly, so neighbours overlap by at least ``overlap`` pixels.
    """
    if length <= size:
        return [0]
    count = math.ceil((length - overlap) / (size - overlap))
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_weights(length: int, size: int, start: int, overlap: int) -> np.ndarray:
    """Blend weights along one axis of the tile at ``start`` (of ``size`` pixels, in ``length``).

    On a side facing another tile, the outer quarter of the overlap gets weight 0 (pixels whose
    receptive field the tile cuts off), then the weight ramps linearly to 1 over the middle half;
    on a side at the image edge the weight stays 1. The ramps of two neighbours overlapping by
    exactly ``overlap`` sum to 1, and wider overlaps only lengthen the stretch of full weight, so
    every pixel has a positive total weight. A translation-equivariant predictor whose reach is
    at most ``overlap // 4`` pixels therefore gives the same result tiled as on the whole slice.
    """
    weights = np.ones(size, np.float32)
    margin = overlap // 4
    ramp_length = overlap - 2 * margin
    if ramp_length <= 0:
        return weights
    ramp = np.zeros(overlap, np.float32)
    ramp[margin : overlap - margin] = (np.arange(ramp_length, dtype=np.float32) + 0.5) / ramp_length
    ramp[overlap - margin :] = 1
    if start > 0:
        weights[:overlap] = ramp
    if start + size < length:
        weights[-overlap:] = np.minimum(weights[-overlap:], ramp[::-1])
    return weights


def predict_slices(
    predict: Predict,
    images: np.ndarray,
    *,
    batch_size: int = InferenceSettings.batch_size,
    tiles: TileSettings | None = None,
) -> np.ndarray:
    """Probability map (N, H, W) float32 of pseudocolor slices (N, H, W, 3).

    Slices go to ``predict`` ``batch_size`` at a time; slices higher or wider than
    ``tiles.size`` go as overlapping tiles (``batch_size`` tiles at a time), blended back.
    Beyond the input and the result, memory holds one batch and one (H, W) weight map.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected pseudocolor slices (N, H, W, 3), got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    n, height, width, _ = images.shape
    if tiles is None or (height <= tiles.size and width <= tiles.size):
        out = np.empty((n, height, width), np.float32)
        for start in range(0, n, batch_size):
            out[start : start + batch_size] = predict(images[start : start + batch_size])
        return out
    return _predict_tiled(predict, images, batch_size, tiles)


def _predict_tiled(
    predict: Predict, images: np.ndarray, batch_size: int, tiles: TileSettings
) -> np.ndarray:
    n, height, width, _ = images.shape
    size_y, size_x = min(tiles.size, height), min(tiles.size, width)
    windows = [
        (y, x)
        for y in tile_starts(height, size_y, tiles.overlap)
        for x in tile_starts(width, size_x, tiles.overlap)
    ]
    weights = {
        (y, x): np.outer(
            tile_weights(height, size_y, y, tiles.overlap),
            tile_weights(width, size_x, x, tiles.overlap),
        )
        for y, x in windows
    }
    weight_sum = np.zeros((height, width), np.float32)
    for (y, x), weight in weights.items():
        weight_sum[y : y + size_y, x : x + size_x] += weight
    if not weight_sum.all():  # cannot happen with the weights above; guards the invariant
        raise AssertionError("tiles leave pixels without weight")
    log.debug("%d tiles of %dx%d per slice", len(windows), size_y, size_x)
    total = np.zeros((n, height, width), np.float32)
    jobs = [(i, y, x) for i in range(n) for y, x in windows]
    batch = np.empty((min(batch_size, len(jobs)), size_y, size_x, 3), np.float32)
    for chunk in _chunks(jobs, batch_size):
        for k, (i, y, x) in enumerate(chunk):
            batch[k] = images[i, y : y + size_y, x : x + size_x]
        probabilities = predict(batch[: len(chunk)])
        for (i, y, x), probability in zip(chunk, probabilities, strict=True):
            total[i, y : y + size_y, x : x + size_x] += probability * weights[y, x]
    total /= weight_sum
    return total


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
