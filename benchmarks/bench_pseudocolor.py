"""Pseudocoloring speed: the plain published algorithm against ``efficientcellseg.pseudocolor``.

Both run in the same process on the same stacks, with OpenCV's default thread count and with one
thread. Reported: median milliseconds per slice over the repeats, the speed-up, the largest
difference between the two results (it must stay below 1e-6), and where the time goes (from one
profiled run of each: OpenCV CLAHE, box blur, adaptive threshold, everything else).

Stacks: a synthetic 30 x 512 x 512 uint16 stack (the shape of Fluo-C3DL-MDA231 frames), the same
stack scaled to uint8, and a real Fluo-N3DH-CHO frame (5 x 443 x 512 uint8) when its wheel is
already in .cache (the benchmark never downloads).

Usage: .venv/bin/python benchmarks/bench_pseudocolor.py [--repeats 3] [--slices 30] [--size 512]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from efficientcellseg.pseudocolor import pseudocolor_stack
from efficientcellseg.samples import WHEEL_FILE, read_cho_sample
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import generate_sequence

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".cache"

# Profile entries of each stage: (function name, use its cumulative time?).
STAGES = {
    "CLAHE": [("<method 'apply' of 'cv2.CLAHE' objects>", False)],
    "box blur": [("<blur>", False)],
    "threshold": [("threshold_loop", True), ("threshold_tries", True)],
}


def load_reference() -> Callable[[np.ndarray], np.ndarray]:
    """The plain implementation, from tests/reference_pseudocolor.py (not an installed module)."""
    path = ROOT / "tests" / "reference_pseudocolor.py"
    spec = importlib.util.spec_from_file_location("reference_pseudocolor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.published_pseudocolor


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


def median_ms_per_slice(function: Callable, stack: np.ndarray, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(stack)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3 / len(stack)


def stage_ms_per_slice(function: Callable, stack: np.ndarray) -> dict[str, float]:
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(function, stack)
    total = time.perf_counter() - start
    entries = {name: (row[2], row[3]) for (_, _, name), row in pstats.Stats(profile).stats.items()}
    stages = {}
    for stage, names in STAGES.items():
        stages[stage] = sum(
            entries[name][1 if cumulative else 0] for name, cumulative in names if name in entries
        )
    stages["other"] = total - sum(stages.values())
    stages["total (profiled)"] = total
    return {stage: seconds * 1e3 / len(stack) for stage, seconds in stages.items()}


def compare(name: str, stack: np.ndarray, plain: Callable, repeats: int) -> None:
    difference = float(np.abs(pseudocolor_stack(stack) - plain(stack)).max())
    print(f"\n{name}: max |ours - plain| = {difference:.2e}")
    for threads in (cv2.getNumThreads(), 1):
        previous = cv2.getNumThreads()
        cv2.setNumThreads(threads)
        try:
            plain_ms = median_ms_per_slice(plain, stack, repeats)
            ours_ms = median_ms_per_slice(pseudocolor_stack, stack, repeats)
            plain_stages = stage_ms_per_slice(plain, stack)
            ours_stages = stage_ms_per_slice(pseudocolor_stack, stack)
        finally:
            cv2.setNumThreads(previous)
        print(
            f"  OpenCV threads {threads}: plain {plain_ms:8.2f} ms/slice   "
            f"ours {ours_ms:7.2f} ms/slice   speed-up {plain_ms / ours_ms:5.1f}x"
        )
        for stage in plain_stages:
            print(
                f"    {stage:17s} plain {plain_stages[stage]:8.2f}   ours {ours_stages[stage]:7.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--size", type=int, default=512, help="slice height and width")
    args = parser.parse_args()
    plain = load_reference()
    print(f"OpenCV {cv2.__version__}, NumPy {np.__version__}, {cv2.getNumThreads()} threads")
    for name, stack in benchmark_stacks(args.slices, args.size).items():
        compare(name, stack, plain, args.repeats)


if __name__ == "__main__":
    main()
