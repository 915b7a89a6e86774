#!/usr/bin/env bash
# The in-house results table (issue 5, item 3): Fashion-MNIST at 1 and 4 labels per class, 3 seeds, every method
# at the same iteration budget, each recipe a sweep (a parent run with children) in one MLflow experiment, then
# one report over the experiment.
#   bash benchmarks/fashion_mnist_results.sh                 # ITERATIONS=1000 JOBS=1 EXPERIMENT=fashion-mnist-results
#   ITERATIONS=300 bash benchmarks/fashion_mnist_results.sh  # a shorter budget
# Re-running skips children that already finished; a failed child is recorded and the others go on.
set -uo pipefail
ITERATIONS=${ITERATIONS:-1000}
JOBS=${JOBS:-1}
EXPERIMENT=${EXPERIMENT:-fashion-mnist-results}
OUTPUT=${OUTPUT:-docs/results}
COMMON=(--grid data.labels_per_class=1,4 --grid seed=0,1,2 --jobs "$JOBS"
        -o schedule.iterations="$ITERATIONS" -o tracking.experiment="$EXPERIMENT")
status=0
for recipe in supervised fixmatch generative; do
  metassl sweep "recipes/fashion_mnist_40labels_${recipe}.yaml" "${COMMON[@]}" || status=1
done
# The generative baseline again with the method's pseudo-conditional latents: separates the meta phase from the init.
metassl sweep recipes/fashion_mnist_40labels_generative.yaml -o method.latents.classes=pseudo "${COMMON[@]}" || status=1
metassl sweep recipes/fashion_mnist_40labels.yaml --grid method.meta.gradient=exact,finite_difference "${COMMON[@]}" \
  || status=1
# The cheaper virtual-step scope (the last feature block and the head).
metassl sweep recipes/fashion_mnist_40labels.yaml -o method.meta.scope=last_blocks "${COMMON[@]}" || status=1
metassl report "$EXPERIMENT" --output "$OUTPUT" || status=1
exit $status
