"""Training throughput on this machine: the PAPER network, 384 x 384 slices, batches of 4.

Each variant runs in its own process (thread counts, oneDNN and XLA are fixed when TensorFlow
starts), builds the paper network (random encoder weights: nothing is downloaded), trains
``--warmup`` + ``--steps`` batches and reports the median seconds per batch after the warm-up
(the first batch also traces and optimises the graph) and the process's peak memory. Variants
are run in turn, ``--rounds`` times, and each is compared with plain fit *of the same round*:
the machine is shared, so absolute figures drift while ratios measured side by side hold.

Variants:
  plain       model.fit on NumPy arrays (Keras slices the batches), the default float32 graph
  pipeline    the training input pipeline of efficientcellseg.training: tf.data from a Python
              generator of augmented samples (warp, flips, jitter, targets), prefetched
  threads     pipeline with TensorFlow limited to intra-op = cores, inter-op = 1 threads
  xla         pipeline, train step compiled with XLA (compile(jit_compile=True))
  bf16        pipeline, Keras mixed_bfloat16 policy (oneDNN uses AMX / AVX512-BF16 if present)
  bf16-xla    both
  no-onednn   pipeline with TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's own CPU kernels)

Usage: .venv/bin/python benchmarks/bench_training.py [--variants plain,pipeline,...]
       [--steps 8] [--warmup 3] [--rounds 2] [--config paper] [--size 384] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("plain", "pipeline", "threads", "xla", "bf16", "bf16-xla", "no-onednn")


def child(variant: str, config_name: str, size: int, batch: int, warmup: int, steps: int) -> dict:
    """Train ``warmup + steps`` batches in this process; time every batch."""
    import keras
    import numpy as np

    from efficientcellseg.keras_parts import ThresholdedIoU, dice_loss
    from efficientcellseg.model import build_model
    from efficientcellseg.settings import TrainingSettings, resolve_model
    from efficientcellseg.training import _TrainingBatches

    if variant == "threads":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    config = resolve_model({"preset": config_name, "encoder_weights": None})
    config = resolve_model({**config.to_dict(), "input_size": size})
    keras.utils.set_random_seed(0)
    if variant.startswith("bf16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_model(config)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=dice_loss,
        metrics=[ThresholdedIoU(name="iou")],
        jit_compile=variant.endswith("xla"),
    )
    total = warmup + steps
    data = _slices(size)
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            times.append(time.perf_counter())

    started = time.perf_counter()
    if variant == "plain":
        rng = np.random.default_rng(0)
        pick = rng.integers(len(data), size=total * batch)
        x = data.images[pick].astype(np.float32)
        y = (data.labels[pick] > 0).astype(np.float32)[..., None]
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[Clock()])
    else:
        settings = TrainingSettings(batch_size=batch, steps_per_epoch=total)
        batches = _TrainingBatches(data, size, settings)
        dataset = batches.as_dataset(first_epoch=0, steps_per_epoch=total)
        model.fit(dataset, steps_per_epoch=total, epochs=1, verbose=0, callbacks=[Clock()])
    per_step = np.diff(times[warmup - 1 :]) if warmup else np.diff([started, *times])
    return {
        "variant": variant,
        "first_batch_s": times[0] - started,
        "median_step_s": float(np.median(per_step)),
        "steps_s": [round(float(t), 3) for t in per_step],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _slices(size: int):
    """Eight pseudocolored synthetic slices of ``size`` x ``size`` with their labels."""
    import numpy as np

    from efficientcellseg.pseudocolor import pseudocolor_stack
    from efficientcellseg.settings import SyntheticSpec
    from efficientcellseg.synthetic import generate_sequence
    from efficientcellseg.training_data import AnnotatedSlices

    spec = SyntheticSpec(seed=0, n_frames=1, depth=10, height=size, width=size, n_objects=40)
    sequence = generate_sequence(spec, 0)
    keep = slice(1, 9)
    colour = pseudocolor_stack(sequence["images"][0])[keep].astype(np.float16)
    labels = sequence["labels"][0][keep]
    n = len(labels)
    return AnnotatedSlices(
        images=colour,
        labels=labels.astype(np.uint16),
        sequences=np.full(n, "01"),
        frames=np.zeros(n, int),
        slices=np.arange(n),
        sources=np.full(n, "GT"),
        whole_frame=np.ones(n, bool),
    )


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if variant == "no-onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    command = [
        sys.executable,
        __file__,
        "--child",
        variant,
        *("--config", args.config, "--size", str(args.size), "--batch", str(args.batch)),
        *("--warmup", str(args.warmup), "--steps", str(args.steps)),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"variant": variant, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def cpu_summary() -> str:
    flags = set()
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"{model}, {os.cpu_count()} cores, " + " ".join(f for f in wanted if f in flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--config", default="paper")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.config, args.size, args.batch, args.warmup, args.steps)
        print(json.dumps(result), flush=True)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if "plain" not in variants:
        variants.insert(0, "plain")
    print(f"CPU: {cpu_summary()}")
    print(
        f"{args.config} network, {args.size}x{args.size}, batch {args.batch}: median of "
        f"{args.steps} batches after {args.warmup} warm-up batches, {args.rounds} round(s)"
    )
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for round_number in range(args.rounds):
        for variant in variants:
            result = run_variant(variant, args)
            results[variant].append(result)
            shown = (
                f"{result['median_step_s']:.3f} s/batch, "
                f"first batch {result['first_batch_s']:.0f} s"
                if "error" not in result
                else f"failed: {result['error']}"
            )
            print(f"  round {round_number + 1} {variant:10s} {shown}", flush=True)
    print()
    print(
        f"{'variant':10s} {'s/batch':>8s} {'s/slice':>8s} {'slices/s':>9s} "
        f"{'vs plain':>9s} {'peak MB':>8s}"
    )
    for variant in variants:
        runs = [r for r in results[variant] if "error" not in r]
        if not runs:
            print(f"{variant:10s} failed: {results[variant][0]['error']}")
            continue
        step = statistics.median(r["median_step_s"] for r in runs)
        ratios = [
            plain["median_step_s"] / r["median_step_s"]
            for plain, r in zip(results["plain"], results[variant], strict=True)
            if "error" not in r and "error" not in plain
        ]
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        peak = max(r["peak_rss_mb"] for r in runs)
        print(
            f"{variant:10s} {step:8.3f} {step / args.batch:8.3f} {args.batch / step:9.2f} "
            f"{ratio:>9s} {peak:8.0f}"
        )
    print("(vs plain: speed ratio to plain fit of the same round, median over rounds; >1 faster)")


if __name__ == "__main__":
    main()
