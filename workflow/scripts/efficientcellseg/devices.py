"""Which device training and prediction will use here: ``efficientcellseg device``.

Answers what a GPU set-up needs checked before days of training: does this TensorFlow have
CUDA, which GPUs does it see (after ``CUDA_VISIBLE_DEVICES``), and what will the workflow's
``train`` and ``predict`` jobs run on, in which precision.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .settings import InferenceSettings, TrainingSettings

log = logging.getLogger(__name__)


def device_report(
    model_dir: str | os.PathLike | None = None,
    inference: InferenceSettings | None = None,
    training: TrainingSettings | None = None,
) -> dict[str, Any]:
    """What this machine offers and what training and prediction will run on.

    ``model_dir`` (a trained model folder) makes the prediction answer exact for its networks;
    without it, the answer is what ``backend: auto`` picks for a folder holding both the
    ``.keras`` and the ``.onnx`` files. Settings default to the config schema's.
    """
    from .inference import (
        CPU_PREFERENCE,
        available_cores,
        cpu_has_bf16,
        resolve_inference,
        runtime_importable,
    )
    from .segment import read_pipeline_settings

    inference = inference or InferenceSettings()
    training = training or TrainingSettings()
    report: dict[str, Any] = {
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "nvidia_device_files": len(list(Path("/dev").glob("nvidia[0-9]*"))),
        "cpu_cores": available_cores(),
        "cpu_bf16": runtime_importable("openvino") and cpu_has_bf16(),
        **_tensorflow_facts(),
    }
    gpus = report["gpus"]
    if report["tensorflow"] is None:
        report["training"] = "impossible: TensorFlow does not import (make install)"
    elif gpus:
        report["training"] = f"GPU {gpus[0]['name']} ({_precision(training, True)})"
    else:
        report["training"] = (
            f"CPU, {report['cpu_cores']} cores ({_precision(training, False)}); "
            "no GPU that TensorFlow can use"
        )
    if model_dir is not None:
        networks = read_pipeline_settings(model_dir).networks
        report["prediction"] = {
            task: _runs_on(*resolve_inference(Path(model_dir) / f"{task}.keras",
                                              inference.backend, inference.precision), gpus)
            for task in networks
        }  # fmt: skip
    elif inference.backend == "auto" and gpus:
        report["prediction"] = {"every network": _runs_on("keras", "f32", gpus)}
    else:
        wanted = CPU_PREFERENCE if inference.backend == "auto" else (inference.backend,)
        usable = [b for b in wanted if runtime_importable(b)]
        report["prediction"] = {
            "every network": _runs_on(usable[0], inference.precision, gpus)
            if usable
            else "impossible: no inference runtime imports (openvino, onnxruntime, tensorflow)"
        }
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as the lines ``efficientcellseg device`` prints."""
    visible = report["cuda_visible_devices"]
    lines = [
        f"TensorFlow        {report['tensorflow'] or 'not importable'}"
        + (f" ({report['build']})" if report["tensorflow"] else ""),
        f"NVIDIA devices    {report['nvidia_device_files']} (/dev/nvidia*)",
        "CUDA_VISIBLE_DEVICES " + ("unset (every GPU)" if visible is None else repr(visible)),
        f"GPUs TensorFlow sees: {len(report['gpus'])}",
    ]
    lines += [f"  {gpu['id']}: {gpu['name']}" for gpu in report["gpus"]]
    lines += [
        f"CPU cores         {report['cpu_cores']} (bf16 inference: "
        f"{'yes' if report['cpu_bf16'] else 'no'})",
        f"training runs on  {report['training']}",
        "prediction runs on:",
    ]
    lines += [f"  {task}: {where}" for task, where in report["prediction"].items()]
    return lines


def _tensorflow_facts() -> dict[str, Any]:
    try:
        import tensorflow as tf
    except Exception as exc:  # a broken install raises more than ImportError
        log.debug("tensorflow does not import: %s", exc)
        return {"tensorflow": None, "build": None, "gpus": []}
    info = tf.sysconfig.get_build_info()
    if info.get("is_cuda_build"):
        build = f"CUDA {info.get('cuda_version')}, cuDNN {info.get('cudnn_version')}"
    else:
        build = "CPU build: no CUDA; `make EXTRAS=gpu,workflow,dev install` for the GPU one"
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        name = details.get("device_name", device.name)
        if capability:
            name += f", compute capability {capability[0]}.{capability[1]}"
        gpus.append({"id": device.name, "name": name})
    return {"tensorflow": tf.__version__, "build": build, "gpus": gpus}


def _precision(training: TrainingSettings, gpu: bool) -> str:
    """Keras dtype policy of ``training.mixed_precision`` on this device (auto: float16 on a
    GPU, float32 on a CPU, as :func:`.training.precision_policy` decides)."""
    from .training import precision_policy

    mode = training.mixed_precision
    if mode == "auto":
        mode = "float16" if gpu else "off"
    return precision_policy(mode)


def _runs_on(backend: str, precision: str, gpus: list[dict[str, str]]) -> str:
    if backend == "keras" and gpus:
        return f"TensorFlow on GPU {gpus[0]['name']} ({precision})"
    names = {"keras": "TensorFlow", "onnx": "ONNX Runtime", "openvino": "OpenVINO"}
    return f"{names[backend]} on the CPU ({precision})"
