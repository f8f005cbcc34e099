"""Generate the synthetic CTC dataset (known answers) into resources/."""

from efficientcellseg.logs import script_log
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import write_synthetic_dataset

with script_log(snakemake.log[0]):
    write_synthetic_dataset(snakemake.output[0], SyntheticSpec.from_dict(snakemake.params.spec))
