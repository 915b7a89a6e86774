"""What phase (i) did in each of the method's configurations of an experiment: the meta-objective and the latents.

    python benchmarks/phase_i_mechanism.py phase-i-select --tracking-uri sqlite:///mlruns/mlflow.db

One row per configuration (the method's params that vary between its runs, as `metassl report` groups them), means
over its seeds of: the validation loss before and after the virtual step and the meta-gradient norm, each averaged
over the run, and, at the run's end, how far the generated noise moved from its start, the entropy of the class
conditions, and the finder's drift.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict

from mlflow.tracking import MlflowClient

from runner.studies.report import varying_params

AVERAGED = ("meta/val_loss_before", "meta/val_loss_after", "meta/latent_grad_norm")
AT_END = ("latents/noise_shift", "latents/condition_entropy", "meta/finder_drift")


def run_values(client: MlflowClient, run_id: str) -> dict[str, float]:
    values = {}
    for key in (*AVERAGED, *AT_END):
        history = sorted(client.get_metric_history(run_id, key), key=lambda point: point.step)
        if not history:
            values[key] = math.nan
        elif key in AVERAGED:
            values[key] = statistics.fmean(point.value for point in history)
        else:
            values[key] = history[-1].value
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    args = parser.parse_args()
    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment '{args.experiment}' in {args.tracking_uri}")
    runs = client.search_runs(
        [experiment.experiment_id], "params.`method.name` = 'metassl' and attributes.status = 'FINISHED'"
    )
    keys = varying_params(runs)  # the rule `metassl report` groups its rows by
    groups: dict[tuple[str, ...], list[dict[str, float]]] = defaultdict(list)
    for run in runs:
        groups[tuple(run.data.params.get(key, "-") for key in keys)].append(run_values(client, run.info.run_id))
    columns = [*keys, "seeds", *AVERAGED, *AT_END]
    print("| " + " | ".join(columns) + " |")
    print("| " + " | ".join(["---"] * len(keys) + ["---:"] * (len(columns) - len(keys))) + " |")
    for config, rows in sorted(groups.items()):
        means = [statistics.fmean(row[key] for row in rows) for key in (*AVERAGED, *AT_END)]
        cells = [*config, str(len(rows)), *("-" if math.isnan(m) else f"{m:.4g}" for m in means)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
