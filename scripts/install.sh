#!/usr/bin/env bash
# Installs metassl and everything its tests need on a fresh Debian machine (PostgreSQL included):
# Debian's Fashion-MNIST package (when apt is available and we are root) and the
# Python package with its dev extra (torch and torchvision come from the package index).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST not installed; as root run: apt-get install dataset-fashion-mnist" >&2
    echo "      (or set data.download: true in a recipe to fetch it)" >&2
  fi
fi

# PostgreSQL: the shared store of multi-machine studies and sweeps; the tests start a real server from it.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: PostgreSQL not installed (the team tests need it); as root run: apt-get install postgresql" >&2
  fi
fi

python3 -m pip install --upgrade -q pip
python3 -m pip install -q -e '.[dev]'
python3 -c "import torch, torchvision, diffusers, mlflow; print('metassl installed: torch', torch.__version__)"
