"""Write the post-processing and tiling settings that complete a model folder."""

from pathlib import Path

from efficientcellseg.logs import script_log
from efficientcellseg.segment import write_pipeline_settings
from efficientcellseg.settings import PipelineSettings

with script_log(snakemake.log[0]):
    settings = PipelineSettings.from_dict(snakemake.params.settings)
    write_pipeline_settings(Path(snakemake.output[0]).parent, settings)
