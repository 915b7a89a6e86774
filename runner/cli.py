"""The `metassl` command line."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from runner.tracking import FINAL_ACCURACY
from schemas import UserError

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer with click as a dependency
    import click.exceptions as click_exceptions  # type: ignore[no-redef]

app = typer.Typer(
    name="metassl",
    help="Generative semi-supervised learning from YAML recipes, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

Command = TypeVar("Command", bound=Callable[..., Any])

RecipeArg = Annotated[
    Path,
    typer.Argument(
        help="a recipe YAML file, e.g. recipes/digits_tiny.yaml, or a logged run's recipe: runs:/RUN_ID",
        show_default=False,
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--override", "-o", help="override a field: key.path=value (repeatable), e.g. -o seed=1"),
]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI of the store to read runs from [default: the recipe default, sqlite:///mlruns/mlflow.db]",
        show_default=False,
    ),
]
Jobs = Annotated[
    int,
    typer.Option("--jobs", "-j", min=1, help="children at the same time (on a CPU, pair with -o runtime.threads=1)"),
]
Devices = Annotated[
    str | None,
    typer.Option(
        "--devices",
        help="GPUs to spread the children over, e.g. 0,1,2,3 (a child holds its own; default: all visible)",
        show_default=False,
    ),
]
Nproc = Annotated[int, typer.Option("--nproc", min=1, help="processes (and devices) per child: metassl run --nproc")]
StorageWait = Annotated[
    float, typer.Option("--storage-wait", min=0, help="seconds a worker rides out a database outage before it stops")
]
Heartbeat = Annotated[float, typer.Option("--heartbeat", min=0.5, hidden=True, help="seconds between heartbeats")]

MAX_ERROR_CHARS = 2000  # an error is read, not scrolled: 200k unknown keys must not print megabytes


def one_line(message: str) -> str:
    message = " ".join(message.split())
    if len(message) > MAX_ERROR_CHARS:
        cut = len(message) - MAX_ERROR_CHARS
        message = f"{message[:MAX_ERROR_CHARS]}... ({cut} more characters)"
    return message


def is_worker_rank() -> bool:
    """A torchrun worker other than rank 0: it says nothing (rank 0 reports for the whole run), only exits."""
    return os.environ.get("RANK", "0") != "0"


def fail(message: str) -> None:
    if not is_worker_rank():
        typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code=2)


def user_errors(command: Command) -> Command:
    """Print a UserError (or a full disk, an unwritable file) as one line on stderr and exit 2; a stop by
    signal exits 130 with what was saved. No tracebacks for bad input."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from runner.faults import describe_os_error

        try:
            return command(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
        except KeyboardInterrupt as exc:
            from runner.run.interrupts import Interrupted

            if not is_worker_rank():
                typer.echo(str(exc) if isinstance(exc, Interrupted) else "interrupted", err=True)
            raise typer.Exit(code=130) from None
        except Exception as exc:
            described = describe_os_error(exc)
            if described is None:
                raise
            fail(described)

    return wrapper  # type: ignore[return-value]


def tracking_block(tracking_uri: str | None, experiment: str | None = None) -> Any:
    """The `Tracking` of a command's options, validated like a recipe's `tracking` block (its defaults where an
    option is not given). Built once here, at the edge, and passed down."""
    from schemas import validate_block
    from schemas.training import Tracking

    given = {"tracking_uri": tracking_uri, "experiment": experiment}
    fields = {key: value for key, value in given.items() if value is not None}
    return validate_block(
        Tracking, fields, "tracking", {"tracking_uri": "--tracking-uri", "experiment": "--experiment"}
    )


def _load(recipe: Path, overrides: list[str] | None, tracking_uri: str | None = None) -> Any:
    """A recipe file, or `runs:/RUN_ID` from the store at `tracking_uri` (default: the local store)."""
    from runner.recipe_source import load_source

    return load_source(recipe, overrides, tracking_block(tracking_uri)).recipe


def _with_store(recipe: Any, tracking_uri: str | None) -> Any:
    """`--tracking-uri` on a recipe: the same as `-o tracking.tracking_uri=URI` (and logged with the recipe)."""
    if tracking_uri is None:
        return recipe
    return recipe.model_copy(update={"tracking": recipe.tracking.model_copy(update={"tracking_uri": tracking_uri})})


@app.command()
@user_errors
def run(
    recipe: Annotated[
        Path | None, typer.Argument(help="a recipe YAML file, or runs:/RUN_ID", show_default=False)
    ] = None,
    override: Overrides = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="continue a killed run from its checkpoint: a RUN_ID, or a recipe path (its newest unfinished run)"
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="the MLflow store: for a RECIPE, replaces its tracking.tracking_uri (artifacts still go to"
            " tracking.artifact_root); for runs:/RUN_ID or --resume RUN_ID, where to find the run (and the new run"
            " goes there too) [default: sqlite:///mlruns/mlflow.db]",
            show_default=False,
        ),
    ] = None,
    parent_run_id: Annotated[
        str | None, typer.Option("--parent-run-id", hidden=True, help="nest the new run under this run (sweeps)")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", hidden=True, help="extra run tag KEY=VALUE")] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="processes on this machine, one run (torchrun --standalone --nproc-per-node N; see README, Many"
            " GPUs): each draws data.batch_size images per iteration",
        ),
    ] = 1,
) -> None:
    """Train a recipe in one MLflow run: [bold]metassl run recipes/fashion_mnist_40labels.yaml[/bold]."""
    from runner import cpu_isa
    from runner.tracking import quiet_libraries

    quiet_libraries()
    if resume is not None and recipe is not None:
        fail("give either RECIPE or --resume, not both")
    if resume is None and recipe is None:
        fail("missing RECIPE; e.g. metassl run recipes/digits_tiny.yaml (see metassl run --help)")
    if nproc > 1:
        _launch_torchrun(nproc, recipe, override, resume, tracking_uri, parent_run_id, tag)
    by_recipe = resume is None or resume.endswith((".yaml", ".yml")) or Path(resume).exists()
    if by_recipe:
        source = recipe if resume is None else Path(resume)
        loaded = _with_store(_load(source, override, tracking_uri), tracking_uri)  # type: ignore[arg-type]
        cpu_isa.pin(loaded.runtime.cpu_isa)  # before torch is imported: its kernels read it once
    else:
        from runner.tracking import recipe_of_run

        store = tracking_block(tracking_uri)
        cpu_isa.pin(recipe_of_run(resume, store).recipe.runtime.cpu_isa)  # type: ignore[arg-type]
    from runner.run import session

    if resume is not None and by_recipe:
        result = session.resume_latest(loaded)
    elif resume is not None:
        result = session.resume(resume, store)
    else:
        from runner.studies import trial

        extra_tags = dict(item.partition("=")[::2] for item in tag or [])
        if trial.is_trial():  # a child of `metassl tune`
            line = trial.run_as_trial(loaded, parent_run_id, extra_tags)
            if line:  # the other ranks of a `--nproc` trial print nothing
                typer.echo(line)
            return
        result = session.execute(loaded, parent_run_id=parent_run_id, extra_tags=extra_tags)
    if not is_worker_rank():
        typer.echo(f"run {result.run_id} finished: test accuracy {result.accuracy:.4f} in {result.wall_seconds:.1f} s")


