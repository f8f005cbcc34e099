"""The real workflow through profiles/slurm on a single-node SLURM cluster, against a local run.

`slurm_workflow` runs ``snakemake --workflow-profile profiles/slurm results/tiny/SEG.txt`` (the
one flag the profile's usage line gives) on the tiny synthetic dataset (tests/workflow_runs.py)
in a scratch folder, with the rules' own threads, memory, run times and GPUs, the GPU partition
named by ``EFFICIENTCELLSEG_GPU_PARTITION`` and, as a trap, ``SBATCH_PARTITION`` set to the GPU
partition too. The same run downloads a small dataset from an HTTP server on 127.0.0.1.
Meanwhile the same config runs locally (the session fixture
`tiny_workflow`, ``--cores 2``, shared with tests/integration/test_workflow.py): the SLURM run
spends most of its time waiting for the plugin's next status check.

What the tests check:

- the reference run is a local run with profiles/default (loaded by itself), no SLURM;
- every job except the rules marked ``localrule`` was a SLURM job: the plugin's submission
  lines, the cluster's job completion records and the job's own SLURM log agree one to one;
- the download ran on the machine Snakemake runs on (compute nodes often have no internet);
- the GPU rules ran in the GPU partition, every other job in the cluster's default partition
  (not in the one ``SBATCH_PARTITION`` names);
- each SLURM allocation is what Snakemake resolved for the job (threads -> CPUs, mem_mb,
  runtime, ``gpu`` -> a GPU) and the training and prediction rules ask for a GPU;
- job states came from ``squeue`` (the cluster has no slurmdbd, so ``sacct`` cannot answer);
- the networks train exactly as in the local run: their training logs are equal bit for bit.
  TensorFlow on the CPU is reproducible for a fixed thread count but not across thread counts
  (2 vs 8 threads change losses in the 7th digit), so the jobs must train with the local run's
  threads. They do: a job runs ``snakemake --cores all``, which caps the rule's threads at the
  CPUs the job may use, and the test cluster's jobs run on 2 CPUs (`NodeSpec.host_cpus`), as
  the local ``--cores 2`` run; a test checks the thread counts before the outputs are compared;
- masks and SEG.txt match the local run's up to a few tied boundary voxels: post-processing is
  not bit-reproducible between processes even locally (see `MASK_AGREEMENT`);
- after the last outputs are deleted (as if a run had died while evaluating), a re-run
  submits only the one SLURM job that makes them and leaves everything else alone.
"""

from __future__ import annotations

import concurrent.futures
import csv
import logging
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from http_server import FileServer
from workflow_runs import DATASET, TINY_CONFIG, served_dataset_zip, workflow_options, write_config

from efficientcellseg import ctc
from efficientcellseg.metrics import seg_measure

if TYPE_CHECKING:  # imported by pytest as the plugin below, not here (assertion rewriting)
    from slurm_cluster import SlurmCluster, SnakemakeRun
    from workflow_runs import WorkflowRun

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
pytest_plugins = ["slurm_cluster"]  # the session-scoped `slurm_cluster` fixture

logger = logging.getLogger(__name__)

TARGET = f"results/{DATASET}/SEG.txt"
SEQUENCES = ("01", "02")
# The tiny workflow took 14-18 min here (2 cores shared with other work), locally and on SLURM.
RUN_TIMEOUT_S = 2400
# --verbose: the plugin logs each status query (with the command it used) only in debug mode,
# and each job step prints its environment. The plugin deletes the SLURM logs of successful
# jobs at the end unless told to keep them.
SLURM_ARGS = ("--verbose", "--slurm-keep-successful-logs")
GPU_RULES = ("train", "predict")
GPU_PARTITION = "lab"  # the test cluster's second partition (its first is the default)
SERVED = "Served-Tiny"  # a dataset of source ctc, downloaded from the test's HTTP server
# As if a run had died while evaluating sequence 02: its scores and SEG.txt are missing.
# (Snakemake does not redo a missing intermediate file while the files after it are up to date.)
DELETED_OUTPUTS = (f"results/{DATASET}/evaluation/02/scores.json", TARGET)

