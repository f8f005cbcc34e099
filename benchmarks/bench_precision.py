"""What reduced precision costs in accuracy: a trained network run by OpenVINO in f32, bf16, int8.

``bench_inference.py`` measures how much faster bf16 (OpenVINO on a CPU with AMX or AVX512-BF16)
and int8 (the network quantized by NNCF, efficientcellseg.quantize) are; this measures what they
change, on a network that has learned something: the tiny network trained as in the learning
test (tests/integration/test_training.py: GT of four synthetic sequences, float32 training)
segments two held-out sequences with the same weights in each precision. int8 is calibrated on
300 of the training slices (``efficientcellseg quantize``; the quantized IR is kept with the
network). Printed per reduced precision, against f32: the largest probability difference, the
fraction of pixels that change class; per precision: foreground IoU against the gold truth and
CTC SEG of the masks of the whole pipeline (distance watershed). Nothing is asserted.

``--model paper`` trains the paper network instead (random encoder initialisation, no ImageNet
weights offline; ``--epochs``/``--steps`` set how long: the default 20 x 20 batches of 4 slices
take about half an hour on 2 cores). Trained networks are kept in .cache/bench_precision/<model>/
(the tiny one takes about 2 minutes to train on 2 cores).

Usage: .venv/bin/python benchmarks/bench_precision.py [--model tiny|paper] [--epochs 20]
       [--steps 20] [--retrain] [--requantize]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from efficientcellseg import ctc
from efficientcellseg.inference import cpu_has_bf16, export_onnx, open_predictor, predict_slices
from efficientcellseg.metrics import evaluate_sequence
from efficientcellseg.pseudocolor import pseudocolor_frame
from efficientcellseg.quantize import quantize_model_folder, quantized_path
from efficientcellseg.segment import PipelineSettings, segment_sequence, write_pipeline_settings
from efficientcellseg.settings import (
    PostprocessSettings,
    SyntheticSpec,
    TrainingSettings,
    resolve_model,
)
from efficientcellseg.synthetic import write_synthetic_dataset
from efficientcellseg.training import TrainingOutputs, train
from efficientcellseg.training_data import collect_annotated_slices, save_annotated_slices

ROOT = Path(__file__).resolve().parents[1]
CACHE_ROOT = ROOT / ".cache" / "bench_precision"
# the learning test's data and settings
DATASET = SyntheticSpec(seed=0, n_sequences=6, n_frames=2)
TRAIN_ON, HELD_OUT = ("01", "02", "03", "04"), ("05", "06")
SETTINGS = {
    "training_set": "GT",
    "epochs": 20,
    "steps_per_epoch": 20,
    "learning_rate": 3e-3,
    "reduce_lr_patience": 2,
}
POSTPROCESS = PostprocessSettings("distance", min_area=15, min_volume=40)
PRECISIONS = ("f32", "bf16", "int8")


def trained_model_folder(args: argparse.Namespace) -> tuple[Path, Path]:
    """The synthetic dataset and a model folder with the trained network (cached)."""
    cache = CACHE_ROOT / args.model
    dataset = cache / "Synthetic-3D"
    models = cache / "models"
    model = models / "segmentation.keras"
    slices = [cache / f"{seq}.npz" for seq in TRAIN_ON]
    if args.retrain:
        shutil.rmtree(cache, ignore_errors=True)
    if not model.with_suffix(".onnx").is_file():
        print(f"training the {args.model} network on 4 synthetic sequences ...", flush=True)
        write_synthetic_dataset(dataset, DATASET)
        for seq, path in zip(TRAIN_ON, slices, strict=True):
            save_annotated_slices(path, collect_annotated_slices(dataset, seq, ("GT",)))
        outputs = TrainingOutputs(
            model, models / "segmentation_log.csv", models / "segmentation_curve.png",
            models / ".segmentation_checkpoint",
        )  # fmt: skip
        settings = {**SETTINGS, "epochs": args.epochs, "steps_per_epoch": args.steps}
        config = dataclasses.replace(resolve_model(args.model), encoder_weights=None)
        metadata = train(slices, outputs, config, TrainingSettings(**settings))
        print(f"trained: best validation IoU {metadata['best_val_iou']:.3f}")
        export_onnx(model)
    if args.requantize or not quantized_path(model).is_file():
        print("quantizing to int8 on (up to) 300 training slices ...", flush=True)
        start = time.perf_counter()
        quantize_model_folder(models, slices)
        print(f"quantized in {time.perf_counter() - start:.0f} s")
    write_pipeline_settings(models, PipelineSettings(POSTPROCESS))
    return dataset, models


def compare_maps(dataset: Path, models: Path, precisions: tuple[str, ...]) -> None:
    """Probability maps of each precision on every annotated frame of the held-out sequences."""
    predictors = {
        p: open_predictor(models / "segmentation.keras", "openvino", precision=p)[0]
        for p in precisions
    }
    overlap = {p: [0, 0] for p in precisions}  # intersection, union with the gold truth
    reduced = precisions[1:]
    largest_difference, flipped, pixels = dict.fromkeys(reduced, 0.0), dict.fromkeys(reduced, 0), 0
    for sequence in HELD_OUT:
        seq = ctc.open_sequence(dataset, sequence)
        for frame in sorted({ann.frame for ann in seq.gt_seg}):
            colour = pseudocolor_frame(ctc.read_image(seq.frames[frame]))
            maps = {p: predict_slices(predict, colour) for p, predict in predictors.items()}
            for p in reduced:
                difference = float(np.abs(maps["f32"] - maps[p]).max())
                largest_difference[p] = max(largest_difference[p], difference)
                flipped[p] += int(np.count_nonzero((maps["f32"] > 0.5) != (maps[p] > 0.5)))
            pixels += maps["f32"].size
            for ann in (a for a in seq.gt_seg if a.frame == frame):
                truth = ctc.read_annotation(ann, seq.frame_shape) > 0
                for precision, probability in maps.items():
                    found = (probability[ann.slice] if ann.is_slice else probability) > 0.5
                    overlap[precision][0] += np.count_nonzero(found & truth)
                    overlap[precision][1] += np.count_nonzero(found | truth)
    for p in reduced:
        print(
            f"probabilities: max |f32 - {p}| {largest_difference[p]:.3f}; "
            f"{flipped[p] / pixels:.1e} of the pixels change class (threshold 0.5)"
        )
    for precision, (intersection, union) in overlap.items():
        print(f"  {precision:5s} held-out foreground IoU {intersection / union:.4f}")


def compare_masks(dataset: Path, models: Path, precisions: tuple[str, ...]) -> None:
    """CTC SEG of the whole pipeline's masks in each precision."""
    for precision in precisions:
        scores = []
        for sequence in HELD_OUT:
            results = models.parent / f"{sequence}_RES_{precision}"
            segment_sequence(
                dataset / sequence, results, models, backend="openvino",
                precision=precision, overwrite=True,
            )  # fmt: skip
            scores.append(evaluate_sequence(dataset, sequence, results).seg)
        split = ", ".join(f"{s}: {v:.4f}" for s, v in zip(HELD_OUT, scores, strict=True))
        print(f"  {precision:5s} SEG {np.mean(scores):.4f} ({split})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--steps", type=int, default=SETTINGS["steps_per_epoch"], help="per epoch")
    parser.add_argument("--retrain", action="store_true", help="train the network again")
    parser.add_argument("--requantize", action="store_true", help="quantize the network again")
    args = parser.parse_args()
    dataset, models = trained_model_folder(args)
    precisions = tuple(p for p in PRECISIONS if p != "bf16" or cpu_has_bf16())
    if len(precisions) < len(PRECISIONS):
        print("this CPU has no bfloat16 instructions: bf16 left out")
    compare_maps(dataset, models, precisions)
    compare_masks(dataset, models, precisions)


if __name__ == "__main__":
    main()
