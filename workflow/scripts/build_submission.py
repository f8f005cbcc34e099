"""Build ctc_submission/: executables, models, code, requirements and SUBMISSION.md."""

from pathlib import Path

from efficientcellseg.logs import script_log
from efficientcellseg.submission import SubmissionDataset, build_submission

with script_log(snakemake.log[0]):
    build_submission(
        Path(snakemake.output.summary).parent,
        [
            SubmissionDataset(
                ctc_name=d["ctc_name"],
                sequences=tuple(d["sequences"]),
                model_dir=Path(d["model_dir"]),
                training_set=d["training_set"],
            )
            for d in snakemake.params.datasets
        ],
    )
