"""The workflow's dataset configuration as typed settings (config/config.yaml, after validation).

A dataset entry starts from ``defaults`` and overrides any of it; the merged entry becomes one
frozen :class:`DatasetSettings` holding the model, training, inference and post-processing
settings the library functions take.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inference import TileSettings
from .model import ModelConfig, resolve_config
from .postprocess import PostprocessSettings
from .segment import PipelineSettings
from .synthetic import SyntheticSpec
from .training import TrainingSettings

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class DatasetSettings:
    """Everything the workflow needs to know about one dataset."""

    name: str
    ctc_name: str
    source: str
    sequences: tuple[str, ...]
    model: ModelConfig
    training_set: str
    training: dict[str, Any]
    inference: dict[str, Any]
    pipeline: PipelineSettings
    download_bytes: int | None = None
    score_against: str = "GT"
    det_penalise_fp: bool = True
    synthetic: dict[str, Any] = field(default_factory=dict)

    def training_settings(self, task: str) -> TrainingSettings:
        return TrainingSettings.from_dict(
            {**self.training, "task": task, "training_set": self.training_set}
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        """Networks the dataset needs: segmentation, plus centres for that post-processing."""
        return ("segmentation", "centres") if self.pipeline.needs_centres else ("segmentation",)

    def synthetic_spec(self) -> SyntheticSpec:
        return SyntheticSpec(**self.synthetic)

    def training_sequences(self, fold: str) -> list[str]:
        """Sequences the models of ``fold`` learn from: all, or all but the held-out one."""
        if fold == "all":
            return list(self.sequences)
        held_out = fold.removeprefix("without-")
        if not fold.startswith("without-") or held_out not in self.sequences:
            raise ValueError(
                f"{self.name}: fold {fold!r} is not 'all' or 'without-<seq>' with <seq> in "
                f"{list(self.sequences)}"
            )
        return [s for s in self.sequences if s != held_out]


def validate_config(config: dict[str, Any]) -> None:
    """Check the config against the JSON schema, listing every problem with its key path."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
        raise ValueError(
            "the workflow config (config/config.yaml and any --configfile) is not valid:\n"
            + "\n".join(lines)
        )


def dataset_settings(config: dict[str, Any], name: str) -> DatasetSettings:
    """Merged, typed settings of dataset ``name``."""
    datasets = config.get("datasets", {})
    if name not in datasets:
        raise ValueError(f"dataset {name!r} is not configured; known: {sorted(datasets)}")
    entry = _merge(config.get("defaults", {}), datasets[name])
    postprocess = dict(entry["postprocess"], foi_border=entry.get("foi_border", 0))
    tiles = entry.get("tiles")
    return DatasetSettings(
        name=name,
        ctc_name=entry["ctc_name"],
        source=entry["source"],
        sequences=tuple(entry.get("sequences", ("01", "02"))),
        model=resolve_config(entry.get("model", "paper")),
        training_set=entry.get("training_set", "GT+ST"),
        training=entry.get("training", {}),
        inference=entry.get("inference", {}),
        pipeline=PipelineSettings(
            postprocess=PostprocessSettings(**postprocess),
            tiles=TileSettings(**tiles) if tiles else None,
        ),
        download_bytes=entry.get("download_bytes"),
        score_against=entry.get("score_against", "GT"),
        det_penalise_fp=entry.get("det_penalise_fp", True),
        synthetic=entry.get("synthetic", {}),
    )


def _merge(base: dict, override: dict) -> dict:
    """Deep merge of mappings; ``override`` wins. A model given as a string replaces a mapping."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
