"""The rules' conda environments (envs/*.yaml) as the tests read and rebuild them.

Conda and its channels are not reachable on the test machines, so an env is rebuilt as a venv
from its pip section alone (the env's substance; its conda part is Python 3.11 and pip). Its
one GPU-only package, ``tensorflow[and-cuda]``, becomes ``tensorflow-cpu`` of the same version
(the CUDA wheels are several GB and need no GPU to be absent). Venvs are kept in
``.venvs/<name>-<hash of the package list>`` of the repository, so a second run reuses them.

:func:`isolated_snakemake_command` runs Snakemake so that the rules' Python scripts run with an
env's interpreter and see nothing of the environment Snakemake runs in: Snakemake normally
appends its whole ``sys.path`` to every script's (so that the script can unpickle its
``snakemake`` object), which would hide a package missing from the env. Here the scripts get
only a folder holding the packages the preamble needs (``snakemake`` and the few it imports,
listed by :data:`PREAMBLE_PACKAGES`) and the workflow's script folder.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "workflow" / "rules"
ENVS = ROOT / "envs"
VENVS = ROOT / ".venvs"
RULE_HEADER = re.compile(r"^(?:rule (\w+):|use rule (\w+) as (\w+) with:)", re.MULTILINE)
CONDA_DIRECTIVE = re.compile(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", re.MULTILINE)
CPU_INSTEAD = {"tensorflow": "tensorflow-cpu"}  # tensorflow[and-cuda] -> tensorflow-cpu
# What a script's Snakemake preamble imports (measured: `import snakemake.logging,
# snakemake.iocontainers, snakemake.io` loads these and the standard library only).
PREAMBLE_PACKAGES = (
    "snakemake",
    "snakemake_interface_common",
    "snakemake_interface_logger_plugins",
    "snakemake_interface_storage_plugins",
    "tenacity",
)
LAUNCHER = """
import sys
shim, snakemake_site, *arguments = sys.argv[1:]
sys.path.append(snakemake_site)  # Snakemake itself runs with its own packages ...
import snakemake.script
# ... but the scripts it starts see only the preamble's packages (the script's own folder is
# added by Snakemake after this list).
snakemake.script.get_snakemake_searchpaths = lambda: [shim]
from snakemake.cli import main
sys.argv = ["snakemake", *arguments]
main()
"""


def rule_envs() -> dict[str, Path | None]:
    """Rule name -> the env file its ``conda:`` directive names (``use rule`` inherits it)."""
    envs: dict[str, Path | None] = {}
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        headers = list(RULE_HEADER.finditer(text))
        for index, header in enumerate(headers):
            end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
            found = CONDA_DIRECTIVE.search(text[header.start() : end])
            if header.group(1):
                envs[header.group(1)] = (smk.parent / found.group(1)).resolve() if found else None
            else:  # use rule A as B with: B has A's env unless it names its own
                own = (smk.parent / found.group(1)).resolve() if found else None
                envs[header.group(3)] = own or envs.get(header.group(2))
    return envs


def rules_of_env(env: Path) -> list[str]:
    return sorted(rule for rule, path in rule_envs().items() if path == env.resolve())


def env_pip_requirements(path: Path) -> list[str]:
    """The pip section of an env file."""
    env = yaml.safe_load(path.read_text())
    return [spec for d in env["dependencies"] if isinstance(d, dict) for spec in d["pip"]]


def env_pins(path: Path) -> dict[str, str]:
    """Package -> pinned version of every pip and conda dependency of an env file."""
    from rattler import MatchSpec

    env = yaml.safe_load(path.read_text())
    pins = {}
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            for spec in dependency["pip"]:
                requirement = Requirement(spec)
                (specifier,) = requirement.specifier
                pins[requirement.name.lower()] = specifier.version
        else:
            spec = MatchSpec(dependency)
            pins[spec.name.normalized] = str(spec.version).removesuffix(".*")
    return pins


def pyproject_extra(name: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"][name])


def cpu_requirements(requirements: list[str]) -> list[str]:
    """The requirements with GPU builds replaced by their CPU builds of the same version."""
    result = []
    for spec in requirements:
        requirement = Requirement(spec)
        if requirement.name in CPU_INSTEAD:
            spec = f"{CPU_INSTEAD[requirement.name]}{requirement.specifier}"
        result.append(spec)
    return result


def build_venv(name: str, requirements: list[str]) -> Path:
    """A venv holding exactly ``requirements`` (and what they depend on); reused when it exists.

    Returns its Python interpreter.
    """
    digest = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
    folder = VENVS / f"{name}-{digest}"
    python = folder / "bin" / "python"
    if (folder / ".complete").is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *requirements],
        check=True,
    )  # fmt: skip
    (folder / ".complete").write_text("\n".join(requirements) + "\n")
    return python


def site_packages(python: Path) -> Path:
    return Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip


def preamble_shim(snakemake_python: Path, folder: Path) -> Path:
    """A folder of links to the packages a script's preamble needs, from Snakemake's venv."""
    site = site_packages(snakemake_python)
    folder.mkdir(parents=True, exist_ok=True)
    for package in PREAMBLE_PACKAGES:
        link = folder / package
        if not link.exists():
            link.symlink_to(site / package, target_is_directory=True)
    return folder


def isolated_snakemake_command(
    env_python: Path, snakemake_python: Path, shim: Path, *arguments: str
) -> list[str]:
    """Snakemake (from ``snakemake_python``'s venv) whose scripts run with ``env_python`` and
    see only the env's packages, the preamble's and the workflow's own code."""
    return [
        str(env_python), "-c", LAUNCHER, str(shim), str(site_packages(snakemake_python)),
        *arguments,
    ]  # fmt: skip