_JOB_BLOCK = re.compile(
    r"^(?P<local>local)?rule (?P<rule>\w+):\n(?P<body>(?:    \w+: .*\n)+)", re.MULTILINE
)
# Masks are compared as segmentations, not bit for bit: post-processing is not reproducible
# between processes even locally. cv2.distanceTransform (DIST_MASK_PRECISE, in
# efficientcellseg.postprocess.distance_to_background) returns values that differ in the last
# float32 bit from one process to the next (seen: 3 different masks in 6 runs on identical
# probability maps), and the watershed then gives a few tied boundary voxels to the other
# neighbour (here 3-24 of 110,592 voxels per frame). The networks themselves are compared
# exactly (their training logs). SEG of one mask against the other, both ways, must reach:
MASK_AGREEMENT = 0.99
# ...and SEG.txt's numbers agree within 1 % (observed: equal to all 6 printed digits).
SCORE_TOLERANCE = 0.01
_STATUS_QUERY = re.compile(r"Status query timing \(cycle\): command=(\w+), .*failed_attempts=(\d+)")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass(frozen=True)
class JobInfo:
    """A job as Snakemake announced it (``rule train:`` / ``localrule train:`` blocks)."""

    rule: str
    local: bool
    jobid: str
    wildcards: str
    threads: int
    resources: dict[str, str]

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the job across runs: rule and wildcards."""
        return self.rule, self.wildcards


def job_infos(output: str) -> dict[str, JobInfo]:
    """Snakemake job id -> the first announcement of that job in `output`."""
    infos: dict[str, JobInfo] = {}
    for match in _JOB_BLOCK.finditer(output):
        fields = dict(
            line.strip().split(": ", 1) for line in match["body"].splitlines() if ": " in line
        )
        resources = dict(
            item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item
        )
        info = JobInfo(
            rule=match["rule"],
            local=bool(match["local"]),
            jobid=fields["jobid"],
            wildcards=fields.get("wildcards", ""),
            threads=int(fields.get("threads", 1)),
            resources=resources,
        )
        infos.setdefault(info.jobid, info)
    return infos


def _job_environment(slurm_log: Path) -> dict[str, str]:
    """The environment the job step's snakemake printed (``--verbose``), SLURM_* only."""
    return dict(re.findall(r"'(SLURM_\w+)': '([^']*)'", slurm_log.read_text()))


def the_job_in(slurm_log: Path) -> JobInfo:
    """The one job a SLURM job's log announces (the job step's own snakemake)."""
    (info,) = job_infos(slurm_log.read_text()).values()
    return info


@dataclass(frozen=True)
class SlurmWorkflow:
    workdir: Path
    run: SnakemakeRun
    local: WorkflowRun

    def cluster_jobs(self) -> dict[str, JobInfo]:
        """Snakemake job id -> job, for the jobs the head did not run itself."""
        return {jobid: info for jobid, info in job_infos(self.run.output).items() if not info.local}


@pytest.fixture(scope="module")
def slurm_workflow(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory, request
) -> SlurmWorkflow:
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    served = {"ctc_name": SERVED, "source": "ctc", "postprocess": {"kind": "single"}}
    with FileServer() as server, concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        server.serve(f"/training-datasets/{SERVED}.zip", served_dataset_zip(SERVED))
        config = {**TINY_CONFIG, "ctc_server": server.url}
        write_config(workdir, {**config, "datasets": {**config["datasets"], "served": served}})
        future = pool.submit(
            slurm_cluster.run_snakemake,
            workdir,
            [TARGET, f"resources/ctc/{SERVED}"],
            [*workflow_options(workdir), *SLURM_ARGS],
            extra_env={
                "EFFICIENTCELLSEG_GPU_PARTITION": GPU_PARTITION,
                "SBATCH_PARTITION": GPU_PARTITION,  # must not send CPU jobs there
            },
            timeout_s=RUN_TIMEOUT_S,
        )
        try:
            local = request.getfixturevalue("tiny_workflow")
        except BaseException:
            slurm_cluster.cancel_all_jobs()  # so the SLURM run ends soon, too
            raise
        run = future.result()
    logger.info("real workflow through SLURM: %.1f s, exit code %d", run.seconds, run.returncode)
    assert run.returncode == 0, run.describe()[-20000:]
    return SlurmWorkflow(workdir, run, local)


