# Masks of every frame of a sequence, predicted by the models that never saw that sequence.


rule predict:
    input:
        dataset=dataset_dir,
        models=heldout_model_folder,
    output:
        "results/{ds}/predictions/{seq}.json",
    log:
        "logs/{ds}/predict/{seq}.log",
    benchmark:
        "results/{ds}/benchmarks/predict_{seq}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=600,
    params:
        # The masks are not declared outputs on purpose: Snakemake deletes the outputs of a
        # failed job, and kept masks let a re-run finish only the missing frames.
        result_dir="results/{ds}/{seq}_RES",
        model_dir="results/{ds}/models/without-{seq}",
        inference=lambda wildcards: DATASETS[wildcards.ds].inference.config_dict(),
        code_version=CODE_VERSIONS["prediction"],
    script:
        "../scripts/predict.py"