def _launch_torchrun(
    nproc: int,
    recipe: Path | None,
    override: list[str] | None,
    resume: str | None,
    tracking_uri: str | None,
    parent_run_id: str | None,
    tag: list[str] | None,
) -> None:
    """`metassl run ... --nproc N`: the same command in N processes under torchrun; exits with their code."""
    if "WORLD_SIZE" in os.environ:
        fail("--nproc: this process was started by torchrun already; drop --nproc (torchrun sets the processes)")
    if recipe is not None:
        _load(recipe, override, tracking_uri)  # a bad recipe is one line here, not one per process
    from runner.distributed import launch

    args = [str(recipe)] if recipe is not None else ["--resume", str(resume)]
    args += [f"--override={item}" for item in override or []]
    args += [] if tracking_uri is None else [f"--tracking-uri={tracking_uri}"]
    args += [] if parent_run_id is None else [f"--parent-run-id={parent_run_id}"]
    args += [f"--tag={item}" for item in tag or []]
    raise typer.Exit(launch(nproc, ["run", *args]))


@app.command()
@user_errors
def validate(recipe: RecipeArg, override: Overrides = None, tracking_uri: TrackingUri = None) -> None:
    """Check a recipe without any torch work: its fields, the folders and checkpoint it names, a CUDA device if it
    asks for one, and that its tracking store is writable (or its server answers)."""
    from runner.tracking import check_store

    loaded = _load(recipe, override, tracking_uri)
    loaded.check_inputs()
    if loaded.runtime.device == "cuda":  # only then is torch imported, to ask for the device
        from runner.common.device import select_device

        select_device(loaded.runtime)
    check_store(loaded.tracking)
    typer.echo(
        f"ok: {recipe} is a valid recipe ({loaded.method.name} on {loaded.data.name}, "
        f"{loaded.schedule.iterations} iterations)"
    )


