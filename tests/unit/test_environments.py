"""The conda environments of the rules agree with pyproject.toml, the one place versions are pinned.

Conda and its channels are not reachable on the test machines, so the envs cannot be resolved
here; these tests check what can be checked offline: every rule names an env file that exists,
each is valid YAML on conda-forge/nodefaults, its conda specs parse (py-rattler), every package
it pins is pinned to the version the venv installs, and what each rule's scripts import is in
its env. A last test shows that asking for conda without conda fails cleanly.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from environments import ENVS, env_pins, rule_envs
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# Python modules whose distribution name differs from the import name.
DISTRIBUTIONS = {"cv2": "opencv-python-headless", "skimage": "scikit-image", "yaml": "PyYAML"}


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    pins = {}
    for spec in specs:
        requirement = Requirement(spec)
        if requirement.name == project["name"]:  # an extra that includes another extra
            continue
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"pyproject.toml must pin exactly: {spec}"
        pins[requirement.name.lower()] = specifier.version
    return pins


def test_every_rule_names_an_existing_env() -> None:
    envs = rule_envs()
    assert len(envs) >= 10, envs
    missing = {rule: path for rule, path in envs.items() if path is None or not path.is_file()}
    assert not missing, f"rules without an existing conda env: {missing}"


@pytest.mark.parametrize("path", sorted(ENVS.glob("*.yaml")), ids=lambda p: p.name)
def test_env_is_valid_and_pinned_like_pyproject(path: Path) -> None:
    env = yaml.safe_load(path.read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    pins = env_pins(path)
    assert pins.pop("python") == "3.11"
    assert "pip" in pins or any(d == "pip" for d in env["dependencies"])
    pins.pop("pip", None)
    expected = pyproject_pins()
    wrong = {
        name: (version, expected.get(name))
        for name, version in pins.items()
        if expected.get(name) != version
    }
    assert not wrong, f"{path.name}: pins differ from pyproject.toml (env, pyproject): {wrong}"


def test_training_env_is_the_gpu_build() -> None:
    pins = env_pins(ENVS / "tensorflow.yaml")
    assert "tensorflow" in pins and "tensorflow-cpu" not in pins


def _imported_distributions(script: Path) -> set[str]:
    """Third-party distributions a workflow script needs, through the library modules it uses."""
    package = ROOT / "workflow" / "scripts" / "efficientcellseg"
    seen, todo, distributions = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for match in re.finditer(
            r"^(?:from|import) ([\w.]+)", path.read_text(), flags=re.MULTILINE
        ):
            module = match.group(1)
            top = module.split(".")[0]
            if top == "efficientcellseg" or module.startswith("."):
                continue
            if top in sys.stdlib_module_names or top == "snakemake":
                continue
            distributions.add(DISTRIBUTIONS.get(top, top).lower())
        for match in re.finditer(
            r"^from (?:efficientcellseg)?\.?(\w*)(?:\.(\w+))? import ([\w, ]+)",
            path.read_text(),
            flags=re.MULTILINE,
        ):
            names = [match.group(2) or match.group(1)] if match.group(1) else []
            names += [n.strip() for n in match.group(3).split(",")] if not match.group(1) else []
            for name in names:
                candidate = package / f"{name}.py"
                if candidate.is_file():
                    todo.append(candidate)
    return distributions


LAZY = {"tensorflow", "keras", "tf2onnx", "onnxruntime", "openvino", "matplotlib", "jsonschema"}


@pytest.mark.parametrize(
    "rule, script",
    [
        ("download_dataset", "download_dataset.py"),
        ("synthetic_dataset", "synthetic_dataset.py"),
        ("pseudocolor", "pseudocolor.py"),
        ("evaluate", "evaluate.py"),
        ("seg_summary", "seg_summary.py"),
        ("imagenet_weights", "fetch_imagenet_weights.py"),
        ("ctc_submission", "build_submission.py"),
        ("ctc_wheelhouse", "build_wheelhouse.py"),
        ("ctc_software", "stage_software.py"),
        ("ctc_challenge_results", "run_ctc_executable.py"),
        ("ctc_upload", "pack_upload.py"),
    ],
)
def test_rule_env_holds_what_its_script_imports_at_module_level(rule: str, script: str) -> None:
    """Module-level imports only: TensorFlow and friends are imported lazily where used."""
    needed = _imported_distributions(ROOT / "workflow" / "scripts" / script) - LAZY
    available = set(env_pins(rule_envs()[rule]))
    assert needed <= available, f"{rule}: env lacks {sorted(needed - available)}"


def test_conda_deployment_without_conda_fails_cleanly(tmp_path: Path) -> None:
    if shutil.which("conda") or shutil.which("mamba"):
        pytest.skip("conda is installed here: nothing to check")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(ROOT),
            "--software-deployment-method",
            "conda",
            "--conda-create-envs-only",
            "--cores",
            "1",
            "results/synthetic/SEG.txt",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "conda" in (result.stdout + result.stderr).lower()
    assert "Traceback" not in result.stderr
