# EfficientCellSeg for the Cell Tracking Challenge: download -> pseudocolor -> train -> predict
# -> masks -> SEG. The user's command: `snakemake --cores 8 results/MDA231/SEG.txt`.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/prediction.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/submission.smk"


rule all:
    input:
        expand("results/{ds}/SEG.txt", ds=config["datasets"]),
    default_target: True
