"""What training a configured dataset costs: annotated slices, hours per network, disk.

For every configured dataset whose folder is on disk (resources/ctc/<CTC name>, after the
download) this counts the annotated slices the training set uses (GT, ST or GT+ST, gold truth
winning where both exist, as efficientcellseg.training_data.select_training_set does), per model
fold, and scales them by a training throughput into hours per network: an upper bound, the
epoch budget of the config (early stopping may end sooner), validation passes not counted.

Throughputs (slices per second, batches of 4 at the network's input size):
  --cpu-rate  measured with `benchmarks/bench_training.py --variants pipeline` on this project's
              2-core CI machine: 0.46 for the paper network (the README's table)
  --gpu-rate  the paper's P100 figure, 111 ms per sample per epoch: 9.0 (not measured here)
The tiny network (the demo) is not estimated: its benchmark files give its times.

Usage: .venv/bin/python benchmarks/dataset_costs.py [--config config/config.yaml]
       [--root resources/ctc] [--cpu-rate 0.46] [--gpu-rate 9.0] [--datasets NAME ...]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import yaml

from efficientcellseg import ctc
from efficientcellseg.settings import workflow_settings

VALIDATION_FRACTION_NOTE = "frames held apart for validation are not trained on"


def slice_keys(seq: ctc.Sequence, source: str) -> tuple[set, set]:
    """(frame, z) of every slice annotated by ``source``, and the frames annotated whole."""
    keys, whole = set(), set()
    depth = seq.frame_shape[0] if seq.ndim == 3 else 1
    for ann in seq.annotations(source):
        if ann.is_slice:
            keys.add((ann.frame, ann.slice))
        else:
            whole.add(ann.frame)
            keys.update((ann.frame, z) for z in range(depth))
    return keys, whole


def training_slices(seq: ctc.Sequence, training_set: str) -> tuple[int, int]:
    """Annotated slices a training set uses in a sequence, and in how many frames."""
    gold, gold_whole = slice_keys(seq, "GT")
    silver, _ = slice_keys(seq, "ST")
    if training_set == "GT":
        keys = gold
    elif training_set == "ST":
        keys = silver
    else:
        gold_frames = {frame for frame, _ in gold} & gold_whole
        keys = gold | {k for k in silver if k[0] not in gold_frames and k not in gold}
    return len(keys), len({frame for frame, _ in keys})


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--root", type=Path, default=Path("resources/ctc"))
    parser.add_argument("--cpu-rate", type=float, default=0.46, help="slices/s, paper network")
    parser.add_argument("--gpu-rate", type=float, default=9.0, help="slices/s, paper network")
    parser.add_argument("--datasets", nargs="*", help="configured names (default: all on disk)")
    args = parser.parse_args(argv)
    settings = workflow_settings(yaml.safe_load(args.config.read_text()))
    print(
        "dataset | network | training set | annotated slices (frames) | per fold: train slices"
        " | epochs | hours per network, CPU (2 cores) | hours per network, GPU | data on disk"
    )
    for name, dataset in settings.datasets.items():
        if args.datasets and name not in args.datasets:
            continue
        folder = args.root / dataset.ctc_name
        if not folder.is_dir():
            print(f"{name}: {folder} not on disk (download it first)", file=sys.stderr)
            continue
        counts = {
            s: training_slices(ctc.open_sequence(folder, s), dataset.training_set)
            for s in dataset.sequences
        }
        train = dataset.training
        folds = {
            fold: sum(counts[s][0] for s in dataset.training_sequences(fold))
            * (1 - train.validation_fraction)
            for fold in [f"without-{s}" for s in dataset.sequences] + ["all"]
        }
        preset = "tiny" if dataset.model.backbone == "EfficientNetB0" else "paper"
        epochs = train.epochs
        steps = train.steps_per_epoch
        fixed = steps * train.batch_size if steps else None  # slices per epoch, if fixed

        def hours(slices: float, rate: float, *, fixed=fixed, epochs=epochs) -> float:
            return epochs * (fixed or math.ceil(slices)) / rate / 3600

        fold_text = ", ".join(f"{f} {round(n)}" for f, n in folds.items())
        if preset == "paper":
            cpu = ", ".join(f"{hours(n, args.cpu_rate):.1f}" for n in folds.values())
            gpu = ", ".join(f"{hours(n, args.gpu_rate):.2f}" for n in folds.values())
        else:  # the rates above are the paper network's
            cpu = gpu = "tiny network: see results/<ds>/benchmarks/train_*.tsv"
        total = sum(n for n, _ in counts.values())
        frames = sum(f for _, f in counts.values())
        size = subprocess.run(["du", "-sh", str(folder)], capture_output=True, text=True)
        print(
            f"{name} | {preset} x {len(dataset.networks)} | {dataset.training_set} | "
            f"{total} ({frames}) | {fold_text} | {epochs}"
            + (f" x {steps} steps" if steps else "")
            + f" | {cpu} | {gpu} | {size.stdout.split()[0]} ({folder_bytes(folder):,} B)"
        )
    print(f"(hours: upper bounds for the epoch budget; {VALIDATION_FRACTION_NOTE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
