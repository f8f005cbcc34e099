# The folder the CTC organisers run: `snakemake --cores 8 ctc_submission`.
# Models of the "all" fold: trained on every annotated sequence of the training configuration.

SUBMISSION = SETTINGS.submission_datasets()


rule ctc_submission:
    input:
        [model_folder_files(d.name, "all") for d in SUBMISSION],
    output:
        scripts=[
            f"ctc_submission/{d.ctc_name}-{seq}.sh"
            for d in SUBMISSION
            for seq in d.sequences
        ],
        models=[directory(f"ctc_submission/models/{d.ctc_name}") for d in SUBMISSION],
        code=directory("ctc_submission/code"),
        requirements="ctc_submission/requirements.txt",
        summary="ctc_submission/SUBMISSION.md",
    log:
        "logs/ctc_submission.log",
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    params:
        datasets=[
            {
                "ctc_name": d.ctc_name,
                "sequences": list(d.sequences),
                "model_dir": f"results/{d.name}/models/all",
                "training_set": d.training_set,
            }
            for d in SUBMISSION
        ],
        # It copies the library: rebuilt whenever the library's content changes (cheap).
        code=source_digest(),
    script:
        "../scripts/build_submission.py"
