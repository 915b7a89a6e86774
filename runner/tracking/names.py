"""The names metassl gives things in MLflow: tags, artifacts and metrics that other commands read back."""

from __future__ import annotations

PARENT_TAG = "mlflow.parentRunId"
RECIPE_ARTIFACT = "recipe.yaml"
FINAL_ACCURACY = "final/test_accuracy"  # the metric a finished run reports; `runs`, sweeps and reports read it

# Who runs a RUNNING run, so `metassl runs` can tell a dead one (SIGKILL, out of memory) from a live one.
HOST_TAG, PID_TAG, PID_START_TAG = "metassl.host", "metassl.pid", "metassl.pid_start"

# MLflow 3's experiment kind "Machine learning": UIs that choose the view from this tag open the model-training view
# (runs, metrics, charts), not the GenAI one (traces, evaluations). MLflow 3.17 chooses it per browser instead (a
# toggle, or the URL's workflowType), so `metassl ui` also prints a link to that view.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
