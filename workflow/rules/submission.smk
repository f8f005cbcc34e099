# The CTC submission: `snakemake --cores 8 ctc_submission` builds the folder the organisers run;
# `snakemake --cores 8 ctc_upload` runs it on the challenge sets as they do and packs the upload.
# Models of the "all" fold: trained on every annotated sequence of the training configuration.


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
        install="ctc_submission/install.sh",
        requirements=expand(
            "ctc_submission/requirements-{variant}.txt", variant=("cpu", "gpu")
        ),
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


rule ctc_wheelhouse:
    input:
        "ctc_submission/requirements-{variant}.txt",
    output:
        directory("ctc_submission/wheelhouse/{variant}"),
    log:
        "logs/ctc_wheelhouse/{variant}.log",
    wildcard_constraints:
        variant="cpu|gpu",
    # pip download needs the package index: on the machine Snakemake runs on.
    localrule: True
    conda:
        "../../envs/download.yaml"
    resources:
        mem_mb=2000,
        runtime=120,
    script:
        "../scripts/build_wheelhouse.py"


rule ctc_software:
    input:
        **rules.ctc_submission.output,
    output:
        directory("results/ctc_upload/SW"),
    log:
        "logs/ctc_upload/software.log",
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    script:
        "../scripts/stage_software.py"


rule ctc_challenge_results:
    input:
        software=rules.ctc_software.output[0],
        challenge=challenge_dataset_dir,
    output:
        directory("results/ctc_upload/{ctc}/{seq}_RES"),
    log:
        "logs/ctc_upload/{ctc}-{seq}.log",
    wildcard_constraints:
        ctc=submission_ctc_names(),
    conda:
        "../../envs/tensorflow.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=600,
    script:
        "../scripts/run_ctc_executable.py"


rule ctc_upload:
    input:
        software=rules.ctc_software.output[0],
        results=challenge_result_dirs,
        challenge=challenge_dataset_dirs,
        wheelhouses=expand(
            "ctc_submission/wheelhouse/{variant}",
            variant=SETTINGS.submission_wheelhouse,
        ),
    output:
        "results/ctc_upload.zip",
    log:
        "logs/ctc_upload/archive.log",
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        results=challenge_results,
    script:
        "../scripts/pack_upload.py"
