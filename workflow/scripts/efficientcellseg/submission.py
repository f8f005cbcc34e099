"""The folder the CTC organisers run: one executable per dataset and sequence, models and code.

Layout of ``ctc_submission/``::

    Fluo-C3DL-MDA231-01.sh      run from inside the folder, no arguments:
                                reads ../Fluo-C3DL-MDA231/01, writes ../Fluo-C3DL-MDA231/01_RES
    models/Fluo-C3DL-MDA231/    the model folder (networks, ONNX exports, pipeline.json)
    code/efficientcellseg/      the project's library (the same code path as the workflow)
    requirements.txt            exact versions (from pyproject.toml)
    SUBMISSION.md               training configuration, parameter counts, how it was made

Nothing is downloaded at run time: everything the scripts need is in the folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .model import read_metadata
from .segment import MODEL_FILES, read_pipeline_settings

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PYPROJECT = PACKAGE_DIR.parents[2] / "pyproject.toml"

SCRIPT_TEMPLATE = PACKAGE_DIR / "templates" / "ctc_executable.sh"


@dataclass(frozen=True)
class SubmissionDataset:
    """One dataset of the submission: its CTC name, sequences and trained model folder."""

    ctc_name: str
    sequences: tuple[str, ...]
    model_dir: Path
    training_set: str


def build_submission(out_dir: str | os.PathLike, datasets: list[SubmissionDataset]) -> list[Path]:
    """Write scripts, models, code, requirements and SUBMISSION.md; returns the scripts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_code(out_dir / "code" / "efficientcellseg")
    (out_dir / "requirements.txt").write_text(requirements_text())
    scripts = []
    summaries = []
    for dataset in datasets:
        models = out_dir / "models" / dataset.ctc_name
        parameters = _copy_models(dataset.model_dir, models)
        summaries.append((dataset, parameters))
        for sequence in dataset.sequences:
            scripts.append(_write_script(out_dir, dataset, sequence, sum(parameters.values())))
    (out_dir / "SUBMISSION.md").write_text(_summary_text(summaries))
    log.info("submission in %s: %d scripts", out_dir, len(scripts))
    return scripts


def script_name(ctc_name: str, sequence: str) -> str:
    return f"{ctc_name}-{sequence}.sh"


def requirements_text() -> str:
    """Exact versions of what the scripts import, with the GPU build of TensorFlow."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"]["gpu"])
    return (
        "# Exact versions the submission was tested with (from pyproject.toml).\n"
        "# tensorflow[and-cuda] runs on a CPU too; for a CPU-only machine it may be replaced by\n"
        "# tensorflow-cpu of the same version.\n" + "\n".join(lines) + "\n"
    )


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


def _copy_models(source: Path, target: Path) -> dict[str, int]:
    """Copy a complete model folder; returns the parameter count of each network."""
    settings = read_pipeline_settings(source)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copyfile(source / "pipeline.json", target / "pipeline.json")
    parameters = {}
    for task in settings.networks:
        model = source / MODEL_FILES[task]
        for path in (model, model.with_suffix(".json"), model.with_suffix(".onnx")):
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: train the models first")
            shutil.copyfile(path, target / path.name)  # the umask's mode, not the source's
        parameters[task] = read_metadata(model)["parameters"]["total"]
    return parameters


def _write_script(out_dir: Path, dataset: SubmissionDataset, sequence: str, parameters: int):
    name = script_name(dataset.ctc_name, sequence)
    path = out_dir / name
    fields = {
        "@DATASET@": dataset.ctc_name,
        "@SEQUENCE@": sequence,
        "@TRAINING_SET@": dataset.training_set,
        "@PARAMETERS@": f"{parameters:,}",
        "@SCRIPT@": name,
    }
    text = SCRIPT_TEMPLATE.read_text()
    for placeholder, value in fields.items():
        text = text.replace(placeholder, value)
    path.write_text(text)
    mode = path.stat().st_mode
    path.chmod(mode | (mode & 0o444) >> 2)  # executable by whoever may read it
    return path


def _summary_text(summaries: list[tuple[SubmissionDataset, dict[str, int]]]) -> str:
    lines = [
        "# EfficientCellSeg submission",
        "",
        "Method: EfficientCellSeg (Wagner & Rohr, MIDL 2022): context-aware pseudocoloring of each",
        "slice, a truncated EfficientNet encoder with a light decoder per network, watershed post-",
        "processing, and slices linked across z into one label per 3D cell.",
        "",
        "| dataset | sequences | training configuration | networks | parameters |",
        "|---|---|---|---|---|",
    ]
    for dataset, parameters in summaries:
        networks = " + ".join(f"{task} {count:,}" for task, count in parameters.items())
        lines.append(
            f"| {dataset.ctc_name} | {', '.join(dataset.sequences)} | {dataset.training_set} "
            f"| {networks} | {sum(parameters.values()):,} |"
        )
    lines += [
        "",
        "The models were trained on all annotated sequences of each dataset (training",
        "configuration as listed) by `snakemake ctc_submission`; their settings are in",
        "models/<dataset>/*.json.",
        "",
        "Prerequisites: Linux (x86_64), bash, Python 3.11 and the exact packages of",
        "requirements.txt (`python3.11 -m venv venv && venv/bin/pip install -r requirements.txt`;",
        "the scripts use ./venv when it exists). An NVIDIA GPU is used when TensorFlow sees one,",
        "otherwise the CPU (ONNX Runtime / OpenVINO). No internet is needed at run time.",
        "",
        "Run: `cd ctc_submission && ./<DATASET>-<SEQ>.sh` (see the header of each script). Each",
        "reads ../<DATASET>/<SEQ> and writes ../<DATASET>/<SEQ>_RES/mask###.tif (uint16, one per",
        "frame, the input's digit count): per slice context-aware pseudocolor, the networks,",
        "watershed per slice, and slices linked in z into one label per 3D cell.",
        "",
        "Model details:",
        "```json",
        json.dumps({d.ctc_name: _model_details(Path(d.model_dir)) for d, _ in summaries}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _model_details(model_dir: Path) -> dict:
    details = {}
    for task, name in MODEL_FILES.items():
        path = model_dir / name
        if path.is_file():
            meta = read_metadata(path)
            details[task] = {
                "parameters": meta["parameters"],
                "trained_on": meta.get("trained_on"),
                "best_val_iou": meta.get("best_val_iou"),
                "epochs_run": meta.get("epochs_run"),
            }
    return details
