"""Fetch one encoder's ImageNet weights into resources/imagenet (pinned URL and checksum)."""

from efficientcellseg.download import fetch_imagenet_weights
from efficientcellseg.logs import script_log
from efficientcellseg.settings import ImagenetFile

with script_log(snakemake.log[0]):
    fetch_imagenet_weights(ImagenetFile(**snakemake.params.pinned), snakemake.output[0])
