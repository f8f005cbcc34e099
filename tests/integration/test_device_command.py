"""`efficientcellseg device`: which device training and prediction will use here."""

from __future__ import annotations

from efficientcellseg.cli import main
from efficientcellseg.devices import device_report
from efficientcellseg.inference import available_cores, cpu_has_bf16, gpu_available
from efficientcellseg.settings import InferenceSettings


def test_report_agrees_with_tensorflow_and_the_backend_choice(tiny_model_folder) -> None:
    import tensorflow as tf

    report = device_report()
    assert report["tensorflow"] == tf.__version__
    assert len(report["gpus"]) == len(tf.config.list_physical_devices("GPU"))
    assert report["cpu_cores"] == available_cores() and report["cpu_bf16"] == cpu_has_bf16()
    if gpu_available():  # a GPU machine: both stages on it
        assert report["training"].startswith("GPU")
        assert report["prediction"]["every network"].startswith("TensorFlow on GPU")
        return
    assert report["training"].startswith(f"CPU, {available_cores()} cores (float32)")
    assert report["prediction"] == {"every network": "OpenVINO on the CPU (f32)"}
    # For a model folder: each of its networks, with the backend asked for.
    onnx = InferenceSettings(backend="onnx")
    assert device_report(tiny_model_folder("centres"), onnx)["prediction"] == {
        "segmentation": "ONNX Runtime on the CPU (f32)",
        "centres": "ONNX Runtime on the CPU (f32)",
    }


def test_command_prints_the_answer_and_can_require_a_gpu(capsys) -> None:
    assert main(["device"]) == 0
    out = capsys.readouterr().out
    assert "training runs on" in out and "prediction runs on" in out
    assert main(["device", "--require-gpu"]) == (0 if gpu_available() else 1)
