#!/usr/bin/env bash
# EfficientCellSeg (Wagner & Rohr, MIDL 2022) - Cell Tracking Challenge executable
# Dataset @DATASET@, sequence @SEQUENCE@; training configuration @TRAINING_SET@;
# @PARAMETERS@ parameters in all networks.
#
# Prerequisites: Linux (x86_64), bash, Python 3.11 with the packages of requirements.txt, e.g.
#   python3.11 -m venv venv && venv/bin/pip install -r requirements.txt
# (this script uses ./venv/bin/python when it exists, else $EFFICIENTCELLSEG_PYTHON, else
# python3 on the PATH). An NVIDIA GPU is used when TensorFlow sees one, otherwise the CPU.
# Nothing is downloaded: the models and the code are in this folder.
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
[ -n "$python" ] || fail "no python3 found: install Python 3.11 and requirements.txt"

export PYTHONPATH="$PWD/code${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
"$python" -c "import efficientcellseg.environment as e; e.check_environment()" \
  || fail "the Python environment ($python) is not usable:" \
    "install requirements.txt (see the header of this script)"

partial="$output.partial"
rm -rf "$partial"
"$python" -m efficientcellseg.cli predict --models "$models" --overwrite "$input" "$partial" \
  || { rm -rf "$partial"; fail "segmentation failed"; }
rm -rf "$output"
mv "$partial" "$output"
echo "@SCRIPT@: wrote $output"
