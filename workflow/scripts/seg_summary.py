"""SEG.txt and the score table of one dataset from its held-out sequence scores."""

from efficientcellseg.logs import script_log
from efficientcellseg.scores import dataset_scores, write_dataset_scores

with script_log(snakemake.log[0]):
    scores = dataset_scores(
        snakemake.wildcards.ds,
        snakemake.params.ctc_name,
        snakemake.params.reference,
        snakemake.params.scores,
        snakemake.params.models,
    )
    write_dataset_scores(scores, snakemake.output.seg, snakemake.output.table)
