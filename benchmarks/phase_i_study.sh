#!/usr/bin/env bash
# The phase (i) study (docs/RESULTS.md, "Does phase (i) earn its cost?").
#   STAGE=select bash benchmarks/phase_i_study.sh   # every method's configurations on the holdout validation split
#   STAGE=final  bash benchmarks/phase_i_study.sh   # every method once on the test split, paired seeds 0-4
#   STAGE=budget bash benchmarks/phase_i_study.sh   # the supervised baseline at 1000 iterations: has it converged?
#   STAGE=report bash benchmarks/phase_i_study.sh   # the tables of docs/RESULTS.md, into docs/results/phase_i/
# Settings are chosen on val/accuracy (data.validation: holdout, 50 extra labeled images per class that only
# select settings: the meta-step draws x_v from the labeled set) and never on the test split.
# Equal tuning budget: every method gets six configurations x three selection seeds (100-102).
# Two cores: two children at a time, one thread each.
# METHODS picks the methods of the select and final stages (default: all of them), e.g. only the real-data SSL
# methods with confidence policies: METHODS="flexmatch freematch softmatch" STAGE=select bash benchmarks/...
# In the final stage, "generative-random" or "generative-pseudo" picks one of the generative baseline's two latent
# samplers ("generative" runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-select}
ITERATIONS=${ITERATIONS:-400}
JOBS=${JOBS:-2}
STORE=${STORE:-sqlite:///mlruns/mlflow.db}
COMMON=(-o runtime.threads=1 -o schedule.iterations="$ITERATIONS" -o schedule.eval_every=100
        -o data.validation.source=holdout -o data.validation.per_class=50 -o tracking.tracking_uri="$STORE")
METHODS=${METHODS:-supervised fixmatch flexmatch freematch softmatch generative method}
wanted() { [[ " $METHODS " == *" $1 "* ]]; }
reporting() { [[ " ${REPORTS:-select final} " == *" $1 "* ]]; }  # REPORTS: which reports STAGE=report writes
sweep() {  # sweep NAME RECIPE GRID... [-- OVERRIDES...]
  local name=$1 recipe=$2; shift 2
  python -m runner.cli sweep "$recipe" --name "$name" --jobs "$JOBS" "${COMMON[@]}" "$@"
}

if [ "$STAGE" = select ]; then
  # Benchmark 2 (broad source), 1 label per class, selection seeds 100-102. Every method gets six configurations.
  E=(-o tracking.experiment=phase-i-select --grid seed=100,101,102)
  P=recipes/fashion_mnist_tops
  if wanted supervised; then
    sweep select-supervised "${P}_supervised.yaml" "${E[@]}" \
      --grid optim.classifier.lr=0.03,0.1 --grid optim.classifier.weight_decay=0.0005,0.005
    sweep select-supervised-lr0.01 "${P}_supervised.yaml" "${E[@]}" \
      -o optim.classifier.lr=0.01 --grid optim.classifier.weight_decay=0.0005,0.005
  fi
  # The real-data SSL methods: lambda_u in {0.5, 1, 2} x two values of the policy's own main option. FreeMatch's and
  # SoftMatch's EMAs (decay 0.999 in the papers, for a million iterations) move a third of the way from their start
  # in 400 iterations, so their decay is the option tried.
  declare -A POLICY_OPTION=([fixmatch]=method.threshold=0.8,0.95 [flexmatch]=method.threshold=0.8,0.95
                            [freematch]=method.ema_decay=0.99,0.999 [softmatch]=method.ema_decay=0.99,0.999)
  for ssl in fixmatch flexmatch freematch softmatch; do
    if wanted "$ssl"; then
      sweep "select-$ssl" "${P}_$ssl.yaml" "${E[@]}" --grid method.lambda_u=1,2 --grid "${POLICY_OPTION[$ssl]}"
      sweep "select-$ssl-lambda0.5" "${P}_$ssl.yaml" "${E[@]}" -o method.lambda_u=0.5 --grid "${POLICY_OPTION[$ssl]}"
    fi
  done
  if wanted generative; then
    for classes in random pseudo; do
      sweep "select-generative-$classes" "${P}_generative.yaml" "${E[@]}" -o method.latents.classes="$classes" \
        --grid method.lambda_u=1,3 --grid method.latents.temperature=0.5,1
      sweep "select-generative-$classes-lambda0.3" "${P}_generative.yaml" "${E[@]}" \
        -o method.latents.classes="$classes" -o method.lambda_u=0.3 --grid method.latents.temperature=0.5,1
    done
  fi
  if wanted method; then
    # The method: as shipped; the latent finder; the finder with strong x_v views, anchored to the bank, or both;
    # strong x_v with more and larger latent steps (a meta-step every iteration, meta.lr 0.2). Phase (ii) as it was
    # shipped before this study (the recipe now holds the selected settings).
    M=("${E[@]}" -o method.lambda_u=1 -o method.latents.temperature=1)
    sweep select-method "$P.yaml" "${M[@]}" --grid method.meta.finder=none,mlp
    sweep select-method-finder-strong "$P.yaml" "${M[@]}" -o method.meta.finder=mlp \
      -o method.meta.validation_augment=strong
    sweep select-method-finder-anchor "$P.yaml" "${M[@]}" -o method.meta.finder=mlp -o method.meta.finder_anchor=1
    sweep select-method-finder-strong-anchor "$P.yaml" "${M[@]}" -o method.meta.finder=mlp \
      -o method.meta.validation_augment=strong -o method.meta.finder_anchor=1
    sweep select-method-strong-more-steps "$P.yaml" "${M[@]}" -o method.meta.validation_augment=strong \
      -o method.meta.every=1 -o method.meta.lr=0.2
    # Phase (ii) is the generative baseline's SSL step, so the method also runs on the phase (ii) settings selected
    # for the generative (pseudo) baseline above (lambda_u 3, temperature 0.5), with phase (i) as shipped and its
    # two best variants above (the finder; the finder anchored to the bank).
    T=(-o method.lambda_u=3 -o method.latents.temperature=0.5)
    sweep select-method-tuned-ssl "$P.yaml" "${E[@]}" "${T[@]}" --grid method.meta.finder=none,mlp
    sweep select-method-tuned-ssl-finder-anchor "$P.yaml" "${E[@]}" "${T[@]}" -o method.meta.finder=mlp \
      -o method.meta.finder_anchor=1
  fi
fi

if [ "$STAGE" = final ]; then
  # Every method once on the test split, paired seeds 0-4, both benchmarks (BENCHMARKS), one label budget after the
  # other (LABELS). Each method runs with the configuration STAGE=select chose for it on val/accuracy
  # (docs/RESULTS.md): *_OVERRIDES, e.g. METHOD_OVERRIDES="-o method.meta.finder=mlp". The fashion_mnist_tops
  # recipes hold the selected settings already; the fashion_mnist_40labels ones take them from the overrides. The
  # flexmatch, freematch and softmatch recipes of both benchmarks hold the papers' defaults: their selected settings
  # come from FLEXMATCH_OVERRIDES, FREEMATCH_OVERRIDES, SOFTMATCH_OVERRIDES.
  read -r -a SUPERVISED <<< "${SUPERVISED_OVERRIDES:-}"
  read -r -a FIXMATCH <<< "${FIXMATCH_OVERRIDES:-}"
  read -r -a FLEXMATCH <<< "${FLEXMATCH_OVERRIDES:-}"
  read -r -a FREEMATCH <<< "${FREEMATCH_OVERRIDES:-}"
  read -r -a SOFTMATCH <<< "${SOFTMATCH_OVERRIDES:-}"
  read -r -a RANDOM_LATENTS <<< "${RANDOM_OVERRIDES:-}"
  read -r -a PSEUDO_LATENTS <<< "${PSEUDO_OVERRIDES:-}"
  read -r -a METHOD <<< "${METHOD_OVERRIDES:-}"
  for bench in ${BENCHMARKS:-tops all10}; do
    if [ "$bench" = tops ]; then P=recipes/fashion_mnist_tops; else P=recipes/fashion_mnist_40labels; fi
    for labels in ${LABELS:-1 4}; do
      E=(-o tracking.experiment="phase-i-final-$bench" -o data.labels_per_class="$labels" --grid seed=0,1,2,3,4)
      wanted supervised && sweep "final-$bench-$labels-supervised" "${P}_supervised.yaml" "${E[@]}" "${SUPERVISED[@]}"
      wanted fixmatch && sweep "final-$bench-$labels-fixmatch" "${P}_fixmatch.yaml" "${E[@]}" "${FIXMATCH[@]}"
      wanted flexmatch && sweep "final-$bench-$labels-flexmatch" "${P}_flexmatch.yaml" "${E[@]}" "${FLEXMATCH[@]}"
      wanted freematch && sweep "final-$bench-$labels-freematch" "${P}_freematch.yaml" "${E[@]}" "${FREEMATCH[@]}"
      wanted softmatch && sweep "final-$bench-$labels-softmatch" "${P}_softmatch.yaml" "${E[@]}" "${SOFTMATCH[@]}"
      if wanted generative || wanted generative-random; then
        sweep "final-$bench-$labels-generative-random" "${P}_generative.yaml" "${E[@]}" \
          -o method.latents.classes=random "${RANDOM_LATENTS[@]}"
      fi
      if wanted generative || wanted generative-pseudo; then
        sweep "final-$bench-$labels-generative-pseudo" "${P}_generative.yaml" "${E[@]}" \
          -o method.latents.classes=pseudo "${PSEUDO_LATENTS[@]}"
      fi
      wanted method && sweep "final-$bench-$labels-method" "${P}.yaml" "${E[@]}" "${METHOD[@]}"
    done
  done
fi

if [ "$STAGE" = budget ]; then
  # Is 400 iterations enough? The supervised baseline (its selected settings) at 1000, on the final seeds.
  for bench in ${BENCHMARKS:-tops all10}; do
    if [ "$bench" = tops ]; then P=recipes/fashion_mnist_tops; else P=recipes/fashion_mnist_40labels; fi
    sweep "budget-$bench-supervised-1000" "${P}_supervised.yaml" -o tracking.experiment="phase-i-final-$bench" \
      -o optim.classifier.lr=0.1 -o optim.classifier.weight_decay=0.005 -o schedule.iterations=1000 \
      --grid data.labels_per_class=1,4 --grid seed=0,1,2,3,4
  done
fi

if [ "$STAGE" = report ]; then
  report() { python -m runner.cli report "$@" --tracking-uri "$STORE"; }
  # REPORTS=final leaves docs/results/phase_i/select alone (for a store that holds another round's selection).
  if reporting select; then
    report phase-i-select --metric val/accuracy --output docs/results/phase_i/select
  fi
  SSL_REFERENCES=()  # every real-data SSL method in METHODS is a reference row
  for ssl in fixmatch flexmatch freematch softmatch; do
    if wanted "$ssl"; then SSL_REFERENCES+=(--reference "$ssl"); fi
  done
  if reporting final; then
    for bench in ${BENCHMARKS:-tops all10}; do
      report "phase-i-final-$bench" --reference generative,method.latents.classes=random \
        --reference generative,method.latents.classes=pseudo "${SSL_REFERENCES[@]}" --curve test/accuracy \
        --output "docs/results/phase_i/$bench"
    done
  fi
fi
