"""Score one sequence's masks against its annotations (SEG, and DET where TRA markers exist)."""

from pathlib import Path

from efficientcellseg.logs import script_log
from efficientcellseg.metrics import evaluate_sequence, write_evaluation

with script_log(snakemake.log[0]):
    evaluation = evaluate_sequence(
        snakemake.input.dataset,
        snakemake.wildcards.seq,
        snakemake.params.result_dir,
        reference=snakemake.params.reference,
        det_penalise_fp=snakemake.params.det_penalise_fp,
    )
    write_evaluation(evaluation, Path(snakemake.output.scores).parent)
