"""Check that the Python environment can run inference, with one clear message if not, and
say which device the networks will run on (the CTC executables print both)."""

from __future__ import annotations

import importlib
import sys

REQUIRED = ("numpy", "scipy", "skimage", "cv2", "tifffile")
RUNTIMES = ("openvino", "onnxruntime", "tensorflow")


def missing_modules() -> tuple[list[str], bool]:
    """Required modules that fail to import, and whether any inference runtime imports."""
    missing = [name for name in REQUIRED if not _imports(name)]
    has_runtime = any(_imports(name) for name in RUNTIMES)
    return missing, has_runtime


def check_environment() -> None:
    """Exit with status 1 and a message naming what is missing (for the CTC scripts)."""
    missing, has_runtime = missing_modules()
    problems = [f"module {name} cannot be imported" for name in missing]
    if not has_runtime:
        problems.append(f"no inference runtime: install one of {', '.join(RUNTIMES)}")
    if problems:
        print("environment check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        raise SystemExit(1)


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # a broken install raises more than ImportError
        return False
    return True


def device_report() -> str:
    """One line saying where the networks will run, as ``backend auto`` decides."""
    from .inference import CPU_PREFERENCE, RUNTIME_MODULES, gpu_available, runtime_importable

    if gpu_available():
        import tensorflow as tf

        names = ", ".join(d.name for d in tf.config.list_physical_devices("GPU"))
        return f"device: GPU ({names}), the networks run on it with TensorFlow"
    runtime = next(
        (RUNTIME_MODULES[b] for b in CPU_PREFERENCE if runtime_importable(b)), "no runtime"
    )
    return f"device: no GPU visible to TensorFlow, the networks run on the CPU with {runtime}"
