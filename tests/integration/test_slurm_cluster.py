"""profiles/slurm on a real single-node SLURM cluster, with a toy workflow written by the test.

The toy workflow (make_numbers x2 -> train [gpu=1] and check -> summary) runs twice:

1. with ``--config fail_check=1``: the ``check`` job fails on purpose. Its siblings still
   finish; snakemake must report the failure with the rule log's content and the SLURM log.
   ``EFFICIENTCELLSEG_GPU_PARTITION=lab`` sends the GPU rule to partition ``lab``; every other
   job goes to the cluster's default partition, although ``SBATCH_PARTITION=lab`` is set too;
2. without the failure and with ``EFFICIENTCELLSEG_CPU_PARTITION=lab``: only the missing
   outputs (``check``, ``summary``) are recomputed, in the CPU partition the environment names.

Every job writes the ``SLURM_JOB_ID`` it ran under into its log, so the test can match the
snakemake log, the cluster's job completion record and the job's own view one to one.

GPUs: the test cluster announces one GPU backed by /dev/null (see tests/slurm_cluster.py), so
the ``gpu=1`` rule is submitted exactly as the profile submits it on the lab cluster
(``--gpus=1``), with no test-only override, and runs on the CPU.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:  # imported by pytest as the plugin below, not here (assertion rewriting)
    from slurm_cluster import SlurmCluster, SnakemakeRun, SubmittedJob

pytestmark = pytest.mark.slurm
pytest_plugins = ["slurm_cluster"]  # the session-scoped `slurm_cluster` fixture

logger = logging.getLogger(__name__)

TOY_SNAKEFILE = r"""
rule all:
    input:
        "results/summary.txt",


rule make_numbers:
    output:
        "results/numbers/{sample}.txt",
    log:
        "logs/make_numbers/{sample}.log",
    params:
        length=lambda wildcards: {"a": 3, "b": 4}[wildcards.sample],
    threads: 2
    resources:
        mem_mb=300,
        runtime=3,
    shell:
        "(echo slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}};"
        " seq {params.length} > {output}) > {log} 2>&1"


rule train:
    input:
        expand("results/numbers/{sample}.txt", sample=["a", "b"]),
    output:
        "results/model.txt",
    log:
        "logs/train.log",
    resources:
        gpu=1,
        mem_mb=600,
        runtime=5,
    shell:
        "(echo slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}};"
        " awk '{{total += $1}} END {{print total}}' {input} > {output}) > {log} 2>&1"


rule check:
    input:
        "results/numbers/a.txt",
    output:
        "results/checked.txt",
    log:
        "logs/check.log",
    params:
        fail=config.get("fail_check", 0),
    shell:
        "(echo slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}};"
        " if [ {params.fail} = 1 ]; then echo deliberate failure for the test; exit 3; fi;"
        " wc -l < {input} > {output}) > {log} 2>&1"


rule summary:
    input:
        "results/model.txt",
        "results/checked.txt",
    output:
        "results/summary.txt",
    log:
        "logs/summary.log",
    shell:
        "(echo slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}};"
        " cat {input} > {output}) > {log} 2>&1"
"""

RUN_TIMEOUT_S = 300
SLURM_PROFILE_CONFIG = Path(__file__).resolve().parents[2] / "profiles" / "slurm" / "config.yaml"
_RULE_LOG_LINE = re.compile(r"slurm_job=(?P<job>\S+) gpus=(?P<gpus>\S+)")


@dataclass(frozen=True)
class JobSelfReport:
    """What a job wrote about itself into its rule log."""

    slurm_job_id: str
    cuda_visible_devices: str


@dataclass(frozen=True)
class ToyRuns:
    """The two runs of the toy workflow and what they left behind."""

    workdir: Path
    failing: SnakemakeRun
    resumed: SnakemakeRun
    mtimes_after_failing: dict[str, float]
    reports_after_failing: dict[str, JobSelfReport]
    reports_after_resumed: dict[str, JobSelfReport]

    def reports(self, run_name: str) -> dict[str, JobSelfReport]:
        return getattr(self, f"reports_after_{run_name}")


def _job_self_reports(workdir: Path) -> dict[str, JobSelfReport]:
    """Rule log name (``check``, ``make_numbers/a``) -> the job's own report in it."""
    reports = {}
    for log in (workdir / "logs").rglob("*.log"):
        match = _RULE_LOG_LINE.search(log.read_text())
        assert match, f"{log} has no slurm_job line"
        name = log.relative_to(workdir / "logs").with_suffix("").as_posix()
        reports[name] = JobSelfReport(match["job"], match["gpus"])
    return reports