@app.command()
@user_errors
def show(recipe: RecipeArg, override: Overrides = None, tracking_uri: TrackingUri = None) -> None:
    """Print the resolved recipe, its bases merged and every default filled in (re-runnable as is)."""
    from schemas import dump_recipe

    typer.echo(dump_recipe(_load(recipe, override, tracking_uri)), nl=False)


@app.command()
@user_errors
def diff(
    a: Annotated[str, typer.Argument(help="a recipe file or runs:/RUN_ID", show_default=False)],
    b: Annotated[str, typer.Argument(help="a recipe file or runs:/RUN_ID", show_default=False)],
    tracking_uri: TrackingUri = None,
) -> None:
    """Why two results differ: the recipe fields that differ and, for runs, their results side by side and what
    differs in the machine and packages they ran on.

    [bold]metassl diff runs:/RUN_A runs:/RUN_B[/bold]
    """
    from runner.recipe_diff import diff as diff_sources

    typer.echo(diff_sources(a, b, tracking_block(tracking_uri)))


@app.command()
@user_errors
def schema(
    output: Annotated[Path | None, typer.Option("--output", help="write to this file instead of stdout")] = None,
) -> None:
    """Print the recipe JSON Schema (for editor autocompletion and validation)."""
    from schemas import recipe_model

    text = json.dumps(recipe_model().model_json_schema(), indent=2)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n")
        typer.echo(f"wrote {output}")


@app.command("list")
@user_errors
def list_components(
    kind: Annotated[
        str | None, typer.Argument(help="datasets, classifiers, generators or methods; default: all")
    ] = None,
) -> None:
    """List the registered components a recipe can name."""
    from runner.registry import REGISTRIES

    if kind is not None and kind not in REGISTRIES:
        fail(f"unknown kind '{kind}'; choose one of: {', '.join(REGISTRIES)}")
    for name, registry in REGISTRIES.items():
        if kind in (None, name):
            typer.echo(f"{name}:")
            for component, description in registry.describe().items():
                typer.echo(f"  {component:<18} {description}")


