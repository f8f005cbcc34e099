#!/usr/bin/env bash
# EfficientCellSeg CTC submission: creates ./venv, the Python environment of the executables.
#
#   ./install.sh          gpu when an NVIDIA GPU is visible (nvidia-smi or /dev/nvidia0), else cpu
#   ./install.sh cpu      OpenVINO and ONNX Runtime on the CPU (requirements-cpu.txt)
#   ./install.sh gpu      adds TensorFlow with CUDA, which runs the networks on the GPU
#                         (requirements-gpu.txt)
#
# Needs Linux x86_64 (glibc 2.28 or newer) and Python 3.11 with venv (python3.11, or set
# PYTHON). When wheelhouse/<variant>/ is in this folder, everything is installed from it with
# no network (pip install --no-index --find-links); otherwise pip downloads the pinned
# packages from the package index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

fail() { echo "install.sh: $*" >&2; exit 1; }

variant="${1:-auto}"
if [ "$variant" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; then variant=gpu; else variant=cpu; fi
fi
case "$variant" in
  cpu | gpu) ;;
  *) fail "unknown variant '$variant': use cpu or gpu" ;;
esac
requirements="requirements-$variant.txt"
[ -f "$requirements" ] || fail "$requirements missing: this submission folder is incomplete"

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || fail "$python not found: install Python 3.11 or set PYTHON"
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || fail "$python is not Python 3.11 (the wheels are built for CPython 3.11)"

rm -rf venv
"$python" -m venv venv
if [ -d "wheelhouse/$variant" ]; then
  echo "install.sh: installing the $variant variant from wheelhouse/$variant (no network)"
  venv/bin/python -m pip install --no-index --find-links "wheelhouse/$variant" -r "$requirements"
else
  echo "install.sh: no wheelhouse/$variant here: installing the $variant variant from the package index"
  venv/bin/python -m pip install -r "$requirements"
fi
PYTHONPATH="$PWD/code" venv/bin/python -c \
  "import efficientcellseg.environment as e; e.check_environment(); print(e.device_report())"
echo "install.sh: ./venv is ready ($variant): run the executables (./<DATASET>-<SEQ>.sh)"
