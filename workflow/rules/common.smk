# Helpers of the workflow: typed dataset settings, wildcard constraints and input functions.
import re
import sys
from pathlib import Path

# The library lives in workflow/scripts; make it importable here even when not pip-installed.
# Its settings module needs nothing but what Snakemake itself needs (PyYAML, jsonschema), so
# the Snakefile parses in an environment holding only Snakemake.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from efficientcellseg.settings import (  # noqa: E402
    TASKS,
    TEST_SET_SOURCES,
    workflow_settings,
)
from efficientcellseg.versions import CODE_VERSIONS, source_digest  # noqa: E402

SETTINGS = workflow_settings(config)
DATASETS = SETTINGS.datasets


def _alternatives(names):
    """Regex matching exactly one of ``names`` (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


def ctc_names(*sources):
    return _alternatives(d.ctc_name for d in DATASETS.values() if d.source in sources)


def test_set_download_names():
    """CTC names of the challenge sets ctc_server serves that are not on disk already."""
    return _alternatives(
        d.ctc_name
        for d in DATASETS.values()
        if d.source in TEST_SET_SOURCES and d.test_path is None
    )


def dataset_of(ctc_name):
    """The configured dataset with this CTC name."""
    return next(d for d in DATASETS.values() if d.ctc_name == ctc_name)


wildcard_constraints:
    ds=_alternatives(DATASETS),
    seq=r"\d{2}",
    fold=r"all|without-\d{2}",
    task=_alternatives(TASKS),


def dataset_dir(wildcards):
    """The training set: downloaded or generated under resources/ctc, or on disk (local)."""
    return DATASETS[wildcards.ds].dataset_dir


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


def scores_by_sequence(ds):
    """sequence -> the held-out scores.json of dataset ``ds``."""
    return {
        seq: f"results/{ds}/evaluation/{seq}/scores.json"
        for seq in DATASETS[ds].sequences
    }


def model_metadata_by_sequence(ds):
    """sequence -> metadata of every network of the models that segmented it."""
    return {
        seq: [
            f"results/{ds}/models/without-{seq}/{task}.json"
            for task in DATASETS[ds].networks
        ]
        for seq in DATASETS[ds].sequences
    }


def heldout_scores_by_sequence(wildcards):
    return scores_by_sequence(wildcards.ds)


def heldout_scores(wildcards):
    return list(scores_by_sequence(wildcards.ds).values())


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
    return model_metadata_by_sequence(wildcards.ds)


def heldout_model_metadata(wildcards):
    return [
        path
        for paths in model_metadata_by_sequence(wildcards.ds).values()
        for path in paths
    ]


def compared_datasets(wildcards):
    """Every configured dataset entry of CTC dataset ``ctc``: one per model to compare."""
    return [d.name for d in DATASETS.values() if d.ctc_name == wildcards.ctc]


def comparison_inputs(wildcards):
    return [
        path
        for ds in compared_datasets(wildcards)
        for path in [
            *scores_by_sequence(ds).values(),
            *(p for paths in model_metadata_by_sequence(ds).values() for p in paths),
        ]
    ]


def comparison_entries(wildcards):
    return {
        ds: {
            "label": DATASETS[ds].model.label,
            "reference": DATASETS[ds].score_against,
            "scores": scores_by_sequence(ds),
            "models": model_metadata_by_sequence(ds),
        }
        for ds in compared_datasets(wildcards)
    }


def imagenet_weights_file(wildcards):
    """The ImageNet file a dataset's encoder starts from (none for other initialisations)."""
    model = DATASETS[wildcards.ds].model
    if model.encoder_weights != "imagenet":
        return []
    return [f"resources/imagenet/{model.backbone.lower()}_notop.h5"]


def imagenet_file_settings(file_name):
    """URL, checksum and size pinned for ``efficientnetb5_notop.h5`` and the like."""
    backbone = next(
        b
        for b in SETTINGS.imagenet_weights.files
        if f"{b.lower()}_notop.h5" == file_name
    )
    return vars(SETTINGS.imagenet_weights.file(backbone))


# --- the CTC submission and upload ----------------------------------------------------------

SUBMISSION = SETTINGS.submission_datasets()


def submission_ctc_names():
    return _alternatives(d.ctc_name for d in SUBMISSION)


def challenge_dataset_dir(wildcards):
    """The challenge (test) set of a submission dataset: on disk, or downloaded."""
    return dataset_of(wildcards.ctc).test_dataset_dir


def challenge_dataset_dirs(wildcards):
    # Asked for only when the upload is: datasets without a challenge set stop the run here.
    return [d.test_dataset_dir for d in SUBMISSION]


def challenge_results(wildcards):
    """CTC name -> sequence -> (challenge set folder, result folder) of every upload result."""
    return {
        d.ctc_name: {
            seq: (d.test_dataset_dir, f"results/ctc_upload/{d.ctc_name}/{seq}_RES")
            for seq in d.sequences
        }
        for d in SUBMISSION
    }


def challenge_result_dirs(wildcards):
    return [
        res_dir
        for sequences in challenge_results(wildcards).values()
        for _, res_dir in sequences.values()
    ]
