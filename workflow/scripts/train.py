"""Train one network (segmentation or centres) of one fold and export it to ONNX."""

from pathlib import Path

from efficientcellseg.inference import export_onnx
from efficientcellseg.logs import script_log
from efficientcellseg.model import ModelConfig
from efficientcellseg.training import TrainingOutputs, TrainingSettings, train

with script_log(snakemake.log[0]):
    settings = TrainingSettings.from_dict(
        {
            **snakemake.params.settings,
            "task": snakemake.wildcards.task,
            "training_set": snakemake.params.training_set,
        }
    )
    train(
        snakemake.input.slices,
        TrainingOutputs(
            model=Path(snakemake.output.model),
            log_csv=Path(snakemake.output.log_csv),
            curve_png=Path(snakemake.output.curve),
            checkpoint_dir=Path(snakemake.params.checkpoint_dir),
        ),
        ModelConfig.from_dict(snakemake.params.model_config),
        settings,
        description={"dataset": snakemake.wildcards.ds, "fold": snakemake.wildcards.fold},
        threads=snakemake.threads,
    )
    export_onnx(snakemake.output.model, snakemake.output.onnx)
