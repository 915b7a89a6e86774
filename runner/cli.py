"""The `metassl` command line."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

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
    Path, typer.Argument(help="a recipe YAML file, e.g. recipes/digits_tiny.yaml", show_default=False)
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--override", "-o", help="override a field: key.path=value (repeatable), e.g. -o seed=1"),
]
TrackingUri = Annotated[str, typer.Option("--tracking-uri", help="MLflow tracking URI of the store to read runs from")]
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MAX_ERROR_CHARS = 2000  # an error is read, not scrolled: 200k unknown keys must not print megabytes


def one_line(message: str) -> str:
    message = " ".join(message.split())
    if len(message) > MAX_ERROR_CHARS:
        cut = len(message) - MAX_ERROR_CHARS
        message = f"{message[:MAX_ERROR_CHARS]}... ({cut} more characters)"
    return message


def fail(message: str) -> None:
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
            from runner.interrupts import Interrupted

            typer.echo(str(exc) if isinstance(exc, Interrupted) else "interrupted", err=True)
            raise typer.Exit(code=130) from None
        except Exception as exc:
            described = describe_os_error(exc)
            if described is None:
                raise
            fail(described)

    return wrapper  # type: ignore[return-value]


def tracking_block(tracking_uri: str, experiment: str | None = None) -> Any:
    """A `Tracking` from command-line options, validated like a recipe's `tracking` block."""
    from schemas import validate_block
    from schemas.training import Tracking

    fields = {"tracking_uri": tracking_uri} | ({} if experiment is None else {"experiment": experiment})
    return validate_block(
        Tracking, fields, "tracking", {"tracking_uri": "--tracking-uri", "experiment": "--experiment"}
    )


def _load(recipe: Path, overrides: list[str] | None) -> Any:
    from runner.registry import load_plugins
    from schemas import load_recipe

    load_plugins()
    return load_recipe(recipe, overrides)


@app.command()
@user_errors
def run(
    recipe: Annotated[Path | None, typer.Argument(help="a recipe YAML file", show_default=False)] = None,
    override: Overrides = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="continue a killed run from its checkpoint: a RUN_ID, or a recipe path (its newest unfinished run)"
        ),
    ] = None,
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
    parent_run_id: Annotated[
        str | None, typer.Option("--parent-run-id", hidden=True, help="nest the new run under this run (sweeps)")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", hidden=True, help="extra run tag KEY=VALUE")] = None,
) -> None:
    """Train a recipe in one MLflow run: [bold]metassl run recipes/fashion_mnist_40labels.yaml[/bold]."""
    from runner import session

    session.quiet_libraries()
    if resume is not None and recipe is not None:
        fail("give either RECIPE or --resume, not both")
    if resume is None and recipe is None:
        fail("missing RECIPE; e.g. metassl run recipes/digits_tiny.yaml (see metassl run --help)")
    if resume is not None:
        if resume.endswith((".yaml", ".yml")) or Path(resume).exists():
            result = session.resume_latest(_load(Path(resume), override))
        else:
            result = session.resume(resume, tracking_block(tracking_uri))
    else:
        extra_tags = dict(item.partition("=")[::2] for item in tag or [])
        result = session.execute(
            _load(recipe, override),  # type: ignore[arg-type]
            parent_run_id=parent_run_id,
            extra_tags=extra_tags,
        )
    typer.echo(f"run {result.run_id} finished: test accuracy {result.accuracy:.4f} in {result.wall_seconds:.1f} s")


@app.command()
@user_errors
def validate(recipe: RecipeArg, override: Overrides = None) -> None:
    """Check a recipe without any torch work, and that its tracking store is writable (or its server answers)."""
    from runner.tracking import check_store

    loaded = _load(recipe, override)
    check_store(loaded.tracking)
    typer.echo(
        f"ok: {recipe} is a valid recipe ({loaded.method.name} on {loaded.data.name}, "
        f"{loaded.schedule.iterations} iterations)"
    )


