"""Every configured model of one CTC dataset side by side: SEG, parameters, PESEG."""

from efficientcellseg.files import atomic_write_text
from efficientcellseg.logs import script_log
from efficientcellseg.scores import comparison_table, dataset_scores

with script_log(snakemake.log[0]):
    compared = [
        (
            dataset_scores(
                name,
                snakemake.wildcards.ctc,
                entry["reference"],
                entry["scores"],
                entry["models"],
            ),
            entry["label"],
        )
        for name, entry in snakemake.params.datasets.items()
    ]
    atomic_write_text(snakemake.output[0], comparison_table(compared))
