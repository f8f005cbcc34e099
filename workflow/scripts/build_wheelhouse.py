"""Download the wheels of one requirements variant for an offline install of the submission."""

from efficientcellseg.logs import script_log
from efficientcellseg.wheelhouse import build_wheelhouse

with script_log(snakemake.log[0]):
    build_wheelhouse(snakemake.input[0], snakemake.output[0])