def test_workflow_finishes_through_slurm(slurm_workflow: SlurmWorkflow) -> None:
    assert (slurm_workflow.workdir / TARGET).is_file()
    assert slurm_workflow.run.slurm_run_id, "no 'SLURM run ID' line: not the SLURM executor"


def test_reference_run_is_local_with_the_default_profile(slurm_workflow: SlurmWorkflow) -> None:
    output = slurm_workflow.local.output
    default_profile = Path(__file__).resolve().parents[2] / "profiles" / "default"
    used = re.search(r"Using workflow specific profile (\S+) for", output)
    # Printed relative to the run's working directory, this process's (see run_snakemake).
    assert used and Path(used[1]).resolve() == default_profile, output[:2000]
    assert "SLURM run ID" not in output
    assert {info.local for info in job_infos(output).values()} == {True}


def test_every_job_but_the_local_rules_is_a_slurm_job(
    slurm_workflow: SlurmWorkflow, slurm_cluster: SlurmCluster
) -> None:
    run = slurm_workflow.run
    cluster_jobs = slurm_workflow.cluster_jobs()
    submitted = {job.snakemake_id: job for job in run.submitted}
    assert len(submitted) == len(run.submitted), "a job was submitted twice"
    assert set(submitted) == set(cluster_jobs), run.describe()[-20000:]
    rules = Counter(info.rule for info in cluster_jobs.values())
    assert rules["train"] == 4 and rules["predict"] == 2, rules  # 2 folds x 2 networks
    local_rules = {info.rule for info in job_infos(run.output).values() if info.local}
    assert local_rules <= {"seg_summary", "pipeline_settings", "download_dataset"}, local_rules

    records = slurm_cluster.wait_for_finished_jobs([job.slurm_id for job in run.submitted])
    run_jobs = {i for i, r in slurm_cluster.finished_jobs().items() if r.name == run.slurm_run_id}
    assert run_jobs == set(records)  # no other job carried this run's name
    for jobid, job in submitted.items():
        record = records[job.slurm_id]
        assert (record.state, record.work_dir) == ("COMPLETED", str(slurm_workflow.workdir))
        # The job step's own snakemake ran this very job inside that SLURM job.
        assert _job_environment(job.slurm_log)["SLURM_JOB_ID"] == job.slurm_id, job.slurm_log
        assert the_job_in(job.slurm_log).key == cluster_jobs[jobid].key


def test_each_allocation_is_what_the_rule_asks_for(
    slurm_workflow: SlurmWorkflow, slurm_cluster: SlurmCluster
) -> None:
    cluster_jobs = slurm_workflow.cluster_jobs()
    submitted = slurm_workflow.run.submitted
    records = slurm_cluster.wait_for_finished_jobs([job.slurm_id for job in submitted])
    for job in submitted:
        info, record = cluster_jobs[job.snakemake_id], records[job.slurm_id]
        asked = (info.threads, int(info.resources["mem_mb"]), info.resources["runtime"])
        given = (int(record.tres["cpu"]), _megabytes(record.tres["mem"]), record.time_limit)
        assert given == asked, info
        # --gpus=1 from the `gpu` resource; SLURM gave the job that GPU (its environment).
        tres_per_job = slurm_cluster.job_details(job.slurm_id).get("TresPerJob")
        gpus_on_node = _job_environment(job.slurm_log).get("SLURM_GPUS_ON_NODE")
        if "gpu" in info.resources:
            assert tres_per_job == f"gres:gpu:{info.resources['gpu']}", info
            assert gpus_on_node == info.resources["gpu"], job.slurm_log
        else:
            assert (tres_per_job, gpus_on_node) == (None, None), info
        # The standard `gpu` resource, from the rules, for exactly the GPU rules.
        assert ("gpu" in info.resources) == (info.rule in GPU_RULES), info
    train = next(info for info in cluster_jobs.values() if info.rule == "train")
    assert train.threads > 2, "train should ask for more CPUs than the local run had"


