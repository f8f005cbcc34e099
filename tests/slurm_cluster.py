"""A throw-away single-node SLURM cluster for integration tests, and a Snakemake runner for it.

`running_slurm_cluster` installs ``slurm-wlm`` and ``munge`` with apt when they are missing,
writes every configuration, state, log and pid file into one temporary folder, starts
``munged``, ``slurmctld`` and ``slurmd -N localhost`` as child processes and waits until the
node is idle. On exit it cancels every job, stops each daemon by its PID, removes the
``/etc/slurm/slurm.conf`` symlink it made (restoring what was there before) and deletes the
folder. The executor plugin's job steps drop ``SLURM_CONF``, so the configuration has to be
reachable at the default path while the cluster runs; while that symlink exists without a
controller every ``snakemake`` start would wait ~10 s, hence the careful clean-up.

Design choices
--------------
- No accounting (no slurmdbd, no MariaDB): fewer packages and daemons, start-up well under a
  second. Job status therefore comes from ``squeue`` (the SLURM profile sets
  ``slurm-status-command: squeue``); ``MinJobAge=3600`` keeps finished jobs visible to it
  (and to ``scontrol show job``) for a whole test session, far longer than the plugin's
  ``3 x init-seconds-before-status-checks`` requirement. The record of every job that ran is
  the job completion log (``JobCompType=jobcomp/filetxt``), read by
  `SlurmCluster.finished_jobs`; it has no GPU field (tracking ``gres/gpu`` needs slurmdbd).
- The node is virtual (``SlurmdParameters=config_overrides``): it announces the CPUs, memory
  and GPUs of `NodeSpec`, not the machine's, so the workflow's real resource requests (a lab
  GPU node) are accepted unchanged. Nothing is enforced (no cgroups), which is fine for tiny
  test data. The GPUs are GRES backed by ``/dev/null``: SLURM schedules ``--gpus=1`` exactly
  as on a GPU node (and sets ``CUDA_VISIBLE_DEVICES``), while the code runs on the CPU.
- Jobs run on `NodeSpec.host_cpus` CPUs of this machine (slurmd's CPU affinity, which every
  job inherits; ``TaskPlugin=task/none`` binds nothing): a job's ``snakemake --cores all``
  then uses that many threads however many CPUs it asked SLURM for, as a real job bound to
  its allocation does. Tests that compare with a local ``--cores 2`` run need this:
  TensorFlow's results depend on its thread count in the last float bits.
- Two partitions share the node: the first is the default, the second lets a test check that
  an explicitly chosen partition reaches ``sbatch``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SLURM_PROFILE = PROJECT_ROOT / "profiles" / "slurm"
DEFAULT_SLURM_CONF = Path("/etc/slurm/slurm.conf")
NODE_NAME = "localhost"
APT_PACKAGES = ("slurm-wlm", "munge")
REQUIRED_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
SYSTEM_PATH_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
LEFTOVER_PREFIX = "slurm-test-cluster-"
BACKUP_SUFFIX = ".test-cluster-backup"

# Settings only a test wants, on top of profiles/slurm: check job status every second after a
# submission or completion (the plugin default is 40 s, the profile's 15 s), and no retries so
# a deliberate failure fails once.
TEST_OVERRIDES = ("--slurm-init-seconds-before-status-checks", "1", "--retries", "0")

_SUBMISSION_LINE = re.compile(
    r"Job (?P<snakemake_id>\d+) has been submitted with SLURM jobid (?P<slurm_id>\d+) "
    r"\(log: (?P<log>\S+)\)\."
)
_RUN_ID_LINE = re.compile(r"SLURM run ID: (?P<run_id>\S+)")
_RULE_LOG_DIR = re.compile(r"^rule_\w+$")
_KEY_VALUE = re.compile(r"(\w+)=(\S*)")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (not root, no apt, install failed, ...)."""


