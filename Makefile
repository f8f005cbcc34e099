# The two commands of the README: `make demo` and `make test`. Everything they need is installed
# into .venv from pyproject.toml (the one place where versions are pinned).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# TensorFlow flavour: `make EXTRAS=gpu,workflow,dev install` for the CUDA build. Changing
# EXTRAS reinstalls (the marker below depends on it), swapping the TensorFlow flavour.
EXTRAS ?= cpu,workflow,dev
CORES ?= 2
# The TensorFlow distribution of the flavour *not* chosen: removed before installing, since
# tensorflow and tensorflow-cpu install the same package folder.
OTHER_TENSORFLOW := $(if $(findstring gpu,$(EXTRAS)),tensorflow-cpu,tensorflow)

.PHONY: install test demo report lint clean FORCE

# The extras of the last installation; rewritten (and so newer) only when EXTRAS changes.
$(VENV)/.extras: FORCE
	@mkdir -p $(VENV)
	@echo '$(EXTRAS)' | cmp -s - $@ || echo '$(EXTRAS)' > $@

$(VENV)/.installed: pyproject.toml $(VENV)/.extras
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_TENSORFLOW)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) results/synthetic/SEG.txt
	@cat results/synthetic/SEG.txt

# The report of the demo (or of DATASET=...): curves, examples, scores, time and memory per job.
DATASET ?= synthetic
report: install
	$(BIN)/snakemake --report report.html results/$(DATASET)/SEG.txt

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs resources/ctc/Synthetic-3D .snakemake
