"""Pseudocolor every annotated slice of one sequence (GT and ST) for training."""

from efficientcellseg.logs import script_log
from efficientcellseg.training_data import collect_annotated_slices, save_annotated_slices

with script_log(snakemake.log[0]):
    slices = collect_annotated_slices(snakemake.input.dataset, snakemake.wildcards.seq)
    save_annotated_slices(snakemake.output[0], slices)
