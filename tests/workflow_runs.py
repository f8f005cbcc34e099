"""Running the real workflow on a tiny synthetic dataset, as a user would, in a scratch folder.

Shared by the end-to-end test, the CTC submission test and the SLURM test: the workflow's
Snakefile, rules and scripts come from the repository; the working directory (resources/,
results/, logs/) and the config are the test's own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from efficientcellseg.settings import SyntheticSpec

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DATASET = "tiny"
CTC_NAME = "Synthetic-Tiny"

# Small enough for a CI run (a few minutes on 2 cores), large enough to learn something.
TINY_CONFIG = {
    "defaults": {"model": "tiny", "training_set": "GT"},
    "submission": [DATASET],
    "datasets": {
        DATASET: {
            "ctc_name": CTC_NAME,
            "source": "synthetic",
            "model": "tiny",
            "training_set": "GT",
            "synthetic": {
                "seed": 3,
                "n_frames": 3,
                "depth": 12,
                "height": 96,
                "width": 96,
                "n_objects": 6,
            },
            "training": {"epochs": 8, "steps_per_epoch": 8, "early_stop_patience": 8},
            "postprocess": {"kind": "centres", "min_area": 15, "min_volume": 40},
        }
    },
}


# The tiny network sees 64 batches: its masks are far from good, but clearly better than chance
# (0.31-0.48 measured on held-out synthetic sequences). Exactness is tested by cross-checks.
TINY_MIN_SEG = 0.25


@dataclass(frozen=True)
class WorkflowRun:
    workdir: Path
    returncode: int
    output: str

    def check(self) -> WorkflowRun:
        assert self.returncode == 0, f"snakemake failed:\n{self.output[-6000:]}"
        return self


def served_dataset_zip(
    ctc_name: str, spec: SyntheticSpec | None = None, *, challenge: bool = False
) -> bytes:
    """A CTC zip (top folder ``ctc_name``) of a very small synthetic dataset, as the CTC server
    ships one, for download rules run against a test's HTTP server. ``challenge``: a challenge
    (test) set, holding the raw sequences only (no 0X_GT, 0X_ST)."""
    import io
    import tempfile
    import zipfile

    from efficientcellseg.synthetic import write_synthetic_dataset

    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / ctc_name
        spec = spec or SyntheticSpec(seed=5, n_frames=1, depth=8, height=48, width=48, n_objects=2)
        write_synthetic_dataset(folder, spec)
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in sorted(folder.rglob("*")):
                relative = path.relative_to(folder)
                if challenge and not re.fullmatch(r"\d{2}", relative.parts[0]):
                    continue
                archive.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def write_config(workdir: Path, config: dict | None = None) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config or TINY_CONFIG, sort_keys=False))
    return path


def snakemake_command(workdir: Path, *args: str, snakefile: Path | None = None) -> list[str]:
    """The command line; ``snakefile`` (default the repository's) selects another checkout."""
    return [
        str(SNAKEMAKE),
        "--snakefile",
        str(snakefile or ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


def run_snakemake(
    workdir: Path,
    *args: str,
    env: dict | None = None,
    timeout: int = 1800,
    snakefile: Path | None = None,
) -> WorkflowRun:
    """Run snakemake in ``workdir`` with the tiny config; output is stdout and stderr together."""
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(
        snakemake_command(workdir, *args, snakefile=snakefile),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
    )
    return WorkflowRun(workdir, result.returncode, result.stdout)


def workflow_options(workdir: Path) -> list[str]:
    """The options of `snakemake_command` without the executable, for runners of their own."""
    return snakemake_command(workdir)[1:]
