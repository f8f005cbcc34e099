"""Run one CTC executable on its challenge-set sequence as the organisers do, then check it."""

from efficientcellseg.logs import script_log
from efficientcellseg.upload import run_executable

with script_log(snakemake.log[0]):
    run_executable(
        snakemake.input.software,
        snakemake.wildcards.ctc,
        snakemake.wildcards.seq,
        snakemake.input.challenge,
    )
