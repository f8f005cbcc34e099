"""SEG + DET speed: ``efficientcellseg.metrics`` against py-ctcmetrics on the same sequences.

Both score the same result folder in the same process (py-ctcmetrics with one thread, as ours
runs), runs alternating between the two. Reported per sequence: median wall and CPU seconds over
the repeats, the speed-up, whether SEG and DET agree, and the peak memory NumPy allocated during
one of our runs (tracemalloc) next to the size of one frame.

Sequences: the real Fluo-N3DH-CHO sample, sequence 01 (10 frames of 5 x 443 x 512, masks in
01_ST, TRA markers made from the masks) when its wheel is already in .cache (the benchmark never
downloads), and a synthetic 3D sequence (default 6 frames of 16 x 256 x 256, 40 nuclei, full GT
frames only). Predictions are the masks perturbed as in tests/integration/
test_metrics_crosscheck.py (eroded, dilated, split, merged, deleted objects; false positives).

Usage: .venv/bin/python benchmarks/bench_metrics.py [--repeats 3] [--frames 6] [--size 256]
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

import numpy as np

from efficientcellseg import ctc
from efficientcellseg.metrics import evaluate_sequence
from efficientcellseg.samples import WHEEL_FILE, write_cho_dataset
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".cache"


def load_helpers() -> ModuleType:
    """Perturbation and py-ctcmetrics helpers of the cross-check test (not an installed module)."""
    path = ROOT / "tests" / "integration" / "test_metrics_crosscheck.py"
    spec = importlib.util.spec_from_file_location("test_metrics_crosscheck", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cho_case(helpers: ModuleType, work: Path) -> tuple[Path, str, str] | None:
    if not (CACHE_DIR / WHEEL_FILE).is_file():
        print(f"(no {CACHE_DIR / WHEEL_FILE}: CHO skipped; the tests fetch it)")
        return None
    dataset = work / "Fluo-N3DH-CHO-sample"
    write_cho_dataset(dataset, CACHE_DIR)
    seq = ctc.open_sequence(dataset, "01")
    masks = [ctc.read_annotation(a, seq.frame_shape) for a in seq.st_seg]
    helpers.add_markers(dataset, "01", masks)
    helpers.write_predictions(dataset, "01", helpers.predictions(dataset, "01", seed=0))
    return dataset, "01", "ST"


def synthetic_case(helpers: ModuleType, work: Path, args) -> tuple[Path, str, str]:
    spec = SyntheticSpec(
        seed=0,
        n_sequences=1,
        n_frames=args.frames,
        depth=args.depth,
        height=args.size,
        width=args.size,
        n_objects=args.objects,
    )
    write_synthetic_dataset(work / "full", spec)
    dataset = helpers.full_gt_copy(work / "full", work / "Synthetic-3D")
    helpers.write_predictions(dataset, "01", helpers.predictions(dataset, "01", seed=0))
    return dataset, "01", "GT"


def timed(function: Callable) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def compare(helpers, name: str, dataset: Path, sequence: str, reference: str, repeats: int):
    seq = ctc.open_sequence(dataset, sequence)
    gt_dir = helpers.reference_folder(dataset, sequence, reference, dataset.parent / "ref")
    n_annotations = len(seq.annotations(reference))
    print(
        f"\n{name}: {len(seq.frames)} frames {seq.frame_shape}, {n_annotations} SEG files "
        f"({reference}), {len(seq.tra_markers)} TRA files"
    )

    def ours():
        return evaluate_sequence(dataset, sequence, reference=reference)

    def theirs():
        return helpers.ctcmetrics_scores(dataset / f"{sequence}_RES", gt_dir, ["SEG", "DET"])

    times, scores = {"ours": [], "py-ctcmetrics": []}, {}
    for _ in range(repeats):
        for label, function in (("ours", ours), ("py-ctcmetrics", theirs)):
            wall, cpu, scores[label] = timed(function)
            times[label].append((wall, cpu))
    mine, other = scores["ours"], scores["py-ctcmetrics"]

    tracemalloc.start()
    ours()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    medians = {}
    for label, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        medians[label] = (wall, cpu)
        print(f"  {label:14s} median {wall:7.3f} s wall  {cpu:7.3f} s CPU  ({len(runs)} runs)")
    (ow, oc), (tw, tc) = medians["ours"], medians["py-ctcmetrics"]
    print(f"  speed-up       {tw / ow:7.1f}x wall  {tc / oc:7.1f}x CPU")
    d_seg, d_det = abs(mine.seg - other["SEG"]), abs(mine.det - other["DET"])
    same = "identical" if d_seg <= 1e-9 and d_det <= 1e-9 else "DIFFERENT"
    print(
        f"  scores {same}: SEG {mine.seg:.9f} vs {other['SEG']:.9f}, "
        f"DET {mine.det:.9f} vs {other['DET']:.9f} (|diff| {d_seg:.1e}, {d_det:.1e})"
    )
    frame_mb = np.prod(seq.frame_shape) * 2 / 2**20
    print(
        f"  ours peak NumPy/Python memory {peak / 2**20:6.1f} MiB "
        f"(one uint16 frame is {frame_mb:.1f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool (median)")
    parser.add_argument("--frames", type=int, default=6, help="synthetic frames")
    parser.add_argument("--depth", type=int, default=16, help="synthetic slices per frame")
    parser.add_argument("--size", type=int, default=256, help="synthetic slice height and width")
    parser.add_argument("--objects", type=int, default=40, help="synthetic nuclei per frame")
    args = parser.parse_args()
    helpers = load_helpers()  # imports py-ctcmetrics (a dev dependency)
    print(f"NumPy {np.__version__}, py-ctcmetrics {version('py-ctcmetrics')} (threads=1)")
    work = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    try:
        cases = {}
        if case := cho_case(helpers, work / "cho"):
            cases["real CHO sample, ST, TRA from masks"] = case
        cases["synthetic 3D, full GT"] = synthetic_case(helpers, work / "synthetic", args)
        for name, (dataset, sequence, reference) in cases.items():
            compare(helpers, name, dataset, sequence, reference, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS (both tools, data preparation): {peak_rss:.0f} MiB")


if __name__ == "__main__":
    main()
