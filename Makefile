# The two commands of the README: `make demo` and `make test`. Everything they need is installed
# into .venv from pyproject.toml (the one place where versions are pinned).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# TensorFlow flavour: `make EXTRAS=gpu,workflow,dev install` for the CUDA build.
EXTRAS ?= cpu,workflow,dev
CORES ?= 2

.PHONY: install test demo lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) results/synthetic/SEG.txt
	@cat results/synthetic/SEG.txt

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

clean:
	rm -rf results resources/ctc/synthetic .snakemake