def test_the_download_runs_where_snakemake_runs(slurm_workflow: SlurmWorkflow) -> None:
    jobs = [info for info in job_infos(slurm_workflow.run.output).values()]
    (download,) = [info for info in jobs if info.rule == "download_dataset"]
    assert download.local and download.wildcards == f"ctc={SERVED}"
    assert ctc.discover_sequences(slurm_workflow.workdir / "resources" / "ctc" / SERVED)


def test_jobs_land_in_the_partition_of_their_kind(
    slurm_workflow: SlurmWorkflow, slurm_cluster: SlurmCluster
) -> None:
    cluster_jobs = slurm_workflow.cluster_jobs()
    submitted = slurm_workflow.run.submitted
    records = slurm_cluster.wait_for_finished_jobs([job.slurm_id for job in submitted])
    partitions = {
        (cluster_jobs[job.snakemake_id].rule, records[job.slurm_id].partition) for job in submitted
    }
    expected = {
        (rule, GPU_PARTITION if rule in GPU_RULES else slurm_cluster.default_partition)
        for rule, _ in partitions
    }
    assert partitions == expected
    assert slurm_cluster.default_partition != GPU_PARTITION


def _megabytes(slurm_memory: str) -> int:
    """SLURM's memory notation (``16000M``, ``62.50G``) in MB, as ``mem_mb`` counts."""
    value, unit = float(slurm_memory[:-1]), slurm_memory[-1]
    return round(value * {"M": 1, "G": 1024, "T": 1024**2}[unit])


