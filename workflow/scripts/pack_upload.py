"""Check every challenge-set result and pack the CTC upload archive with the software."""

from efficientcellseg.logs import script_log
from efficientcellseg.upload import pack_upload

with script_log(snakemake.log[0]):
    pack_upload(
        snakemake.output[0],
        snakemake.input.software,
        snakemake.params.results,
        wheelhouses=snakemake.input.wheelhouses,
    )