@dataclass(frozen=True)
class NodeSpec:
    """What the single virtual node announces to SLURM (not what the machine has).

    Defaults look like a modest lab GPU node so real rule resources are accepted.
    """

    cpus: int = 16
    memory_mb: int = 64_000
    gpus: int = 1
    # CPUs of this machine the jobs run on (None: all of them); see the module docstring.
    host_cpus: int | None = 2

    def host_cpu_set(self) -> set[int] | None:
        """The first `host_cpus` CPUs this process may use, or None to leave affinity alone."""
        available = sorted(os.sched_getaffinity(0))
        if self.host_cpus is None or self.host_cpus >= len(available):
            return None
        return set(available[: self.host_cpus])


@dataclass(frozen=True)
class FinishedJob:
    """One line of the job completion log: a job SLURM ran to an end (any end)."""

    job_id: str
    name: str
    state: str
    exit_code: str
    partition: str
    time_limit: str
    tres: Mapping[str, str]
    work_dir: str

    @classmethod
    def from_jobcomp_line(cls, line: str) -> FinishedJob:
        """Parse ``Key=Value`` pairs (values hold no blanks in test clusters)."""
        fields = dict(_KEY_VALUE.findall(line))
        tres = dict(item.split("=", 1) for item in fields.get("Tres", "").split(",") if item)
        return cls(
            job_id=fields["JobId"],
            name=fields.get("Name", ""),
            state=fields.get("JobState", ""),
            exit_code=fields.get("ExitCode", ""),
            partition=fields.get("Partition", ""),
            time_limit=fields.get("TimeLimit", ""),
            tres=tres,
            work_dir=fields.get("WorkDir", ""),
        )


