"""Train one network (segmentation or centres) of one fold and export it to ONNX."""

from pathlib import Path

from efficientcellseg.logs import script_log
from efficientcellseg.model import resolve_encoder_weights
from efficientcellseg.settings import ImagenetWeights, ModelConfig, TrainingSettings
from efficientcellseg.training import TrainingOutputs, train_network

with script_log(snakemake.log[0]):
    model_config = ModelConfig.from_dict(snakemake.params.model)
    train_network(
        snakemake.input.slices,
        TrainingOutputs(
            model=Path(snakemake.output.model),
            log_csv=Path(snakemake.output.log_csv),
            curve_png=Path(snakemake.output.curve),
            checkpoint_dir=Path(snakemake.params.checkpoint_dir),
        ),
        model_config,
        TrainingSettings.from_dict(snakemake.params.settings),
        description={"dataset": snakemake.wildcards.ds, "fold": snakemake.wildcards.fold},
        threads=snakemake.threads,
        encoder=resolve_encoder_weights(
            model_config,
            imagenet_file=next(iter(snakemake.input.imagenet), None),
            imagenet=ImagenetWeights.from_dict(snakemake.params.imagenet),
        ),
    )
