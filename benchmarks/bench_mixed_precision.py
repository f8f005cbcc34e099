"""Where mixed-precision training departs from float32: one batch layer by layer, or training.

Per layer (default): the same network (same weights) is built once per Keras dtype policy -
float32, mixed_bfloat16, mixed_float16 - and given one batch of real-looking training data:
synthetic slices pseudocolored and prepared as training prepares them (``prepare_sample``),
slices with cells and empty slices (stretched noise) together. Printed per layer:

* ``fwd``: error of its output against float32 in inference mode (moving BatchNorm statistics),
  relative to the output's *variation* (each channel's output minus its mean over the batch):
  an input signal that rides on a large offset and drowns in the offset's rounding shows here,
  where a plain relative error would not (padding and 1x1 squeeze-excite outputs, with little
  variation, read high);
* ``train``: the same in training mode (batch statistics), as during ``fit``;
* ``grad``: the relative error of the gradient of the Dice loss w.r.t. the layer's weights.

and whether the float32 copy that training saves (``export.set_weights(model.get_weights())``)
computes what the mixed network computes. ``float32-rounded-input`` is the baseline: float32
throughout with only the input rounded to bfloat16, i.e. how much the network itself amplifies
one rounding. ``--normalisation imagenet`` gives the encoder's Normalization the ImageNet mean
and variance, as ImageNet weights do (the weights are not available offline: they stay random);
``--float32-input`` also runs each policy with ``keep_input_in_float32``.

``--training SEEDS``: trains the tiny network as tests/integration/test_training.py does (its
data and settings, no kill), per seed and variant (float32, bfloat16 as training now builds it,
bfloat16-unfixed as before ``keep_input_in_float32``), and prints the held-out IoU and the
largest fraction of an empty slice marked as cell after every epoch, and at the epoch kept.

Findings (AMD EPYC with AVX512-BF16, no AMX; 2 shared cores):

1. The tiny network's held-out failure (IoU 0.379 / 0.757 instead of 0.91) is not arithmetic.
   Its forward pass in bfloat16 agrees with float32 (one batch, random weights: output error
   0.018 of its variation; trained weights: held-out IoU 0.9017 vs 0.9021), the float32 copy
   computes what the bfloat16 network computes (largest probability difference 5e-4), and
   per-layer errors are a few times the float32 baseline (gradients: median 0.14 vs 0.08). What
   fails is training itself, in any precision: the share of empty slices marked as cell jumps
   between epochs (float32 seed 0: 0.79 and 0.63 at epochs 3 and 7; float32 seed 0 with a whole
   3D frame among the validation frames, an experiment: 0.73 at the last epoch;
   bfloat16-unfixed seed 0: 0.45, 0.40, 0.18 at epochs 16-18), and re-estimating the BatchNorm
   statistics over 100 batches moves such jumps rather than removing them. The validation
   frames of seed 0 (two frames annotated slice by slice, 8 slices) hold no empty slice, so the
   kept epoch can be one of the jumps: bfloat16-unfixed seed 0 kept epoch 18 (0.757 / 0.18).
   Seeds 1-3: bfloat16-unfixed 0.899 / 0.909 / 0.913, float32 0.913 / 0.917 / 0.923. bfloat16
   as now built, seed 0: 0.918 (empty slice 0.03), and 0.64 of an empty slice at its last epoch.
2. A real arithmetic failure: with ImageNet normalisation and input_scale 1 (the published
   setting) the input reaches the stem as -2.1 + 0.017 * value. Per layer (tiny network,
   --input-scale 1 --normalisation imagenet), bfloat16 / float16: normalised input error 2.99 /
   0.24 of its signal, network output in training mode 0.61 / 0.22, weight gradients median
   1.11 / 0.49; with keep_input_in_float32: 0 / 0, 0.063 / 0.009, 0.24 / 0.06 (baseline 0.055).
   Trained so (seed 0): float32 0.758, bfloat16-unfixed 0.171 (never learns: validation IoU
   at most 0.18, early stop after 16 epochs), bfloat16 0.899.
3. The paper network (``--config paper --size 192 --batch 2 --normalisation imagenet``, random
   weights) is ill-conditioned at initialisation in any precision: rounding only its input to
   bfloat16 changes its weight gradients by a median 0.27. bfloat16 / float16: normalised input
   2.31 / 0.19, training-mode output 1.01 / 0.79, gradients 1.20 / 1.53; with
   keep_input_in_float32: 0 / 0, 0.49 / 0.13, 1.23 / 0.55. Whether bfloat16 trains the paper
   network as well as float32 is not measured.

Usage: .venv/bin/python benchmarks/bench_mixed_precision.py [--config tiny|paper]
       [--policies float32-rounded-input,mixed_bfloat16,mixed_float16] [--float32-input]
       [--batch 4] [--normalisation none|imagenet] [--input-scale S] [--size N]
       [--weights FILE] [--top 10]
       .venv/bin/python benchmarks/bench_mixed_precision.py --training 0[,1,...]
       [--variants float32,bfloat16,bfloat16-unfixed] [--input-scale 1 --normalisation imagenet]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOSS_SCALE = 2.0**15  # what Keras' LossScaleOptimizer starts with for mixed_float16


def training_batch(size: int, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half slices with cells, half empty slices (the hard negatives), prepared for training."""
    from efficientcellseg.settings import Augmentation, SyntheticSpec
    from efficientcellseg.synthetic import write_synthetic_dataset
    from efficientcellseg.training_data import collect_annotated_slices, prepare_sample

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(Path(tmp), SyntheticSpec(seed=seed, n_sequences=1, n_frames=2))
        data = collect_annotated_slices(Path(tmp), "01", ("GT",))
    has_cells = np.array([labels.any() for labels in data.labels])
    full, empty = np.flatnonzero(has_cells), np.flatnonzero(~has_cells)
    chosen = np.concatenate([full[: batch - batch // 2], empty[: batch // 2]])
    rng = np.random.default_rng(seed)
    pairs = [
        prepare_sample(
            data.images[i], data.labels[i], size=size, task="segmentation",
            augmentation=Augmentation(), rng=rng,
        )
        for i in chosen
    ]  # fmt: skip
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def build(config, policy: str, weights, *, float32_input: bool):
    import keras

    from efficientcellseg.model import build_model

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if float32_input:
        from efficientcellseg.model import keep_input_in_float32

        keep_input_in_float32(model)
    set_weights(model, weights)
    return without_dropout(model)


def set_weights(model, weights) -> None:
    """``set_weights`` and what it forgets: Normalization keeps its mean and variance as
    tensors (in its compute dtype) made when the weights are loaded from a file."""
    model.set_weights(weights)
    for layer in model.layers:
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()


def without_dropout(model):
    """The encoder's stochastic depth (Dropout) draws other masks in each network: switched off
    so that the networks differ only in their arithmetic."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def probe_layers(model) -> list:
    """The layers whose outputs are compared, in the order of ``model.layers`` (automatic names
    such as ``rescaling_1`` differ between networks built in one process; positions do not)."""
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def layer_errors(reference, mixed, weights, x, training: bool, chunk: int = 24) -> list[float]:
    """Per layer: error of the mixed network's output against float32, a chunk of layers at a
    time (all outputs of the paper network at once would need tens of GB). Both networks get
    the same weights before every pass: a training-mode pass updates BatchNorm statistics."""
    import keras

    ref_layers, mixed_layers = probe_layers(reference), probe_layers(mixed)
    errors = []
    for start in range(0, len(ref_layers), chunk):
        outputs = []
        for model, layers in ((reference, ref_layers), (mixed, mixed_layers)):
            probe = keras.Model(model.inputs, [la.output for la in layers[start : start + chunk]])
            set_weights(model, weights)
            outputs.append(probe([x], training=training))
        for ref, mix in zip(*outputs, strict=True):
            errors.append(
                error_vs_variation(np.asarray(mix, np.float64), np.asarray(ref, np.float64))
            )
        del outputs
    return errors


def gradients(model, weights, x, y, loss_scale: float) -> tuple[float, list]:
    import tensorflow as tf

    from efficientcellseg.keras_parts import dice_loss

    set_weights(model, weights)
    with tf.GradientTape() as tape:
        prediction = model([x], training=True)
        loss = tf.reduce_mean(dice_loss(tf.constant(y), prediction))
        scaled = loss * loss_scale
    grads = tape.gradient(scaled, model.trainable_variables)
    return float(loss), [
        None if g is None else np.asarray(g, np.float64) / loss_scale for g in grads
    ]


def error_vs_variation(mixed: np.ndarray, reference: np.ndarray) -> float:
    """||mixed - reference|| / ||reference - its per-channel mean|| (inf if it has no signal)."""
    if mixed.shape != reference.shape:
        return float("nan")
    axes = tuple(range(reference.ndim - 1))
    variation = np.linalg.norm(reference - reference.mean(axis=axes, keepdims=True))
    error = np.linalg.norm(mixed - reference)
    return float(error / variation) if variation > 0 else (0.0 if error == 0 else float("inf"))


def relative_error(mixed: np.ndarray, reference: np.ndarray) -> float:
    norm = np.linalg.norm(reference)
    return float(np.linalg.norm(mixed - reference) / norm) if norm > 0 else float("nan")


def compare(config, policy, weights, x, y, reference, float32_input: bool) -> tuple[dict, object]:
    """Per-layer fwd/train/grad errors of ``policy`` against the float32 ``reference``.

    ``float32-rounded-input``: float32 throughout, but the input rounded to bfloat16 - how
    much the network itself amplifies a perturbation of the size of one bfloat16 rounding.
    """
    if policy == "float32-rounded-input":
        import tensorflow as tf

        x = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
        model = build(config, "float32", weights, float32_input=False)
    else:
        model = build(config, policy, weights, float32_input=float32_input)
    scale = LOSS_SCALE if policy == "mixed_float16" else 1.0
    started = time.perf_counter()
    fwd = layer_errors(reference["model"], model, weights, x, training=False)
    train = layer_errors(reference["model"], model, weights, x, training=True)
    loss, grads = gradients(model, weights, x, y, scale)
    seconds = time.perf_counter() - started
    rows: dict[str, dict[str, float]] = {}
    for i, (ref_layer, layer) in enumerate(
        zip(probe_layers(reference["model"]), probe_layers(model), strict=True)
    ):
        rows[ref_layer.name] = {
            "fwd": fwd[i], "train": train[i], "grad": float("nan"),
            "dtype": str(layer.compute_dtype),
        }  # fmt: skip
    # trainable variables come in the same order in both networks; group them by layer
    owners = {id(w): layer.name for layer in reference["model"].layers for w in layer.weights}
    by_layer: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for variable, grad, exact in zip(
        reference["model"].trainable_variables, grads, reference["grads"], strict=True
    ):
        if grad is not None:
            by_layer.setdefault(owners[id(variable)], []).append((grad, exact))
    for name, pairs in by_layer.items():
        mixed = np.concatenate([g.ravel() for g, _ in pairs])
        exact = np.concatenate([r.ravel() for _, r in pairs])
        rows[name]["grad"] = relative_error(mixed, exact)
    nonfinite = sum(int(not np.isfinite(g).all()) for g in grads if g is not None)
    fixed = " with keep_input_in_float32" if float32_input else ""
    print(
        f"\n== {policy}{fixed}: loss {loss:.6f} (float32 {reference['loss']:.6f}), "
        f"{nonfinite} non-finite gradient(s), {seconds:.1f} s"
    )
    return rows, model


def print_table(rows: dict[str, dict[str, float]], top: int) -> None:
    names = list(rows)
    print(f"{'layer':36s} {'dtype':9s} {'fwd':>9s} {'train':>9s} {'grad':>9s}")
    shown = set(names[:8]) | set(names[-6:])
    worst = sorted(names, key=lambda n: -np.nan_to_num(rows[n]["train"], nan=-1))[:top]
    worst_grad = sorted(names, key=lambda n: -np.nan_to_num(rows[n]["grad"], nan=-1))[:top]
    for name in names:
        if name in shown or name in worst or name in worst_grad:
            r = rows[name]
            print(f"{name:36s} {r['dtype']:9s} {r['fwd']:9.2e} {r['train']:9.2e} {r['grad']:9.2e}")
    grads = np.array([r["grad"] for r in rows.values()])
    grads = grads[np.isfinite(grads)]
    print(
        f"gradient relative error over {len(grads)} layers: median {np.median(grads):.2e}, "
        f"max {grads.max():.2e}; head output (train) {rows['resize_out']['train']:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--policies", default="mixed_bfloat16,mixed_float16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--normalisation", choices=("none", "imagenet"), default="none")
    parser.add_argument("--weights", help="a trained .keras of the same configuration")
    parser.add_argument(
        "--float32-input", action="store_true", help="also run each with keep_input_in_float32"
    )
    parser.add_argument("--input-scale", type=float, help="instead of the preset's")
    parser.add_argument("--size", type=int, help="input size instead of the preset's")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--training", help="seeds (0,1,...): train and track instead")
    parser.add_argument("--variants", default=",".join(PRECISION_VARIANTS))
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from efficientcellseg.model import build_model, load_model
    from efficientcellseg.settings import resolve_model

    changes = {"input_scale": args.input_scale, "input_size": args.size}
    config = resolve_model(
        {"preset": args.config, "encoder_weights": None}
        | {k: v for k, v in changes.items() if v is not None}
    )
    if args.training:
        print(f"CPU: {cpu_summary()}")
        seeds = [int(seed) for seed in args.training.split(",")]
        variants = [v for v in args.variants.split(",") if v]
        train_and_track(seeds, variants, config, args.normalisation)
        return
    import keras

    keras.utils.set_random_seed(0)
    if args.weights:
        reference_model = without_dropout(load_model(args.weights))
    else:
        reference_model = without_dropout(build_model(config))
        if args.normalisation == "imagenet":
            with_imagenet_normalisation(reference_model)
    weights = reference_model.get_weights()
    x, y = training_batch(config.input_size, args.batch)
    print(f"CPU: {cpu_summary()}")
    print(
        f"{args.config} network ({reference_model.count_params()} parameters, input_scale "
        f"{config.input_scale}, normalisation {args.normalisation}"
        f"{', weights ' + args.weights if args.weights else ''}), batch of {len(x)} "
        f"{config.input_size}x{config.input_size} slices ({int((y.max(axis=(1, 2, 3)) > 0).sum())}"
        f" with cells); errors: fwd/train = ||mixed - f32|| / ||f32 - channel mean||, "
        f"grad = ||mixed - f32|| / ||f32||"
    )
    reference = {"model": reference_model}
    reference["loss"], reference["grads"] = gradients(reference_model, weights, x, y, 1.0)
    runs = [(p, False) for p in args.policies.split(",") if p]
    if args.float32_input:
        runs += [(p, True) for p, _ in runs if p.startswith("mixed")]
    for policy, float32_input in runs:
        rows, model = compare(config, policy, weights, x, y, reference, float32_input)
        print_table(rows, args.top)
        set_weights(model, weights)
        export = build_model(config)
        export.set_weights(model.get_weights())  # as training does; the export of a network
        for layer in export.layers:  # with ImageNet weights loads them itself (finalize_state)
            if hasattr(layer, "finalize_state"):
                layer.finalize_state()
        mixed_out = np.asarray(model([x], training=False), np.float64)
        export_out = np.asarray(export([x], training=False), np.float64)
        print(
            f"float32 copy of the {policy} network (as training saves it): largest probability "
            f"difference {np.abs(mixed_out - export_out).max():.2e}, pixels that change class "
            f"{np.mean((mixed_out > 0.5) != (export_out > 0.5)):.2e}"
        )


# --- training: what held-out IoU each precision ends with, and what it goes through ------------

PRECISION_VARIANTS = {
    "float32": "off",
    "bfloat16": "bfloat16",
    "bfloat16-unfixed": "bfloat16",  # as before keep_input_in_float32
}


def train_and_track(seeds: list[int], variants: list[str], config, normalisation: str) -> None:
    """Train the tiny network as the learning test does (tests/integration/test_training.py
    data and settings, without the kill), once per seed and precision, scoring the held-out
    sequences after every epoch: the best epoch (by validation IoU) is what training keeps."""
    from bench_precision import DATASET, HELD_OUT, SETTINGS, TRAIN_ON

    import efficientcellseg.model as model_module
    from efficientcellseg import training
    from efficientcellseg.settings import TrainingSettings
    from efficientcellseg.synthetic import write_synthetic_dataset
    from efficientcellseg.training_data import collect_annotated_slices, save_annotated_slices

    cache = Path(__file__).resolve().parents[1] / ".cache" / "bench_mixed_precision"
    dataset = cache / "Synthetic-3D"
    slices = [cache / f"{seq}.npz" for seq in TRAIN_ON]
    if not all(p.is_file() for p in slices):
        write_synthetic_dataset(dataset, DATASET)
        for seq, path in zip(TRAIN_ON, slices, strict=True):
            save_annotated_slices(path, collect_annotated_slices(dataset, seq, ("GT",)))
    frames = held_out_frames(dataset, HELD_OUT)
    tracked: list[tuple] = []
    end_epoch = training._Schedule.end_epoch

    def tracking_end_epoch(self, model, epoch, logs):  # the schedule, then a held-out score
        end_epoch(self, model, epoch, logs)
        tracked.append((epoch, float(logs["val_iou"]), *held_out_iou(model, frames)))

    training._Schedule.end_epoch = tracking_end_epoch
    keep = model_module.keep_input_in_float32
    build_model = training.build_model
    if normalisation == "imagenet":  # the training network and its float32 copy

        def imagenet_normalised(config, **kwargs):
            return with_imagenet_normalisation(build_model(config, **kwargs))

        training.build_model = imagenet_normalised
    print("held-out IoU / largest fraction of an empty slice marked as cell, after each epoch")
    for seed in seeds:
        for variant in variants:
            tracked.clear()
            model_module.keep_input_in_float32 = (
                (lambda model: []) if variant.endswith("unfixed") else keep
            )
            folder = cache / f"{variant}-seed{seed}"
            settings = TrainingSettings(
                **SETTINGS, mixed_precision=PRECISION_VARIANTS[variant], seed=seed
            )
            started = time.perf_counter()
            outputs = training.TrainingOutputs(
                folder / "segmentation.keras", folder / "log.csv", folder / "curve.png",
                folder / ".checkpoint",
            )  # fmt: skip
            metadata = training.train(slices, outputs, config, settings)
            best = next(row for row in tracked if row[0] == metadata["best_epoch"])
            print(
                f"seed {seed} {variant:17s} kept epoch {best[0] + 1:2d} (val IoU {best[1]:.3f}): "
                f"held-out IoU {best[2]:.3f}, empty slice {best[3]:.2f}; "
                f"{time.perf_counter() - started:.0f} s"
            )
            print("   " + " ".join(f"{row[2]:.2f}/{row[3]:.2f}" for row in tracked), flush=True)
    model_module.keep_input_in_float32 = keep
    training._Schedule.end_epoch = end_epoch
    training.build_model = build_model


def with_imagenet_normalisation(model):
    """The encoder's Normalization with the ImageNet mean and variance, as ImageNet weights
    bring them (the weights themselves are not available offline)."""
    import keras

    norm = next(la for la in model.layers if isinstance(la, keras.layers.Normalization))
    *_, count = norm.get_weights()
    norm.set_weights([np.array(IMAGENET_MEAN), np.square(IMAGENET_STD), count])
    norm.finalize_state()
    return model


def held_out_frames(dataset: Path, sequences) -> list:
    from efficientcellseg import ctc
    from efficientcellseg.pseudocolor import pseudocolor_frame

    frames = []
    for sequence in sequences:
        seq = ctc.open_sequence(dataset, sequence)
        for frame in sorted({ann.frame for ann in seq.gt_seg}):
            truth = [
                (ann.slice if ann.is_slice else None, ctc.read_annotation(ann, seq.frame_shape) > 0)
                for ann in seq.gt_seg
                if ann.frame == frame
            ]
            frames.append((pseudocolor_frame(ctc.read_image(seq.frames[frame])), truth))
    return frames


def held_out_iou(model, frames) -> tuple[float, float]:
    """Foreground IoU over the gold truth, and the largest fraction of an empty slice marked
    as cell (as tests/integration/test_training.py scores)."""
    inter = union = 0
    empty = 0.0
    for colour, truth in frames:
        found = np.asarray(model.predict(colour, batch_size=8, verbose=0))[..., 0] > 0.5
        for index, mask in truth:
            predicted = found[index] if index is not None else found
            inter += np.count_nonzero(predicted & mask)
            union += np.count_nonzero(predicted | mask)
            if index is None:
                blank = ~mask.any(axis=(1, 2))
                empty = max(empty, float(predicted[blank].mean(axis=(1, 2)).max(initial=0)))
    return inter / union, empty


def cpu_summary() -> str:
    flags, model = set(), "?"
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


if __name__ == "__main__":
    main()
