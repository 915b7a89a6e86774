"""Seconds per iteration, peak memory and the meta/SSL split of every method, in one process, at equal batch sizes.

    python benchmarks/phase_cost.py --config cpu_demo --output phase_cost_cpu.json
    python benchmarks/phase_cost.py --config all --device cuda --iterations 50 --output phase_cost_cuda.json

Each method runs the loop's own iteration (runner/run/train_step.py: labeled batch, meta phase, SSL loss, backward,
clipping, optimizer, scheduler and EMA steps) on components built through the real registries, with synthetic
in-memory data.
The methods are built side by side and timed one iteration each in turn, so they share the machine's conditions;
peak memory is measured for each method alone first. On CUDA the iteration runs under bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.setups import METHOD_VARIANTS, SETUPS, Setup, build, build_generator, recipe_for, synthetic_data
from runner.registry import METHODS
from runner.run.build import Components
from runner.run.environment import git_commit
from runner.run.train_step import grad_scaler, train_step


class CpuPeak:
    """Peak resident memory above the level at `start()`, sampled every 2 ms from /proc/self/statm.

    Freed memory is handed back to the OS first (gc + malloc_trim) so that an earlier method's peak does not
    hide this one's. Process-wide: it counts everything this method builds and touches.
    """

    source = "CPU: peak RSS above the pre-build level, sampled every 2 ms from /proc/self/statm"

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.baseline = self.peak = 0
        self.running = False
        self.thread: threading.Thread | None = None

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def start(self) -> None:
        gc.collect()
        with contextlib.suppress(OSError):  # glibc only
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.baseline = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def stop(self) -> int:
        self.running = False
        if self.thread is not None:
            self.thread.join()
        return max(self.peak, self.rss()) - self.baseline


class CudaPeak:
    source = "CUDA: torch.cuda.max_memory_allocated during build + iterations (all live tensors)"

    def start(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def stop(self) -> int:
        return torch.cuda.max_memory_allocated()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class MetaTimer:
    """Stands in for a method's `meta_phase` and times each call (synchronised on CUDA), so the shared
    `train_step` runs unchanged while the benchmark splits its time into the meta and SSL phases."""

    def __init__(self, method: Any, device: torch.device) -> None:
        self.meta_phase = method.meta_phase
        self.device = device
        self.seconds = 0.0
        method.meta_phase = self

    def __call__(self, iteration: int, steps: int) -> dict[str, Any]:
        sync(self.device)
        start = time.perf_counter()
        metrics = self.meta_phase(iteration, steps)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return metrics


@dataclass
class Timed:
    """One method's components, the loop's grad scaler, and the timer on its meta phase."""

    components: Components
    scaler: torch.amp.GradScaler
    meta: MetaTimer


def iteration(timed: Timed, step: int) -> tuple[float, float, int]:
    """One `runner.run.train_step.train_step`, as the loop runs it: (meta s, SSL s, images generated in SSL)."""
    components = timed.components
    timed.meta.seconds = 0.0
    start = time.perf_counter()
    _, metrics = train_step(components, step, timed.scaler)
    sync(components.device)
    meta_seconds = timed.meta.seconds
    generated = metrics.get("synthetic/generated", getattr(components.method.config, "unlabeled_batch_size", 0))
    return meta_seconds, time.perf_counter() - start - meta_seconds, int(generated)


def render_whole_bank(method: Any) -> None:
    """Steady state for the sample cache: every bank row generated once, as after the first few hundred
    iterations of a run, so the timed iterations generate only what the meta phase has moved."""
    cache, bank = getattr(method, "cache", None), getattr(method, "bank", None)
    if cache is None or bank is None:
        return
    with method.ctx.autocast():
        for rows in torch.arange(len(bank), device=bank.noise.device).split(256):
            cache.get(rows)


def build_variant(
    setup: Setup, variant: str, args: argparse.Namespace, data: Any, device: torch.device, generator: Any
) -> Timed:
    """One method's components, trained from scratch, with its sample cache (if any) fully rendered."""
    unlabeled = args.mu * args.batch_size
    recipe = recipe_for(setup, variant, args.batch_size, unlabeled, device.type, args.warmup + args.iterations + 8)
    components = build(recipe, data, generator if recipe.method.needs_generator else None)
    components.classifier.train()
    render_whole_bank(components.method)
    return Timed(components, grad_scaler(components), MetaTimer(components.method, device))


def needs_generator(variant: str) -> bool:
    """What the variant's method block declares (schemas/methods.py)."""
    return METHODS.config(METHOD_VARIANTS[variant]["name"]).needs_generator  # type: ignore[attr-defined]


def peak_memory_mb(
    setup: Setup, variant: str, args: argparse.Namespace, data: Any, device: torch.device, memory: Any
) -> float:
    """Peak memory of building one method (its own generator included) and running a few iterations, alone."""
    memory.start()
    generator = build_generator(setup, device, data[0].classes)[0] if needs_generator(variant) else None
    timed = build_variant(setup, variant, args, data, device, generator)
    for step in range(min(args.warmup, 2) + 2):
        iteration(timed, step)
    peak = memory.stop()
    del timed, generator
    return peak / 2**20


