"""The workflow as configured: every target plans (dry run), and a bad config stops clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from http_server import FileServer
from workflow_runs import ROOT, run_snakemake, write_config

from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import write_synthetic_dataset

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


SMALL = SyntheticSpec(seed=1, n_frames=1, depth=8, height=48, width=48, n_objects=2)


def _local_config(**entry) -> dict:
    return {
        "submission": ["local"],
        "submission_wheelhouse": [],
        "datasets": {
            "local": {
                "ctc_name": "Fluo-Local",
                "source": "local",
                "model": "tiny",
                "training_set": "GT",
                "postprocess": {"kind": "distance"},
                **entry,
            }
        },
    }


def test_local_datasets_are_read_where_they_are(tmp_path: Path) -> None:
    """source local: no download, the folder (relative to the working directory) is read in
    place and never written; test_path: the challenge set is not downloaded either."""
    data = tmp_path / "lab" / "Fluo-Local"
    write_synthetic_dataset(data, SMALL)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    config = _local_config(path="lab/Fluo-Local", test_path="lab/Fluo-Local")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    counts = _job_counts(run_snakemake(tmp_path, "-n", "ctc_upload").check().output)
    assert "download_dataset" not in counts and "download_test_dataset" not in counts
    assert counts["pseudocolor"] == 2 and counts["ctc_challenge_results"] == 2
    run_snakemake(tmp_path, "--cores", "1", "results/local/pseudocolor/01.npz").check()
    assert (tmp_path / "results" / "local" / "pseudocolor" / "01.npz").is_file()
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert not (tmp_path / "resources").exists()


def test_challenge_set_of_a_local_dataset_is_downloaded_without_test_path(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "lab", SMALL)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_local_config(path="lab")))
    run = run_snakemake(tmp_path, "-n", "ctc_upload").check()
    assert _job_counts(run.output)["download_test_dataset"] == 1
    assert "resources/ctc-test/Fluo-Local" in run.output


def test_upload_of_a_dataset_without_challenge_set_stops_clearly(tmp_path: Path) -> None:
    write_config(tmp_path)  # the tiny synthetic dataset: nothing to download a test set of
    run = run_snakemake(tmp_path, "-n", "ctc_upload")
    assert run.returncode != 0
    assert "source synthetic has no challenge (test) set to download; give test_path" in run.output


def test_missing_imagenet_weights_stop_the_run_with_what_to_do(tmp_path: Path) -> None:
    with FileServer() as server:  # serves nothing: every request is answered 404
        config = {
            "imagenet_weights": {"url": f"{server.url}/keras/"},
            "datasets": {"X": {"ctc_name": "Fluo-X", "source": "ctc",
                               "postprocess": {"kind": "single"}}},
        }  # fmt: skip
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        plan = run_snakemake(tmp_path, "-n", "results/X/models/all/segmentation.keras").check()
        assert _job_counts(plan.output)["imagenet_weights"] == 1  # the paper model asks for them
        run = run_snakemake(tmp_path, "--cores", "1", "resources/imagenet/efficientnetb5_notop.h5")
    assert run.returncode != 0
    log = (tmp_path / "logs" / "imagenet" / "efficientnetb5_notop.h5.log").read_text()
    assert "no ImageNet weights for the EfficientNetB5 encoder" in log
    assert "HTTP 404" in log and "md5:38879255a25d3c92d5e44e04ae6cec6f" in log
    assert "`encoder_weights: null`" in log
    assert not (tmp_path / "resources" / "imagenet" / "efficientnetb5_notop.h5").exists()
