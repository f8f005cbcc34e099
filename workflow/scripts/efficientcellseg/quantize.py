"""Post-training int8 quantization of the exported networks (NNCF for OpenVINO).

``precision="int8"`` runs OpenVINO on ``<task>.int8.xml/.bin``, an OpenVINO IR made once from the
f32 ``<task>.onnx`` beside it and stored in the model folder: NNCF inserts 8-bit quantizers on
the inputs and weights of the convolutions (symmetric per-channel weights, asymmetric
activations), their ranges set from activation statistics over calibration slices, and corrects
the biases the rounding shifts. At predict time nothing is quantized again: OpenVINO reads the
IR and runs the quantized convolutions in int8 (AVX-512 VNNI here; AVX2 and AMX kernels on CPUs
that have those, from the same file).

Choices measured on the briefly trained paper network of ``benchmarks/bench_precision.py``
(held-out slices, pixels whose class differs from f32; CPU time per 512 x 512 slice, one thread,
AMD EPYC): NNCF's default symmetric activations 8.0e-3, 70 ms; asymmetric activations (preset
MIXED: Swish outputs start at -0.28 and the normalised image sits far from 0, so a symmetric
range wastes half of the 256 levels or more) 3.1e-3, 73 ms; the same with the last decoder stage
also in int8 3.7e-3, 65 ms; depthwise convolutions in float or full bias correction changed
little. f32 takes 145 ms, bf16 84 ms.

Calibration uses slices the network was trained on: the pseudocolored slices that
:func:`.training_data.save_annotated_slices` stored (``.npz``), of which :func:`calibration_slices`
takes a fixed number spread evenly over all of them (the same files always give the same slices).
What quantization changes is measured by ``benchmarks/bench_precision.py`` (trained networks:
pixel classes and SEG against f32) and its speed by ``benchmarks/bench_inference.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CALIBRATION_SLICES = 300  # NNCF's default subset size
QUANTIZED_SUFFIX = ".int8.xml"


def quantized_path(model_path: str | os.PathLike) -> Path:
    """The int8 OpenVINO IR of a ``.keras`` network (``segmentation.keras`` ->
    ``segmentation.int8.xml``, weights in ``segmentation.int8.bin``)."""
    return Path(model_path).with_suffix(QUANTIZED_SUFFIX)


def calibration_slices(
    sources: Sequence[str | os.PathLike | np.ndarray], count: int = CALIBRATION_SLICES
) -> list[np.ndarray]:
    """``count`` pseudocolor slices (H, W, 3) chosen evenly over all slices of ``sources``.

    Parameters
    ----------
    sources
        ``.npz`` files of :func:`.training_data.save_annotated_slices` (their ``images``) or
        arrays of slices (N, H, W, 3), in a fixed order; slices keep their stored dtype.
    count
        How many to take (all of them when there are fewer). Indices ``round(i * (N - 1) /
        (count - 1))`` over the N slices of all sources together: reproducible, and every
        sequence, frame and depth contributes in proportion to its share.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    arrays = []
    for source in sources:
        if isinstance(source, np.ndarray):
            arrays.append(source)
            continue
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} missing: pass the training slices (.npz) to calibrate on"
            )
        with np.load(path) as data:
            if "images" not in data:
                raise ValueError(
                    f"{path} holds no 'images': expected pseudocolored training slices as "
                    "written by training_data.save_annotated_slices"
                )
            arrays.append(data["images"])
    for index, array in enumerate(arrays):
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(
                f"calibration source {sources[index]!s:.80} holds an array of shape "
                f"{array.shape}: expected pseudocolor slices (N, H, W, 3)"
            )
    total = sum(len(a) for a in arrays)
    if total == 0:
        raise ValueError("no calibration slices: the sources are empty")
    starts = np.cumsum([0] + [len(a) for a in arrays])
    chosen = np.unique(np.round(np.linspace(0, total - 1, min(count, total))).astype(int))
    slices = []
    for index in chosen:
        source = int(np.searchsorted(starts, index, side="right")) - 1
        slices.append(arrays[source][index - starts[source]])
    return slices