@dataclass(frozen=True)
class SlurmCluster:
    """A running test cluster: where its files are and what it ran."""

    root: Path
    conf_path: Path
    node: NodeSpec
    partitions: tuple[str, ...]

    @property
    def jobcomp_path(self) -> Path:
        return self.root / "log" / "jobcomp.txt"

    @property
    def default_partition(self) -> str:
        return self.partitions[0]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for SLURM commands and snakemake runs.

        SLURM_CONF points at this cluster, /usr/sbin is on PATH, and so is the venv's bin
        folder, first, as for a user who activated the venv (jobs inherit this PATH).
        """
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf_path)
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", ""), *SYSTEM_PATH_DIRS])
        env.update(extra or {})
        return env

    def finished_jobs(self) -> dict[str, FinishedJob]:
        """Every job that ended on this cluster so far, by SLURM job id."""
        if not self.jobcomp_path.exists():
            return {}
        lines = self.jobcomp_path.read_text().splitlines()
        jobs = (FinishedJob.from_jobcomp_line(line) for line in lines if line.strip())
        return {job.job_id: job for job in jobs}

    def wait_for_finished_jobs(
        self, job_ids: Sequence[str], timeout_s: float = 30.0
    ) -> dict[str, FinishedJob]:
        """The records of `job_ids`; slurmctld writes them a moment after a job ends."""
        deadline = time.monotonic() + timeout_s
        while True:
            finished = self.finished_jobs()
            if all(job_id in finished for job_id in job_ids):
                return {job_id: finished[job_id] for job_id in job_ids}
            if time.monotonic() > deadline:
                missing = sorted(set(job_ids) - set(finished))
                raise TimeoutError(
                    f"SLURM jobs {missing} did not end within {timeout_s} s; "
                    f"see {self.jobcomp_path} and {self.root / 'log'}"
                )
            time.sleep(0.2)

    def job_details(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` fields, e.g. ``TresPerJob=gres:gpu:1`` (kept for MinJobAge)."""
        result = _run_checked(["scontrol", "--oneliner", "show", "job", job_id], env=self.env())
        return dict(_KEY_VALUE.findall(result.stdout))

    def run_snakemake(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        *,
        snakefile: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        timeout_s: int = 900,
    ) -> SnakemakeRun:
        """Run snakemake with ``--workflow-profile profiles/slurm`` (plus `TEST_OVERRIDES`), the
        one flag the profile's usage line gives, in `workdir`.

        The run is wrapped in ``timeout -s KILL`` because on SIGTERM snakemake waits for jobs it
        believes are still running; jobs left behind are cancelled when the cluster stops.
        """
        snakemake = Path(sys.executable).with_name("snakemake")
        command = [
            "timeout", "-s", "KILL", str(timeout_s), str(snakemake), *targets,
            "--workflow-profile", str(SLURM_PROFILE),
            *(["--snakefile", str(snakefile)] if snakefile else []),
            *TEST_OVERRIDES, *extra_args,
        ]  # fmt: skip
        start = time.monotonic()
        result = subprocess.run(
            command,
            cwd=workdir,
            env=self.env(extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - start
        run = SnakemakeRun.from_output(command, result.returncode, result.stdout, seconds)
        logger.info("snakemake exit code %d after %.1f s", run.returncode, run.seconds)
        return run

    def cancel_all_jobs(self, timeout_s: float = 30.0) -> None:
        """Cancel every pending or running job and wait until they are gone."""
        _cancel_all_jobs(self, timeout_s)

    def active_job_ids(self) -> list[str]:
        """Jobs that are pending, running or completing."""
        result = _run_checked(
            ["squeue", "--noheader", "--format=%i", "--states=PENDING,RUNNING,COMPLETING"],
            env=self.env(),
        )
        return result.stdout.split()


@dataclass(frozen=True)
class SubmittedJob:
    """A job as the SLURM executor plugin reported it in the snakemake log."""

    rule: str
    wildcards: str
    snakemake_id: str
    slurm_id: str
    slurm_log: Path


@dataclass(frozen=True)
class SnakemakeRun:
    """What one snakemake invocation did: exit code, combined output, wall time."""

    command: tuple[str, ...]
    returncode: int
    output: str
    seconds: float
    submitted: tuple[SubmittedJob, ...] = field(default=())

    @classmethod
    def from_output(
        cls, command: Sequence[str], returncode: int, output: str, seconds: float
    ) -> SnakemakeRun:
        submitted = tuple(_parse_submissions(output))
        return cls(tuple(command), returncode, output, seconds, submitted)

    @property
    def timed_out(self) -> bool:
        """``timeout -s KILL`` signals its whole process group, itself included: exit -9."""
        return self.returncode in (-9, 124, 137)

    @property
    def slurm_run_id(self) -> str:
        """The plugin's run id: the SLURM job name of every job of this run."""
        match = _RUN_ID_LINE.search(self.output)
        return match["run_id"] if match else ""

    def rules_submitted(self) -> list[str]:
        """Rule names of the submitted jobs, sorted (one entry per job)."""
        return sorted(job.rule for job in self.submitted)

    def describe(self) -> str:
        """The command, exit code and output, for assertion messages."""
        return (
            f"$ {' '.join(self.command)}\nexit code {self.returncode} after {self.seconds:.1f} s"
            f"\n{self.output}"
        )


def _parse_submissions(output: str) -> Iterator[SubmittedJob]:
    """Jobs from the plugin's submission lines; the SLURM log path holds rule and wildcards.

    The plugin writes ``.snakemake/slurm_logs/rule_<rule>/<wildcards>/<slurm id>.log``.
    """
    for match in _SUBMISSION_LINE.finditer(output):
        slurm_log = Path(match["log"])
        parts = slurm_log.parts
        rule_index = next(
            (index for index, part in enumerate(parts) if _RULE_LOG_DIR.match(part)), None
        )
        rule = parts[rule_index].removeprefix("rule_") if rule_index is not None else ""
        wildcards = "/".join(parts[rule_index + 1 : -1]) if rule_index is not None else ""
        yield SubmittedJob(rule, wildcards, match["snakemake_id"], match["slurm_id"], slurm_log)


# --------------------------------------------------------------------------- installation


def _which(command: str) -> str | None:
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_PATH_DIRS])
    return shutil.which(command, path=search_path)


