"""Masks of every frame of one sequence (resuming after an interruption) and a summary."""

import json
from pathlib import Path

from efficientcellseg.logs import script_log
from efficientcellseg.segment import segment_sequence

with script_log(snakemake.log[0]):
    summary = segment_sequence(
        Path(snakemake.input.dataset) / snakemake.wildcards.seq,
        snakemake.params.result_dir,
        snakemake.params.model_dir,
        backend=snakemake.params.inference.get("backend", "auto"),
        batch_size=snakemake.params.inference.get("batch_size", 4),
        precision=snakemake.params.inference.get("precision", "f32"),
        threads=snakemake.threads,
    )
    Path(snakemake.output[0]).write_text(json.dumps(summary, indent=2) + "\n")
