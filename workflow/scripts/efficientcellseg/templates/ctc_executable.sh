#!/usr/bin/env bash
# EfficientCellSeg (Wagner & Rohr, MIDL 2022) - Cell Tracking Challenge executable
# Dataset @DATASET@, sequence @SEQUENCE@; training configuration @TRAINING_SET@;
# @PARAMETERS@ parameters in all networks; encoder initialisation: @ENCODER@.
#
# Prerequisites: Linux x86_64 (glibc 2.28 or newer), bash, Python 3.11 (python3.11 with venv).
# Install once with ./install.sh (creates ./venv from requirements-cpu.txt or
# requirements-gpu.txt; offline from wheelhouse/ when it is there, see SUBMISSION.md).
# This script uses ./venv/bin/python when it exists, else $EFFICIENTCELLSEG_PYTHON, else
# python3 on the PATH. An NVIDIA GPU is used when TensorFlow (the gpu install) sees one,
# otherwise the CPU; the log says which. Nothing is downloaded: the models and the code are in
# this folder.
#
# Run from inside this folder with no arguments. Reads ../@DATASET@/@SEQUENCE@, writes
# ../@DATASET@/@SEQUENCE@_RES/mask###.tif (uint16, one per frame), replacing that folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

input="../@DATASET@/@SEQUENCE@"
output="../@DATASET@/@SEQUENCE@_RES"
models="models/@DATASET@"

fail() { echo "@SCRIPT@: $*" >&2; exit 1; }

[ -d "$input" ] || fail "input sequence folder $input not found" \
  "(run me from inside the submission folder, beside ../@DATASET@)"
[ -d "$models" ] || fail "model folder $models missing: this submission folder is incomplete"

if [ -x venv/bin/python ]; then
  python=venv/bin/python
elif [ -n "${EFFICIENTCELLSEG_PYTHON:-}" ]; then
  python="$EFFICIENTCELLSEG_PYTHON"
else
  python=$(command -v python3 || true)
fi
[ -n "$python" ] || fail "no python3 found: install Python 3.11, then run ./install.sh"

export PYTHONPATH="$PWD/code${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
"$python" -c "import efficientcellseg.environment as e; e.check_environment(); print(e.device_report())" \
  || fail "the Python environment ($python) is not usable:" \
    "run ./install.sh (see the header of this script)"

partial="$output.partial"
rm -rf "$partial"
"$python" -m efficientcellseg.cli predict --models "$models" --overwrite "$input" "$partial" \
  || { rm -rf "$partial"; fail "segmentation failed"; }
rm -rf "$output"
mv "$partial" "$output"
echo "@SCRIPT@: wrote $output"
