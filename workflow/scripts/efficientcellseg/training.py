"""Training one EfficientCellSeg network: segmentation (Dice loss) or cell centres (focal loss).

Adam with learning-rate reduction on plateau, the best model kept by validation IoU, early
stopping and a fixed seed, as in the paper. Writes the model with its configuration (JSON
sidecar), a CSV log and a PNG curve of loss and IoU per epoch.

Every epoch ends with a checkpoint (weights, optimiser state and the state of the schedule:
learning rate, plateau and early-stopping counters, best score), written atomically after the
epoch's log line and best model. A run that is interrupted - killed, out of time, a crashed
node - resumes at the epoch after its last checkpoint when started again with the same settings
and data, instead of starting over; the augmentation of every epoch depends only on the seed
and the epoch number, so a resumed run sees the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import ctc
from .files import atomic_output, atomic_write_text
from .model import (
    EncoderInitialisation,
    build_model,
    load_model,
    parameter_counts,
    read_metadata,
    resolve_encoder_weights,
    save_model,
)
from .settings import DatasetSettings, ModelConfig, TrainingSettings
from .training_data import (
    AnnotatedSlices,
    collect_annotated_slices,
    load_annotated_slices,
    prepare_sample,
    save_annotated_slices,
    select_training_set,
    validation_split,
)
from .versions import CODE_VERSIONS

log = logging.getLogger(__name__)

MONITOR = "val_iou"
LOG_COLUMNS = ("epoch", "loss", "iou", "val_loss", "val_iou", "learning_rate", "seconds")
CHECKPOINT_PREFIX = "epoch-"
MIN_LOSS_IMPROVEMENT = 1e-4  # smaller val_loss decreases count as a plateau


@dataclass(frozen=True)
class TrainingOutputs:
    """Where one network's training writes: the model (``.keras`` + ``.json`` sidecar), its
    CSV log and PNG curve, and the checkpoint folder an interrupted run resumes from."""

    model: Path
    log_csv: Path
    curve_png: Path
    checkpoint_dir: Path

    @classmethod
    def in_folder(cls, model_dir: str | Path, task: str) -> TrainingOutputs:
        """The files of network ``task`` in a model folder, named as the workflow names them."""
        model_dir = Path(model_dir)
        return cls(
            model=model_dir / f"{task}.keras",
            log_csv=model_dir / f"{task}_log.csv",
            curve_png=model_dir / f"{task}_curve.png",
            checkpoint_dir=model_dir / f".{task}_checkpoint",
        )


def train_model_folder(
    dataset_dir: str | Path,
    model_dir: str | Path,
    dataset: DatasetSettings,
    *,
    sequences: list[str] | None = None,
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """A complete model folder from a CTC dataset, without Snakemake: the same steps as the
    workflow's pseudocolor, train and pipeline_settings rules, one after the other.

    The pseudocolored slices of each sequence are kept in ``MODEL_DIR/.slices`` until every
    network is trained, and each network resumes from its checkpoint, so running the same
    command again after an interruption continues where it stopped. A network is kept only
    if it was trained with the same settings on the same files (frames and annotations, by
    SHA-256), so training another dataset into the same folder trains again. Returns the
    metadata of each network.
    """
    from .segment import write_pipeline_settings

    encoder = resolve_encoder_weights(dataset.model)  # missing weights stop before any work
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    ctc.check_output(model_dir, inputs=[dataset_dir], folder=True)
    sequences = sequences or ctc.discover_sequences(dataset_dir)
    sources = training_sources(dataset_dir, sequences)
    cache, stamp = model_dir / ".slices", model_dir / ".slices" / "sources"
    if cache.exists() and not (stamp.is_file() and stamp.read_text() == sources):
        shutil.rmtree(cache)  # slices of other files
    if not cache.exists():
        atomic_write_text(stamp, sources)
    slice_files = []
    for sequence in sequences:
        path = cache / f"{sequence}.npz"
        if not path.is_file():
            save_annotated_slices(path, collect_annotated_slices(dataset_dir, sequence))
        slice_files.append(path)
    metadata = {}
    for task in dataset.networks:
        outputs = TrainingOutputs.in_folder(model_dir, task)
        settings = dataset.training_settings(task)
        done = _finished_network(outputs, dataset.model, settings, sequences, sources)
        metadata[task] = done or train_network(
            slice_files,
            outputs,
            dataset.model,
            settings,
            description={
                "dataset": dataset.name,
                "trained_on_sequences": list(sequences),
                "training_sources": sources,
            },
            threads=threads,
            encoder=encoder,
        )
    write_pipeline_settings(model_dir, dataset.pipeline)
    shutil.rmtree(cache, ignore_errors=True)
    return metadata


def training_sources(dataset_dir: str | Path, sequences: list[str]) -> str:
    """SHA-256 over the files the training slices of ``sequences`` come from: every annotation
    (GT and ST) and the frames it annotates."""
    digest = hashlib.sha256()
    for sequence in sequences:
        seq = ctc.open_sequence(dataset_dir, sequence)
        annotations = [*seq.gt_seg, *seq.st_seg]
        frames = sorted({ann.frame for ann in annotations})
        for path in [*(seq.frames[f] for f in frames), *(ann.path for ann in annotations)]:
            digest.update(f"{sequence}/{path.parent.name}/{path.name}".encode() + b"\0")
            with path.open("rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def _finished_network(
    outputs: TrainingOutputs,
    model_config: ModelConfig,
    settings: TrainingSettings,
    sequences,
    sources: str,
) -> dict[str, Any] | None:
    """The metadata of a network already trained with these settings on these files."""
    if not (outputs.model.is_file() and outputs.model.with_suffix(".onnx").is_file()):
        return None
    try:
        metadata = read_metadata(outputs.model)
    except (FileNotFoundError, ValueError):
        return None
    same = (
        metadata.get("model_config") == model_config.to_dict()
        and metadata.get("training") == settings.to_dict()
        and metadata.get("trained_on_sequences") == list(sequences)
        and metadata.get("code_version") == CODE_VERSIONS["training"]
        and metadata.get("training_sources") == sources
    )
    if same:
        log.info("%s is trained with these settings already: kept", outputs.model)
    return metadata if same else None


def train_network(
    slices_paths: list[str | Path],
    outputs: TrainingOutputs,
    model_config: ModelConfig,
    settings: TrainingSettings,
    *,
    description: dict[str, Any] | None = None,
    threads: int | None = None,
    encoder: EncoderInitialisation | None = None,
) -> dict[str, Any]:
    """:func:`train`, then export the model to ONNX beside it (what inference on a CPU reads)."""
    from .inference import export_onnx

    metadata = train(
        slices_paths,
        outputs,
        model_config,
        settings,
        description=description,
        threads=threads,
        encoder=encoder,
    )
    export_onnx(outputs.model)
    return metadata


def train(
    slices_paths: list[str | Path],
    outputs: TrainingOutputs,
    model_config: ModelConfig,
    settings: TrainingSettings,
    *,
    description: dict[str, Any] | None = None,
    threads: int | None = None,
    encoder: EncoderInitialisation | None = None,
) -> dict[str, Any]:
    """Train one network on the stored annotated slices and save the best model.

    Resumes from ``outputs.checkpoint_dir`` when it holds a checkpoint of the same settings
    and data. ``encoder`` is what the encoder starts from (default:
    :func:`~efficientcellseg.model.resolve_encoder_weights` of ``model_config``, which stops at
    once when requested ImageNet weights are missing). Returns the metadata written beside the
    model (configuration, encoder initialisation, parameter counts, best epoch and validation
    IoU, epochs run, number of samples).
    """
    import keras

    encoder = encoder or resolve_encoder_weights(model_config)
    log.info("encoder starts from %s", encoder.describe())

    if threads:
        from .inference import set_tensorflow_threads

        set_tensorflow_threads(threads)
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
    batches = _TrainingBatches(data.subset(train_index), size, settings)
    steps = settings.steps_per_epoch or batches.steps_per_pass
    val_x, val_y = validation_arrays(data.subset(val_index), size, settings)

    checkpoints = _Checkpoints(outputs.checkpoint_dir, _fingerprint(model_config, settings, data))
    state = checkpoints.latest_state()
    keras.utils.set_random_seed(settings.seed)
    model = _compiled_model(model_config, settings, encoder)
    # Saved models are float32 whatever the training precision: a copy built with the default
    # policy receives the weights of every new best epoch (so its own start does not matter).
    export = build_model(model_config, name=settings.task, encoder=EncoderInitialisation("random"))
    if state is None:
        checkpoints.start_over()
        state = _ScheduleState(learning_rate=settings.learning_rate)
    else:
        checkpoints.restore(model, state)
        log.info(
            "resuming at epoch %d from %s (best %s %.4f at epoch %d)",
            state.epoch + 2,
            checkpoints.folder,
            MONITOR,
            state.best_score,
            state.best_epoch + 1,
        )
    initial_epoch = state.epoch + 1
    schedule = _Schedule(settings, state, checkpoints, export)
    if initial_epoch < settings.epochs and not state.stopped:
        model.fit(
            batches.as_dataset(first_epoch=initial_epoch, steps_per_epoch=steps),
            steps_per_epoch=steps,
            epochs=settings.epochs,
            initial_epoch=initial_epoch,
            validation_data=(val_x, val_y),
            validation_batch_size=settings.batch_size,
            callbacks=[keras.callbacks.TerminateOnNaN(), schedule.callback(model)],
            verbose=1 if sys.stderr.isatty() else 0,
        )
        if model.stop_training and not state.stopped:
            raise RuntimeError(
                f"{settings.task} training diverged (loss became NaN) in epoch "
                f"{state.epoch + 2}; lower the learning rate ({settings.learning_rate})"
            )
    history = read_training_log(checkpoints.log_csv)
    if not checkpoints.best_model.is_file() or not history:
        raise RuntimeError(
            f"training produced no model in {checkpoints.best_model}; see {checkpoints.log_csv}"
        )
    best_model = load_model(checkpoints.best_model)
    best = best_row(history)
    metadata = {
        "task": settings.task,
        "model_config": model_config.to_dict(),
        "encoder_initialisation": encoder.to_dict(),
        "parameters": parameter_counts(best_model, model_config),
        "training": settings.to_dict(),
        "code_version": CODE_VERSIONS["training"],
        "best_epoch": int(best["epoch"]),
        "best_val_iou": float(best.get(MONITOR, math.nan)),
        "epochs_run": len(history),
        "resumed_at_epoch": initial_epoch or None,
        "n_train_slices": len(train_index),
        "n_val_slices": len(val_index),
        "trained_on": sorted({str(s) for s in data.sequences}),
        **(description or {}),
    }
    save_model(best_model, outputs.model, metadata)
    with atomic_output(outputs.log_csv) as tmp:
        shutil.copyfile(checkpoints.log_csv, tmp)
    plot_training_curve(
        outputs.log_csv,
        outputs.curve_png,
        best_epoch=metadata["best_epoch"],
        title=f"{settings.task} model",
    )
    shutil.rmtree(checkpoints.folder, ignore_errors=True)
    log.info(
        "saved %s (best %s %.4f at epoch %d of %d)",
        outputs.model,
        MONITOR,
        metadata["best_val_iou"],
        metadata["best_epoch"] + 1,
        metadata["epochs_run"],
    )
    return metadata


def _compiled_model(
    model_config: ModelConfig, settings: TrainingSettings, encoder: EncoderInitialisation
):
    """The network to train, in the requested precision, compiled with its loss and metric."""
    import keras

    from .keras_parts import ThresholdedIoU, dice_loss
    from .model import keep_input_in_float32

    policy = precision_policy(settings.mixed_precision)
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:  # layers keep the policy they were built with; nothing leaks to later models
        model = build_model(model_config, name=settings.task, encoder=encoder)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if policy != "float32":
        keep_input_in_float32(model)
    log.info("precision policy: %s", policy)
    if settings.batchnorm_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = settings.batchnorm_momentum
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
    return model


def precision_policy(mode: str) -> str:
    """Keras dtype policy of a ``mixed_precision`` setting; ``auto`` is float32 on every device.

    Mixed float16 is not made the default on a GPU: training in it has not been measured
    against float32 here (bfloat16 has, on a CPU: tests/integration/test_training.py).
    """
    if mode == "auto":
        mode = "off"
    policies = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
    if mode not in policies:
        raise ValueError(f"mixed_precision {mode!r} is not auto/off/float16/bfloat16")
    return policies[mode]


# --- the schedule: best model, learning rate on plateau, early stop, checkpoints -------------


@dataclass
class _ScheduleState:
    """Everything besides the weights that a resumed run needs (stored in each checkpoint)."""

    learning_rate: float
    epoch: int = -1  # last finished epoch (0-based)
    best_score: float = -math.inf  # best validation IoU so far
    best_epoch: int = -1
    best_val_loss: float = math.inf  # for the learning-rate plateau
    plateau_epochs: int = 0
    stopped: bool = False  # early stopping has ended the run

    def to_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isinf(v) else v)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> _ScheduleState:
        defaults = {"best_score": -math.inf, "best_val_loss": math.inf}
        return cls(
            **{k: defaults[k] if v is None and k in defaults else v for k, v in values.items()}
        )


class _Checkpoints:
    """The checkpoint folder: ``epoch-NNNN/`` (weights + optimiser + state), ``best.keras``,
    ``log.csv`` and ``run.json`` (the fingerprint of settings and data it belongs to).

    It lives beside the outputs, not among them: Snakemake deletes a failed job's outputs but
    not this folder, so a rerun of the job resumes.
    """

    def __init__(self, folder: Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.best_model = self.folder / "best.keras"
        self.log_csv = self.folder / "log.csv"

    def _epoch_dirs(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{CHECKPOINT_PREFIX}[0-9]*") if p.is_dir())

    def latest_state(self) -> _ScheduleState | None:
        """State of the newest complete checkpoint of this run, or None (start over)."""
        dirs = self._epoch_dirs()
        if not dirs:
            return None
        run_file = self.folder / "run.json"
        stored = json.loads(run_file.read_text()) if run_file.is_file() else {}
        if stored.get("fingerprint") != self.fingerprint:
            log.warning(
                "%s holds a checkpoint of other settings or data: starting over", self.folder
            )
            return None
        if not self.best_model.is_file():
            log.warning("%s has no best model: starting over", self.folder)
            return None
        return _ScheduleState.from_json(json.loads((dirs[-1] / "state.json").read_text()))

    def start_over(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        (self.folder / "run.json").write_text(json.dumps({"fingerprint": self.fingerprint}))

    def restore(self, model, state: _ScheduleState) -> None:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(self._epoch_dirs()[-1] / "weights.weights.h5")
        model.optimizer.learning_rate = state.learning_rate
        # A log line of an epoch whose checkpoint was never written goes: it will be rerun.
        rows = [r for r in read_training_log(self.log_csv) if r["epoch"] <= state.epoch]
        _write_log(self.log_csv, rows)

    def save(self, model, state: _ScheduleState) -> None:
        """Write the checkpoint of ``state.epoch`` atomically, then drop the older ones."""
        target = self.folder / f"{CHECKPOINT_PREFIX}{state.epoch:04d}"
        shutil.rmtree(target, ignore_errors=True)
        with atomic_output(target) as tmp:
            tmp.mkdir()
            model.save_weights(tmp / "weights.weights.h5")
            (tmp / "state.json").write_text(json.dumps(state.to_json(), indent=1))
        for old in self._epoch_dirs():
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def save_best(self, export_model) -> None:
        with atomic_output(self.best_model) as tmp:
            export_model.save(tmp)


class _Schedule:
    """What happens after each epoch: log line, best model, learning rate on plateau, early
    stop and, last, the checkpoint (so a checkpoint never claims an epoch whose log line or best
    model is missing)."""

    def __init__(self, settings, state, checkpoints: _Checkpoints, export_model):
        self.settings = settings
        self.state = state
        self.checkpoints = checkpoints
        self.export_model = export_model
        self.min_lr = settings.learning_rate * 1e-3
        self._started = time.perf_counter()

    def callback(self, model):
        import keras

        return keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: self._begin(),
            on_epoch_end=lambda epoch, logs: self.end_epoch(model, epoch, logs or {}),
        )

    def _begin(self) -> None:
        self._started = time.perf_counter()

    def end_epoch(self, model, epoch: int, logs: dict[str, float]) -> None:
        s, settings = self.state, self.settings
        if not math.isfinite(float(logs.get("loss", math.nan))):
            return  # TerminateOnNaN stops the run; no log line or checkpoint of broken weights
        s.epoch = epoch
        score, val_loss = float(logs.get(MONITOR, math.nan)), float(logs["val_loss"])
        row = {
            "epoch": epoch,
            "loss": float(logs["loss"]),
            "iou": float(logs.get("iou", math.nan)),
            "val_loss": val_loss,
            "val_iou": score,
            "learning_rate": s.learning_rate,
            "seconds": round(time.perf_counter() - self._started, 3),
        }
        _append_log(self.checkpoints.log_csv, row)
        note = ""
        if score > s.best_score:
            s.best_score, s.best_epoch = score, epoch
            self.export_model.set_weights(model.get_weights())
            self.checkpoints.save_best(self.export_model)
            note = " (best)"
        if val_loss < s.best_val_loss - MIN_LOSS_IMPROVEMENT:
            s.best_val_loss, s.plateau_epochs = val_loss, 0
        else:
            s.plateau_epochs += 1
            if s.plateau_epochs >= settings.reduce_lr_patience and s.learning_rate > self.min_lr:
                s.learning_rate = max(self.min_lr, s.learning_rate * settings.reduce_lr_factor)
                model.optimizer.learning_rate = s.learning_rate
                s.plateau_epochs = 0
                note += f", learning rate now {s.learning_rate:.3g}"
        if epoch - s.best_epoch >= settings.early_stop_patience:
            s.stopped = True
            model.stop_training = True
            note += f", early stop: no better {MONITOR} for {epoch - s.best_epoch} epochs"
        self.checkpoints.save(model, s)
        log.info(
            "epoch %d/%d: loss %.4f iou %.4f val_loss %.4f %s %.4f, %.1f s%s",
            epoch + 1,
            settings.epochs,
            row["loss"],
            row["iou"],
            val_loss,
            MONITOR,
            score,
            row["seconds"],
            note,
        )


def _fingerprint(model_config: ModelConfig, settings: TrainingSettings, data) -> str:
    """Identity of a run: settings (the epoch budget aside), model and the training slices."""
    values = {**settings.to_dict(), "epochs": None}
    code = CODE_VERSIONS["training"]
    digest = hashlib.sha256(
        json.dumps([model_config.to_dict(), values, code], sort_keys=True, default=str).encode()
    )
    for name in ("sequences", "frames", "slices", "sources"):
        digest.update(np.ascontiguousarray(getattr(data, name)).astype(str).tobytes())
    digest.update(str(data.images.shape).encode())
    digest.update(np.ascontiguousarray(data.labels[:, ::7, ::7]).tobytes())
    return digest.hexdigest()


# --- samples ----------------------------------------------------------------------------------


def validation_arrays(data: AnnotatedSlices, size: int, settings: TrainingSettings):
    """Validation inputs and targets (no augmentation; fixed crops for large slices)."""
    rng = np.random.default_rng([settings.seed, 1])
    pairs = [
        prepare_sample(image, labels, size=size, task=settings.task, crop=settings.crop, rng=rng)
        for image, labels in zip(data.images, data.labels, strict=True)
    ]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class _TrainingBatches:
    """Endless augmented batches, fed through tf.data so augmentation overlaps training.

    The batches of epoch ``e`` are drawn from a generator seeded with (seed, e): the same in an
    uninterrupted and in a resumed run.
    """

    def __init__(self, data: AnnotatedSlices, size: int, settings: TrainingSettings):
        self.data = data
        self.size = size
        self.settings = settings
        self.steps_per_pass = max(1, math.ceil(len(data) / settings.batch_size))

    def batches(self, first_epoch: int, steps_per_epoch: int):
        batch = self.settings.batch_size
        epoch = first_epoch
        while True:
            rng = np.random.default_rng([self.settings.seed, epoch])
            order = np.concatenate(
                [
                    rng.permutation(len(self.data))
                    for _ in range(math.ceil(steps_per_epoch * batch / len(self.data)))
                ]
            )
            for step in range(steps_per_epoch):
                index = order[step * batch : (step + 1) * batch]
                pairs = [self._sample(i, rng) for i in index]
                yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            epoch += 1

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

    def as_dataset(self, first_epoch: int, steps_per_epoch: int):
        import tensorflow as tf

        spec = tf.TensorSpec((self.settings.batch_size, self.size, self.size, 3), tf.float32)
        target = tf.TensorSpec((self.settings.batch_size, self.size, self.size, 1), tf.float32)
        dataset = tf.data.Dataset.from_generator(
            lambda: self.batches(first_epoch, steps_per_epoch), output_signature=(spec, target)
        )
        return dataset.prefetch(2)


# --- the log and the curve -------------------------------------------------------------------


def _append_log(path: Path, row: dict[str, float]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_output(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "epoch": int(row["epoch"])})


def read_training_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of the CSV log, one per epoch (the last entry wins if an epoch appears twice)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            rows[int(values["epoch"])] = values
    return [rows[e] for e in sorted(rows)]


def best_row(history: list[dict[str, float]]) -> dict[str, float]:
    """The log row of the epoch whose model is kept (highest validation IoU, first on ties)."""
    return max(history, key=lambda row: row.get(MONITOR, -math.inf))


def plot_training_curve(
    log_csv: str | Path, png: str | Path, *, best_epoch: int | None = None, title: str = ""
) -> None:
    """Loss and IoU per epoch, training and validation, with the kept model's epoch marked.

    ``best_epoch`` is the model metadata's (counted from 0, as the CSV log's ``epoch``); the
    plot counts epochs from 1, as the training log lines do, and its legend names both.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = training_curve_figure(read_training_log(log_csv), best_epoch, title)
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def training_curve_figure(history: list[dict[str, float]], best_epoch: int | None, title: str):
    """The matplotlib figure of :func:`plot_training_curve`."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    if history:
        epochs = [row["epoch"] + 1 for row in history]
        for key, style in (("loss", "-"), ("val_loss", "--")):
            ax_loss.plot(epochs, [r.get(key, np.nan) for r in history], style, label=key)
        for key, style in (("iou", "-"), ("val_iou", "--")):
            ax_iou.plot(epochs, [r.get(key, np.nan) for r in history], style, label=key)
        best = int(best_row(history)["epoch"]) if best_epoch is None else best_epoch
        label = f"kept model: epoch {best + 1} of {len(history)} (best_epoch {best} in its JSON)"
        ax_iou.axvline(best + 1, color="grey", lw=0.8, label=label)
    ax_loss.set(xlabel="epoch (from 1)", ylabel="loss", title="loss")
    ax_iou.set(xlabel="epoch (from 1)", ylabel="IoU (threshold 0.5)", title="IoU", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
