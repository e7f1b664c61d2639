#!/usr/bin/env bash
# The Flower peer of benchmarks/round_overhead.py lives in its own virtual environment, so neither
# framework's dependencies (Flower pins grpcio/protobuf) can change what the other one runs with.
#
#   bash benchmarks/setup_flwr.sh      # creates benchmarks/.venv-flwr once; run again to repair it
#
# torch/torchvision are pinned to the builds that lie on this machine's disk (any other version is
# a multi-GB download), the same pins as fedmq's own pyproject.toml.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-flwr"
FLWR_VERSION="${FLWR_VERSION:-1.42.0}"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "flwr==$FLWR_VERSION" "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/python" -c 'import flwr, torch; print(f"flwr {flwr.__version__}, torch {torch.__version__} in '"$venv"'")'
