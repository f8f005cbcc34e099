# Helpers of the workflow: typed dataset settings, wildcard constraints and input functions.
import re
import sys
from pathlib import Path

# The library lives in workflow/scripts; make it importable here even when not pip-installed.
# Its settings module needs nothing but what Snakemake itself needs (PyYAML, jsonschema), so
# the Snakefile parses in an environment holding only Snakemake.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from efficientcellseg.settings import TASKS, workflow_settings  # noqa: E402
from efficientcellseg.versions import CODE_VERSIONS, source_digest  # noqa: E402

SETTINGS = workflow_settings(config)
DATASETS = SETTINGS.datasets


def _alternatives(names):
    """Regex matching exactly one of ``names`` (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


def ctc_names(source):
    return _alternatives(d.ctc_name for d in DATASETS.values() if d.source == source)


def dataset_of(ctc_name):
    """The configured dataset with this CTC name."""
    return next(d for d in DATASETS.values() if d.ctc_name == ctc_name)


wildcard_constraints:
    ds=_alternatives(DATASETS),
    seq=r"\d{2}",
    fold=r"all|without-\d{2}",
    task=_alternatives(TASKS),


def dataset_dir(wildcards):
    return f"resources/ctc/{DATASETS[wildcards.ds].ctc_name}"


def training_slices(wildcards):
    """Pseudocolored annotated slices of the sequences a fold's models learn from."""
    sequences = DATASETS[wildcards.ds].training_sequences(wildcards.fold)
    return [f"results/{wildcards.ds}/pseudocolor/{seq}.npz" for seq in sequences]


def model_folder_files(ds, fold):
    """Files of a complete model folder: the networks the dataset needs and pipeline.json."""
    folder = f"results/{ds}/models/{fold}"
    networks = [
        f"{folder}/{task}.{ext}"
        for task in DATASETS[ds].networks
        for ext in ("keras", "onnx")
    ]
    return networks + [f"{folder}/pipeline.json"]


def heldout_model_folder(wildcards):
    """Models that predict sequence ``seq``: trained on all other sequences."""
    return model_folder_files(wildcards.ds, f"without-{wildcards.seq}")


def heldout_predictions(wildcards):
    return [
        f"results/{wildcards.ds}/predictions/{seq}.json"
        for seq in DATASETS[wildcards.ds].sequences
    ]


def heldout_scores_by_sequence(wildcards):
    """sequence -> its scores.json."""
    return {
        seq: f"results/{wildcards.ds}/evaluation/{seq}/scores.json"
        for seq in DATASETS[wildcards.ds].sequences
    }


def heldout_scores(wildcards):
    return list(heldout_scores_by_sequence(wildcards).values())


def heldout_objects_by_sequence(wildcards):
    """sequence -> its objects.csv (one row per reference object)."""
    return {
        seq: f"results/{wildcards.ds}/evaluation/{seq}/objects.csv"
        for seq in DATASETS[wildcards.ds].sequences
    }


def heldout_objects(wildcards):
    return list(heldout_objects_by_sequence(wildcards).values())


def heldout_benchmarks(wildcards):
    """Benchmark files (time, memory) of every job behind a dataset's held-out scores."""
    ds = DATASETS[wildcards.ds]
    folder = f"results/{wildcards.ds}/benchmarks"
    return (
        [f"{folder}/pseudocolor_{seq}.tsv" for seq in ds.sequences]
        + [
            f"{folder}/train_without-{seq}_{task}.tsv"
            for seq in ds.sequences
            for task in ds.networks
        ]
        + [f"{folder}/predict_{seq}.tsv" for seq in ds.sequences]
        + [f"{folder}/evaluate_{seq}.tsv" for seq in ds.sequences]
    )


def heldout_model_metadata_by_sequence(wildcards):
    """sequence -> metadata of every network of the models that segmented it."""
    ds = DATASETS[wildcards.ds]
    return {
        seq: [
            f"results/{wildcards.ds}/models/without-{seq}/{task}.json"
            for task in ds.networks
        ]
        for seq in ds.sequences
    }


def heldout_model_metadata(wildcards):
    return [
        path
        for paths in heldout_model_metadata_by_sequence(wildcards).values()
        for path in paths
    ]
