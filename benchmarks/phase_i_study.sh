#!/usr/bin/env bash
# The phase (i) study (docs/RESULTS.md, "Does phase (i) earn its cost?").
#   STAGE=select bash benchmarks/phase_i_study.sh   # variants on the holdout validation split, selection seeds
#   STAGE=final  bash benchmarks/phase_i_study.sh   # every method once on the test split, paired seeds 0-4
# Settings are chosen on val/accuracy (data.validation: holdout, 20 extra labeled images per class that only
# select settings: the meta-step draws x_v from the labeled set) and never on the test split.
# Two cores: two children at a time, one thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-select}
ITERATIONS=${ITERATIONS:-400}
JOBS=${JOBS:-2}
STORE=${STORE:-sqlite:///mlruns/mlflow.db}
COMMON=(-o runtime.threads=1 -o schedule.iterations="$ITERATIONS" -o schedule.eval_every=100
        -o data.validation.source=holdout -o data.validation.per_class=20 -o tracking.tracking_uri="$STORE")
sweep() {  # sweep NAME RECIPE GRID... [-- OVERRIDES...]
  local name=$1 recipe=$2; shift 2
  metassl sweep "$recipe" --name "$name" --jobs "$JOBS" "${COMMON[@]}" "$@"
}

if [ "$STAGE" = select ]; then
  # Benchmark 2 (broad source), 1 label per class, selection seeds 100-102: the method's variants and the
  # generative baseline with pseudo latents, its reference.
  E=(-o tracking.experiment=phase-i-select --grid seed=100,101,102)
  R=recipes/fashion_mnist_tops.yaml
  sweep select-generative-pseudo recipes/fashion_mnist_tops_generative.yaml "${E[@]}" -o method.latents.classes=pseudo
  sweep select-generative-pseudo-bank256 recipes/fashion_mnist_tops_generative.yaml "${E[@]}" \
    -o method.latents.classes=pseudo -o method.latents.bank_size=256
  sweep select-method-default "$R" "${E[@]}"
  sweep select-method-strong-val "$R" "${E[@]}" -o method.meta.validation_augment=strong
  sweep select-method-r-only "$R" "${E[@]}" -o method.meta.lambda_v=0
  sweep select-method-val-only "$R" "${E[@]}" -o method.meta.lambda_r=0
  sweep select-method-finder "$R" "${E[@]}" -o method.meta.finder=mlp
  sweep select-method-visits "$R" "${E[@]}" -o method.latents.bank_size=256 -o method.meta.lr=0.2
fi

if [ "$STAGE" = final ]; then
  # Every method once on the test split, paired seeds 0-4, one label budget after the other (LABELS). The method
  # runs with METHOD_OVERRIDES, the configuration the select stage chose on val/accuracy (docs/RESULTS.md).
  read -r -a CHOSEN <<< "${METHOD_OVERRIDES:-}"
  for bench in ${BENCHMARKS:-tops}; do
    if [ "$bench" = tops ]; then P=recipes/fashion_mnist_tops; else P=recipes/fashion_mnist_40labels; fi
    for labels in ${LABELS:-1 4}; do
      E=(-o tracking.experiment="phase-i-final-$bench" -o data.labels_per_class="$labels" --grid seed=0,1,2,3,4)
      sweep "final-$bench-$labels-supervised" "${P}_supervised.yaml" "${E[@]}"
      sweep "final-$bench-$labels-fixmatch" "${P}_fixmatch.yaml" "${E[@]}"
      sweep "final-$bench-$labels-generative-random" "${P}_generative.yaml" "${E[@]}"
      sweep "final-$bench-$labels-generative-pseudo" "${P}_generative.yaml" "${E[@]}" -o method.latents.classes=pseudo
      sweep "final-$bench-$labels-method" "${P}.yaml" "${E[@]}" "${CHOSEN[@]}"
    done
  done
fi