def time_interleaved(
    setup: Setup, args: argparse.Namespace, data: Any, device: torch.device
) -> tuple[dict[str, list[tuple[float, float, int]]], str | None]:
    """Per-iteration timings of every method, built side by side and timed in turn, one iteration each.

    Interleaving puts every method under the same machine conditions: a machine that slows down or speeds
    up during the benchmark shifts all methods alike instead of skewing their ratios. The order reverses
    every other turn. The methods share one frozen generator (it holds no state a method changes).
    """
    generator, generator_source = None, None
    if any(needs_generator(variant) for variant in args.methods):
        generator, generator_source = build_generator(setup, device, data[0].classes)
    built = {variant: build_variant(setup, variant, args, data, device, generator) for variant in args.methods}
    for step in range(args.warmup):
        for timed in built.values():
            iteration(timed, step)
    timings: dict[str, list[tuple[float, float, int]]] = {variant: [] for variant in args.methods}
    for step in range(args.iterations):
        order = args.methods if step % 2 == 0 else list(reversed(args.methods))
        for variant in order:
            timings[variant].append(iteration(built[variant], args.warmup + step))
    return timings, generator_source


def summarize(
    variant: str, timings: list[tuple[float, float, int]], args: argparse.Namespace, peak_mb: float, source: str | None
) -> dict[str, Any]:
    name, generative = METHOD_VARIANTS[variant]["name"], needs_generator(variant)
    totals = sorted(t[0] + t[1] for t in timings)
    total = statistics.median(totals)
    images = args.batch_size + (args.mu * args.batch_size if name != "supervised" else 0)
    return {
        "method": variant,
        "s_per_iteration": total,
        "s_per_iteration_quartiles": [totals[len(totals) // 4], totals[(3 * len(totals)) // 4]],
        "meta_s": statistics.median(t[0] for t in timings) if METHODS.config(name).has_meta_phase else None,  # type: ignore[attr-defined]
        "ssl_s": statistics.median(t[1] for t in timings),
        "images_per_iteration": images,
        "generated_per_iteration": statistics.mean(t[2] for t in timings) if generative else None,
        "images_per_s": images / total,
        "peak_memory_mb": peak_mb,
        "generator": source if generative else None,
    }


def run_setup(setup: Setup, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    batch = args.batch_size or setup.batch_size
    setup_args = argparse.Namespace(**{**vars(args), "batch_size": batch})
    data = synthetic_data(setup)
    memory = CudaPeak() if device.type == "cuda" else CpuPeak()
    # Untimed: load kernels, thread pools and allocator pools once, so the first method measured pays no more.
    peak_memory_mb(setup, "supervised", setup_args, data, device, memory)
    peaks = {}
    for variant in args.methods:
        print(f"[{setup.name}] peak memory: {variant} ...", file=sys.stderr, flush=True)
        peaks[variant] = peak_memory_mb(setup, variant, setup_args, data, device, memory)
    print(f"[{setup.name}] timing {len(args.methods)} methods, interleaved ...", file=sys.stderr, flush=True)
    timings, source = time_interleaved(setup, setup_args, data, device)
    rows = [summarize(variant, timings[variant], setup_args, peaks[variant], source) for variant in args.methods]
    by_name = {row["method"]: row for row in rows}
    for row in rows:
        for baseline in ("supervised", "fixmatch"):
            base = by_name.get(baseline)
            row[f"x_{baseline}"] = row["s_per_iteration"] / base["s_per_iteration"] if base else None
    return {
        "config": setup.name,
        "image_size": setup.image_size,
        "classifier": setup.classifier["name"],
        "batch_size": batch,
        "unlabeled_batch_size": args.mu * batch,
        "meta_latent_batch_size": batch,
        "warmup_iterations": args.warmup,
        "timed_iterations": args.iterations,
        "memory": memory.source,
        "methods": rows,
    }


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"**{result['config']}** ({result['image_size']} px, {result['classifier']}; B = {result['batch_size']} "
        f"labeled, {result['unlabeled_batch_size']} unlabeled/synthetic, {result['meta_latent_batch_size']} latents "
        f"per meta-step; methods timed in turn, median of {result['timed_iterations']} iterations each after "
        f"{result['warmup_iterations']} warm-up; memory: {result['memory']}, each method alone)",
        "",
        "| method | s / iteration | x supervised | x FixMatch | meta phase s | SSL phase s | generated / it |"
        " images/s | peak MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["methods"]:
        cells = [
            row["method"],
            _number(row["s_per_iteration"], 4),
            _number(row["x_supervised"], 2),
            _number(row["x_fixmatch"], 2),
            _number(row["meta_s"], 4),
            _number(row["ssl_s"], 4),
            _number(row.get("generated_per_iteration"), 1),
            _number(row["images_per_s"], 1),
            _number(row["peak_memory_mb"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    generators = {row["generator"] for row in result["methods"] if row["generator"]}
    if generators:
        lines += ["", "generator: " + "; ".join(sorted(generators))]
    return "\n".join(lines) + "\n"


def environment(device: torch.device) -> dict[str, Any]:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "git_commit": git_commit(Path(__file__).resolve().parent),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["precision"] = "bf16 autocast"
    else:
        info["precision"] = "fp32"
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=[*SETUPS, "all"], default="cpu_demo")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per method first")
    parser.add_argument("--batch-size", type=int, default=None, help="labeled batch B (default: per config)")
    parser.add_argument("--mu", type=int, default=2, help="unlabeled/synthetic images per labeled image")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHOD_VARIANTS), default=list(METHOD_VARIANTS), metavar="METHOD"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = list(SETUPS) if args.config == "all" else [args.config]
    results = {"environment": environment(device), "configs": []}
    for name in names:
        result = run_setup(SETUPS[name], args, device)
        results["configs"].append(result)
        print(markdown(result), flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
