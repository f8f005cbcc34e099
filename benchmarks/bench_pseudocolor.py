"""Pseudocoloring speed: ``efficientcellseg.pseudocolor`` against its previous path and the plain
published algorithm.

All run in the same process on the same stacks, interleaved, with OpenCV's default thread count
and with one OpenCV thread. Per stack: median milliseconds per slice over the repeats of

* ``plain``: the published algorithm written plainly (tests/reference_pseudocolor.py);
* ``previous``: the library with OpenCV's CLAHE and the slices one after another (its path
  before efficientcellseg.clahe and the slice threads existed);
* ``--against REV``: the library's pseudocolor.py at git revision REV, exactly as it was;
* ``ours threads=N``: the library as it is, slices spread over N threads (1 and all cores);

the fastest run and the median CPU time (all threads; on a shared machine a steadier measure of
the work than wall-clock time), the ratio of each to ``previous``, whether ours equals previous
bit for bit and the largest difference to plain (below 1e-6), and where the time goes (one
profiled run with one slice thread: CLAHE, box blur, adaptive threshold, everything else).

Stacks: a synthetic 30 x 512 x 512 uint16 stack (the shape of Fluo-C3DL-MDA231 frames), the same
stack scaled to uint8, and a real Fluo-N3DH-CHO frame (5 x 443 x 512 uint8) when its wheel is
already in .cache (the benchmark never downloads).

Usage: .venv/bin/python benchmarks/bench_pseudocolor.py [--repeats 5] [--slices 30] [--size 512]
       [--against REV]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import importlib.util
import os
import pstats
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from efficientcellseg import pseudocolor
from efficientcellseg.inference import available_cores
from efficientcellseg.pseudocolor import pseudocolor_stack
from efficientcellseg.samples import WHEEL_FILE, read_cho_sample
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import generate_sequence

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".cache"

# Profile entries of each stage, the first one present counts: (function, use cumulative time?).
STAGES = {
    "CLAHE": [
        ("clahe", True),
        ("opencv_clahe", True),
        ("<method 'apply' of 'cv2.CLAHE' objects>", False),
    ],
    "box blur": [("<blur>", False)],
    "threshold": [("threshold_loop", True), ("threshold_tries", True)],
}


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reference() -> Callable[[np.ndarray], np.ndarray]:
    """The plain implementation, from tests/reference_pseudocolor.py (not an installed module)."""
    return load_module(
        ROOT / "tests" / "reference_pseudocolor.py", "reference"
    ).published_pseudocolor


def load_revision(revision: str) -> Callable[[np.ndarray], np.ndarray]:
    """``pseudocolor_stack`` of pseudocolor.py at a git revision (a module of its own)."""
    source = subprocess.run(
        ["git", "show", f"{revision}:workflow/scripts/efficientcellseg/pseudocolor.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pseudocolor_at_revision.py"
        path.write_text(source)
        return load_module(path, "pseudocolor_at_revision").pseudocolor_stack


def opencv_clahe(image: np.ndarray, clip_limit: float, tile_grid: tuple[int, int]) -> np.ndarray:
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid).apply(image)


def previous_pseudocolor(stack: np.ndarray) -> np.ndarray:
    """The library with OpenCV's CLAHE, slices one after another."""
    fast_clahe = pseudocolor.clahe
    pseudocolor.clahe = opencv_clahe
    try:
        return pseudocolor_stack(stack, threads=1)
    finally:
        pseudocolor.clahe = fast_clahe


