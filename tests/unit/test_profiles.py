"""What the profiles render to (Snakemake renders them with YTE, as here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yte

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("default", "slurm")


def render(profile: str) -> dict:
    with (ROOT / "profiles" / profile / "config.yaml").open() as stream:
        return yte.process_yaml(stream, require_use_yte=True)


@pytest.mark.parametrize("profile", PROFILES)
def test_code_changes_count_through_versions_not_script_times(profile: str) -> None:
    assert render(profile)["rerun-triggers"] == ["mtime", "params", "input", "software-env"]


@pytest.mark.parametrize(
    "environment, expected",
    [
        ({}, None),
        ({"EFFICIENTCELLSEG_TRAIN_RUNTIME": "4320"}, {"train": {"runtime": 4320}}),
        (
            {"EFFICIENTCELLSEG_TRAIN_RUNTIME": "4320", "EFFICIENTCELLSEG_GPU_PARTITION": "gpu"},
            {
                "train": {"slurm_partition": "'gpu'", "runtime": 4320},
                "predict": {"slurm_partition": "'gpu'"},
            },
        ),
        (
            {"EFFICIENTCELLSEG_GPU_PARTITION": "gpu"},
            {"train": {"slurm_partition": "'gpu'"}, "predict": {"slurm_partition": "'gpu'"}},
        ),
    ],
)
def test_slurm_training_time_limit_and_gpu_partition_come_from_the_environment(
    environment, expected, monkeypatch
) -> None:
    for name in ("EFFICIENTCELLSEG_TRAIN_RUNTIME", "EFFICIENTCELLSEG_GPU_PARTITION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert render("slurm").get("set-resources") == expected
