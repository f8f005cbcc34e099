# EfficientCellSeg for the Cell Tracking Challenge: download -> pseudocolor -> train -> predict
# -> masks -> SEG. The user's command: `snakemake --cores 8 results/MDA231/SEG.txt`.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# common.smk checks the config against workflow/schemas/config.schema.yaml first, listing every
# wrong key or value by its path.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/prediction.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/submission.smk"


rule all:
    default_target: True
    input:
        expand("results/{ds}/SEG.txt", ds=config["datasets"]),
