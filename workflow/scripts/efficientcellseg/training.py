"""Training one EfficientCellSeg network: segmentation (Dice loss) or cell centres (focal loss).

Adam with learning-rate reduction on plateau, the best model kept by validation IoU, early
stopping and a fixed seed, as in the paper. Every epoch is checkpointed (weights, optimiser,
epoch) so an interrupted run resumes where it stopped instead of starting over. Writes the
model with its configuration, a CSV log and a PNG curve of loss and IoU per epoch.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .inference import set_tensorflow_threads
from .model import ModelConfig, build_model, load_model, parameter_counts, save_model
from .training_data import (
    TASKS,
    AnnotatedSlices,
    Augmentation,
    load_annotated_slices,
    prepare_sample,
    select_training_set,
    validation_split,
)

log = logging.getLogger(__name__)

MONITOR = "val_iou"


@dataclass(frozen=True)
class TrainingSettings:
    """How to train (the paper leaves most of these unpublished; defaults are ours)."""

    task: str = "segmentation"
    training_set: str = "GT+ST"
    epochs: int = 100
    batch_size: int = 4
    steps_per_epoch: int | None = None  # default: one pass over the training slices
    learning_rate: float = 1e-3
    reduce_lr_patience: int = 5
    reduce_lr_factor: float = 0.5
    early_stop_patience: int = 15
    validation_fraction: float = 0.2
    focal_gamma: float = 2.0
    crop: int | None = None  # random square crops (slice pixels) for large, tiled slices
    augmentation: Augmentation = field(default_factory=Augmentation)
    mixed_precision: str = (
        "auto"  # auto: float16 on a GPU, float32 on a CPU; or off/float16/bfloat16
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        if self.mixed_precision not in ("auto", "off", "float16", "bfloat16"):
            raise ValueError(
                f"mixed_precision {self.mixed_precision!r} is not auto/off/float16/bfloat16"
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingSettings:
        values = dict(values)
        if isinstance(values.get("augmentation"), dict):
            values["augmentation"] = Augmentation(
                **{
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in values["augmentation"].items()
                }
            )
        return cls(**values)


@dataclass(frozen=True)
class TrainingOutputs:
    model: Path
    log_csv: Path
    curve_png: Path
    checkpoint_dir: Path


def train(
    slices_paths: list[str | Path],
    outputs: TrainingOutputs,
    model_config: ModelConfig,
    settings: TrainingSettings,
    *,
    description: dict[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train one network on the stored annotated slices and save the best model.

    Returns the metadata written beside the model (configuration, parameter counts, best epoch
    and validation IoU, number of samples).
    """
    import keras

    from .keras_parts import ThresholdedIoU, dice_loss

    if threads:
        set_tensorflow_threads(threads)
    keras.utils.set_random_seed(settings.seed)
    _set_precision(settings.mixed_precision)
    data = select_training_set(load_annotated_slices(slices_paths), settings.training_set)
    train_index, val_index = validation_split(data, settings.validation_fraction, settings.seed)
    log.info(
        "%s: %d training and %d validation slices (%s)",
        settings.task,
        len(train_index),
        len(val_index),
        settings.training_set,
    )
    size = model_config.input_size
    val_x, val_y = _validation_arrays(data.subset(val_index), size, settings)
    batches = _TrainingBatches(data.subset(train_index), size, settings)

    checkpoint_dir = outputs.checkpoint_dir
    best_path = checkpoint_dir / "best.keras"
    # The log lives beside the checkpoints until the end: a failed job's outputs are deleted by
    # Snakemake, the checkpoint folder is not, so a resumed run keeps its whole history.
    running_log = checkpoint_dir / "log.csv"
    if (checkpoint_dir / "backup").is_dir():
        previous_best = _best_logged(running_log) if best_path.is_file() else None
        log.info("resuming from %s (best %s so far: %s)", checkpoint_dir, MONITOR, previous_best)
    else:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        previous_best = None
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(model_config, name=settings.task)
    loss = (
        dice_loss
        if settings.task == "segmentation"
        else keras.losses.BinaryFocalCrossentropy(gamma=settings.focal_gamma)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=loss,
        metrics=[ThresholdedIoU(name="iou")],
    )
    callbacks = [
        # BackupAndRestore first: its epoch-end backup is written before the log line.
        keras.callbacks.BackupAndRestore(str(checkpoint_dir / "backup"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(
            str(best_path),
            monitor=MONITOR,
            mode="max",
            save_best_only=True,
            initial_value_threshold=previous_best,
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=settings.reduce_lr_factor,
            patience=settings.reduce_lr_patience,
            min_lr=settings.learning_rate * 1e-3,
        ),
        keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="max", patience=settings.early_stop_patience
        ),
        keras.callbacks.CSVLogger(str(running_log), append=True),
    ]
    model.fit(
        batches.as_dataset(),
        steps_per_epoch=settings.steps_per_epoch or batches.steps,
        epochs=settings.epochs,
        validation_data=(val_x, val_y),
        validation_batch_size=settings.batch_size,
        callbacks=callbacks,
        verbose=1 if sys.stderr.isatty() else 2,
    )
    history = read_training_log(running_log)
    if not best_path.is_file():
        raise RuntimeError(f"training produced no model in {best_path}; see {running_log}")
    best_model = load_model(best_path)
    best_epoch = max(history, key=lambda row: row[MONITOR]) if history else {}
    metadata = {
        "task": settings.task,
        "model_config": model_config.to_dict(),
        "parameters": parameter_counts(best_model, model_config),
        "training": _jsonable(asdict(settings)),
        "best_epoch": int(best_epoch.get("epoch", -1)),
        "best_val_iou": float(best_epoch.get(MONITOR, math.nan)),
        "epochs_run": len(history),
        "n_train_slices": len(train_index),
        "n_val_slices": len(val_index),
        "trained_on": sorted({str(s) for s in data.sequences}),
        **(description or {}),
    }
    save_model(best_model, outputs.model, metadata)
    outputs.log_csv.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(running_log, outputs.log_csv)
    plot_training_curve(outputs.log_csv, outputs.curve_png, title=f"{settings.task} model")
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info(
        "saved %s (best %s %.4f at epoch %d)",
        outputs.model,
        MONITOR,
        metadata["best_val_iou"],
        metadata["best_epoch"],
    )
    return metadata


def _set_precision(mode: str) -> None:
    import keras
    import tensorflow as tf

    if mode == "auto":
        mode = "float16" if tf.config.list_physical_devices("GPU") else "off"
    policy = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[mode]
    keras.mixed_precision.set_global_policy(policy)
    log.info("precision policy: %s", policy)


def _validation_arrays(data: AnnotatedSlices, size: int, settings: TrainingSettings):
    rng = np.random.default_rng(settings.seed + 1)  # fixed crops for large slices
    pairs = [
        prepare_sample(image, labels, size=size, task=settings.task, crop=settings.crop, rng=rng)
        for image, labels in zip(data.images, data.labels, strict=True)
    ]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class _TrainingBatches:
    """Endless augmented batches, fed through tf.data so augmentation overlaps training."""

    def __init__(self, data: AnnotatedSlices, size: int, settings: TrainingSettings):
        self.data = data
        self.size = size
        self.settings = settings
        self.steps = max(1, math.ceil(len(data) / settings.batch_size))

    def batches(self):
        rng = np.random.default_rng(self.settings.seed)
        batch = self.settings.batch_size
        while True:
            order = rng.permutation(len(self.data))
            for start in range(0, len(order), batch):
                # the last batch of an epoch is topped up by repeating its samples
                index = np.resize(order[start : start + batch], batch)
                pairs = [self._sample(i, rng) for i in index]
                yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _sample(self, i: int, rng: np.random.Generator):
        return prepare_sample(
            self.data.images[i],
            self.data.labels[i],
            size=self.size,
            task=self.settings.task,
            crop=self.settings.crop,
            augmentation=self.settings.augmentation,
            rng=rng,
        )

    def as_dataset(self):
        import tensorflow as tf

        spec = tf.TensorSpec((self.settings.batch_size, self.size, self.size, 3), tf.float32)
        target = tf.TensorSpec((self.settings.batch_size, self.size, self.size, 1), tf.float32)
        dataset = tf.data.Dataset.from_generator(self.batches, output_signature=(spec, target))
        return dataset.prefetch(2)


def read_training_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of the CSV log, one per epoch (the last entry wins if a resumed run repeated one)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            rows[int(values["epoch"])] = values
    return [rows[e] for e in sorted(rows)]


def _best_logged(path: Path) -> float | None:
    history = read_training_log(path)
    scores = [row[MONITOR] for row in history if MONITOR in row]
    return max(scores) if scores else None


def plot_training_curve(log_csv: str | Path, png: str | Path, *, title: str = "") -> None:
    """Loss and IoU per epoch, training and validation, with the best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_training_log(log_csv)
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    if history:
        epochs = [row["epoch"] + 1 for row in history]
        for key, style in (("loss", "-"), ("val_loss", "--")):
            ax_loss.plot(epochs, [r.get(key, np.nan) for r in history], style, label=key)
        for key, style in (("iou", "-"), ("val_iou", "--")):
            ax_iou.plot(epochs, [r.get(key, np.nan) for r in history], style, label=key)
        best = max(history, key=lambda r: r.get(MONITOR, -1))
        ax_iou.axvline(best["epoch"] + 1, color="grey", lw=0.8, label="best model")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_iou.set(xlabel="epoch", ylabel="IoU (threshold 0.5)", title="IoU", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value