def benchmark_stacks(slices: int, size: int) -> dict[str, np.ndarray]:
    spec = SyntheticSpec(
        seed=0, n_frames=1, depth=slices, height=size, width=size, n_objects=slices * 2
    )
    stack16 = generate_sequence(spec, 0)["images"][0]
    scale = max(1, int(stack16.max()) // 255 + 1)
    stacks = {
        f"synthetic uint16 {stack16.shape}": stack16,
        f"synthetic uint8 {stack16.shape}": (stack16 // scale).astype(np.uint8),
    }
    if (CACHE_DIR / WHEEL_FILE).is_file():
        cho = read_cho_sample(CACHE_DIR)[0][7]
        stacks[f"real CHO uint8 {cho.shape}"] = cho
    return stacks


def ms_per_slice(function: Callable, stack: np.ndarray) -> tuple[float, float]:
    """Wall-clock and CPU (all threads of the process) milliseconds per slice of one run."""
    cpu, start = time.process_time(), time.perf_counter()
    function(stack)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall * 1e3 / len(stack), cpu * 1e3 / len(stack)


def stage_ms_per_slice(function: Callable, stack: np.ndarray) -> dict[str, float]:
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(function, stack)
    total = time.perf_counter() - start
    entries = {name: (row[2], row[3]) for (_, _, name), row in pstats.Stats(profile).stats.items()}
    stages = {}
    for stage, names in STAGES.items():
        present = [entries[name][int(cumulative)] for name, cumulative in names if name in entries]
        stages[stage] = present[0] if present else 0.0
    stages["other"] = total - sum(stages.values())
    stages["total (profiled)"] = total
    return {stage: seconds * 1e3 / len(stack) for stage, seconds in stages.items()}


def compare(name: str, stack: np.ndarray, candidates: dict[str, Callable], repeats: int) -> None:
    ours, previous = pseudocolor_stack(stack), previous_pseudocolor(stack)
    difference = float(np.abs(ours - candidates["plain"](stack)).max())
    equal = {
        label: np.array_equal(function(stack), previous) for label, function in candidates.items()
    }
    print(
        f"\n{name}: max |ours - plain| = {difference:.2e}; bit for bit equal to previous: "
        + ", ".join(label for label, same in equal.items() if same)
    )
    for opencv_threads in (cv2.getNumThreads(), 1):
        default = cv2.getNumThreads()
        cv2.setNumThreads(opencv_threads)
        try:
            times: dict[str, list[tuple[float, float]]] = {label: [] for label in candidates}
            for _ in range(repeats):  # interleaved: load from other processes hits all alike
                for label, function in candidates.items():
                    times[label].append(ms_per_slice(function, stack))
            stages = {
                label: stage_ms_per_slice(candidates[label], stack)
                for label in ("previous", "ours threads=1")
            }
        finally:
            cv2.setNumThreads(default)
        baseline = statistics.median(wall for wall, _ in times["previous"])
        print(f"  OpenCV threads {opencv_threads}, load {os.getloadavg()[0]:.1f}:")
        for label, values in times.items():
            median = statistics.median(wall for wall, _ in values)
            fastest = min(wall for wall, _ in values)
            cpu = statistics.median(cpu for _, cpu in values)
            print(
                f"    {label:20s} {median:8.2f} ms/slice (min {fastest:7.2f}, CPU {cpu:7.2f})  "
                f"{baseline / median:5.2f}x previous"
            )
        header = "".join(f"{label:>16s}" for label in stages)
        print(f"    profiled (ms/slice){header}")
        for stage in stages["previous"]:
            row = "".join(f"{stages[label][stage]:16.2f}" for label in stages)
            print(f"      {stage:17s}{row}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--size", type=int, default=512, help="slice height and width")
    parser.add_argument("--against", metavar="REV", help="also time pseudocolor.py at git REV")
    args = parser.parse_args()
    cores = available_cores()
    candidates = {"plain": load_reference(), "previous": previous_pseudocolor}
    if args.against:
        candidates[f"at {args.against}"] = load_revision(args.against)
    for threads in sorted({1, cores}):
        candidates[f"ours threads={threads}"] = functools.partial(
            pseudocolor_stack, threads=threads
        )
    print(
        f"OpenCV {cv2.__version__}, NumPy {np.__version__}, {cv2.getNumThreads()} OpenCV "
        f"threads, {cores} cores available"
    )
    for name, stack in benchmark_stacks(args.slices, args.size).items():
        compare(name, stack, candidates, args.repeats)


if __name__ == "__main__":
    main()