def _missing_commands() -> list[str]:
    return [command for command in REQUIRED_COMMANDS if _which(command) is None]


def _apt_get(*args: str, timeout_s: int = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=120", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def ensure_slurm_installed() -> None:
    """Install slurm-wlm and munge with apt when a command is missing (``apt-get update`` last).

    Raises
    ------
    SlurmUnavailable
        Not root, no apt-get, or the installation failed (the apt output is included).
    """
    missing = _missing_commands()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"{missing} not installed and not running as root to apt-get them")
    if _which("apt-get") is None:
        raise SlurmUnavailable(f"{missing} not installed and apt-get is not available")
    install_args = ("install", "-y", "--no-install-recommends", *APT_PACKAGES)
    logger.info("installing %s with apt-get", " ".join(APT_PACKAGES))
    try:
        result = _apt_get(*install_args)
        if result.returncode != 0:
            logger.info("apt-get install failed, retrying after apt-get update")
            _apt_get("update")
            result = _apt_get(*install_args)
    except subprocess.TimeoutExpired as error:
        raise SlurmUnavailable(f"apt-get took longer than {error.timeout} s: {error.cmd}") from None
    if result.returncode != 0 or _missing_commands():
        raise SlurmUnavailable(
            f"apt-get install {' '.join(APT_PACKAGES)} failed (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}"
        )


# --------------------------------------------------------------------------- configuration


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(root: Path, node: NodeSpec, partitions: Sequence[str]) -> str:
    """slurm.conf for one virtual node; every path points into `root`."""
    gres = f" Gres=gpu:{node.gpus}" if node.gpus else ""
    partition_lines = [
        f"PartitionName={name} Nodes={NODE_NAME} Default={'YES' if index == 0 else 'NO'} "
        "MaxTime=INFINITE State=UP"
        for index, name in enumerate(partitions)
    ]
    lines = [
        f"ClusterName={root.name.replace('-', '_').lower()[-40:]}",
        f"SlurmctldHost={NODE_NAME}",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/builtin",
        "SchedulerParameters=batch_sched_delay=0",
        "MailProg=/bin/true",
        "MinJobAge=3600",  # `scontrol show job` of a whole test run
        "KillWait=2",
        "ReturnToService=2",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root / 'log' / 'jobcomp.txt'}",
        "SlurmdParameters=config_overrides",
        "GresTypes=gpu",
        f"NodeName={NODE_NAME} NodeAddr=127.0.0.1 CPUs={node.cpus} Sockets=1 "
        f"CoresPerSocket={node.cpus} ThreadsPerCore=1 RealMemory={node.memory_mb}{gres} "
        "State=UNKNOWN",
        *partition_lines,
    ]
    return "\n".join(lines) + "\n"


def _gres_conf(node: NodeSpec) -> str:
    """GPUs backed by /dev/null: schedulable, but no device behind them (runs on the CPU)."""
    return "".join(f"NodeName={NODE_NAME} Name=gpu File=/dev/null\n" for _ in range(node.gpus))


def _write_config(root: Path, node: NodeSpec, partitions: Sequence[str]) -> Path:
    # munged refuses a socket whose folders are not searchable by everybody.
    root.chmod(0o755)
    for folder in ("munge", "state", "spool", "log"):
        (root / folder).mkdir(mode=0o755)
    key = root / "munge" / "munge.key"
    key.touch(mode=0o600)
    key.write_bytes(os.urandom(1024))
    conf_path = root / "slurm.conf"
    conf_path.write_text(_slurm_conf(root, node, partitions))
    (root / "gres.conf").write_text(_gres_conf(node))
    return conf_path


# --------------------------------------------------------------------------- /etc/slurm


