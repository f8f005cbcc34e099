"""Masks of every frame of one sequence (resuming after an interruption) and a summary."""

import json
from pathlib import Path

from efficientcellseg.files import atomic_write_text
from efficientcellseg.logs import script_log
from efficientcellseg.segment import segment_sequence
from efficientcellseg.settings import InferenceSettings

with script_log(snakemake.log[0]):
    summary = segment_sequence(
        Path(snakemake.input.dataset) / snakemake.wildcards.seq,
        snakemake.params.result_dir,
        snakemake.params.model_dir,
        InferenceSettings.from_dict({**snakemake.params.inference, "threads": snakemake.threads}),
    )
    atomic_write_text(snakemake.output[0], json.dumps(summary, indent=2) + "\n")
