"""Every setting of the pipeline, typed: frozen dataclasses filled from the config schema.

``config.schema.yaml`` beside this module (``workflow/schemas/config.schema.yaml`` links to it)
is the one place where a setting of ``config/config.yaml`` is described, typed, constrained and
defaulted. The dataclasses here take their defaults and allowed values from it and check every
instance against it, so the workflow (``workflow/rules/common.smk``), the command line, the
library and the CTC executables read the same settings with the same defaults.

Only the standard library, PyYAML and jsonschema are imported (Snakemake needs both itself),
so the Snakefile parses in an environment that holds nothing but Snakemake.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class SettingsError(ValueError):
    """A setting is missing, unknown or out of range; the message names its key.

    ``problems``: one ``key: what is wrong`` line per problem found.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [message])

    @classmethod
    def listing(cls, title: str, problems: list[str]) -> SettingsError:
        """``title: problem`` on one line, or the problems below the title, one per line."""
        if len(problems) == 1:
            return cls(f"{title}: {problems[0]}", problems)
        return cls(f"{title}:\n" + "\n".join(f"  {p}" for p in problems), problems)


# --- the schema -----------------------------------------------------------------------------


@functools.cache
def schema() -> dict[str, Any]:
    """The config schema (parsed once per process)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(SCHEMA_PATH.read_text(), Loader=loader)


def _property(definition: str, key: str) -> dict[str, Any]:
    return schema()["$defs"][definition]["properties"][key]


def schema_default(definition: str, key: str) -> Any:
    """Default of ``key`` in the schema's ``$defs/<definition>`` (lists become tuples)."""
    value = _property(definition, key)["default"]
    return tuple(value) if isinstance(value, list) else value


def definition_default(definition: str) -> Any:
    """Default of the schema's ``$defs/<definition>`` itself."""
    return copy.deepcopy(schema()["$defs"][definition]["default"])


def allowed_values(definition: str, key: str | None = None) -> tuple:
    """The ``enum`` of ``$defs/<definition>`` (or of its property ``key``)."""
    node = schema()["$defs"][definition] if key is None else _property(definition, key)
    return tuple(node["enum"])


@functools.cache
def _validator(definition: str | None, key: str | None = None):
    """A validator of ``$defs/<definition>`` (or of its property ``key``; None: the config)."""
    import jsonschema

    root = schema()
    if definition is None:
        target = root
    elif key is None:
        target = {"$ref": f"#/$defs/{definition}"}
    else:
        target = _property(definition, key)
    return jsonschema.Draft202012Validator({**target, "$defs": root["$defs"]})


