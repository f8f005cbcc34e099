"""The folder the CTC organisers run: one executable per dataset and sequence, models and code.

Layout of ``ctc_submission/`` (in the upload archive it is the software folder ``SW/``)::

    Fluo-C3DL-MDA231-01.sh      run from inside the folder, no arguments:
                                reads ../Fluo-C3DL-MDA231/01, writes ../Fluo-C3DL-MDA231/01_RES
    install.sh                  creates ./venv (offline from wheelhouse/<variant> when present)
    requirements-cpu.txt        exact versions for a CPU (OpenVINO, ONNX Runtime; no TensorFlow)
    requirements-gpu.txt        the same plus TensorFlow with CUDA (the networks on a GPU)
    models/Fluo-C3DL-MDA231/    the model folder (networks, ONNX exports, pipeline.json)
    code/efficientcellseg/      the project's library (the same code path as the workflow)
    SUBMISSION.md               the method, training configuration, parameters, initialisation
    wheelhouse/<variant>/       optional: the wheels of requirements-<variant>.txt (wheelhouse.py)

Nothing is downloaded at run time: everything the scripts need is in the folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .model import encoder_start_text, read_metadata
from .segment import MODEL_FILES, read_pipeline_settings

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PYPROJECT = PACKAGE_DIR.parents[2] / "pyproject.toml"

SCRIPT_TEMPLATE = PACKAGE_DIR / "templates" / "ctc_executable.sh"
INSTALL_TEMPLATE = PACKAGE_DIR / "templates" / "ctc_install.sh"
INSTALL_SCRIPT = "install.sh"
VARIANTS = ("cpu", "gpu")
# What `efficientcellseg predict` imports (measured with sys.modules after a run): TensorFlow
# only runs the networks on a GPU, so the CPU variant goes without it (240 MB instead of 3.5 GB
# of wheels); OpenVINO runs them on a CPU, ONNX Runtime is its fallback.
RUNTIME_PACKAGES = (
    "numpy",
    "scipy",
    "scikit-image",
    "opencv-python-headless",
    "tifffile",
    "imagecodecs",
    "tqdm",
    "PyYAML",
    "jsonschema",
    "onnxruntime",
    "openvino",
)
GPU_PACKAGES = ("keras",)  # besides the gpu extra's tensorflow[and-cuda]
TRAINING_SET_NAMES = {
    "GT": "GT (gold truth annotations only)",
    "ST": "ST (silver truth only)",
    "GT+ST": "GT+ST (gold and silver truth; gold wins where both exist)",
}


@dataclass(frozen=True)
class SubmissionDataset:
    """One dataset of the submission: its CTC name, sequences and trained model folder."""

    ctc_name: str
    sequences: tuple[str, ...]
    model_dir: Path
    training_set: str


def build_submission(out_dir: str | os.PathLike, datasets: list[SubmissionDataset]) -> list[Path]:
    """Write scripts, install script, requirements, models, code and SUBMISSION.md; returns the
    scripts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_code(out_dir / "code" / "efficientcellseg")
    for variant in VARIANTS:
        (out_dir / requirements_name(variant)).write_text(requirements_text(variant))
    _write_executable(out_dir / INSTALL_SCRIPT, INSTALL_TEMPLATE.read_text())
    scripts = []
    summaries = []
    for dataset in datasets:
        models = out_dir / "models" / dataset.ctc_name
        networks = _copy_models(dataset.model_dir, models)
        summaries.append((dataset, networks))
        for sequence in dataset.sequences:
            scripts.append(_write_script(out_dir, dataset, sequence, networks))
    (out_dir / "SUBMISSION.md").write_text(_summary_text(summaries))
    log.info("submission in %s: %d scripts", out_dir, len(scripts))
    return scripts


def script_name(ctc_name: str, sequence: str) -> str:
    return f"{ctc_name}-{sequence}.sh"


def requirements_name(variant: str) -> str:
    return f"requirements-{variant}.txt"


def requirements_text(variant: str) -> str:
    """Exact versions (from pyproject.toml) of what the executables import, per variant."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins = {_requirement_name(line): line for line in project["dependencies"]}
    lines = [pins[name.lower()] for name in RUNTIME_PACKAGES]
    if variant == "gpu":
        tensorflow = [r for r in project["optional-dependencies"]["gpu"] if "tensorflow" in r]
        lines += tensorflow + [pins[name] for name in GPU_PACKAGES]
        what = "TensorFlow with CUDA runs the networks on an NVIDIA GPU (on a CPU too)"
    else:
        what = "OpenVINO (else ONNX Runtime) runs the networks on the CPU; no TensorFlow"
    return (
        f"# {variant}: {what}.\n"
        "# Exact versions the submission was tested with (from pyproject.toml); install with\n"
        f"# ./install.sh, which uses wheelhouse/{variant} when it is there.\n"
        + "\n".join(lines)
        + "\n"
    )


def _requirement_name(line: str) -> str:
    return re.split(r"[\[=<>!~ ]", line, maxsplit=1)[0].lower()


def _copy_code(target: Path) -> None:
    """Copy the library; files and folders are made anew, so they get the umask's mode (as
    the rest of the submission), not the mode of the checkout they come from."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for source in sorted(PACKAGE_DIR.rglob("*")):
        if "__pycache__" in source.parts or source.suffix == ".pyc":
            continue
        copy = target / source.relative_to(PACKAGE_DIR)
        if source.is_dir():
            copy.mkdir()
        else:
            shutil.copyfile(source, copy)


