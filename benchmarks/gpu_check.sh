#!/usr/bin/env bash
# The one-command GPU check: about 6 minutes on one H100/H200-class GPU (at most 8), run from the repository root.
#
#   bash benchmarks/gpu_check.sh            # then commit docs/RESULTS.md and benchmarks/results/phase_cost_gpu.json
#
# What it runs, in order (each step's time on one GPU):
#   1. the CUDA tests, tests/test_cuda.py: every method's iteration under bf16 autocast (~1 min);
#   2. benchmarks/phase_cost.py --config all --device cuda: seconds per iteration, meta/SSL split and peak memory of
#      every method, on the demo shape and at the STL-10 shape (96 px ResNet-18 with a randomly initialised
#      UNet2DModel the size of the consistency model, openai/diffusers-cd_imagenet64_l2; no download) (~4 min);
#      its JSON goes to benchmarks/results/phase_cost_gpu.json and its table into docs/RESULTS.md (GPU table);
#   3. with 2 or more GPUs: a 2-rank NCCL run (`metassl run recipes/digits_tiny.yaml --nproc 2`, when this
#      checkout's `metassl run` has --nproc) and a 2-child sweep spread over 2 devices (~1 min each).
# Without a CUDA device it stops at once (exit 2); the GPU table then stays as it is, marked stale.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [[ "$gpus" -lt 1 ]]; then
    echo "error: no CUDA device is visible; gpu_check needs one (docs/RESULTS.md's GPU table stays marked stale)" >&2
    exit 2
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
store=(-o "tracking.tracking_uri=sqlite:///$scratch/mlruns/mlflow.db" -o "tracking.artifact_root=$scratch/mlruns")
started=$SECONDS
step() { echo "== [$((SECONDS - started)) s] $*" >&2; }

step "1/3 CUDA tests"
"$PYTHON" -m pytest -q tests/test_cuda.py

step "2/3 phase cost on the GPU (demo shape and STL-10 shape with a random consistency-model UNet)"
"$PYTHON" benchmarks/phase_cost.py --config all --device cuda --iterations 30 \
    --output benchmarks/results/phase_cost_gpu.json
"$PYTHON" benchmarks/gpu_table.py benchmarks/results/phase_cost_gpu.json docs/RESULTS.md

if [[ "$gpus" -ge 2 ]]; then
    step "3/3 two GPUs: a sweep with one child per device"
    "$PYTHON" -m runner.cli sweep recipes/digits_tiny.yaml --grid seed=0,1 --jobs 2 --devices 0,1 \
        -o schedule.iterations=100 "${store[@]}"
    if "$PYTHON" -m runner.cli run --help | grep -q -- "--nproc"; then
        step "3/3 two GPUs: a 2-rank NCCL run"
        timeout 300 "$PYTHON" -m runner.cli run recipes/digits_tiny.yaml --nproc 2 -o schedule.iterations=100 \
            "${store[@]}"
    else
        step "3/3 skipped the 2-rank run: this checkout's metassl run has no --nproc"
    fi
else
    step "3/3 skipped (one GPU): the 2-rank NCCL run and the 2-device sweep need two"
fi
step "done: commit docs/RESULTS.md and benchmarks/results/phase_cost_gpu.json"
