"""Train one network (segmentation or centres) of one fold and export it to ONNX."""

from pathlib import Path

from efficientcellseg.logs import script_log
from efficientcellseg.settings import ModelConfig, TrainingSettings
from efficientcellseg.training import TrainingOutputs, train_network

with script_log(snakemake.log[0]):
    train_network(
        snakemake.input.slices,
        TrainingOutputs(
            model=Path(snakemake.output.model),
            log_csv=Path(snakemake.output.log_csv),
            curve_png=Path(snakemake.output.curve),
            checkpoint_dir=Path(snakemake.params.checkpoint_dir),
        ),
        ModelConfig.from_dict(snakemake.params.model),
        TrainingSettings.from_dict(snakemake.params.settings),
        description={"dataset": snakemake.wildcards.ds, "fold": snakemake.wildcards.fold},
        threads=snakemake.threads,
    )