def check_against_schema(values: Any, definition: str | None, where: str) -> None:
    """Raise :class:`SettingsError` listing every way ``values`` breaks ``$defs/<definition>``
    (the whole config for None), each line naming the key below ``where``."""
    errors = sorted(
        _validator(definition).iter_errors(_jsonable(values)), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = [f"{_key_path(where, e.absolute_path)}: {e.message}" for e in errors]
        raise SettingsError.listing("invalid settings", lines)


def _key_path(where: str, path) -> str:
    return ".".join([where, *map(str, path)] if where else list(map(str, path))) or "(top)"


def _jsonable(value: Any) -> Any:
    """Dataclasses, tuples and paths as the JSON values the schema describes."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class _Settings:
    """Common behaviour: checked against the schema on creation, to and from plain dicts.

    ``_definition`` names the schema's ``$defs`` entry; fields listed in ``_internal`` are set by
    the code, not by the config, and are left out of the check (each class checks them itself).
    Lists given for tuple fields become tuples, so settings read from JSON or YAML compare equal
    to the defaults.
    """

    _definition: ClassVar[str]
    _key: ClassVar[str | None] = None  # the config key, where it differs from _definition
    _internal: ClassVar[tuple[str, ...]] = ()
    _nested: ClassVar[dict[str, type]] = {}

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list) and str(f.type).startswith("tuple"):
                object.__setattr__(self, f.name, tuple(value))
        check_against_schema(self.config_dict(), self._definition, self._key or self._definition)

    def config_dict(self) -> dict[str, Any]:
        """The settings the config can hold (no internal fields), as JSON values."""
        return {k: v for k, v in self.to_dict().items() if k not in self._internal}

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(
                f"unknown {cls._key or cls._definition} setting(s) {unknown}; known: "
                f"{sorted(known - set(cls._internal))}"
            )
        values = dict(values)
        for name, kind in cls._nested.items():
            if isinstance(values.get(name), dict):
                values[name] = kind.from_dict(values[name])
        return cls(**values)


# --- networks -------------------------------------------------------------------------------

TASKS = ("segmentation", "centres")  # the networks a dataset can use
TRAINING_SETS = allowed_values("training_set")
PRESET_NAMES = allowed_values("model_preset")


@dataclass(frozen=True)
class ModelConfig(_Settings):
    """Architecture of one EfficientCellSeg network (stored beside the model as JSON).

    The defaults are the paper's network (Wagner & Rohr 2022): EfficientNetB5 cut at
    ``block6a_expand_activation``, skips from ``block4a/3a_expand_activation``,
    ``block1a_activation`` and the resized input, decoder stages of 64/48/32/16 filters.
    ``skip_layers`` are listed deepest first; the resized input image is always the last skip,
    so there is one decoder stage per skip layer plus one.
    """

    _definition: ClassVar[str] = "model_settings"
    _key: ClassVar[str] = "model"

    architecture: str = "efficientcellseg"
    backbone: str = "EfficientNetB5"
    input_size: int = 384
    cut_layer: str = "block6a_expand_activation"
    skip_layers: tuple[str, ...] = (
        "block4a_expand_activation",
        "block3a_expand_activation",
        "block1a_activation",
    )
    decoder_filters: tuple[int, ...] = (64, 48, 32, 16)
    # Pseudocolor in [0, 1] is multiplied by this before the backbone's own 1/255 rescaling and
    # ImageNet normalisation. The published models used 1.0; 255.0 matches what ImageNet
    # weights expect.
    input_scale: float = 1.0
    # "imagenet", a weights file, or None (random). Missing ImageNet weights stop a run: a
    # model never silently starts from random weights (see model.resolve_encoder_weights).
    encoder_weights: str | None = "imagenet"
    # architecture "unet" only: filters of each level, top to bottom (one pooling between two)
    unet_filters: tuple[int, ...] = (64, 128, 256, 512, 1024)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.architecture == "unet":
            poolings = len(self.unet_filters) - 1
            if self.input_size % 2**poolings:
                raise SettingsError(
                    f"model input_size {self.input_size} must be divisible by 2**{poolings} "
                    "(one halving per U-Net level)"
                )
            if self.encoder_weights not in (None, "", "none"):
                raise SettingsError(
                    "a U-Net has no pretrained encoder: set model encoder_weights to null"
                )
            return
        stages = len(self.decoder_filters)
        if self.input_size % 2**stages:
            raise SettingsError(
                f"model input_size {self.input_size} must be divisible by 2**{stages} "
                "(one halving per decoder stage)"
            )
        if stages != len(self.skip_layers) + 1:
            raise SettingsError(
                f"{stages} decoder stages need {stages - 1} skip layers (the input image is the "
                f"last skip), got {len(self.skip_layers)}"
            )

    @property
    def label(self) -> str:
        """A short description for score tables, e.g. ``EfficientCellSeg B0/128``."""
        if self.architecture == "unet":
            filters = f"{self.unet_filters[0]}-{self.unet_filters[-1]}"
            return f"U-Net {filters}/{self.input_size}"
        return f"EfficientCellSeg {self.backbone.removeprefix('EfficientNet')}/{self.input_size}"


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    # Same code path, ~150k parameters: for tests, the demo and quick experiments on a CPU.
    "tiny": ModelConfig(
        backbone="EfficientNetB0",
        input_size=128,
        cut_layer="block4a_expand_activation",
        skip_layers=("block3a_expand_activation", "block2a_expand_activation"),
        decoder_filters=(16, 16, 8),
        input_scale=255.0,
        encoder_weights=None,
    ),
    # Baselines for the parameter efficiency of EfficientCellSeg (same input, training and
    # post-processing): the classic U-Net of Ronneberger et al. 2015 (with batch norms and
    # "same" padding), and a sixteenth of it at the tiny network's input size.
    "unet": ModelConfig(architecture="unet", encoder_weights=None),
    "unet-small": ModelConfig(
        architecture="unet",
        input_size=128,
        unet_filters=(16, 32, 64, 128, 256),
        encoder_weights=None,
    ),
}
assert set(PRESETS) == set(PRESET_NAMES), "config.schema.yaml and PRESETS name other presets"


def resolve_model(spec: str | os.PathLike | dict | ModelConfig) -> ModelConfig:
    """A :class:`ModelConfig` from a preset name, a JSON/YAML file, a dict or a config."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        values = dict(spec)
        base = values.pop("preset", None)
        if base is not None:
            return ModelConfig.from_dict({**resolve_model(base).to_dict(), **values})
        return ModelConfig.from_dict(values)
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise SettingsError(
            f"model {str(spec)!r} is neither a preset ({', '.join(PRESETS)}) nor a settings file"
        )
    import yaml

    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: expected a mapping of model settings (key: value lines)")
    return resolve_model(values)


@dataclass(frozen=True)
class ImagenetFile:
    """One backbone's ImageNet weights file (no top): its address and pinned checksum."""

    backbone: str
    url: str
    checksum: str  # "sha256:<hex>" or "md5:<hex>"
    bytes: int | None = None

    @property
    def file_name(self) -> str:
        """The name Keras gives the file, e.g. ``efficientnetb5_notop.h5``."""
        return f"{self.backbone.lower()}_notop.h5"


@dataclass(frozen=True)
class ImagenetWeights(_Settings):
    """Where encoders configured with ``encoder_weights: imagenet`` get their weights.

    The defaults are Keras' own download address and the checksums Keras pins (MD5: Keras
    publishes no SHA-256 for these files). ``files`` given in the config replace the default
    entry of their backbone only.
    """

    _definition: ClassVar[str] = "imagenet_weights"

    url: str = schema_default("imagenet_weights", "url")
    files: dict[str, dict[str, Any]] = field(
        default_factory=lambda: copy.deepcopy(schema_default("imagenet_weights", "files"))
    )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImagenetWeights:
        values = dict(values)
        values["files"] = {**cls().files, **values.get("files", {})}
        return super().from_dict(values)

    def file(self, backbone: str) -> ImagenetFile:
        if backbone not in self.files:
            raise SettingsError(
                f"imagenet_weights.files has no entry for {backbone}; known: {sorted(self.files)}"
            )
        entry = self.files[backbone]
        name = f"{backbone.lower()}_notop.h5"
        return ImagenetFile(backbone, self.url + name, entry["checksum"], entry.get("bytes"))


# --- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation(_Settings):
    """Random geometric and intensity changes applied to each training sample."""

    _definition: ClassVar[str] = "augmentation"

    flips: bool = schema_default("augmentation", "flips")
    rotations: bool = schema_default("augmentation", "rotations")  # multiples of 90 degrees
    scale_range: tuple[float, float] = schema_default("augmentation", "scale_range")
    gamma_range: tuple[float, float] = schema_default("augmentation", "gamma_range")
    gain_range: tuple[float, float] = schema_default("augmentation", "gain_range")

    @classmethod
    def none(cls) -> Augmentation:
        return cls(False, False, (1.0, 1.0), (1.0, 1.0), (1.0, 1.0))


def _training(key: str) -> Any:
    return schema_default("training", key)


@dataclass(frozen=True)
class TrainingSettings(_Settings):
    """How to train one network (the paper leaves most of these unpublished)."""

    _definition: ClassVar[str] = "training"
    _internal: ClassVar[tuple[str, ...]] = ("task", "training_set")
    _nested: ClassVar[dict[str, type]] = {"augmentation": Augmentation}

    task: str = TASKS[0]
    training_set: str = definition_default("training_set")
    epochs: int = _training("epochs")
    batch_size: int = _training("batch_size")
    steps_per_epoch: int | None = _training("steps_per_epoch")  # None: one pass over the data
    learning_rate: float = _training("learning_rate")
    reduce_lr_patience: int = _training("reduce_lr_patience")
    reduce_lr_factor: float = _training("reduce_lr_factor")
    early_stop_patience: int = _training("early_stop_patience")
    validation_fraction: float = _training("validation_fraction")
    focal_gamma: float = _training("focal_gamma")
    batchnorm_momentum: float | None = _training("batchnorm_momentum")
    crop: int | None = _training("crop")  # random square crops (slice pixels) for tiled data
    augmentation: Augmentation = field(default_factory=Augmentation)
    # auto: float32 on every device (see training.precision_policy).
    mixed_precision: str = _training("mixed_precision")
    seed: int = _training("seed")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise SettingsError(f"task {self.task!r} is not one of {TASKS}")
        if self.training_set not in TRAINING_SETS:
            raise SettingsError(f"training set {self.training_set!r} is not one of {TRAINING_SETS}")


# --- inference ------------------------------------------------------------------------------

BACKENDS = allowed_values("inference", "backend")
PRECISIONS = allowed_values("inference", "precision")


@dataclass(frozen=True)
class InferenceSettings(_Settings):
    """How trained networks are run: runtime, numeric precision, batch and CPU threads."""

    _definition: ClassVar[str] = "inference"
    _internal: ClassVar[tuple[str, ...]] = ("threads",)

    backend: str = schema_default("inference", "backend")
    batch_size: int = schema_default("inference", "batch_size")
    precision: str = schema_default("inference", "precision")
    threads: int | None = None  # CPU threads; None: every core this process may use


@dataclass(frozen=True)
class TileSettings(_Settings):
    """Square tiles of ``size`` slice pixels, neighbours overlapping by at least ``overlap``.

    Each tile is resized to the network's input size inside the network, so ``size`` sets the
    scale the network sees (TRIC: 1024-pixel tiles of 1745x2440 slices, 2 x 3 tiles).
    """

    _definition: ClassVar[str] = "tiles"

    size: int
    overlap: int = schema_default("tiles", "overlap")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overlap >= self.size // 2:
            raise SettingsError(
                f"tiles.overlap {self.overlap} must be less than half the tile size {self.size}"
            )


# --- post-processing ------------------------------------------------------------------------

KINDS = allowed_values("postprocess", "kind")


def _postprocess(key: str) -> Any:
    return schema_default("postprocess", key)


@dataclass(frozen=True)
class PostprocessSettings(_Settings):
    """How probability maps become instance masks (see :mod:`efficientcellseg.postprocess`).

    ``foi_border`` is the dataset's CTC field-of-interest border E: objects with no pixel in
    [E, H-E) x [E, W-E) are dropped, as the CTC annotations ignore them.
    """

    _definition: ClassVar[str] = "postprocess"
    _internal: ClassVar[tuple[str, ...]] = ("foi_border",)

    kind: str
    threshold: float = _postprocess("threshold")
    centre_threshold: float = _postprocess("centre_threshold")
    min_area: int = _postprocess("min_area")
    min_volume: int = _postprocess("min_volume")
    footprint: int = _postprocess("footprint")
    foi_border: int = schema_default("dataset", "foi_border")
    link_iou: float = _postprocess("link_iou")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_property("dataset", "foi_border", self.foi_border)

    @property
    def networks(self) -> tuple[str, ...]:
        """The networks this post-processing reads: segmentation, plus centres for ``centres``."""
        return TASKS if self.kind == "centres" else TASKS[:1]


def _check_property(definition: str, key: str, value: Any) -> None:
    for error in _validator(definition, key).iter_errors(value):
        raise SettingsError(f"{key}: {error.message}")


@dataclass(frozen=True)
class PipelineSettings:
    """What a model folder needs besides its networks to turn frames into masks
    (``pipeline.json``): post-processing and tiling."""

    postprocess: PostprocessSettings
    tiles: TileSettings | None = None

    @property
    def networks(self) -> tuple[str, ...]:
        return self.postprocess.networks

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineSettings:
        tiles = values.get("tiles")
        return cls(
            postprocess=PostprocessSettings.from_dict(values["postprocess"]),
            tiles=TileSettings.from_dict(tiles) if tiles else None,
        )


# --- data -----------------------------------------------------------------------------------


def _synthetic(key: str) -> Any:
    return schema_default("synthetic", key)


@dataclass(frozen=True)
class SyntheticSpec(_Settings):
    """Size and look of a synthetic dataset. Defaults give a dataset in about a second."""

    _definition: ClassVar[str] = "synthetic"
    _internal: ClassVar[tuple[str, ...]] = (
        "radius_xy",
        "radius_z",
        "touching_fraction",
        "drift",
        "background",
        "brightness",
        "z_falloff",
        "blur_xy",
        "blur_z",
        "noise",
    )

    seed: int = _synthetic("seed")
    ndim: int = _synthetic("ndim")
    n_sequences: int = _synthetic("n_sequences")
    n_frames: int = _synthetic("n_frames")
    depth: int = _synthetic("depth")
    height: int = _synthetic("height")
    width: int = _synthetic("width")
    n_objects: int = _synthetic("n_objects")
    radius_xy: tuple[float, float] = (8.0, 13.0)
    radius_z: tuple[float, float] = (2.0, 3.5)
    touching_fraction: float = 0.3
    drift: float = 1.5
    background: float = 100.0
    brightness: tuple[float, float] = (500.0, 900.0)
    z_falloff: float = 0.8
    blur_xy: float = 1.2
    blur_z: float = 0.8
    noise: float = 25.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ndim == 3 and self.depth < 2 * self.radius_z[1] + 1:
            raise SettingsError(
                f"depth {self.depth} is too small for objects of z radius up to "
                f"{self.radius_z[1]}: use at least {int(2 * self.radius_z[1] + 1)} slices"
            )
        if min(self.height, self.width) < 2 * self.radius_xy[1] + 4:
            raise SettingsError(
                f"{self.height}x{self.width} is too small for objects of radius up to "
                f"{self.radius_xy[1]}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        if self.ndim == 2:
            return (self.height, self.width)
        return (self.depth, self.height, self.width)


# --- the workflow's datasets ----------------------------------------------------------------


TEST_SET_SOURCES = ("ctc", "local")  # sources whose challenge set ctc_server serves


@dataclass(frozen=True)
class DatasetSettings:
    """Everything the workflow needs to know about one dataset of the config."""

    name: str
    ctc_name: str
    source: str
    sequences: tuple[str, ...]
    model: ModelConfig
    training: TrainingSettings
    inference: InferenceSettings
    pipeline: PipelineSettings
    download_bytes: int | None = None
    path: str | None = None  # source local: the dataset folder on disk
    test_path: str | None = None  # the challenge set on disk (else downloaded)
    score_against: str = schema_default("dataset", "score_against")
    det_penalise_fp: bool = schema_default("dataset", "det_penalise_fp")
    synthetic: SyntheticSpec | None = None

    @property
    def training_set(self) -> str:
        return self.training.training_set

    @property
    def dataset_dir(self) -> str:
        """The training set: a folder on disk (source local) or under resources/ctc."""
        return self.path if self.source == "local" else f"resources/ctc/{self.ctc_name}"

    @property
    def test_dataset_dir(self) -> str:
        """The challenge (test) set: a folder on disk, or downloaded into resources/ctc-test."""
        if self.test_path is not None:
            return self.test_path
        if self.source not in TEST_SET_SOURCES:
            raise SettingsError(
                f"datasets.{self.name}: source {self.source} has no challenge (test) set to "
                f"download; give test_path (a folder holding 01/, 02/ ...) or leave "
                f"{self.name} out of submission"
            )
        return f"resources/ctc-test/{self.ctc_name}"

    @property
    def networks(self) -> tuple[str, ...]:
        """Networks the dataset needs: segmentation, plus centres for that post-processing."""
        return self.pipeline.networks

    def training_settings(self, task: str) -> TrainingSettings:
        return replace(self.training, task=task)

    def training_sequences(self, fold: str) -> list[str]:
        """Sequences the models of ``fold`` learn from: all, or all but the held-out one."""
        if fold == "all":
            return list(self.sequences)
        held_out = fold.removeprefix("without-")
        if not fold.startswith("without-") or held_out not in self.sequences:
            raise SettingsError(
                f"{self.name}: fold {fold!r} is not 'all' or 'without-<seq>' with <seq> in "
                f"{list(self.sequences)}"
            )
        return [s for s in self.sequences if s != held_out]


@dataclass(frozen=True)
class WorkflowSettings:
    """The whole workflow config: every dataset, and those of the CTC submission."""

    datasets: dict[str, DatasetSettings]
    submission: tuple[str, ...] = ()
    ctc_server: str = schema()["properties"]["ctc_server"]["default"]
    imagenet_weights: ImagenetWeights = field(default_factory=ImagenetWeights)
    submission_wheelhouse: tuple[str, ...] = tuple(
        schema()["properties"]["submission_wheelhouse"]["default"]
    )

    def submission_datasets(self) -> list[DatasetSettings]:
        return [self.datasets[name] for name in self.submission]


def workflow_settings(
    config: dict[str, Any],
    source: str = "the workflow config (config/config.yaml and any --configfile)",
) -> WorkflowSettings:
    """Check the workflow config (read from ``source``) against the schema, listing every
    problem with its key path, and return it typed, each dataset merged over ``defaults``."""
    try:
        check_against_schema(config, None, "")
    except SettingsError as exc:
        raise SettingsError.listing(f"{source} is not valid", exc.problems) from None
    datasets = {name: dataset_settings(config, name) for name in config["datasets"]}
    submission = tuple(config.get("submission", schema()["properties"]["submission"]["default"]))
    unknown = [name for name in submission if name not in datasets]
    if unknown:
        raise SettingsError(
            f"submission: {unknown} not among the configured datasets {sorted(datasets)}"
        )
    return WorkflowSettings(
        datasets=datasets,
        submission=submission,
        ctc_server=config.get("ctc_server", WorkflowSettings.ctc_server),
        imagenet_weights=ImagenetWeights.from_dict(config.get("imagenet_weights", {})),
        submission_wheelhouse=tuple(
            config.get("submission_wheelhouse", WorkflowSettings.submission_wheelhouse)
        ),
    )


def dataset_settings(config: dict[str, Any], name: str) -> DatasetSettings:
    """Merged, typed settings of dataset ``name`` (an entry of the validated config)."""
    datasets = config.get("datasets", {})
    entry = _merge(config.get("defaults", {}), _dataset_entry(datasets, name))
    where = f"datasets.{name}"
    if "path" in entry and entry["source"] != "local":
        raise SettingsError(
            f"{where}.path: only datasets of source local have a path (this one is "
            f"{entry['source']}); set source: local or remove path"
        )
    try:
        training = TrainingSettings.from_dict(
            {**entry.get("training", {}), "training_set": _dataset_default(entry, "training_set")}
        )
        tiles = entry.get("tiles")
        synthetic = entry.get("synthetic")
        return DatasetSettings(
            name=name,
            ctc_name=entry["ctc_name"],
            source=entry["source"],
            sequences=tuple(_dataset_default(entry, "sequences")),
            model=resolve_model(_dataset_default(entry, "model")),
            training=training,
            inference=InferenceSettings.from_dict(entry.get("inference", {})),
            pipeline=PipelineSettings(
                postprocess=PostprocessSettings.from_dict(
                    {**entry["postprocess"], "foi_border": _dataset_default(entry, "foi_border")}
                ),
                tiles=TileSettings.from_dict(tiles) if tiles else None,
            ),
            download_bytes=entry.get("download_bytes"),
            path=entry.get("path"),
            test_path=entry.get("test_path"),
            score_against=_dataset_default(entry, "score_against"),
            det_penalise_fp=_dataset_default(entry, "det_penalise_fp"),
            synthetic=SyntheticSpec.from_dict(synthetic or {})
            if entry["source"] == "synthetic"
            else None,
        )
    except SettingsError as exc:
        raise SettingsError(f"{where}: {exc}") from None


def _dataset_entry(datasets: dict[str, Any], name: str, seen: tuple[str, ...] = ()) -> dict:
    """A dataset's config entry, on top of the entry it is ``like`` (recursively)."""
    if name not in datasets:
        raise SettingsError(f"dataset {name!r} is not configured; known: {sorted(datasets)}")
    if name in seen:
        raise SettingsError(f"datasets {' -> '.join((*seen, name))}: `like` goes round in a circle")
    entry = dict(datasets[name])
    base = entry.pop("like", None)
    return entry if base is None else _merge(_dataset_entry(datasets, base, (*seen, name)), entry)


def _dataset_default(entry: dict[str, Any], key: str) -> Any:
    if key in entry:
        return entry[key]
    node = schema()["$defs"]["dataset"]["properties"][key]
    if "$ref" in node:
        return definition_default(node["$ref"].rsplit("/", 1)[1])
    return copy.deepcopy(node["default"])


def _merge(base: dict, override: dict) -> dict:
    """Deep merge of mappings; ``override`` wins. A model given as a string replaces a mapping."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
