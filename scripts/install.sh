#!/usr/bin/env bash
# Installs metassl and everything its tests need on a fresh Debian machine:
# Debian's Fashion-MNIST package and PostgreSQL (a team's shared study store; its tests start a real server),
# when apt is available and we are root, and the Python package with its dev extra (every adapter's extras and the
# team tools; torch and torchvision come from the package index). Run it inside the virtualenv you want to use.
set -euo pipefail
cd "$(dirname "$0")/.."

needed=()
[ -d /usr/share/datasets/fashion-mnist ] || needed+=(dataset-fashion-mnist)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || needed+=(postgresql)
if [ "${#needed[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${needed[@]}" >/dev/null
  else
    echo "note: missing Debian packages: ${needed[*]}; as root run: apt-get install ${needed[*]}" >&2
    echo "      (Fashion-MNIST: or set data.download: true in a recipe to fetch it)" >&2
  fi
fi

python3 -m pip install --upgrade -q pip
python3 -m pip install -q -e '.[dev]'
python3 -c "import torch, torchvision, diffusers, mlflow; print('metassl installed: torch', torch.__version__)"
