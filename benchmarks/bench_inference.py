"""Inference speed and memory: whole stacks end to end per backend; a TRIC frame's peak RSS.

Modes (all print figures; nothing is asserted):

``stack`` (default)
    A synthetic 30 x 512 x 512 uint16 stack (the size of Fluo-C3DL-MDA231 frames) goes end to
    end through the MDA231 pipeline: read, pseudocolor, segmentation AND centre networks (the
    paper configuration), centre-marker watershed, z-linking, writing the mask. The networks
    are stand-ins that threshold the current slice (model.set_green_threshold_weights: random
    encoder, all layers computed), so the masks hold the synthetic cells and the centre network
    runs where a trained one would: on the slices with foreground. Per variant (keras, onnx,
    openvino in f32, openvino-bf16, openvino-int8): the median seconds per stack over the
    repeats (variants
    interleaved, so load from other processes hits all of them alike), the ratio to the first,
    and the median split per stage. ``--models DIR --sequence Fluo-X/01`` measures a trained
    model folder on the first ``--frames`` frames of a real sequence instead.
``sweep``
    The paper segmentation network alone on 512 x 512 slices: milliseconds per slice for batch
    sizes, threads, streams (slices computed at once), ONNX Runtime thread spinning, and, for
    comparison, OpenVINO in bf16 and int8 (what ``predict --precision bf16/int8`` run; int8
    is the network quantized by efficientcellseg.quantize). max|diff| is against
    keras: ~3e-4 for the f32 runtimes on these noise slices, because TensorFlow's and ONNX's
    bilinear resize (512 -> 384) differ in the last digits and the stand-ins' steep threshold
    multiplies input differences by 10; on 384x384 slices (no resize) it is 2e-7. What
    the library's defaults (inference.DEFAULT_BATCH_SIZE, DEFAULT_STREAMS, CPU_PREFERENCE) are
    chosen from.
``tric``
    Peak resident memory of one 13 x 1745 x 2440 uint16 frame (Fluo-N3DL-TRIC) through the
    tiled path (1024-pixel tiles, overlap 128, distance watershed), measured in a child process:
    the high-water mark is reset (Linux /proc/self/clear_refs) after the models are loaded, so
    the figure is what the frame itself costs on top of them.

Model folders are built once and kept in .cache/bench_models/ (the paper networks take about a
minute to build and export, and about as long to quantize: calibrated on the 30 pseudocolored
slices of a synthetic stack made with another seed than the timed ones).

Usage: .venv/bin/python benchmarks/bench_inference.py [--mode stack|sweep|tric] [--repeats 5]
       [--frames 2] [--variants keras onnx openvino openvino-bf16 openvino-int8] [--models DIR]
       [--sequence SEQ_DIR] (stack)
       [--backends keras onnx openvino (tric)] [--model paper|tiny (tric)]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from efficientcellseg import ctc, inference
from efficientcellseg.pseudocolor import pseudocolor_stack
from efficientcellseg.quantize import quantize_network, quantized_path
from efficientcellseg.segment import PipelineSettings, Segmenter, write_pipeline_settings
from efficientcellseg.settings import (
    PostprocessSettings,
    SyntheticSpec,
    TileSettings,
    open_predictor,
)
from efficientcellseg.synthetic import generate_sequence

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".cache" / "bench_models"
VARIANTS = {  # label: (backend, precision)
    "keras": ("keras", "f32"),
    "onnx": ("onnx", "f32"),
    "openvino": ("openvino", "f32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
}
BACKENDS = ("keras", "onnx", "openvino")
STAND_IN_LEVELS = {"segmentation": 0.35, "centres": 0.65}  # green thresholds of the stand-ins
MDA231 = PipelineSettings(PostprocessSettings("centres", min_area=20, min_volume=60, foi_border=25))
TRIC = PipelineSettings(
    PostprocessSettings("distance", min_area=10, min_volume=20), TileSettings(1024, overlap=128)
)
STACK_SHAPE = (30, 512, 512)
TRIC_SHAPE = (13, 1745, 2440)


# --- model folders and data -----------------------------------------------------------------


def model_folder(
    preset: str, tasks: tuple[str, ...], settings: PipelineSettings, name: str
) -> Path:
    """A model folder of ``preset`` stand-in networks, built and exported once."""
    from efficientcellseg.model import (
        build_model,
        resolve_model,
        save_model,
        set_green_threshold_weights,
    )

    config = dataclasses.replace(resolve_model(preset), encoder_weights=None)
    networks = CACHE_DIR / f"{preset}-stand-in"
    for task in tasks:
        path = networks / f"{task}.keras"
        if not inference.onnx_path(path).is_file():
            print(f"building and exporting the {preset} {task} network ...", flush=True)
            model = build_model(config)
            set_green_threshold_weights(model, config, STAND_IN_LEVELS[task], sharpness=40.0)
            save_model(model, path, {"config": config.to_dict(), "task": task})
            inference.export_onnx(path)
        if not quantized_path(path).is_file():
            print(f"quantizing the {preset} {task} network ...", flush=True)
            calibration = pseudocolor_stack(synthetic_stacks(STACK_SHAPE, 1, 40, seed=1)[0])
            quantize_network(inference.onnx_path(path), list(calibration), quantized_path(path))
    folder = CACHE_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        for suffix in (".keras", ".json", ".onnx", ".int8.xml", ".int8.bin"):
            source = networks / f"{task}{suffix}"
            target = folder / source.name
            if not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
                shutil.copy2(source, target)
    write_pipeline_settings(folder, settings)
    return folder


def synthetic_stacks(
    shape: tuple[int, int, int], frames: int, objects: int, seed: int = 0
) -> np.ndarray:
    """Frames (T, Z, Y, X) uint16 of synthetic nuclei, MDA231-like in size."""
    spec = SyntheticSpec(
        seed=seed,
        n_frames=frames,
        depth=shape[0],
        height=shape[1],
        width=shape[2],
        n_objects=objects,
        radius_xy=(10.0, 20.0),
        radius_z=(2.0, 4.0),
    )
    return generate_sequence(spec, 0)["images"]


def write_sequence(root: Path, images: np.ndarray) -> Path:
    seq_dir = root / "01"
    for frame, image in enumerate(images):
        ctc.write_tiff(seq_dir / ctc.frame_name(frame, 3), image)
    return seq_dir


# --- stack mode -----------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_stack(segmenter: Segmenter, frame_path: Path, mask_path: Path) -> dict[str, float]:
    """Seconds of every stage for one stack, end to end (read to written mask), and CPU time."""
    segmenter.timings.clear()
    cpu = cpu_seconds()
    start = time.perf_counter()
    with segmenter._timed("read"):
        image = ctc.read_image(frame_path)
    labels = segmenter.segment(image)
    with segmenter._timed("write"):
        ctc.write_labels(mask_path, labels)
    stages = dict(segmenter.timings)
    stages["total"] = time.perf_counter() - start
    stages["cpu"] = cpu_seconds() - cpu
    stages["objects"] = int(labels.max())
    return stages


def stack_mode(args: argparse.Namespace) -> None:
    if args.models:
        folder = args.models
    else:
        folder = model_folder("paper", ("segmentation", "centres"), MDA231, "paper-MDA231")
    with tempfile.TemporaryDirectory() as tmp:
        if args.sequence:
            frames = ctc.open_sequence(args.sequence.parent, args.sequence.name).frames
            frames = [frames[t] for t in sorted(frames)[: args.frames]]
        else:
            seq_dir = write_sequence(Path(tmp), synthetic_stacks(STACK_SHAPE, args.frames, 40))
            frames = sorted(seq_dir.glob("t*.tif"))
        shape = ctc.read_image(frames[0]).shape
        bf16 = inference.cpu_has_bf16()
        variants = [v for v in args.variants if VARIANTS[v][1] != "bf16" or bf16]
        if variants != args.variants:
            print("this CPU has no bfloat16 instructions: bf16 variants left out")
        segmenters = {}
        for variant in variants:
            backend, precision = VARIANTS[variant]
            start = time.perf_counter()
            segmenters[variant] = Segmenter(
                folder, backend=backend, batch_size=args.batch_size, precision=precision
            )
            print(f"{variant:13s} models opened in {time.perf_counter() - start:5.1f} s")
        results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        order = list(segmenters)
        for repeat in range(args.repeats + 1):  # round 0 warms up and is not counted
            for frame in frames:
                order = order[1:] + order[:1]  # neighbours in time share the load they see
                for variant in order:
                    mask = Path(tmp) / f"{variant}.tif"
                    stages = time_stack(segmenters[variant], frame, mask)
                    if repeat:
                        results[variant].append(stages)
        baseline = variants[0]
        occupied = [slices_with_foreground(segmenters[baseline], frame) for frame in frames]
        source = args.sequence or "synthetic"
        print(
            f"\n{'x'.join(map(str, shape))} frames of {source}, networks of {folder}, batch "
            f"{args.batch_size}, {inference.available_cores()} cores, load "
            f"{os.getloadavg()[0]:.1f}; medians of {args.repeats} x {len(frames)} frames; slices "
            f"with foreground (the centre network's share): {occupied}. Ratio: median of the "
            f"per-frame ratios to {baseline} on the same frame right before or after. CPU: all "
            "threads' CPU time."
        )
        for variant, rows in results.items():
            total = statistics.median(r["total"] for r in rows)
            fastest = min(r["total"] for r in rows)
            cpu = statistics.median(r["cpu"] for r in rows)
            ratio = statistics.median(
                r["total"] / b["total"] for r, b in zip(rows, results[baseline], strict=True)
            )
            print(
                f"  {variant:13s} {total:6.2f} s per stack (min {fastest:5.2f}), "
                f"{ratio:4.2f} x {baseline}, CPU {cpu:5.2f} s"
            )
            stages = [s for s in rows[0] if s not in ("total", "cpu", "objects")]
            split = "  ".join(f"{s} {statistics.median(r[s] for r in rows):5.2f}" for s in stages)
            print(f"      {split}   ({rows[0]['objects']} objects)")


def slices_with_foreground(segmenter: Segmenter, frame_path: Path) -> int:
    """Slices of a frame where the segmentation finds foreground (the centre network's work)."""
    segmentation = segmenter.probabilities(ctc.read_image(frame_path))["segmentation"]
    slices = segmentation.reshape(-1, *segmentation.shape[-2:])  # a 2D frame: one slice
    return int((slices > segmenter.settings.postprocess.threshold).any((1, 2)).sum())


# --- sweep mode -----------------------------------------------------------------------------


def sweep_candidates(model: Path, cores: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Network-only predictors: the library's, and variants of the settings that matter."""
    candidates = {}
    threads = sorted({1, cores})
    # TensorFlow takes its thread count once per process: only the default is measured
    candidates[f"keras threads={cores}"] = open_predictor(model, "keras", threads=cores)[0]
    for n in threads:
        for streams in sorted({1, n}):
            candidates[f"onnx threads={n} streams={streams}"] = open_predictor(
                model, "onnx", threads=n, streams=streams
            )[0]
    session = inference.onnxruntime_session(inference.onnx_path(model), cores, spinning=True)
    name = session.get_inputs()[0].name
    candidates[f"onnx threads={cores} spinning"] = lambda b: session.run(None, {name: b})[0][..., 0]
    for n in threads:
        for streams in sorted({1, n}):
            candidates[f"openvino threads={n} streams={streams}"] = open_predictor(
                model, "openvino", threads=n, streams=streams
            )[0]
    for streams in sorted({1, cores}) if inference.cpu_has_bf16() else []:
        candidates[f"openvino bf16 streams={streams}"] = open_predictor(
            model, "openvino", threads=cores, streams=streams, precision="bf16"
        )[0]
    for n in threads:
        for streams in sorted({1, n}):
            candidates[f"openvino int8 threads={n} streams={streams}"] = open_predictor(
                model, "openvino", threads=n, streams=streams, precision="int8"
            )[0]
    return candidates


def tf_predict_baseline(model_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from efficientcellseg.model import load_model

    model = load_model(model_path)
    return lambda b: model.predict(b, verbose=0, batch_size=len(b))[..., 0]


def sweep_mode(args: argparse.Namespace) -> None:
    folder = model_folder("paper", ("segmentation",), MDA231, "paper-segmentation")
    model = folder / "segmentation.keras"
    cores = inference.available_cores()
    candidates = sweep_candidates(model, cores)
    candidates["keras model.predict"] = tf_predict_baseline(model)
    rng = np.random.default_rng(0)
    images = rng.random((max(args.sweep_batches), *STACK_SHAPE[1:], 3), dtype=np.float32)
    reference = candidates[f"keras threads={cores}"](images[:2])
    timings: dict[tuple[str, int], list[float]] = {}
    cpu_times: dict[str, list[float]] = {}
    for _ in range(args.repeats + 1):
        for label, predict in candidates.items():
            for batch in args.sweep_batches:
                cpu = cpu_seconds()
                start = time.perf_counter()
                predict(images[:batch])
                seconds = (time.perf_counter() - start) / batch
                timings.setdefault((label, batch), []).append(seconds)
                cpu_times.setdefault(label, []).append((cpu_seconds() - cpu) / batch)
    print(
        f"\npaper segmentation network, {STACK_SHAPE[1]}x{STACK_SHAPE[2]} slices, {cores} cores, "
        f"load {os.getloadavg()[0]:.1f}: median (and min) ms per slice over {args.repeats} "
        "rounds; CPU: median CPU ms per slice, all threads"
    )
    header = "".join(f"  batch {b:<3d} (min)" for b in args.sweep_batches)
    print(f"  {'':36s}{header}   CPU ms  max|diff|")
    for label, predict in candidates.items():
        cells = "".join(
            f"  {statistics.median(timings[label, b][1:]) * 1e3:5.0f}"
            f" ({min(timings[label, b][1:]) * 1e3:5.0f})"
            for b in args.sweep_batches
        )
        cpu = statistics.median(cpu_times[label][len(args.sweep_batches) :]) * 1e3
        difference = float(np.abs(predict(images[:2]) - reference).max())
        print(f"  {label:36s}{cells}  {cpu:7.0f}  {difference:.1e}")


# --- tric mode ------------------------------------------------------------------------------


def tric_mode(args: argparse.Namespace) -> None:
    preset = args.model
    folder = model_folder(preset, ("segmentation",), TRIC, f"{preset}-TRIC")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"making a {TRIC_SHAPE} uint16 frame ...", flush=True)
        seq_dir = write_sequence(Path(tmp) / "TRIC", synthetic_stacks(TRIC_SHAPE, 1, 1500))
        for backend in args.backends:
            command = [sys.executable, __file__, "--tric-child", str(seq_dir / "t000.tif"),
                       str(Path(tmp) / f"mask_{backend}.tif"), str(folder), backend]  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            report = json.loads(output.strip().splitlines()[-1])
            print(
                f"  {backend:9s} {preset} network, 6 tiles of 1024 px per slice: "
                f"{report['seconds']:6.1f} s per frame, {report['objects']} objects\n"
                f"      peak RSS {report['peak_mb']:6.0f} MB in all, of which the frame "
                f"{report['frame_peak_mb']:6.0f} MB above the {report['setup_mb']:.0f} MB after "
                f"loading (input {report['input_mb']:.0f} MB)"
            )
            print(f"      stages: {report['stages']}")


def read_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def tric_child(frame_path: str, mask_path: str, folder: str, backend: str) -> None:
    """Segment one frame; print JSON with the peak RSS of the frame alone and in all."""
    segmenter = Segmenter(folder, backend=backend, batch_size=inference.DEFAULT_BATCH_SIZE)
    segmenter.segment(np.zeros((3, 256, 256), np.uint16))  # warm up every stage
    segmenter.timings.clear()
    setup_mb = read_status_mb("VmRSS")
    setup_peak_mb = read_status_mb("VmHWM")  # (ru_maxrss would include the parent's, from fork)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM)
    start = time.perf_counter()
    image = ctc.read_image(frame_path)
    labels = segmenter.segment(image)
    ctc.write_labels(mask_path, labels)
    seconds = time.perf_counter() - start
    frame_peak_mb = read_status_mb("VmHWM")
    report = {
        "seconds": seconds,
        "objects": int(labels.max()),
        "setup_mb": setup_mb,
        "frame_peak_mb": frame_peak_mb - setup_mb,
        "peak_mb": max(setup_peak_mb, frame_peak_mb),
        "input_mb": image.nbytes / 2**20,
        "stages": {k: round(v, 2) for k, v in segmenter.timings.items()},
    }
    print(json.dumps(report))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--tric-child":
        tric_child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["stack", "sweep", "tric"], default="stack")
    parser.add_argument("--tric", action="store_const", const="tric", dest="mode")
    parser.add_argument("--sweep", action="store_const", const="sweep", dest="mode")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--frames", type=int, default=2, help="stacks per round (stack mode)")
    parser.add_argument(
        "--models", type=Path, help="stack mode: a trained model folder instead of the stand-ins"
    )
    parser.add_argument(
        "--sequence", type=Path, help="stack mode: frames of a CTC sequence (e.g. Fluo-X/01)"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="stack mode"
    )
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="tric mode"
    )
    parser.add_argument("--batch-size", type=int, default=inference.DEFAULT_BATCH_SIZE)
    parser.add_argument("--sweep-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--model", choices=["tiny", "paper"], default="tiny", help="tric mode")
    args = parser.parse_args()
    {"stack": stack_mode, "sweep": sweep_mode, "tric": tric_mode}[args.mode](args)


if __name__ == "__main__":
    main()