@contextlib.contextmanager
def _exclusive_etc_slurm(timeout_s: float) -> Iterator[None]:
    """Hold an exclusive lock on /etc/slurm: one test cluster per machine at a time."""
    created = not DEFAULT_SLURM_CONF.parent.exists()
    DEFAULT_SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(DEFAULT_SLURM_CONF.parent, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SlurmUnavailable(
                        f"another test cluster held {DEFAULT_SLURM_CONF.parent} for "
                        f"{timeout_s:.0f} s"
                    ) from None
                time.sleep(1.0)
        yield
    finally:
        os.close(descriptor)
        if created:
            with contextlib.suppress(OSError):
                DEFAULT_SLURM_CONF.parent.rmdir()


def _is_leftover_link(path: Path) -> bool:
    """A dangling symlink into a test cluster folder that no longer exists."""
    return path.is_symlink() and not path.exists() and LEFTOVER_PREFIX in os.readlink(path)


@contextlib.contextmanager
def _default_conf_link(conf_path: Path) -> Iterator[None]:
    """Point /etc/slurm/slurm.conf at `conf_path`; put back whatever was there afterwards."""
    backup = DEFAULT_SLURM_CONF.with_name(DEFAULT_SLURM_CONF.name + BACKUP_SUFFIX)
    if _is_leftover_link(DEFAULT_SLURM_CONF):
        logger.info("removing %s left by a test cluster that crashed", DEFAULT_SLURM_CONF)
        DEFAULT_SLURM_CONF.unlink()
    had_previous = DEFAULT_SLURM_CONF.is_symlink() or DEFAULT_SLURM_CONF.exists()
    if had_previous:
        if backup.is_symlink() or backup.exists():
            raise SlurmUnavailable(
                f"{backup} exists (a test cluster did not restore it): move it back to "
                f"{DEFAULT_SLURM_CONF} or delete it, then run the tests again"
            )
        logger.warning("moving %s to %s while the test cluster runs", DEFAULT_SLURM_CONF, backup)
        DEFAULT_SLURM_CONF.rename(backup)
    DEFAULT_SLURM_CONF.symlink_to(conf_path)
    try:
        yield
    finally:
        if DEFAULT_SLURM_CONF.is_symlink() and os.readlink(DEFAULT_SLURM_CONF) == str(conf_path):
            DEFAULT_SLURM_CONF.unlink()
        if had_previous:
            backup.rename(DEFAULT_SLURM_CONF)


# --------------------------------------------------------------------------- daemons


def _run_checked(
    command: Sequence[str], env: Mapping[str, str], timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), env=env, capture_output=True, text=True, timeout=timeout_s, check=True
    )


def _log_tail(path: Path, characters: int = 3000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else "(no log)"


class _Daemons:
    """Foreground daemon processes, started in order and stopped in reverse, by PID."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self._root = root
        self._env = dict(env)
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: Sequence[str], cpus: set[int] | None = None) -> None:
        """Start `command` in the background; `cpus` restricts its CPU affinity."""
        with open(self._root / "log" / f"{name}.out", "wb") as output:
            process = subprocess.Popen(
                list(command),
                env=self._env,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        self._processes.append((name, process))
        logger.debug("started %s (pid %d)", name, process.pid)

    def check_alive(self) -> None:
        """Raise with the daemon's own output when one of them has exited."""
        for name, process in self._processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode} while starting the test "
                    f"cluster:\n{_log_tail(self._root / 'log' / f'{name}.out')}\n"
                    f"{_log_tail(self._root / 'log' / f'{name}.log')}"
                )

    def stop_all(self, grace_s: float = 10.0) -> None:
        while self._processes:
            name, process = self._processes.pop()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    logger.warning("%s (pid %d) ignored SIGTERM, killing it", name, process.pid)
                    process.kill()
                    process.wait()
            logger.debug("stopped %s (pid %d)", name, process.pid)


def _wait_until(
    predicate: Callable[[], bool], daemons: _Daemons, what: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        daemons.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"test cluster: {what} not reached within {timeout_s} s")
        time.sleep(0.1)