def _rule_log_name(job: SubmittedJob) -> str:
    """The toy workflow logs to logs/<rule>.log or logs/<rule>/<wildcard value>.log."""
    return f"{job.rule}/{job.wildcards}" if job.wildcards else job.rule


def _mtimes(workdir: Path, paths: list[str]) -> dict[str, float]:
    return {path: (workdir / path).stat().st_mtime for path in paths}


@pytest.fixture(scope="module")
def toy_runs(slurm_cluster: SlurmCluster, tmp_path_factory) -> ToyRuns:
    workdir = tmp_path_factory.mktemp("toy_slurm_workflow")
    (workdir / "Snakefile").write_text(TOY_SNAKEFILE)
    failing = slurm_cluster.run_snakemake(
        workdir,
        ["all"],
        ["--config", "fail_check=1"],
        extra_env={"EFFICIENTCELLSEG_GPU_PARTITION": "lab", "SBATCH_PARTITION": "lab"},
        timeout_s=RUN_TIMEOUT_S,
    )
    kept = ["results/numbers/a.txt", "results/numbers/b.txt", "results/model.txt"]
    mtimes = _mtimes(workdir, kept) if all((workdir / p).exists() for p in kept) else {}
    reports_after_failing = _job_self_reports(workdir)
    resumed = slurm_cluster.run_snakemake(
        workdir,
        ["all"],
        extra_env={"EFFICIENTCELLSEG_CPU_PARTITION": "lab"},
        timeout_s=RUN_TIMEOUT_S,
    )
    for name, run in (("failing", failing), ("resumed", resumed)):
        logger.info("toy run %s: %.1f s, exit code %d", name, run.seconds, run.returncode)
    return ToyRuns(
        workdir, failing, resumed, mtimes, reports_after_failing, _job_self_reports(workdir)
    )


def test_failing_run_submits_every_runnable_job_and_fails(toy_runs: ToyRuns) -> None:
    run = toy_runs.failing
    assert run.returncode == 1, run.describe()
    assert run.rules_submitted() == ["check", "make_numbers", "make_numbers", "train"], (
        run.describe()
    )


def test_resumed_run_recomputes_only_missing_outputs(toy_runs: ToyRuns) -> None:
    run = toy_runs.resumed
    assert run.returncode == 0, run.describe()
    assert run.rules_submitted() == ["check", "summary"], run.describe()
    kept = list(toy_runs.mtimes_after_failing)
    assert kept, "the failing run did not produce the outputs of its successful jobs"
    assert _mtimes(toy_runs.workdir, kept) == toy_runs.mtimes_after_failing
    # numbers/a = 1..3, numbers/b = 1..4: model = sum of all = 16, check = lines of a = 3.
    assert (toy_runs.workdir / "results" / "summary.txt").read_text().split() == ["16", "3"]


