# Held-out scores: every sequence against its annotations, then SEG.txt and the report figures.


rule evaluate:
    input:
        dataset=dataset_dir,
        predictions=rules.predict.output[0],
    output:
        scores="results/{ds}/evaluation/{seq}/scores.json",
        objects="results/{ds}/evaluation/{seq}/objects.csv",
    log:
        "logs/{ds}/evaluate/{seq}.log",
    benchmark:
        "results/{ds}/benchmarks/evaluate_{seq}.tsv"
    conda:
        "../../envs/evaluation.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        result_dir=rules.predict.params.result_dir,
        reference=lambda wildcards: DATASETS[wildcards.ds].score_against,
        det_penalise_fp=lambda wildcards: DATASETS[wildcards.ds].det_penalise_fp,
        code_version=CODE_VERSIONS["evaluation"],
    script:
        "../scripts/evaluate.py"


rule overlays:
    input:
        dataset=dataset_dir,
        predictions=heldout_predictions,
    output:
        report(
            "results/{ds}/evaluation/overlays.png",
            caption="../report/overlays.rst",
            category="Examples",
            subcategory="{ds}",
            labels={"dataset": "{ds}", "content": "example slices with masks"},
        ),
    log:
        "logs/{ds}/overlays.log",
    conda:
        "../../envs/evaluation.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        sequences=lambda wildcards: list(DATASETS[wildcards.ds].sequences),
        result_dirs=lambda wildcards: {
            seq: f"results/{wildcards.ds}/{seq}_RES"
            for seq in DATASETS[wildcards.ds].sequences
        },
        reference=lambda wildcards: DATASETS[wildcards.ds].score_against,
        code_version=CODE_VERSIONS["evaluation"],
    script:
        "../scripts/overlays.py"


rule seg_summary:
    input:
        scores=heldout_scores,
        objects=heldout_objects,
        models=heldout_model_metadata,
        benchmarks=heldout_benchmarks,
        figure=rules.overlays.output[0],
    output:
        seg="results/{ds}/SEG.txt",
        table=report(
            "results/{ds}/evaluation/scores.tsv",
            caption="../report/scores.rst",
            category="Results",
            subcategory="{ds}",
            labels={"dataset": "{ds}", "content": "scores per sequence (TSV)"},
        ),
        page=report(
            "results/{ds}/evaluation/summary.html",
            caption="../report/summary.rst",
            category="Results",
            subcategory="{ds}",
            labels={
                "dataset": "{ds}",
                "content": "scores, PESEG, time and memory per job, every object",
            },
        ),
    log:
        "logs/{ds}/seg_summary.log",
    localrule: True
    conda:
        "../../envs/evaluation.yaml"
    params:
        ctc_name=lambda wildcards: DATASETS[wildcards.ds].ctc_name,
        reference=lambda wildcards: DATASETS[wildcards.ds].score_against,
        scores=heldout_scores_by_sequence,
        objects=heldout_objects_by_sequence,
        models=heldout_model_metadata_by_sequence,
        code_version=CODE_VERSIONS["evaluation"],
    script:
        "../scripts/seg_summary.py"


# Models side by side on one CTC dataset: every configured entry with that CTC name (e.g. the
# U-Net baselines of config/baselines.yaml), held-out SEG, parameters and PESEG.
rule model_comparison:
    input:
        comparison_inputs,
    output:
        report(
            "results/comparison/{ctc}.tsv",
            caption="../report/comparison.rst",
            category="Scores",
            labels={"comparison": "{ctc}"},
        ),
    log:
        "logs/comparison/{ctc}.log",
    wildcard_constraints:
        ctc=_alternatives({d.ctc_name for d in DATASETS.values()}),
    localrule: True
    conda:
        "../../envs/evaluation.yaml"
    params:
        datasets=comparison_entries,
    script:
        "../scripts/model_comparison.py"