def _node_state(env: Mapping[str, str]) -> str:
    result = subprocess.run(
        ["sinfo", "--noheader", f"--nodes={NODE_NAME}", "--format=%T"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout.strip().split("\n")[0] if result.returncode == 0 else ""


def _start_daemons(
    daemons: _Daemons, root: Path, conf_path: Path, node: NodeSpec, env: Mapping[str, str]
) -> None:
    socket_path = root / "munge" / "munge.socket"
    daemons.start(
        "munged",
        [
            _which("munged") or "munged", "--foreground",
            f"--socket={socket_path}",
            f"--key-file={root / 'munge' / 'munge.key'}",
            f"--log-file={root / 'log' / 'munged.log'}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
        ],
    )  # fmt: skip
    _wait_until(socket_path.exists, daemons, "munge socket", timeout_s=10)
    daemons.start("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-f", str(conf_path)])
    daemons.start(
        "slurmd",
        [_which("slurmd") or "slurmd", "-D", "-N", NODE_NAME, "-f", str(conf_path)],
        cpus=node.host_cpu_set(),  # inherited by every job step
    )
    _wait_until(lambda: _node_state(env) == "idle", daemons, "node idle", timeout_s=30)


def _cancel_all_jobs(cluster: SlurmCluster, timeout_s: float = 30.0) -> None:
    """Cancel whatever is left (e.g. after a killed snakemake) and wait for the steps to end.

    Job steps (slurmstepd) outlive slurmd, so they must be gone before the daemons stop.
    """
    try:
        job_ids = cluster.active_job_ids()
        if not job_ids:
            return
        logger.info("cancelling SLURM jobs left running: %s", job_ids)
        _run_checked(["scancel", *job_ids], env=cluster.env())
        deadline = time.monotonic() + timeout_s
        while (still_active := cluster.active_job_ids()) and time.monotonic() < deadline:
            time.sleep(0.2)
    except subprocess.SubprocessError as error:
        logger.warning("could not cancel the test cluster's jobs: %s", error)
        return
    if still_active:
        logger.warning("SLURM jobs %s still active after %.0f s", still_active, timeout_s)


@contextlib.contextmanager
def running_slurm_cluster(
    node: NodeSpec = NodeSpec(),
    partitions: Sequence[str] = ("debug", "lab"),
    *,
    lock_timeout_s: float = 900.0,
) -> Iterator[SlurmCluster]:
    """Start a private single-node SLURM cluster; stop it and clean up on exit.

    Parameters
    ----------
    node
        What the virtual node announces (CPUs, memory, GPUs).
    partitions
        Partition names, all on the one node; the first is the default partition.
    lock_timeout_s
        How long to wait for another test cluster on this machine to finish.

    Raises
    ------
    SlurmUnavailable
        SLURM cannot be installed or /etc/slurm is held by another test cluster.
    RuntimeError
        A daemon died or the node did not become idle (the daemon's log is included).
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("the test cluster runs slurmd as root (jobs run as root)")
    ensure_slurm_installed()
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(_exclusive_etc_slurm(lock_timeout_s))
        root = Path(tempfile.mkdtemp(prefix=LEFTOVER_PREFIX))
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        conf_path = _write_config(root, node, partitions)
        cleanup.enter_context(_default_conf_link(conf_path))
        cluster = SlurmCluster(root, conf_path, node, tuple(partitions))
        daemons = _Daemons(root, cluster.env())
        cleanup.callback(daemons.stop_all)
        _start_daemons(daemons, root, conf_path, node, cluster.env())
        cleanup.callback(_cancel_all_jobs, cluster)
        logger.info("test SLURM cluster running in %s", root)
        yield cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running test cluster for the whole session; skips when SLURM is not available."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_slurm_cluster())
        except SlurmUnavailable as error:
            pytest.skip(f"no SLURM test cluster: {error}")
        yield cluster
