"""Copy ctc_submission/ to the software folder (SW) the executables run in for the upload."""

from pathlib import Path

from efficientcellseg.logs import script_log
from efficientcellseg.upload import stage_software

with script_log(snakemake.log[0]):
    stage_software(Path(snakemake.input.summary).parent, snakemake.output[0])
