"""Bad input of every kind: exactly one line on stderr, exit 2, no traceback, and `validate` catches it without
loading any data. The table runs in-process (fast); a sample goes through the real CLI in subprocesses."""

# ruff: noqa: E501 - one case per line reads best as a table
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner.cli import run_cli
from tests.helpers import RECIPES, ROOT

DIGITS = str(RECIPES / "digits_tiny.yaml")
R = "error: {recipe}: "  # the prefix of every recipe-validation error
MANY_KEYS = 20_000


def v(*overrides: str) -> list[str]:
    """`metassl validate` of the tiny digits recipe with `-o` overrides."""
    return ["validate", "{recipe}", *[part for override in overrides for part in ("-o", override)]]


GENERATIVE = ("method.name=metassl", "generator.name=biggan")
SQLITE_HINT = "a SQLite URI has three slashes and a file, sqlite:///relative/path.db or sqlite:////absolute/path.db"
SCHEMES = "use sqlite:///path.db, postgresql://user@host/db, http(s)://host:port or file:///path"
UNKNOWN = "unknown field; remove it or check the spelling of the fields of the recipe"

# (case, argv, the exact stderr line); `{recipe}` is the digits recipe, `{dir}` a folder of prepared bad files.
CASES: list[tuple[str, list[str], str]] = [
    # Recipe files
    ("missing_file", ["validate", "{dir}/nope.yaml"], "error: recipe file not found: {dir}/nope.yaml (check the path; recipes live in recipes/)"),
    ("directory", ["validate", "{dir}"], "error: {dir} is a directory; pass a recipe .yaml file"),
    ("non_utf8", ["validate", "{dir}/latin1.yaml"], "error: {dir}/latin1.yaml: not UTF-8 text (byte 0xe9 at offset 9); a recipe is a YAML text file"),
    ("binary", ["validate", "{dir}/binary.yaml"], "error: {dir}/binary.yaml: a binary file (it contains NUL bytes); a recipe is a YAML text file"),
    ("empty_file", ["validate", "{dir}/empty.yaml"], "error: {dir}/empty.yaml: the recipe is empty"),
    ("deep_nesting", ["validate", "{dir}/deep.yaml"], "error: {dir}/deep.yaml: nested deeper than 32 levels; a recipe is a few levels of blocks"),
    ("deep_override", v("data.augment=" + "[" * 40 + "]" * 40), "error: override 'data.augment=" + "[" * 40 + "]" * 40 + "': nested deeper than 32 levels; a recipe is a few levels of blocks"),
    ("list_recipe_with_o", ["validate", "{dir}/list.yaml", "-o", "seed=1"], "error: {dir}/list.yaml: a recipe is a YAML mapping of fields, got list"),
    ("scalar_recipe_with_o", ["validate", "{dir}/scalar.yaml", "-o", "seed=1"], "error: {dir}/scalar.yaml: a recipe is a YAML mapping of fields, got int"),
    ("duplicate_keys", ["validate", "{dir}/dup.yaml"], "error: {dir}/dup.yaml: malformed YAML at line 25, column 1: duplicate key 'seed' (remove one of them)"),
    ("duplicate_nested_keys", ["validate", "{dir}/dupnested.yaml"], "error: {dir}/dupnested.yaml: malformed YAML at line 8, column 3: duplicate key 'batch_size' (remove one of them)"),
    ("malformed", ["validate", "{dir}/malformed.yaml"], "error: {dir}/malformed.yaml: malformed YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"),
    ("billion_laughs", ["validate", "{dir}/bomb.yaml"], "error: {dir}/bomb.yaml: more than 100,000 values after expanding aliases (a recipe and its bases together); a recipe is a few blocks of settings, so this looks like an alias bomb: write the values out, or share blocks with `base:`"),
    ("python_tag", ["validate", "{dir}/pytag.yaml"], "error: {dir}/pytag.yaml: malformed YAML at line 1, column 7: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    # Seeds
    ("seed_beyond_64_bits", v("seed=18446744073709551616"), R + "seed: Input should be less than or equal to 18446744073709551615 (got 18446744073709551616)"),
    ("seed_huge", v("seed=" + "9" * 40), R + "seed: Input should be less than or equal to 18446744073709551615 (got " + "9" * 40 + ")"),
    ("seed_negative", v("seed=-1"), R + "seed: Input should be greater than or equal to 0 (got -1)"),
    ("seed_string", v("seed=abc"), R + "seed: Input should be a valid integer, unable to parse string as an integer (got 'abc')"),
    # Names
    ("name_empty", v("name=''"), R + "name: empty; give it a name"),
    ("name_blank", v("name='   '"), R + "name: empty; give it a name"),
    ("name_too_long", v("name=" + "x" * 100_000), R + "name: String should have at most 250 characters (got '" + "x" * 76 + "...)"),
    ("name_list", v("name=[a]"), R + "name: Input should be a valid string"),
    ("run_name_empty", v("tracking.run_name=''"), R + "tracking.run_name: empty; give it a name"),
    ("run_name_too_long", v("tracking.run_name=" + "y" * 300), R + "tracking.run_name: String should have at most 250 characters (got '" + "y" * 76 + "...)"),
    # Non-finite and out-of-range numbers
    ("lr_inf", v("optim.classifier.lr=.inf"), R + "optim.classifier.lr: Input should be a finite number (got inf)"),
    ("lr_nan", v("optim.classifier.lr=.nan"), R + "optim.classifier.lr: Input should be a finite number (got nan)"),
    ("weight_decay_inf", v("optim.classifier.weight_decay=.inf"), R + "optim.classifier.weight_decay: Input should be a finite number (got inf)"),
    ("grad_clip_inf", v("optim.grad_clip=.inf"), R + "optim.grad_clip: Input should be a finite number (got inf)"),
    ("lr_negative", v("optim.classifier.lr=-0.1"), R + "optim.classifier.lr: Input should be greater than 0 (got -0.1)"),
    ("meta_lr_inf", v(*GENERATIVE, "method.meta.lr=.inf"), R + "method.meta.lr: Input should be a finite number (got inf)"),
    ("lambda_u_nan", v("method.name=fixmatch", "method.lambda_u=.nan"), R + "method.lambda_u: Input should be a finite number (got nan)"),
    ("run_lr_inf", ["run", "{recipe}", "-o", "optim.classifier.lr=.inf"], R + "optim.classifier.lr: Input should be a finite number (got inf)"),
    # Impossible schedules
    ("meta_every_beyond_iterations", v(*GENERATIVE, "method.meta.every=61"), R + "method.meta.every: 61 exceeds schedule.iterations (60), so phase (i) would run at most once; lower it"),
    ("data_root_missing", v("data.name=fashion_mnist", "data.root={dir}/nowhere"), "error: data.root: {dir}/nowhere is not a directory; fix the path or remove data.root"),
    ("image_folder_without_train", v("data={name: image_folder, root: {dir}}"), "error: data.root: {dir} has no train/ folder; expected train/<class>/<image>"),
    ("local_gan_without_checkpoint", v("method.name=generative", "generator={name: local_gan, path: {dir}/no_gan}"), "error: generator.path: no checkpoint at '{dir}/no_gan'; train one with `metassl pretrain recipes/generators/fashion_mnist_gan.yaml` or add a generator.pretrain block"),
    ("pretrain_root_missing", v("method.name=generative", "generator={name: local_gan, path: {dir}/no_gan, pretrain: {root: {dir}/nowhere}}"), "error: generator.pretrain.root: {dir}/nowhere is not a directory; fix the path or remove it"),
    ("schedule_meta_moved", v("schedule.meta={every: 3, steps: 2}"), R + "schedule.meta: phase (i)'s settings moved to method.meta; write method.meta.every: 3 and method.meta.steps: 2 there (drop them for a method without a meta phase)"),
    ("warmup_beyond_iterations", v("schedule.warmup=61"), R + "schedule: schedule.warmup (61) exceeds schedule.iterations (60)"),
    ("iterations_zero", v("schedule.iterations=0"), R + "schedule.iterations: Input should be greater than 0 (got 0)"),
    ("eval_every_zero", v("schedule.eval_every=0"), R + "schedule.eval_every: Input should be greater than 0 (got 0)"),
    # Ignored fields
    ("digits_root", v("data.root=/data"), R + "data.root: the digits dataset reads no files, so root would be ignored; remove it"),
    # Cross-block conflicts, caught before any data loads
    ("generative_without_generator", v("method.name=generative"), R + "generator.name: method 'generative' needs a generator; set one of: biggan, consistency, dit, local_gan, sd_turbo"),
    ("metassl_without_generator", v("method.name=metassl"), R + "generator.name: method 'metassl' needs a generator; set one of: biggan, consistency, dit, local_gan, sd_turbo"),
    ("run_metassl_without_generator", ["run", "{recipe}", "-o", "method.name=metassl"], R + "generator.name: method 'metassl' needs a generator; set one of: biggan, consistency, dit, local_gan, sd_turbo"),
    ("pseudo_with_biggan", v(*GENERATIVE, "method.latents.classes=pseudo"), R + "method.latents.classes: 'pseudo' needs a generator with a source classifier (local_gan); generator 'biggan' has none, use 'random' or 'uniform'"),
    ("uniform_with_sd_turbo", v("method.name=metassl", "generator.name=sd_turbo", "method.latents.classes=uniform"), R + "method.latents.classes: 'uniform' needs a class-conditional generator; generator 'sd_turbo' is prompt-conditioned, use 'random'"),
    ("pseudo_with_sd_turbo", v("method.name=generative", "generator.name=sd_turbo", "method.latents.classes=pseudo"), R + "method.latents.classes: 'pseudo' needs a class-conditional generator; generator 'sd_turbo' is prompt-conditioned, use 'random'"),
    ("source_fraction_mismatch", v("data.name=fashion_mnist", "data.source_fraction=0.3", "method.name=generative", "generator.name=local_gan", "generator.path=/tmp/g", "generator.pretrain.source_fraction=0.5"), R + "data.source_fraction: 0.3 differs from generator.pretrain.source_fraction 0.5, so labeled images could be in the generator's training set; set them equal"),
    ("labels_per_class_beyond_digits", v("data.labels_per_class=500"), R + "data.labels_per_class: 500 images per class, but digits has at most 131 per class to label; lower it"),
    ("labels_plus_holdout_beyond_digits", v("data.labels_per_class=100", "data.validation.source=holdout", "data.validation.per_class=40"), R + "data.labels_per_class: 100 + 40 validation images per class, but digits has at most 131 per class to label; lower it"),
    ("labels_per_class_beyond_cifar100", v("data.name=cifar100", "data.labels_per_class=501"), R + "data.labels_per_class: 501 images per class, but cifar100 has at most 500 per class to label; lower it"),
    ("labels_per_class_beyond_stl10", v("data.name=stl10", "data.labels_per_class=600"), R + "data.labels_per_class: 600 images per class, but stl10 has at most 500 per class to label; lower it"),
    ("labels_per_class_beyond_fashion", v("data.name=fashion_mnist", "data.labels_per_class=4000"), R + "data.labels_per_class: 4000 images per class, but fashion_mnist has at most 3301 per class to label; lower it"),
    ("total_labels_below_classes", v("data.labels_per_class=null", "data.total_labels=5"), R + "data.total_labels: 5 labels cannot cover the 10 classes of digits; use at least 10"),
    ("total_labels_below_cifar100_classes", v("data.name=cifar100", "data.labels_per_class=null", "data.total_labels=50"), R + "data.total_labels: 50 labels cannot cover the 100 classes of cifar100; use at least 100"),
    ("total_labels_beyond_digits", v("data.labels_per_class=null", "data.total_labels=5000"), R + "data.total_labels: 5000 labels are 500 images per class, but digits has at most 131 per class to label; lower it"),
    ("both_label_budgets", v("data.total_labels=40"), R + "data: set data.labels_per_class or data.total_labels, not both"),
    ("latent_batch_beyond_bank", v(*GENERATIVE, "method.latents.bank_size=8"), R + "method: method.meta.latent_batch_size (64) exceeds the bank (method.latents.bank_size = 8)"),
    # Tracking settings
    ("empty_experiment", v("tracking.experiment=''"), R + "tracking.experiment: empty; give it a name"),
    ("unknown_scheme", v("tracking.tracking_uri=foo://bar"), R + f"tracking.tracking_uri: unknown scheme 'foo'; {SCHEMES}"),
    ("path_not_uri", v("tracking.tracking_uri=mlruns/mlflow.db"), R + "tracking.tracking_uri: 'mlruns/mlflow.db' is a path, not a URI; write sqlite:///mlruns/mlflow.db (a SQLite file) instead"),
    ("absolute_path_not_uri", v("tracking.tracking_uri=/tmp/mlflow.db"), R + "tracking.tracking_uri: '/tmp/mlflow.db' is a path, not a URI; write sqlite:////tmp/mlflow.db (a SQLite file) instead"),
    ("sqlite_two_slashes", v("tracking.tracking_uri=sqlite://mlruns/mlflow.db"), R + f"tracking.tracking_uri: 'sqlite://mlruns/mlflow.db': {SQLITE_HINT}"),
    ("sqlite_no_file", v("tracking.tracking_uri=sqlite:///"), R + f"tracking.tracking_uri: 'sqlite:///': {SQLITE_HINT}"),
    ("http_no_host", v("tracking.tracking_uri=http://"), R + "tracking.tracking_uri: 'http://' names no host; write http://host:port"),
    ("empty_uri", v("tracking.tracking_uri=''"), R + "tracking.tracking_uri: empty; set an MLflow store such as sqlite:///mlruns/mlflow.db"),
    ("unreachable_http", v("tracking.tracking_uri=http://127.0.0.1:9"), "error: tracking.tracking_uri: no MLflow server answers at http://127.0.0.1:9 ([Errno 111] Connection refused); start one (mlflow server) or fix the URI"),
    ("run_unreachable_http", ["run", "{recipe}", "-o", "tracking.tracking_uri=http://127.0.0.1:9"], "error: tracking.tracking_uri: no MLflow server answers at http://127.0.0.1:9 ([Errno 111] Connection refused); start one (mlflow server) or fix the URI"),
    ("runs_unknown_scheme", ["runs", "--tracking-uri", "foo://bar"], f"error: --tracking-uri: unknown scheme 'foo'; {SCHEMES}"),
    ("runs_path", ["runs", "--tracking-uri", "mlruns/mlflow.db"], "error: --tracking-uri: 'mlruns/mlflow.db' is a path, not a URI; write sqlite:///mlruns/mlflow.db (a SQLite file) instead"),
    ("runs_empty_experiment", ["runs", "--experiment", ""], "error: --experiment: empty; give it a name"),
    ("eval_unknown_scheme", ["eval", "abc", "--tracking-uri", "foo://bar"], f"error: --tracking-uri: unknown scheme 'foo'; {SCHEMES}"),
    ("eval_sqlite_two_slashes", ["eval", "abc", "--tracking-uri", "sqlite://x.db"], f"error: --tracking-uri: 'sqlite://x.db': {SQLITE_HINT}"),
    ("resume_unknown_scheme", ["run", "--resume", "abc", "--tracking-uri", "foo://bar"], f"error: --tracking-uri: unknown scheme 'foo'; {SCHEMES}"),
    ("report_unknown_scheme", ["report", "abc", "--tracking-uri", "foo://bar"], f"error: --tracking-uri: unknown scheme 'foo'; {SCHEMES}"),
    # Error length
    ("many_unknown_keys", ["validate", "{dir}/manykeys.yaml"], "error: {dir}/manykeys.yaml: " + "; ".join(f"k{i}: {UNKNOWN}" for i in range(10)) + f"; and {MANY_KEYS - 10} more problems"),
    # The command line itself
    ("o_without_value", ["validate", "{recipe}", "-o"], "error: Option '-o' requires an argument. (see metassl --help)"),
    ("unknown_option", ["validate", "{recipe}", "--bogus"], "error: No such option: --bogus (see metassl validate --help)"),
    ("unknown_command", ["frobnicate"], "error: No such command 'frobnicate'. (see metassl --help)"),
    ("override_without_equals", v("seed"), "error: override 'seed': write it as key.path=value (e.g. seed=1)"),
    ("override_into_value", v("seed.x=1"), "error: override 'seed.x=1': seed is a value, not a block"),
    ("unknown_field", v("schedule.iterationz=5"), R + "schedule.iterationz: unknown field; remove it or check the spelling of the fields of schedule"),
    ("unknown_method", v("method.name=fixmach"), R + "method.name: unknown method 'fixmach'; registered: fixmatch, flexmatch, freematch, generative, metassl, softmatch, supervised; did you mean 'fixmatch'?"),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    base = Path(DIGITS).read_text()
    (folder / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (folder / "binary.yaml").write_bytes(b"name: x\n\x00\x01\x02")
    (folder / "empty.yaml").write_text("")
    (folder / "deep.yaml").write_text("name: x\ndata: " + "[" * 5000 + "]" * 5000 + "\n")
    laughs = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    (folder / "bomb.yaml").write_text(
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
        + laughs
        + base.replace("name: digits_tiny", "name: *i")
    )
    (folder / "list.yaml").write_text("- 1\n- 2\n")
    (folder / "scalar.yaml").write_text("42\n")
    (folder / "dup.yaml").write_text(base + "seed: 3\n")
    (folder / "dupnested.yaml").write_text(base.replace("  batch_size: 32\n", "  batch_size: 32\n  batch_size: 16\n"))
    (folder / "malformed.yaml").write_text("name: x\ndata: [digits\n")
    (folder / "pytag.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {folder}/pwned']\n")
    (folder / "manykeys.yaml").write_text(base + "".join(f"k{i}: 1\n" for i in range(MANY_KEYS)))
    return folder


def fill(text: str, folder: Path) -> str:
    return text.replace("{recipe}", DIGITS).replace("{dir}", str(folder))


def cli(argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process, as `python -m runner.cli` runs it: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(ROOT):
        code = run_cli(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_table_covers_enough_kinds():
    assert len(CASES) >= 60
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "argv", "expected"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_exact_line(name: str, argv: list[str], expected: str, bad_files: Path):
    code, stdout, stderr = cli([fill(arg, bad_files) for arg in argv])
    assert code == 2, stderr
    assert stderr.splitlines() == [fill(expected, bad_files)]
    assert stdout == ""
    assert not (bad_files / "pwned").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_validate_refuses_cuda_on_a_machine_without_it():
    code, stdout, stderr = cli([fill(arg, Path()) for arg in v("runtime.device=cuda")])
    assert (code, stdout) == (2, "")
    assert stderr.splitlines() == [
        "error: runtime.device: 'cuda' requested but no CUDA device is available; use auto or cpu"
    ]


def test_an_error_line_is_capped():
    code, _, stderr = cli([fill(arg, Path()) for arg in v("k" * 50_000 + "=1")])
    assert code == 2 and len(stderr.splitlines()) == 1
    line = stderr.rstrip("\n")
    assert line.startswith(f"error: {DIGITS}: kkkk")
    full = len(f"{DIGITS}: {'k' * 50_000}: unknown field; remove it or check the spelling of the fields of the recipe")
    assert line.endswith(f"... ({full - 2000} more characters)") and len(line) < 2100


def test_markup_in_a_name_is_a_valid_name():
    code, stdout, _ = cli([fill(arg, Path()) for arg in v("name='[/bold] [red]x'")])
    assert code == 0 and stdout.startswith("ok: ")


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A folder nobody can write to: a read-only tmpfs as root (root ignores permissions), else mode 0555."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_store_or_artifact_root_is_one_line(read_only_folder: Path):
    store = f"sqlite:///{read_only_folder}/mlflow.db"
    code, _, stderr = cli(["validate", DIGITS, "-o", f"tracking.tracking_uri={store}"])
    assert code == 2
    assert stderr.splitlines() == [
        f"error: tracking.tracking_uri: the store {store} is read-only ({read_only_folder} is not writable)"
    ]
    root = read_only_folder / "artifacts"
    code, _, stderr = cli(["validate", DIGITS, "-o", f"tracking.artifact_root={root}"])
    assert code == 2
    assert stderr.splitlines() == [
        f"error: tracking.artifact_root: {root} is read-only ({read_only_folder} is not writable)"
    ]
    code, _, stderr = cli(["runs", "--tracking-uri", store])
    assert code == 2 and len(stderr.splitlines()) == 1
    assert stderr.startswith(f"error: tracking.tracking_uri: cannot open the store {store} (")


SUBPROCESS_SAMPLE = [
    "non_utf8", "deep_nesting", "list_recipe_with_o", "duplicate_keys", "seed_beyond_64_bits", "o_without_value",
    "unknown_option", "runs_unknown_scheme", "run_unreachable_http", "many_unknown_keys", "billion_laughs",
]  # fmt: skip


@pytest.mark.slow
def test_a_sample_through_the_real_cli_has_no_traceback(bad_files: Path):
    by_name = {name: (argv, expected) for name, argv, expected in CASES}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "runner.cli", *[fill(arg, bad_files) for arg in by_name[name][0]]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SUBPROCESS_SAMPLE
    }
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (name, stderr[-2000:])
        assert stderr.splitlines() == [fill(by_name[name][1], bad_files)], name
