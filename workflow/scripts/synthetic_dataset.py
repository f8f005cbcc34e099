"""Generate the synthetic CTC dataset (known answers) into resources/."""

from efficientcellseg.logs import script_log
from efficientcellseg.synthetic import SyntheticSpec, write_synthetic_dataset

with script_log(snakemake.log[0]):
    write_synthetic_dataset(snakemake.output[0], SyntheticSpec(**snakemake.params.spec))