@app.command()
@user_errors
def ui(
    port: Annotated[int, typer.Option(help="port of the MLflow UI")] = 5000,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    experiment: Annotated[str | None, typer.Option(help="the experiment the link opens")] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Open the MLflow UI on this project's store (Ctrl-C stops it), at the experiment's runs table.

    MLflow 3 picks its GenAI or model-training view per browser (the toggle at the top left, or the URL's
    `workflowType`); the printed link opens the model-training view: runs, metrics, charts, artifacts.
    For a tracking server (http://...), it points at the server's own UI instead.
    """
    from runner.tracking import check_store, is_server
    from runner.ui_link import KEEP_VIEW_HINT, runs_table_link

    tracking = tracking_block(tracking_uri, experiment)
    uri = tracking.tracking_uri
    if is_server(uri):
        check_store(tracking)
        typer.echo(f"{uri} is an MLflow server: its UI is at {runs_table_link(uri, tracking)}")
        typer.echo(KEEP_VIEW_HINT)
        return
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    typer.echo(f"MLflow UI on {runs_table_link(f'http://{host}:{port}', tracking)} (store {uri})")
    typer.echo(KEEP_VIEW_HINT)
    raise typer.Exit(subprocess.call(command))


@app.command("check-model")
@user_errors
def check_model(
    model_uri: Annotated[str, typer.Argument(help="runs:/RUN_ID/model, models:/NAME/VERSION, models:/ID or a folder")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Check a logged model is the one metassl logged (its loader, no code, each file's SHA-256) before loading it."""
    from runner.model_export.check import check_model as check
    from runner.tracking import quiet_libraries

    quiet_libraries()
    typer.echo(check(model_uri, tracking_block(tracking_uri)))


@app.command()
@user_errors
def runs(
    experiment: Annotated[str, typer.Option(help="MLflow experiment name")] = "metassl",
    limit: Annotated[int, typer.Option(help="how many runs")] = 20,
    tracking_uri: TrackingUri = None,
) -> None:
    """List recent runs with their status and final accuracy; DEAD: RUNNING, but its process is gone (resume it)."""
    from runner.tracking import list_runs, quiet_libraries, shown_status

    quiet_libraries()
    tracking = tracking_block(tracking_uri, experiment)
    found_runs = list_runs(tracking, limit)
    if not found_runs:
        typer.echo(f"no runs in experiment '{experiment}' of {tracking.tracking_uri}")
        return
    typer.echo(f"{'RUN ID':<32}  {'STATUS':<9} {'TEST ACC':>8}  NAME")
    for found in found_runs:
        accuracy = found.data.metrics.get(FINAL_ACCURACY)
        shown = "-" if accuracy is None else f"{accuracy:.4f}"
        typer.echo(f"{found.info.run_id:<32}  {shown_status(found):<9} {shown:>8}  {found.info.run_name}")


@app.command("eval")
@user_errors
def evaluate_run(
    run_id: Annotated[str, typer.Argument(help="an MLflow run id from metassl run")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Re-evaluate a finished run's logged weights on its test split."""
    from runner.run.evaluation_job import evaluate_logged_run
    from runner.tracking import quiet_libraries

    quiet_libraries()
    report = evaluate_logged_run(run_id, tracking_block(tracking_uri))
    typer.echo(report)


@app.command()
@user_errors
def pretrain(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="a generator recipe, e.g. recipes/generators/fashion_mnist_gan.yaml, or a training recipe"
            " whose generator is a local_gan block with a pretrain block",
            show_default=False,
        ),
    ],
    override: Overrides = None,
    force: Annotated[bool, typer.Option(help="retrain even if the checkpoint exists")] = False,
) -> None:
    """Train the project's own generator (a `local_gan` block) on its source split and save it.

    [bold]metassl pretrain recipes/generators/fashion_mnist_gan.yaml[/bold]
    """
    from runner import cpu_isa
    from runner.tracking import quiet_libraries
    from schemas.recipe import read_recipe_document, set_override

    quiet_libraries()
    document = read_recipe_document(recipe)  # its runtime.cpu_isa, before torch is imported
    for assignment in override or []:
        set_override(document, assignment)
    runtime = document.get("runtime")
    cpu_isa.pin(runtime.get("cpu_isa", "native") if isinstance(runtime, dict) else "native")
    from runner.pretraining.pretrain import pretrain_generator
    from runner.pretraining.recipe import load_pretrain_recipe
    from schemas.generators import has_checkpoint

    loaded = load_pretrain_recipe(recipe, override or [])
    cached = has_checkpoint(loaded.generator.path) and not force
    path = pretrain_generator(loaded.generator, tracking=loaded.tracking, runtime=loaded.runtime, force=force)
    if cached:
        typer.echo(f"generator already at {path}, trained with this pretrain block; --force retrains it")
    else:
        typer.echo(f"generator saved to {path}")


@app.command()
@user_errors
def sweep(
    recipe: RecipeArg,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", "-g", help="a key and its values: key.path=v1,v2 (repeatable; values are YAML)"),
    ] = None,
    override: Overrides = None,
    jobs: Jobs = 1,
    devices: Devices = None,
    nproc: Nproc = 1,
    name: Annotated[str | None, typer.Option("--name", help="the parent run's name")] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="a database shared by several sweep workers (postgresql://user:pw@host/db): each grid point "
            "runs once, on whichever worker claims it first"
        ),
    ] = None,
    storage_wait: StorageWait = 300.0,
    heartbeat: Heartbeat = 10.0,
) -> None:
    """Run the cross product of --grid values as child runs under one parent run; re-running skips finished ones.

    [bold]metassl sweep recipes/digits_tiny.yaml --grid method.name=supervised,fixmatch --grid seed=0,1,2[/bold]
    """
    from runner.studies.admit import admit_sweep
    from runner.studies.launch import WorkerOptions, plan_devices
    from runner.studies.sweep import SweepFailed, run_sweep
    from runner.studies.sweep_plan import plan_sweep
    from runner.tracking import quiet_libraries

    quiet_libraries()
    plan = plan_sweep(recipe, grid or [], override or [], name)
    admit_sweep(plan, storage, named=name is not None)
    try:
        options = WorkerOptions(jobs, plan_devices(devices, jobs, nproc), nproc, storage_wait, heartbeat)
        run_sweep(plan, options, storage)
    except SweepFailed as exc:
        typer.echo(f"sweep failed: {exc}", err=True)
        raise typer.Exit(code=1) from None


