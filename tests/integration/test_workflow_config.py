"""The workflow as configured: every target plans (dry run), and a bad config stops clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from workflow_runs import ROOT, run_snakemake

REPO_CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_every_configured_target_plans(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(REPO_CONFIG))
    run = run_snakemake(tmp_path, "-n", "all", "ctc_submission").check()
    counts = _job_counts(run.output)
    downloads = [d for d in REPO_CONFIG["datasets"].values() if d["source"] == "ctc"]
    assert counts["download_dataset"] == len(downloads)
    assert counts["seg_summary"] == len(REPO_CONFIG["datasets"])
    assert counts["ctc_submission"] == 1
    # MDA231 uses two networks per fold (held-out folds 01, 02 and the submission's "all").
    assert "results/MDA231/models/all/centres.keras" in run.output
    assert "results/MDA231/models/without-02/centres.keras" in run.output
    assert "results/A549/models/without-01/centres.keras" not in run.output


@pytest.mark.parametrize(
    "change, message",
    [
        ({"trainig": {"epochs": 3}}, "datasets.X: Additional properties are not allowed"),
        ({"postprocess": {"kind": "watershed"}}, "datasets.X.postprocess.kind: 'watershed'"),
        ({"training": {"epochs": 0}}, "datasets.X.training.epochs: 0 is less than the minimum"),
        ({"sequences": ["1"]}, "datasets.X.sequences.0: '1' does not match"),
    ],
)
def test_bad_config_stops_with_the_key_named(tmp_path: Path, change: dict, message: str) -> None:
    dataset = {"ctc_name": "Fluo-X", "source": "ctc", "postprocess": {"kind": "distance"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"datasets": {"X": dataset | change}}))
    run = run_snakemake(tmp_path, "-n")
    assert run.returncode != 0
    assert "is not valid" in run.output and message in run.output, run.output[-3000:]