def _copy_models(source: Path, target: Path) -> dict[str, dict]:
    """Copy a complete model folder; returns the metadata of each network."""
    settings = read_pipeline_settings(source)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copyfile(source / "pipeline.json", target / "pipeline.json")
    networks = {}
    for task in settings.networks:
        model = source / MODEL_FILES[task]
        for path in (model, model.with_suffix(".json"), model.with_suffix(".onnx")):
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: train the models first")
            shutil.copyfile(path, target / path.name)  # the umask's mode, not the source's
        networks[task] = read_metadata(model)
    return networks


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    mode = path.stat().st_mode
    path.chmod(mode | (mode & 0o444) >> 2)  # executable by whoever may read it


def _write_script(out_dir: Path, dataset: SubmissionDataset, sequence: str, networks: dict):
    name = script_name(dataset.ctc_name, sequence)
    fields = {
        "@DATASET@": dataset.ctc_name,
        "@SEQUENCE@": sequence,
        "@TRAINING_SET@": dataset.training_set,
        "@PARAMETERS@": f"{_total_parameters(networks):,}",
        "@ENCODER@": "; ".join(encoder_start_text(meta) for meta in networks.values()),
        "@SCRIPT@": name,
    }
    text = SCRIPT_TEMPLATE.read_text()
    for placeholder, value in fields.items():
        text = text.replace(placeholder, value)
    _write_executable(out_dir / name, text)
    return out_dir / name


def _total_parameters(networks: dict[str, dict]) -> int:
    return sum(int(meta["parameters"]["total"]) for meta in networks.values())


def _summary_text(summaries: list[tuple[SubmissionDataset, dict[str, dict]]]) -> str:
    lines = [
        "# EfficientCellSeg: Cell Tracking Challenge submission",
        "",
        "## Method",
        "",
        "EfficientCellSeg (Wagner & Rohr, MIDL 2022, arXiv:2204.03014), as reimplemented by this",
        "project. 3D stacks are segmented slice by slice. Each slice becomes a context-aware",
        "pseudocolor image (green: the slice; red and blue: CLAHE-enhanced, blurred, adaptively",
        "thresholded neighbour slices multiplied into it). An encoder-decoder network (a truncated",
        "Keras EfficientNet encoder and a light U-Net decoder, inputs resized to a square inner",
        "size) predicts the probability of cell per pixel; datasets post-processed with `centres`",
        "use a second network of the same architecture predicting a cell-centre heatmap whose",
        "peaks seed a marker-controlled watershed, `distance` uses a distance-transform watershed,",
        "`single` keeps one object per frame. The 2D segments of adjacent slices are linked in z",
        "into one label per 3D cell; objects outside the CTC field of interest are dropped.",
        "Training: Dice loss (segmentation), focal loss (centres), Adam, learning rate reduced on",
        "plateau, best epoch by validation IoU. Each dataset's models learn from that dataset",
        "only; the generalist allGT/allST configurations are not used.",
        "",
        "## Datasets",
        "",
        "| dataset | sequences | training data | networks (parameters) | total parameters "
        "| encoder initialisation |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, networks in summaries:
        counts = " + ".join(
            f"{task} {int(meta['parameters']['total']):,}" for task, meta in networks.items()
        )
        lines.append(
            f"| {dataset.ctc_name} | {', '.join(dataset.sequences)} "
            f"| {TRAINING_SET_NAMES.get(dataset.training_set, dataset.training_set)} | {counts} "
            f"| {_total_parameters(networks):,} "
            f"| {'; '.join(encoder_start_text(meta) for meta in networks.values())} |"
        )
    lines += [
        "",
        "The models were trained on every annotated sequence of each dataset (training",
        "configuration as listed); their settings are in models/<dataset>/*.json.",
        "",
        "## Install (once)",
        "",
        "Prerequisites: Linux x86_64 (glibc 2.28 or newer), bash, Python 3.11 with venv.",
        "`./install.sh` creates `./venv`: the `gpu` variant (TensorFlow with CUDA; the networks",
        "run on an NVIDIA GPU) when `nvidia-smi` or `/dev/nvidia0` is there, else `cpu` (OpenVINO",
        "and ONNX Runtime, no TensorFlow); `./install.sh cpu` or `./install.sh gpu` chooses.",
        "When `wheelhouse/<variant>/` is in this folder, the install needs no network",
        "(`pip install --no-index --find-links wheelhouse/<variant>`); otherwise pip downloads the",
        "exact versions of `requirements-<variant>.txt`. Wheels of the `cpu` variant take about",
        "240 MB, of the `gpu` variant about 3.5 GB.",
        "",
        "## Run",
        "",
        "`cd <this folder> && ./<DATASET>-<SEQ>.sh` (see the header of each script) with no",
        "arguments and no network. Each reads ../<DATASET>/<SEQ> and writes",
        "../<DATASET>/<SEQ>_RES/mask###.tif (uint16, one per frame, the input's digit count),",
        "first into <SEQ>_RES.partial, renamed when every frame is done. Its log says whether the",
        "networks run on a GPU (TensorFlow) or on the CPU (OpenVINO).",
        "",
        "## Model details",
        "",
        "```json",
        json.dumps({d.ctc_name: _model_details(networks) for d, networks in summaries}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _model_details(networks: dict[str, dict]) -> dict:
    return {
        task: {
            "parameters": meta["parameters"],
            "encoder_initialisation": meta.get("encoder_initialisation"),
            "trained_on": meta.get("trained_on"),
            "best_val_iou": meta.get("best_val_iou"),
            "epochs_run": meta.get("epochs_run"),
        }
        for task, meta in networks.items()
    }