def quantize_network(
    onnx_path: str | os.PathLike,
    calibration: Sequence[np.ndarray],
    out_path: str | os.PathLike,
    *,
    float_last_stage: bool = True,
) -> Path:
    """Quantize an exported network to int8 with NNCF and save it as OpenVINO IR.

    Parameters
    ----------
    onnx_path
        The f32 ONNX export (:func:`.inference.export_onnx`).
    calibration
        Pseudocolor slices (H, W, 3) in [0, 1], as the network sees them at predict time
        (:func:`calibration_slices`); all of them are used.
    out_path
        The ``.xml`` to write (its weights go to the ``.bin`` beside it), atomically: a
        half-written pair is never left under the final name.
    float_last_stage
        Keep the convolutions after the last skip concatenation in float: the decoder's last
        stage, which reads the input image itself, and the head. One int8 scale shared by the
        image and the decoder features there shifts where boundaries fall; in float, ~13 % more
        CPU time, int8 changed the class of 1.5e-4 instead of 2.5e-3 of the pixels (tiny
        test network), 2.5e-4 instead of 4.2e-4 (tiny trained network) and 3.1e-3 instead of
        3.7e-3 (paper network).

    Returns
    -------
    Path
        ``out_path``.
    """
    import nncf
    import openvino as ov

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(
            f"{onnx_path} missing: export the network first (`efficientcellseg export "
            f"{onnx_path.with_suffix('.keras')}`)"
        )
    if len(calibration) == 0:
        raise ValueError("no calibration slices given")
    # convert_model (not read_model) fuses x * sigmoid(x) into Swish: NNCF then places its
    # quantizers around whole activations, which OpenVINO fuses into the int8 convolutions;
    # unfused, the sigmoids run on their own in f32 and int8 is no faster than bf16.
    model = ov.convert_model(onnx_path)
    # NNCF logs to stdout through its own handler: keep its INFO lines (every layer left in
    # float) out of the way unless this module is debugging
    nncf.set_log_level(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    dataset = nncf.Dataset(calibration, _network_input)
    in_float = _last_stage_convolutions(model) if float_last_stage else []
    log.info(
        "quantizing %s on %d calibration slices (%d convolutions stay in float)",
        onnx_path.name, len(calibration), len(in_float),
    )  # fmt: skip
    quantized = nncf.quantize(
        model,
        dataset,
        subset_size=len(calibration),
        preset=nncf.QuantizationPreset.MIXED,
        target_device=nncf.TargetDevice.CPU,
        ignored_scope=nncf.IgnoredScope(names=in_float),
    )
    tmp = out_path.with_name(f".{out_path.stem}.tmp.xml")
    try:
        ov.save_model(quantized, tmp, compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), out_path.with_suffix(".bin"))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    log.info("wrote %s", out_path)
    return out_path


def _last_stage_convolutions(model) -> list[str]:
    """Names of the convolutions downstream of the network's last 4D Concat."""
    ops = model.get_ordered_ops()
    concats = [
        op
        for op in ops
        if op.get_type_name() == "Concat" and op.get_output_partial_shape(0).rank.get_length() == 4
    ]
    if not concats:
        raise ValueError(f"{model.get_friendly_name()}: no skip concatenation found")
    names, queue, seen = [], [concats[-1]], set()
    while queue:
        op = queue.pop()
        for output in op.outputs():
            for target in output.get_target_inputs():
                node = target.get_node()
                if node.get_friendly_name() not in seen:
                    seen.add(node.get_friendly_name())
                    queue.append(node)
                    if node.get_type_name() == "Convolution":
                        names.append(node.get_friendly_name())
    return sorted(names)


def _network_input(image: np.ndarray) -> np.ndarray:
    """One stored slice (H, W, 3), e.g. float16, as the network's input: (1, H, W, 3) float32."""
    return np.ascontiguousarray(image, dtype=np.float32)[np.newaxis]


def quantize_model_folder(
    model_dir: str | os.PathLike,
    slice_files: Sequence[str | os.PathLike | np.ndarray],
    count: int = CALIBRATION_SLICES,
    *,
    float_last_stage: bool = True,
) -> list[Path]:
    """Quantize every exported network of a model folder on the same calibration slices.

    ``count`` as for :func:`calibration_slices`, ``float_last_stage`` as for
    :func:`quantize_network`. Returns the ``.int8.xml`` files written (segmentation, then
    centres where present).
    """
    from .inference import onnx_path
    from .segment import MODEL_FILES

    model_dir = Path(model_dir)
    networks = [model_dir / name for name in MODEL_FILES.values()]
    networks = [path for path in networks if onnx_path(path).is_file()]
    if not networks:
        raise FileNotFoundError(
            f"{model_dir} holds no exported network ({', '.join(MODEL_FILES.values())} with "
            "their .onnx): train the model and export it (`efficientcellseg export`) first"
        )
    calibration = calibration_slices(slice_files, count)
    return [
        quantize_network(
            onnx_path(path), calibration, quantized_path(path), float_last_stage=float_last_stage
        )
        for path in networks
    ]
