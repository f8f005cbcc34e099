"""The workflow with nothing but what each environment provides.

1. The Snakefile, dry runs and the profiles need only Snakemake and the SLURM executor plugin:
   a venv holding just those two plans every target of the README.
2. Each envs/*.yaml is enough for the rules that use it: its pip section becomes a venv
   (tests/environments.py says how, and why the pip section is the env's substance), and the
   rules of that env run with its interpreter, seeing nothing of the environment Snakemake runs
   in, on a tiny dataset: the download env downloads a dataset from a local HTTP server, the
   imaging env makes the synthetic data, the pseudocolor and the model-folder settings, the
   tensorflow env trains and predicts, the evaluation env scores, and the imaging env writes
   the CTC submission. ``--allowed-rules`` keeps each run to the rules of its env, so a job of
   another env would make the run fail rather than run with the wrong interpreter.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from environments import (
    ENVS,
    ROOT,
    build_venv,
    cpu_requirements,
    env_pip_requirements,
    isolated_snakemake_command,
    preamble_shim,
    pyproject_extra,
    rules_of_env,
)
from http_server import FileServer
from workflow_runs import served_dataset_zip

from efficientcellseg import ctc

pytestmark = pytest.mark.slow

README_TARGETS = (
    (),  # the default target: every configured dataset
    ("results/MDA231/SEG.txt",),
    ("results/A549-SIM/SEG.txt",),
    ("results/synthetic/SEG.txt",),
    ("ctc_submission",),
    ("ctc_upload",),
)
SERVED = "Served-Tiny"  # a dataset of source ctc, downloaded from the test's HTTP server
CONFIG = {
    "submission": ["tiny"],
    "datasets": {
        "tiny": {
            "ctc_name": "Synthetic-Tiny",
            "source": "synthetic",
            "model": "tiny",
            "training_set": "GT",
            "synthetic": {
                "seed": 3,
                "n_frames": 2,
                "depth": 8,
                "height": 64,
                "width": 64,
                "n_objects": 4,
            },
            "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2},
            "postprocess": {"kind": "distance", "min_area": 15, "min_volume": 40},
        },
        "served": {
            "ctc_name": SERVED,
            "source": "ctc",
            "postprocess": {"kind": "single"},
        },
    },
}


@pytest.fixture(scope="module")
def snakemake_python() -> Path:
    return build_venv("snakemake-only", pyproject_extra("workflow"))


@pytest.mark.parametrize("targets", README_TARGETS, ids=lambda t: " ".join(t) or "default")
@pytest.mark.parametrize("profile", ["default", "slurm"])
def test_snakemake_alone_plans_every_readme_target(
    snakemake_python: Path, targets: tuple[str, ...], profile: str, tmp_path: Path
) -> None:
    snakemake = snakemake_python.with_name("snakemake")
    result = subprocess.run(
        [str(snakemake), "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(ROOT / "config" / "config.yaml"),
         "--workflow-profile", str(ROOT / "profiles" / profile), *targets],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "This was a dry-run" in output
    assert "ModuleNotFoundError" not in output


def test_snakemake_alone_lints_the_workflow(snakemake_python: Path) -> None:
    result = subprocess.run(
        [str(snakemake_python.with_name("snakemake")), "--lint"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + (
        result.stderr
    ), result.stdout + result.stderr


@pytest.fixture(scope="module")
def served_zip() -> bytes:
    return served_dataset_zip(SERVED)


def test_each_env_alone_runs_its_rules(
    snakemake_python: Path, served_zip: bytes, tmp_path: Path
) -> None:
    shim = preamble_shim(snakemake_python, tmp_path / "preamble")
    with FileServer() as server:
        server.serve(f"/training-datasets/{SERVED}.zip", served_zip)
        (tmp_path / "config.yaml").write_text(
            yaml.safe_dump({"ctc_server": server.url, **CONFIG}, sort_keys=False)
        )
        folds = ("without-01", "without-02", "all")
        stages = [
            ("download", [f"resources/ctc/{SERVED}"]),
            ("imaging", [f"results/tiny/models/{fold}/pipeline.json" for fold in folds]
             + [f"results/tiny/pseudocolor/{s}.npz" for s in ("01", "02")]),
            ("tensorflow", [f"results/tiny/predictions/{s}.json" for s in ("01", "02")]
             + ["results/tiny/models/all/segmentation.onnx"]),
            ("evaluation", ["results/tiny/SEG.txt"]),
            ("imaging", ["ctc_submission"]),
        ]  # fmt: skip
        ran = set()
        for env_name, targets in stages:
            env = ENVS / f"{env_name}.yaml"
            python = build_venv(env_name, cpu_requirements(env_pip_requirements(env)))
            rules = rules_of_env(env)
            command = isolated_snakemake_command(
                python, snakemake_python, shim,
                "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                "--configfile", str(tmp_path / "config.yaml"), "--cores", "2",
                "--workflow-profile", str(ROOT / "profiles" / "default"),
                "--allowed-rules", *rules, "--", *targets,
            )  # fmt: skip
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=1500, check=False,
                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONNOUSERSITE": "1"},
            )  # fmt: skip
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{env_name} env:\n{output[-6000:]}"
            ran |= {rule for rule in rules if f"rule {rule}:" in output}
    assert ran >= {
        "download_dataset", "synthetic_dataset", "pseudocolor", "pipeline_settings", "train",
        "predict", "evaluate", "overlays", "seg_summary", "ctc_submission",
    }  # fmt: skip
    assert ctc.discover_sequences(tmp_path / "resources" / "ctc" / SERVED) == ["01", "02"]
    assert "SEG" in (tmp_path / "results" / "tiny" / "SEG.txt").read_text()
    assert (tmp_path / "ctc_submission" / "Synthetic-Tiny-01.sh").is_file()