def test_job_states_come_from_squeue(
    slurm_workflow: SlurmWorkflow, slurm_cluster: SlurmCluster
) -> None:
    # The plugin's default would be sacct (the binary exists), which cannot answer here.
    sacct = subprocess.run(
        ["sacct", "--noheader", "--format=JobIdRaw,State"],
        env=slurm_cluster.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr
    output = slurm_workflow.run.output
    queries = _STATUS_QUERY.findall(output)
    assert queries, "no status query logged (is --verbose still passed?)"
    assert set(queries) == {("squeue", "0")}, Counter(queries)
    assert "Falling back to 'sacct'" not in output


def test_jobs_train_with_the_threads_of_the_local_run(slurm_workflow: SlurmWorkflow) -> None:
    """Precondition of the bit-for-bit comparison below (see the module docstring)."""
    local_threads = {
        info.key: info.threads for info in job_infos(slurm_workflow.local.output).values()
    }
    for job in slurm_workflow.run.submitted:
        inside = the_job_in(job.slurm_log)
        assert inside.threads == local_threads[inside.key], (inside, job.slurm_log)


def test_training_is_identical_to_the_local_run(slurm_workflow: SlurmWorkflow) -> None:
    cluster, local = slurm_workflow.workdir, slurm_workflow.local.workdir
    models = Path("results") / DATASET / "models"
    logs = sorted(p.relative_to(cluster) for p in (cluster / models).glob("*/*_log.csv"))
    assert len(logs) == 4
    different = [p for p in logs if _training_history(cluster / p) != _training_history(local / p)]
    assert not different, [
        _training_history(cluster / different[0]),
        _training_history(local / different[0]),
    ]


def test_masks_match_the_local_run(slurm_workflow: SlurmWorkflow) -> None:
    """Same frames, same objects, boundaries equal up to tied voxels (see `MASK_AGREEMENT`)."""
    cluster, local = slurm_workflow.workdir, slurm_workflow.local.workdir
    for seq in SEQUENCES:
        res = Path("results") / DATASET / f"{seq}_RES"
        names = sorted(p.name for p in (cluster / res).glob("mask*.tif"))
        assert names and names == sorted(p.name for p in (local / res).glob("mask*.tif"))
        for name in names:
            cluster_mask = ctc.read_image(cluster / res / name)
            local_mask = ctc.read_image(local / res / name)
            if np.array_equal(cluster_mask, local_mask):
                continue
            agreement = min(
                seg_measure(local_mask, cluster_mask), seg_measure(cluster_mask, local_mask)
            )
            assert agreement >= MASK_AGREEMENT, (
                f"{res / name}: SEG {agreement:.4f} between the cluster's and the local mask "
                f"({cluster_mask.max()} and {local_mask.max()} objects)"
            )


def test_seg_txt_matches_the_local_run(slurm_workflow: SlurmWorkflow) -> None:
    seg_txt = (slurm_workflow.workdir / TARGET).read_text()
    local_seg_txt = (slurm_workflow.local.workdir / TARGET).read_text()
    numbers, local_numbers = _numbers(seg_txt), _numbers(local_seg_txt)
    assert numbers == pytest.approx(local_numbers, rel=SCORE_TOLERANCE), (seg_txt, local_seg_txt)


def _numbers(text: str) -> list[float]:
    return [float(number.replace(",", "")) for number in _NUMBER.findall(text)]


def _training_history(path: Path) -> list[dict[str, str]]:
    """Rows of a training log without wall-clock columns."""
    with path.open() as fh:
        return [
            {key: value for key, value in row.items() if key != "seconds"}
            for row in csv.DictReader(fh)
        ]


@dataclass(frozen=True)
class ResumedRun:
    run: SnakemakeRun
    mtimes_before: dict[Path, int]
    seg_txt_before: str
    seg_txt_after: str


@pytest.fixture(scope="module")
def resumed_run(slurm_workflow: SlurmWorkflow, slurm_cluster: SlurmCluster) -> ResumedRun:
    """Delete the last outputs (`DELETED_OUTPUTS`) and run the workflow again on the cluster."""
    workdir = slurm_workflow.workdir
    upstream = [
        path
        for suffix in ("npz", "keras", "onnx", "tif", "json")
        for path in (workdir / "results" / DATASET).rglob(f"*.{suffix}")
        if "evaluation" not in path.parts
    ]
    mtimes = {path: path.stat().st_mtime_ns for path in upstream}
    seg_txt_before = (workdir / TARGET).read_text()
    for path in DELETED_OUTPUTS:
        (workdir / path).unlink()
    # Only missing outputs and newer inputs count here, not edits to the workflow's code that
    # other work may make while a long test session runs.
    run = slurm_cluster.run_snakemake(
        workdir,
        [TARGET],
        [*workflow_options(workdir), "--rerun-triggers", "mtime"],
        timeout_s=RUN_TIMEOUT_S,
    )
    logger.info("re-run after deleting %s: %.1f s", DELETED_OUTPUTS, run.seconds)
    assert run.returncode == 0, run.describe()[-20000:]
    return ResumedRun(run, mtimes, seg_txt_before, (workdir / TARGET).read_text())


def test_rerun_after_a_deleted_output_submits_only_its_job(resumed_run: ResumedRun) -> None:
    run = resumed_run.run
    submitted = [(job.rule, job.wildcards) for job in run.submitted]
    assert submitted == [("evaluate", f"{DATASET}_02")], run.describe()
    assert {path: path.stat().st_mtime_ns for path in resumed_run.mtimes_before} == (
        resumed_run.mtimes_before
    )  # datasets, slices, models, masks: untouched
    assert _NUMBER.findall(resumed_run.seg_txt_after) == _NUMBER.findall(resumed_run.seg_txt_before)
