"""Download and extract a CTC dataset (training or test set) into resources/."""

from pathlib import Path

from efficientcellseg.download import download_dataset
from efficientcellseg.logs import script_log

with script_log(snakemake.log[0]):
    out = Path(snakemake.output[0])
    download_dataset(
        out.name,
        out.parent,
        kind=snakemake.params.kind,
        base_url=snakemake.params.server,
        expected_size=snakemake.params.expected_bytes,
    )
