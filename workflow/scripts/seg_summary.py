"""SEG.txt, the score table and the report page of one dataset from its held-out scores."""

from efficientcellseg.logs import script_log
from efficientcellseg.scores import dataset_scores, write_dataset_scores
from efficientcellseg.summary_page import write_summary_page

with script_log(snakemake.log[0]):
    scores = dataset_scores(
        snakemake.wildcards.ds,
        snakemake.params.ctc_name,
        snakemake.params.reference,
        snakemake.params.scores,
        snakemake.params.models,
    )
    write_dataset_scores(scores, snakemake.output.seg, snakemake.output.table)
    write_summary_page(
        snakemake.output.page, scores, snakemake.params.objects, snakemake.input.benchmarks
    )