@app.command()
@user_errors
def show(recipe: RecipeArg, override: Overrides = None) -> None:
    """Print the resolved recipe, every default filled in (re-runnable as is)."""
    from schemas import dump_recipe

    typer.echo(dump_recipe(_load(recipe, override)), nl=False)


@app.command()
@user_errors
def schema(
    output: Annotated[Path | None, typer.Option("--output", help="write to this file instead of stdout")] = None,
) -> None:
    """Print the recipe JSON Schema (for editor autocompletion and validation)."""
    from runner.registry import load_plugins
    from schemas import recipe_model

    load_plugins()
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
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
) -> None:
    """Open the MLflow UI on this project's store (Ctrl-C stops it)."""
    tracking_block(tracking_uri)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    typer.echo(f"MLflow UI on http://{host}:{port} (store {tracking_uri})")
    raise typer.Exit(subprocess.call(command))


@app.command()
@user_errors
def runs(
    experiment: Annotated[str, typer.Option(help="MLflow experiment name")] = "metassl",
    limit: Annotated[int, typer.Option(help="how many runs")] = 20,
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
) -> None:
    """List recent runs with their status and final accuracy; DEAD: RUNNING, but its process is gone (resume it)."""
    from runner.session import quiet_libraries
    from runner.tracking import list_runs, shown_status

    quiet_libraries()
    for found in list_runs(tracking_block(tracking_uri, experiment), limit):
        accuracy = found.data.metrics.get("final/test_accuracy")
        shown = "-" if accuracy is None else f"{accuracy:.4f}"
        typer.echo(f"{found.info.run_id}  {shown_status(found):<9} {shown:>7}  {found.info.run_name}")


@app.command("eval")
@user_errors
def evaluate_run(
    run_id: Annotated[str, typer.Argument(help="an MLflow run id from metassl run")],
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
) -> None:
    """Re-evaluate a finished run's logged weights on its test split."""
    from runner.evaluation_job import evaluate_logged_run
    from runner.session import quiet_libraries

    quiet_libraries()
    report = evaluate_logged_run(run_id, tracking_block(tracking_uri))
    typer.echo(report)


@app.command()
@user_errors
def pretrain(
    recipe: RecipeArg,
    override: Overrides = None,
    force: Annotated[bool, typer.Option(help="retrain even if the checkpoint exists")] = False,
) -> None:
    """Train the project's own generator (a `local_gan` block) on its source split and save it."""
    from runner.generators.pretrain import pretrain_from_file
    from runner.session import quiet_libraries

    quiet_libraries()
    path = pretrain_from_file(recipe, override or [], force=force)
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
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs", "-j", min=1, help="children run at the same time (on a CPU, pair with -o runtime.threads=1)"
        ),
    ] = 1,
    name: Annotated[str | None, typer.Option("--name", help="the parent run's name")] = None,
) -> None:
    """Run the cross product of --grid values as child runs under one parent run; re-running skips finished ones.

    [bold]metassl sweep recipes/digits_tiny.yaml --grid method.name=supervised,fixmatch --grid seed=0,1,2[/bold]
    """
    from runner.session import quiet_libraries
    from runner.sweep import SweepFailed, run_sweep
    from runner.sweep_plan import plan_sweep

    quiet_libraries()
    plan = plan_sweep(recipe, grid or [], override or [], name)
    try:
        run_sweep(plan, jobs)
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
    metric: Annotated[str, typer.Option(help="the metric to summarise")] = "final/test_accuracy",
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
) -> None:
    """Mean ± std over seeds per method and label budget, as Markdown, CSV and a plot (logged to the parent run)."""
    from runner.report import make_report
    from runner.session import quiet_libraries

    quiet_libraries()
    tracking_block(tracking_uri)
    typer.echo(make_report(source, tracking_uri, metric, output))


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
    except typer.Abort:
        typer.echo("interrupted", err=True)
        code = 130
    return code if isinstance(code, int) else 0


def main() -> None:
    from runner import interrupts

    interrupts.install()
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
