"""The real `snakemake` on a tiny synthetic dataset: masks, SEG.txt, logs, report and resuming."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from workflow_runs import CTC_NAME, DATASET, ROOT, TINY_MIN_SEG, run_snakemake

from efficientcellseg import ctc
from efficientcellseg.metrics import evaluate_sequence, peseg, seg_measure

pytestmark = pytest.mark.slow
SEQUENCES = ("01", "02")


def _seg_txt_value(text: str, key: str) -> float:
    match = re.search(rf"^{key}\s+([0-9.]+)", text, flags=re.MULTILINE)
    assert match, f"no {key} line in SEG.txt:\n{text}"
    return float(match.group(1))


def test_every_frame_has_a_ctc_mask(tiny_workflow) -> None:
    workdir = tiny_workflow.workdir
    dataset = workdir / "resources" / "ctc" / CTC_NAME
    for name in SEQUENCES:
        seq = ctc.open_sequence(dataset, name)
        res_dir = workdir / "results" / DATASET / f"{name}_RES"
        assert sorted(p.name for p in res_dir.glob("mask*.tif")) == [
            ctc.mask_name(f, seq.digits) for f in seq.frame_ids
        ]
        for frame in seq.frame_ids:
            mask = ctc.read_image(res_dir / ctc.mask_name(frame, seq.digits))
            assert mask.dtype == np.uint16 and mask.shape == seq.frame_shape
            labels = np.unique(mask)
            assert labels[0] == 0 and np.array_equal(labels[1:], np.arange(1, len(labels)))
            assert len(labels) > 1, f"{name} frame {frame}: no cell found"


def test_seg_txt_is_the_held_out_score_of_the_masks(tiny_workflow) -> None:
    workdir = tiny_workflow.workdir
    text = (workdir / "results" / DATASET / "SEG.txt").read_text()
    dataset = workdir / "resources" / "ctc" / CTC_NAME
    per_sequence = [
        evaluate_sequence(dataset, name, workdir / "results" / DATASET / f"{name}_RES")
        for name in SEQUENCES
    ]
    seg = np.mean([e.seg for e in per_sequence])
    det = np.mean([e.det for e in per_sequence])
    assert _seg_txt_value(text, "SEG") == pytest.approx(seg, abs=1e-6)
    assert _seg_txt_value(text, "DET") == pytest.approx(det, abs=1e-6)
    assert _seg_txt_value(text, "OP_CSB") == pytest.approx((seg + det) / 2, abs=1e-6)
    models = workdir / "results" / DATASET / "models"
    parameters = sum(
        json.loads((models / "without-01" / f"{task}.json").read_text())["parameters"]["total"]
        for task in ("segmentation", "centres")
    )
    assert int(re.search(r"^params\s+([\d,]+)", text, re.M).group(1).replace(",", "")) == (
        parameters
    )
    assert _seg_txt_value(text, "PESEG") == pytest.approx(peseg(seg, parameters), abs=1e-6)
    # Held out: each sequence was segmented by the models that never saw it.
    assert "01: models without-01 (trained on 02)" in text
    assert "02: models without-02 (trained on 01)" in text
    assert "gold truth" in text
    assert "encoder  segmentation: random; centres: random" in text  # the tiny preset's start
    # A few epochs of the tiny network already find the nuclei; learning itself is proven by
    # tests/integration/test_training.py.
    assert seg > TINY_MIN_SEG, text


def test_jobs_leave_logs_benchmarks_and_report_outputs(tiny_workflow) -> None:
    workdir = tiny_workflow.workdir
    logs = {p.relative_to(workdir / "logs").as_posix() for p in (workdir / "logs").rglob("*.log")}
    for expected in (
        f"{DATASET}/train/without-01_segmentation.log",
        f"{DATASET}/train/without-02_centres.log",
        f"{DATASET}/predict/01.log",
        f"{DATASET}/evaluate/02.log",
    ):
        assert expected in logs
    benchmarks = workdir / "results" / DATASET / "benchmarks"
    assert (benchmarks / "train_without-01_segmentation.tsv").is_file()
    evaluation = workdir / "results" / DATASET / "evaluation"
    assert (evaluation / "overlays.png").stat().st_size > 10_000
    table = (evaluation / "scores.tsv").read_text().splitlines()
    assert table[0].split("\t")[:4] == ["sequence", "models", "reference", "SEG"]
    assert [row.split("\t")[0] for row in table[1:]] == ["01", "02", "mean"]
    curve = workdir / "results" / DATASET / "models" / "without-01" / "segmentation_curve.png"
    assert curve.stat().st_size > 10_000


def readme_report_commands() -> list[list[str]]:
    """The README's `snakemake --report` commands after the demo, for the test's dataset (the
    tiny workflow stands in for the demo's, whose dataset is `synthetic`)."""
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(?:\.venv/bin/)?snakemake (--report [^#\n]*?)\s*(?:#.*)?$", text, re.M)
    demo = [c for c in commands if "results/synthetic/" in c]
    return [c.replace("results/synthetic/", f"results/{DATASET}/").split() for c in demo]


def test_readme_report_command_works_after_the_demo(tiny_workflow) -> None:
    commands = readme_report_commands()
    assert commands, "the README shows no `snakemake --report` command for the demo's results"
    for args in commands:
        report = tiny_workflow.workdir / args[1]
        run_snakemake(tiny_workflow.workdir, *args).check()
        assert report.stat().st_size > 100_000
        report.unlink()


def test_report_is_the_one_place_to_look(tiny_workflow, tmp_path: Path) -> None:
    """Curves, examples, the score table and the summary page with SEG.txt's figures, time and
    memory per job and every reference object, each filed under its dataset."""
    report = tmp_path / "report.zip"
    run_snakemake(tiny_workflow.workdir, "--report", str(report), "results/tiny/SEG.txt").check()
    archive = zipfile.ZipFile(report)
    (html_name,) = [n for n in archive.namelist() if n.endswith("report.html")]
    found = re.search(r"categories = (\{.*?\});?\n", archive.read(html_name).decode())
    categories = json.loads(found.group(1))  # category -> subcategory -> files
    results = f"results/{DATASET}"
    assert categories == {
        "Results": {DATASET: [f"{results}/evaluation/scores.tsv",
                              f"{results}/evaluation/summary.html"]},
        "Training": {DATASET: sorted(
            (f"{results}/models/{fold}/{task}_curve.png"
             for fold in ("without-01", "without-02") for task in ("segmentation", "centres")),
            key=lambda p: Path(p).name,
        )},
        "Examples": {DATASET: [f"{results}/evaluation/overlays.png"]},
    }  # fmt: skip
    (page_name,) = [n for n in archive.namelist() if n.endswith("summary.html")]
    page = archive.read(page_name).decode()
    results = tiny_workflow.workdir / "results" / DATASET
    seg_txt = (results / "SEG.txt").read_text()
    for key in ("SEG", "PESEG"):
        assert f"<td>{_seg_txt_value(seg_txt, key):.6f}</td>" in page
    for job in ("pseudocolor_01", "train_without-01_segmentation", "predict_02", "evaluate_01"):
        assert f"<td class='text'>{job}</td>" in page
    objects = sum(
        len((results / "evaluation" / seq / "objects.csv").read_text().splitlines()) - 1
        for seq in SEQUENCES
    )
    assert f"<p>{objects} reference objects" in page


def test_finished_workflow_has_nothing_to_do(tiny_workflow) -> None:
    run = run_snakemake(tiny_workflow.workdir, "-n", "results/tiny/SEG.txt").check()
    assert "Nothing to be done" in run.output


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count of a dry run's job table."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_moved_or_updated_checkout_redoes_only_what_a_code_version_says(
    tiny_workflow, tmp_path: Path
) -> None:
    """A copy of the code (as `git clone`/`git pull` leaves it: every file newer than the
    results) and of the results (`cp -a`) plans nothing; changed comments plan nothing; a raised
    training version plans training and what follows from it, nothing upstream."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("Snakefile", "workflow", "profiles", "config"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, checkout / name, copy_function=shutil.copy, ignore=ignore)
        else:
            shutil.copy(ROOT / name, checkout / name)
    work = tmp_path / "work"
    shutil.copytree(tiny_workflow.workdir, work, symlinks=True)  # times kept, as `cp -a`

    def plan(*targets: str) -> str:
        run = run_snakemake(work, "-n", *targets, snakefile=checkout / "Snakefile").check()
        return run.output

    assert "Nothing to be done" in plan("results/tiny/SEG.txt", "ctc_submission")
    scripts = checkout / "workflow" / "scripts"
    for script in (scripts / "train.py", scripts / "efficientcellseg" / "training.py"):
        script.write_text(script.read_text() + "\n# a comment\n")
    assert "Nothing to be done" in plan("results/tiny/SEG.txt")
    # The submission carries the library: any change rebuilds it (seconds), and only it.
    assert planned_jobs(plan("ctc_submission")) == {"ctc_submission": 1}
    versions = scripts / "efficientcellseg" / "versions.py"
    versions.write_text(versions.read_text().replace('"training": 1', '"training": 2'))
    assert planned_jobs(plan("results/tiny/SEG.txt")) == {
        "train": 4,  # 2 held-out folds x 2 networks
        "predict": 2,
        "evaluate": 2,
        "overlays": 1,
        "seg_summary": 1,
    }


def test_interrupted_prediction_redoes_only_the_missing_masks(tiny_workflow) -> None:
    workdir = tiny_workflow.workdir
    res_dir = workdir / "results" / DATASET / "01_RES"
    masks = sorted(res_dir.glob("mask*.tif"))
    kept = {p.name: p.stat().st_mtime_ns for p in masks[1:]}
    removed = ctc.read_image(masks[0])
    masks[0].unlink()  # as if the job had died before writing it
    (workdir / "results" / DATASET / "predictions" / "01.json").unlink()
    other = workdir / "results" / DATASET / "predictions" / "02.json"
    other_mtime = other.stat().st_mtime_ns
    # Snakemake does not redo a missing intermediate file for an up-to-date SEG.txt; the job that
    # died is asked for by name, as after a real interruption (when SEG.txt is missing too).
    run_snakemake(workdir, "--cores", "2", "results/tiny/predictions/01.json").check()
    assert other.stat().st_mtime_ns == other_mtime  # sequence 02 was not predicted again
    # The same models give the same cells again (up to the last bits of the runtime's floats).
    assert seg_measure(removed, ctc.read_image(masks[0])) > 0.99
    assert {p.name: p.stat().st_mtime_ns for p in masks[1:]} == kept
    summary = json.loads((workdir / "results" / DATASET / "predictions" / "01.json").read_text())
    assert summary["written"] == [0] and summary["skipped"] == [1, 2]
