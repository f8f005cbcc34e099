# Networks per dataset and fold: "without-<seq>" models never see sequence <seq> (held-out
# scores), "all" models learn from every annotated sequence (the CTC submission).


rule train:
    input:
        slices=training_slices,
        imagenet=imagenet_weights_file,
    output:
        model="results/{ds}/models/{fold}/{task}.keras",
        metadata="results/{ds}/models/{fold}/{task}.json",
        onnx="results/{ds}/models/{fold}/{task}.onnx",
        log_csv="results/{ds}/models/{fold}/{task}_log.csv",
        curve=report(
            "results/{ds}/models/{fold}/{task}_curve.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="{ds}",
            labels={"dataset": "{ds}", "models": "{fold}", "network": "{task}"},
        ),
    log:
        "logs/{ds}/train/{fold}_{task}.log",
    benchmark:
        "results/{ds}/benchmarks/train_{fold}_{task}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=1440,
    params:
        model=lambda wildcards: DATASETS[wildcards.ds].model.to_dict(),
        settings=lambda wildcards: DATASETS[wildcards.ds]
        .training_settings(wildcards.task)
        .to_dict(),
        checkpoint_dir=lambda wildcards: f"results/{wildcards.ds}/models/{wildcards.fold}/.{wildcards.task}_checkpoint",
        imagenet=SETTINGS.imagenet_weights.to_dict(),
        code_version=CODE_VERSIONS["training"],
    script:
        "../scripts/train.py"


# ImageNet weights of an encoder, for models with encoder_weights: imagenet. Pinned address and
# checksum (config imagenet_weights); without the file the run stops with what to do instead.
rule imagenet_weights:
    output:
        "resources/imagenet/{weights}",
    log:
        "logs/imagenet/{weights}.log",
    wildcard_constraints:
        weights=r"efficientnetb[0-7]_notop\.h5",
    # On the machine Snakemake runs on: cluster compute nodes often have no internet.
    localrule: True
    conda:
        "../../envs/download.yaml"
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        pinned=lambda wildcards: imagenet_file_settings(wildcards.weights),
    script:
        "../scripts/fetch_imagenet_weights.py"


rule pipeline_settings:
    output:
        "results/{ds}/models/{fold}/pipeline.json",
    log:
        "logs/{ds}/pipeline_settings/{fold}.log",
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    params:
        settings=lambda wildcards: DATASETS[wildcards.ds].pipeline.to_dict(),
    script:
        "../scripts/pipeline_settings.py"
