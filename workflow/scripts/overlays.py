"""Example slices (raw, pseudocolor, predicted masks with reference outlines) for the report."""

from efficientcellseg.figures import overlay_figure
from efficientcellseg.logs import script_log

with script_log(snakemake.log[0]):
    overlay_figure(
        snakemake.input.dataset,
        snakemake.params.sequences,
        snakemake.params.result_dirs,
        snakemake.output[0],
        source=snakemake.params.reference,
    )
