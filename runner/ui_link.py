"""The MLflow UI link `metassl ui` prints: the experiment's runs table, in the model-training view."""

from __future__ import annotations

from schemas.training import Tracking

VIEW = "workflowType=machine_learning"
# MLflow 3.17 keeps the GenAI / model-training choice per browser; links inside the UI drop the URL's choice.
KEEP_VIEW_HINT = (
    'MLflow opens its GenAI view unless told otherwise: click "Model training" at the top left once, and this'
    " browser keeps the model-training view (runs, metrics, charts) for every experiment and run."
)


def runs_table_link(base_url: str, tracking: Tracking) -> str:
    """The experiment's runs table, or the list of experiments while the experiment does not exist yet."""
    from runner.tracking import client_for

    base = base_url.rstrip("/")
    experiment = client_for(tracking).get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return f"{base}/#/experiments?{VIEW}"
    return f"{base}/#/experiments/{experiment.experiment_id}/runs?{VIEW}"
