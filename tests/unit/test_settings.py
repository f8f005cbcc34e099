"""The typed settings layer: defaults and allowed values come from the schema, once."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml

from efficientcellseg import settings
from efficientcellseg.settings import (
    Augmentation,
    ImagenetWeights,
    InferenceSettings,
    ModelConfig,
    PostprocessSettings,
    SettingsError,
    SyntheticSpec,
    TileSettings,
    TrainingSettings,
    workflow_settings,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
# Each settings class and the schema definition that documents it.
CLASSES = {
    "augmentation": Augmentation,
    "training": TrainingSettings,
    "inference": InferenceSettings,
    "tiles": TileSettings,
    "postprocess": PostprocessSettings,
    "synthetic": SyntheticSpec,
    "imagenet_weights": ImagenetWeights,
}


@pytest.mark.parametrize("definition", sorted(CLASSES))
def test_every_schema_key_is_a_field_with_the_schema_default(definition: str) -> None:
    cls = CLASSES[definition]
    properties = settings.schema()["$defs"][definition]["properties"]
    by_name = {f.name: f for f in fields(cls)}
    assert set(properties) <= set(by_name), "schema keys without a settings field"
    for key, spec in properties.items():
        field = by_name[key]
        if "$ref" in spec:  # a nested section, checked with its own class
            continue
        if "default" not in spec:
            assert field.default is MISSING and field.default_factory is MISSING, key
            continue
        default = field.default if field.default_factory is MISSING else field.default_factory()
        if hasattr(default, "to_dict"):
            default = default.to_dict()
        expected = spec["default"]
        assert default == (tuple(expected) if isinstance(expected, list) else expected), key
    extra = set(by_name) - set(properties) - set(cls._internal)
    assert not extra, f"fields not in the schema and not declared internal: {extra}"


def test_allowed_values_come_from_the_schema() -> None:
    inference = settings.schema()["$defs"]["inference"]["properties"]
    assert tuple(inference["backend"]["enum"]) == settings.BACKENDS
    assert tuple(inference["precision"]["enum"]) == settings.PRECISIONS
    assert settings.KINDS == ("single", "distance", "centres")
    assert (
        set(settings.PRESETS)
        == set(settings.PRESET_NAMES)
        == {"paper", "tiny", "unet", "unet-small"}
    )


def test_the_workflow_config_becomes_typed_settings() -> None:
    typed = workflow_settings(CONFIG)
    assert set(typed.datasets) == set(CONFIG["datasets"])
    assert typed.submission == tuple(CONFIG["submission"])
    assert typed.ctc_server == "https://data.celltrackingchallenge.net"
    mda231 = typed.datasets["MDA231"]
    assert mda231.networks == ("segmentation", "centres")
    assert mda231.pipeline.postprocess.foi_border == 25
    assert mda231.inference == InferenceSettings()  # every key from the schema's defaults
    assert mda231.model == settings.PRESETS["paper"]
    assert mda231.training_settings("centres").task == "centres"
    assert typed.datasets["A549"].networks == ("segmentation",)
    synthetic = typed.datasets["synthetic"]
    assert synthetic.synthetic == SyntheticSpec()
    assert synthetic.training.epochs == 16 and synthetic.training.training_set == "GT"
    assert synthetic.training_sequences("without-01") == ["02"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"submission": ["NOPE"]}, r"submission: \['NOPE'\] not among the configured datasets"),
        ({"ctc_server": "ftp://x"}, r"ctc_server: 'ftp://x' does not match"),
        (
            {
                "datasets": {
                    "X": {
                        "ctc_name": "A",
                        "source": "ctc",
                        "sequences": ["01", "01"],
                        "postprocess": {"kind": "single"},
                    }
                }
            },
            r"datasets\.X\.sequences: \['01', '01'\] has non-unique elements",
        ),
        (
            {"defaults": {"inference": {"precision": "f16"}}},
            r"defaults\.inference\.precision: 'f16' is not one of \['f32', 'bf16', 'int8'\]",
        ),
        (
            {
                "datasets": {
                    "X": {
                        "ctc_name": "A",
                        "source": "ctc",
                        "postprocess": {"kind": "distance", "tune": 1},
                    }
                }
            },
            r"datasets\.X\.postprocess: Additional properties are not allowed \('tune'",
        ),
    ],
)
def test_bad_configs_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        workflow_settings({**CONFIG, **change})


LOCAL = {"ctc_name": "Fluo-X", "source": "local", "postprocess": {"kind": "single"}}


def test_local_datasets_are_read_where_they_are() -> None:
    config = {"datasets": {"X": {**LOCAL, "path": "/data/Fluo-X", "test_path": "/data/test/X"}}}
    local = workflow_settings(config).datasets["X"]
    assert local.dataset_dir == "/data/Fluo-X" and local.test_dataset_dir == "/data/test/X"
    downloaded = workflow_settings({"datasets": {"X": {**LOCAL, "path": "d"}}}).datasets["X"]
    assert downloaded.test_dataset_dir == "resources/ctc-test/Fluo-X"  # from ctc_server
    synthetic = workflow_settings(CONFIG).datasets["synthetic"]
    with pytest.raises(SettingsError, match="source synthetic has no challenge .* give test_path"):
        synthetic.test_dataset_dir  # noqa: B018


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (LOCAL, r"datasets\.X: 'path' is a required property"),
        (
            {**LOCAL, "source": "ctc", "path": "/data"},
            r"datasets\.X\.path: only datasets of source local have a path",
        ),
    ],
)
def test_local_path_goes_with_source_local(dataset: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        workflow_settings({"datasets": {"X": dataset}})


def test_imagenet_pins_and_wheelhouse_come_from_the_config() -> None:
    assert workflow_settings(CONFIG).submission_wheelhouse == ("cpu",)
    pinned = ImagenetWeights().file("EfficientNetB5")
    assert pinned.url == "https://storage.googleapis.com/keras-applications/efficientnetb5_notop.h5"
    assert pinned.checksum == "md5:38879255a25d3c92d5e44e04ae6cec6f"
    assert pinned.bytes == 115_263_384 and pinned.file_name == "efficientnetb5_notop.h5"
    own = "sha256:" + "ab" * 32
    typed = workflow_settings(
        {
            **CONFIG,
            "submission_wheelhouse": ["cpu", "gpu"],
            "imagenet_weights": {
                "url": "http://127.0.0.1:8000/w/",
                "files": {"EfficientNetB0": {"checksum": own}},
            },
        }
    )
    assert typed.submission_wheelhouse == ("cpu", "gpu")
    b0 = typed.imagenet_weights.file("EfficientNetB0")
    assert (b0.url, b0.checksum, b0.bytes) == (
        "http://127.0.0.1:8000/w/efficientnetb0_notop.h5",
        own,
        None,
    )
    assert typed.imagenet_weights.file("EfficientNetB5").checksum == pinned.checksum  # kept
    with pytest.raises(SettingsError, match=r"imagenet_weights.files.EfficientNetB0.checksum"):
        workflow_settings(
            {**CONFIG, "imagenet_weights": {"files": {"EfficientNetB0": {"checksum": "x"}}}}
        )


def test_settings_check_themselves_and_round_trip() -> None:
    with pytest.raises(SettingsError, match=r"inference\.batch_size: 0 is less than"):
        InferenceSettings(batch_size=0)
    with pytest.raises(SettingsError, match=r"unknown training setting\(s\) \['epoch'\]"):
        TrainingSettings.from_dict({"epoch": 3})
    training = TrainingSettings(task="centres", epochs=3, augmentation=Augmentation.none())
    assert TrainingSettings.from_dict(training.to_dict()) == training
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_the_settings_module_imports_nothing_heavy() -> None:
    """The Snakefile reads it in an environment holding only Snakemake."""
    code = (
        "import sys, efficientcellseg.settings as s; s.workflow_settings("
        f"{CONFIG!r}); print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'cv2', 'scipy', 'skimage', 'tensorflow', 'keras', 'tifffile')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_dataset_can_start_from_another_like_the_baselines() -> None:
    baselines = yaml.safe_load((ROOT / "config" / "baselines.yaml").read_text())
    merged = {**CONFIG, "datasets": {**CONFIG["datasets"], **baselines["datasets"]}}
    typed = workflow_settings(merged)
    unet, original = typed.datasets["CHO-sample-unet"], typed.datasets["CHO-sample"]
    assert unet.model == settings.PRESETS["unet-small"] and unet.model.architecture == "unet"
    assert (unet.ctc_name, unet.pipeline, unet.training, unet.score_against) == (
        original.ctc_name, original.pipeline, original.training, original.score_against
    )  # fmt: skip
    circular = {"a": {"like": "b"}, "b": {"like": "a"}}
    with pytest.raises(SettingsError, match="a -> b -> a: `like` goes round in a circle"):
        workflow_settings({"datasets": circular})