@pytest.mark.parametrize("run_name", ["failing", "resumed"])
def test_snakemake_jobs_are_the_slurm_jobs(
    toy_runs: ToyRuns, slurm_cluster: SlurmCluster, run_name: str
) -> None:
    run: SnakemakeRun = getattr(toy_runs, run_name)
    slurm_ids = [job.slurm_id for job in run.submitted]
    records = slurm_cluster.wait_for_finished_jobs(slurm_ids)
    # The plugin names every job of a run after the run id: exactly these jobs carry it.
    assert {record.name for record in records.values()} == {run.slurm_run_id}
    run_jobs = {
        job_id
        for job_id, record in slurm_cluster.finished_jobs().items()
        if record.name == run.slurm_run_id
    }
    assert run_jobs == set(slurm_ids)
    reports = toy_runs.reports(run_name)
    for job in run.submitted:
        expected_state = "FAILED" if run_name == "failing" and job.rule == "check" else "COMPLETED"
        assert records[job.slurm_id].state == expected_state, job
        # The job ran inside the SLURM job the plugin reported for it.
        assert reports[_rule_log_name(job)].slurm_job_id == job.slurm_id, job


def test_rule_resources_become_sbatch_requests(
    toy_runs: ToyRuns, slurm_cluster: SlurmCluster
) -> None:
    jobs = {job.rule: job.slurm_id for job in toy_runs.failing.submitted}
    records = slurm_cluster.wait_for_finished_jobs(list(jobs.values()))
    make_numbers = records[jobs["make_numbers"]]
    assert make_numbers.tres["cpu"] == "2"  # threads: 2 -> --cpus-per-task=2
    assert make_numbers.tres["mem"] == "300M"  # mem_mb=300 -> --mem 300
    assert make_numbers.time_limit == "3"  # runtime=3 (minutes) -> --time 3
    train = records[jobs["train"]]
    assert (train.tres["cpu"], train.tres["mem"], train.time_limit) == ("1", "600M", "5")
    # A rule without resources gets the profile's default-resources.
    defaults = yaml.safe_load(SLURM_PROFILE_CONFIG.read_text())["default-resources"]
    check = records[jobs["check"]]
    assert check.tres["mem"] == f"{defaults['mem_mb']}M"
    assert check.time_limit == str(defaults["runtime"])


def test_gpu_rule_gets_a_slurm_gpu(toy_runs: ToyRuns, slurm_cluster: SlurmCluster) -> None:
    jobs = {job.rule: job.slurm_id for job in toy_runs.failing.submitted}
    assert slurm_cluster.job_details(jobs["train"]).get("TresPerJob") == "gres:gpu:1"
    assert "TresPerJob" not in slurm_cluster.job_details(jobs["check"])
    reports = toy_runs.reports_after_failing
    assert reports["train"].cuda_visible_devices == "0"  # SLURM exported the GPU it gave
    assert reports["check"].cuda_visible_devices == "none"


def test_partition_depends_on_the_kind_of_job(
    toy_runs: ToyRuns, slurm_cluster: SlurmCluster
) -> None:
    def partitions(run: SnakemakeRun) -> set[tuple[str, str]]:
        ids = [job.slurm_id for job in run.submitted]
        records = slurm_cluster.wait_for_finished_jobs(ids)
        return {(job.rule, records[job.slurm_id].partition) for job in run.submitted}

    default = slurm_cluster.default_partition
    assert partitions(toy_runs.failing) == {
        ("make_numbers", default), ("check", default), ("train", "lab")
    }  # fmt: skip
    assert partitions(toy_runs.resumed) == {("check", "lab"), ("summary", "lab")}


def test_failed_job_is_reported_with_its_logs(toy_runs: ToyRuns) -> None:
    run = toy_runs.failing
    (failed,) = [job for job in run.submitted if job.rule == "check"]
    assert "Error in rule check" in run.output, run.describe()
    assert "logs/check.log" in run.output
    assert "deliberate failure for the test" in run.output  # show-failed-logs: the content
    assert f"SLURM-job '{failed.slurm_id}' failed" in run.output
    assert str(failed.slurm_log) in run.output
    assert failed.slurm_log.exists(), "the SLURM log of a failed job must be kept"
    assert "deliberate failure for the test" in failed.slurm_log.read_text()
