"""What `runtime.cpu_isa: avx2` (portable kernels) costs against `native`, and where the two numbers part.

    python benchmarks/cpu_isa.py --pretrain-iterations 300 --iterations 150 --repeats 2 --output cpu_isa.json

The main recipe (recipes/fashion_mnist_40labels.yaml), shortened, through the real CLI in subprocesses (the kernels'
instruction set is fixed when torch starts, so each mode needs its own process). For each repeat and mode, in
alternating order so that both modes share the machine's conditions: `metassl pretrain` of the generator into a
folder of its own (timed), then `metassl run` on it (timed: training only). Once more, the portable training on
the natively pretrained generator, which tells whether the numbers part in pretraining or in training.
Printed: the accuracy of each run (all digits), the generator's weights digest, and the time ratio
avx2 / native per stage (median over repeats).

The same numbers with and without AVX-512, on one machine: the same command with `--emulate EPYC` runs it all on
an emulated AMD CPU without AVX-512 (qemu-user, some 100x slower, so keep it short), e.g.

    python benchmarks/cpu_isa.py --pretrain-iterations 20 --iterations 8 --repeats 1 --threads 1
    python benchmarks/cpu_isa.py --pretrain-iterations 20 --iterations 8 --repeats 1 --threads 1 --emulate EPYC \
        --modes avx2 --qemu /opt/qemu10/usr/bin/qemu-x86_64

(qemu 10: `dpkg-deb -x` of Debian 13's qemu-user package, whose binaries are static; Debian 12's qemu 7.2 crashes
in the training stage.)

`avx2` should give one accuracy and one generator digest in both; `native` differs where AVX-512 code ran.
Since portable mode's fused Adam and exact square roots (runner/common/portable.py) it does: docs/RESULTS.md,
"The same number with and without AVX-512".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner import cpu_isa  # noqa: E402 (after the path)
from runner.run.environment import git_commit  # noqa: E402

RECIPE = ROOT / "recipes" / "fashion_mnist_40labels.yaml"
MODES = ("native", "avx2")
FINISHED = re.compile(r"finished: test accuracy (\d\.\d+)")


EMULATOR: list[str] = []  # --emulate: every command under qemu-user, on an emulated CPU


def metassl(*args: str) -> tuple[str, float]:
    started = time.perf_counter()
    process = subprocess.run(
        [*EMULATOR, sys.executable, "-m", "runner.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"metassl {' '.join(args)} failed:\n{process.stderr[-3000:]}")
    return process.stdout, seconds


def weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-iterations", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--emulate",
        metavar="CPU",
        help="run every command under `qemu-x86_64 -cpu CPU` (Debian's qemu-user), e.g. EPYC, an AMD CPU without"
        " AVX-512: the same numbers on a CPU without it, on this machine (slow: no timing, no crossed run)",
    )
    parser.add_argument(
        "--qemu",
        default="qemu-x86_64",
        help="the qemu-user binary for --emulate. Debian 12's qemu 7.2 crashes (SIGSEGV) in ATen's AVX2 grid_sample"
        " kernel, which strong augmentation uses; Debian 13's qemu-user 10.0 (static binaries) runs it",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the modes to run")
    args = parser.parse_args()
    if args.emulate:
        EMULATOR.extend([args.qemu, "-cpu", args.emulate])
    scratch = Path(tempfile.mkdtemp(prefix="metassl-cpu-isa-"))
    common = [
        f"generator.pretrain.iterations={args.pretrain_iterations}",
        f"schedule.iterations={args.iterations}",
        f"schedule.warmup={args.iterations // 4}",
        f"schedule.eval_every={args.iterations}",
        f"schedule.checkpoint_every={args.iterations}",
        f"runtime.threads={args.threads}",
        f"tracking.tracking_uri=sqlite:///{scratch}/mlflow.db",
        f"tracking.artifact_root={scratch}",
    ]

    def options(mode: str, generator: Path) -> list[str]:
        settings = [*common, f"runtime.cpu_isa={mode}", f"generator.path={generator}"]
        return [part for setting in settings for part in ("-o", setting)]

    rows: list[dict[str, object]] = []
    for repeat in range(args.repeats):
        for mode in args.modes if repeat % 2 == 0 else reversed(args.modes):
            generator = scratch / f"generator-{mode}-{repeat}"
            _, pretrain_seconds = metassl("pretrain", str(RECIPE), *options(mode, generator))
            stdout, train_seconds = metassl("run", str(RECIPE), *options(mode, generator))
            row = {
                "repeat": repeat,
                "mode": mode,
                "generator_pretrained_with": mode,
                "generator_digest": weights_digest(generator),
                "accuracy": FINISHED.search(stdout).group(1),  # type: ignore[union-attr]
                "pretrain_s": round(pretrain_seconds, 1),
                "train_s": round(train_seconds, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    crossed: dict[str, str] = {}
    if not args.emulate and set(args.modes) == set(MODES):
        native_generator = scratch / "generator-native-0"
        stdout, _ = metassl("run", str(RECIPE), *options("avx2", native_generator))
        crossed = {"mode": "avx2", "generator_pretrained_with": "native", "accuracy": FINISHED.search(stdout).group(1)}  # type: ignore[union-attr]
        print(json.dumps(crossed), flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(float(row[key]) for row in rows if row["mode"] == mode)  # type: ignore[arg-type]

    both = set(args.modes) == set(MODES)
    ratios = {key: round(median("avx2", key) / median("native", key), 3) for key in ("pretrain_s", "train_s") if both}
    summary = {
        "command": " ".join(sys.argv),
        "git_commit": git_commit(ROOT),
        "cpu": cpu_isa.cpu_model(),
        "emulated_cpu": args.emulate,
        "emulator": subprocess.run([args.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        if args.emulate
        else None,
        "vector_extensions": cpu_isa.vector_extensions(),
        "python": platform.python_version(),
        "rows": rows,
        "avx2_training_on_native_generator": crossed,
        "time_ratio_avx2_over_native": ratios,
        "load_average_at_end": os.getloadavg(),
    }
    if ratios:
        print(
            f"\ntime avx2 / native (median of {args.repeats}): pretraining {ratios['pretrain_s']}, training"
            f" {ratios['train_s']}"
        )
    for mode in args.modes:
        accuracies = sorted({str(row["accuracy"]) for row in rows if row["mode"] == mode})
        digests = sorted({str(row["generator_digest"]) for row in rows if row["mode"] == mode})
        print(f"{mode}: accuracy {', '.join(accuracies)}; generator {', '.join(digests)}")
    if crossed:
        print(f"avx2 training on the native generator: accuracy {crossed['accuracy']}")
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