@app.command()
@user_errors
def report(
    source: Annotated[
        str, typer.Argument(help="a sweep's parent run id, or an MLflow experiment name", show_default=False)
    ],
    output: Annotated[
        Path | None, typer.Option("--output", help="also write results.md, results.csv, results.png here")
    ] = None,
    metric: Annotated[str, typer.Option(help="the metric to summarise")] = FINAL_ACCURACY,
    reference: Annotated[
        list[str] | None,
        typer.Option(
            help="also print every row's paired difference (same seeds) with a 95% CI against this row: a method,"
            " optionally with settings, e.g. --reference fixmatch --reference generative,method.latents.classes=pseudo"
        ),
    ] = None,
    curve: Annotated[
        str | None,
        typer.Option(
            help="also a learning-curve table: this metric's mean over the seeds at each logged step, e.g."
            " test/accuracy or val/accuracy"
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
    storage: Annotated[
        str | None, typer.Option(help="a study's Optuna database, if not the one logged with it (a password)")
    ] = None,
) -> None:
    """Mean ± std over seeds per method and label budget, as Markdown, CSV and a plot (logged to the parent run).

    Given a `metassl tune` parent run: the best trials, parameter importances and the optimization history.
    """
    from runner.studies.report import RUN_ID, make_report
    from runner.tracking import quiet_libraries

    quiet_libraries()
    store = tracking_block(tracking_uri)
    if RUN_ID.match(source):
        from runner.studies.tune_report import is_study_parent, study_report
        from runner.tracking import tracking_of_run

        tracking, run = tracking_of_run(store, source)
        if is_study_parent(run):
            typer.echo(study_report(run, tracking, storage, output), nl=False)
            return
    typer.echo(make_report(source, store, metric, output, reference, curve))


@app.command()
@user_errors
def tune(
    recipe: RecipeArg,
    space: Annotated[
        Path,
        typer.Option("--space", help="the search space YAML, e.g. recipes/spaces/digits_tiny.yaml", show_default=False),
    ],
    override: Overrides = None,
    trials: Annotated[int, typer.Option(min=1, help="trials in the study, over all its workers")] = 20,
    name: Annotated[
        str | None, typer.Option("--name", help="study name; default: the recipe name and a hash of recipe + space")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna database; default sqlite next to the tracking store. Several machines: postgresql://..."
        ),
    ] = None,
    objective: Annotated[str, typer.Option(help="the metric to maximise (the holdout split's)")] = "val/accuracy",
    jobs: Jobs = 1,
    devices: Devices = None,
    nproc: Nproc = 1,
    storage_wait: StorageWait = 300.0,
    heartbeat: Heartbeat = 10.0,
) -> None:
    """Tune a recipe with Optuna: each trial a child MLflow run; re-run the same command to continue the study.

    [bold]metassl tune recipes/digits_tiny.yaml --space recipes/spaces/digits_tiny.yaml --trials 8[/bold]

    Start the same command on several machines with one --storage postgresql://... to share the study.
    """
    from runner.studies.admit import admit_tune
    from runner.studies.launch import WorkerOptions, plan_devices
    from runner.studies.tune import parent_of, plan_tune, summary
    from runner.studies.tune_worker import run_tune
    from runner.tracking import quiet_libraries

    quiet_libraries()
    plan = plan_tune(recipe, space, override or [], name, storage, trials, objective)
    admit_tune(plan)
    study = run_tune(plan, WorkerOptions(jobs, plan_devices(devices, jobs, nproc), nproc, storage_wait, heartbeat))
    typer.echo(summary(plan, study, parent_of(plan)))


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; a usage error (unknown option, `-o` without a value) is one line too."""
    try:
        code = app(argv, standalone_mode=False, prog_name="metassl")
    except click_exceptions.NoArgsIsHelpError:
        code = 2  # the help is printed already
    except click_exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "metassl"
        typer.echo(f"error: {one_line(exc.format_message())} (see {where} --help)", err=True)
        code = 2
    except (typer.Abort, KeyboardInterrupt) as exc:  # a signal before the command's own handling starts
        from runner.run.interrupts import Interrupted

        typer.echo(str(exc) if isinstance(exc, Interrupted) else "interrupted", err=True)
        code = 130
    return code if isinstance(code, int) else 0


def main() -> None:
    from runner.run import interrupts

    interrupts.install()
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
