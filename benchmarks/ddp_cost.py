"""What one run over several processes costs: DDP's per-iteration overhead at world size 2 against 1 on the CPU
(gloo), and the bytes all-reduced per iteration (classifier gradients plus latent gradients).

    python benchmarks/ddp_cost.py --iterations 20 --output ddp_cost_cpu.json

Both world sizes run the loop's own iteration (runner/run/train_step.py) of the method (finite-difference
meta-gradient, a meta phase every iteration) with the same per-rank batch on one thread per rank, plus the loop's
per-iteration stop-flag collective: world size 2 does twice the work per iteration, so the ideal ratio is 1.0 when
each rank has a core of its own. The bytes are counted from the components (every trainable classifier parameter's
gradient once per iteration, the meta-batch's latent or finder gradients once per meta-step, and the meta rows),
for the CPU setup and for the STL-10 shape (resnet18 at 96 px, the 64 px consistency model's latents).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.setups import CD_IMAGENET64_UNET, SETUPS, build, build_generator, recipe_for, synthetic_data
from runner import distributed
from runner.registry import CLASSIFIERS
from runner.run.environment import git_commit
from runner.run.train_step import grad_scaler, train_step

VARIANT = "metassl finite_difference"


def components_for(batch: int, unlabeled: int, iterations: int, dist: distributed.Distributed) -> Any:
    setup = SETUPS["cpu_demo"]
    recipe = recipe_for(setup, VARIANT, batch, unlabeled, "cpu", iterations)
    data = synthetic_data(setup)
    generator, _ = build_generator(setup, torch.device("cpu"), data[0].classes)
    return build(recipe, data, generator, dist)


def bytes_per_iteration(components: Any, meta_every: int = 1) -> dict[str, int]:
    """Bytes each rank contributes to the all-reduces of one iteration (ring all-reduce moves about twice that)."""
    classifier = sum(p.numel() * p.element_size() for p in components.classifier.parameters() if p.requires_grad)
    method = components.method
    meta = method.config.meta
    if method.finder is not None:
        latents = sum(p.numel() * p.element_size() for p in method.finder.parameters())
    else:
        row = sum(t[0].numel() * t.element_size() for t in method.bank.tensors())
        latents = meta.latent_batch_size * row
    rows = meta.latent_batch_size * 8  # rank 0's meta rows, broadcast
    return {
        "classifier_gradients": classifier,
        "latent_gradients_per_meta_step": latents,
        "meta_rows_per_meta_step": rows,
        "per_iteration": classifier + (latents + rows) // meta_every + 8,  # + the stop flag
    }


def stl10_shape_bytes(batch: int = 32) -> dict[str, int]:
    """The same count at the STL-10 shape (phase_cost's `stl10_shape`: resnet18, 96 px, B = 32 latents)."""
    recipe = recipe_for(SETUPS["stl10_shape"], VARIANT, batch, 2 * batch, "cpu", 10)
    classifier = CLASSIFIERS.build(recipe.classifier, 10, 3, 96)
    grads = sum(p.numel() * 4 for p in classifier.parameters() if p.requires_grad)
    size = CD_IMAGENET64_UNET["sample_size"]
    row = (CD_IMAGENET64_UNET["in_channels"] * size * size + CD_IMAGENET64_UNET["num_class_embeds"]) * 4
    return {
        "classifier_gradients": grads,
        "latent_gradients_per_meta_step": batch * row,
        "meta_rows_per_meta_step": batch * 8,
        "per_iteration": grads + batch * row + batch * 8 + 8,
    }


def timed(components: Any, dist: distributed.Distributed, warmup: int, iterations: int) -> list[float]:
    scaler = grad_scaler(components)
    times = []
    for iteration in range(warmup + iterations):
        start = time.perf_counter()
        train_step(components, iteration, scaler)
        dist.any_rank(False)  # the loop's per-iteration stop decision
        times.append(time.perf_counter() - start)
    return times[warmup:]


def all_reduce_seconds(dist: distributed.Distributed, size: int, repeats: int) -> float:
    """Median seconds to all-reduce one iteration's bytes in one flat float32 tensor (0 on a single process)."""
    if not dist.enabled:
        return 0.0
    flat = torch.zeros(size // 4)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.sum_(flat)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rank(rank: int, world: int, rendezvous: str, args: argparse.Namespace, results: Any) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    if world > 1:
        torch_dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    dist = distributed.current()
    components = components_for(args.batch_size, 2 * args.batch_size, args.warmup + args.iterations + 4, dist)
    times = timed(components, dist, args.warmup, args.iterations)
    gathered = dist.gather_objects(times)
    counted = bytes_per_iteration(components)
    communication = all_reduce_seconds(dist, counted["per_iteration"], args.iterations)
    if rank == 0:
        slowest = [max(step) for step in zip(*gathered, strict=True)]  # an iteration ends with its slowest rank
        results.put({"times": slowest, "bytes": counted, "all_reduce_s": communication})
    distributed.stop()


def measure(world: int, args: argparse.Namespace) -> dict[str, Any]:
    context = torch.multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.start_processes(
            _rank, args=(world, f"{tmp}/rendezvous", args, results), nprocs=world, start_method="spawn"
        )
        return results.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16, help="labeled batch per rank (synthetic: twice that)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    one, two = measure(1, args), measure(2, args)
    t1, t2 = statistics.median(one["times"]), statistics.median(two["times"])
    report = {
        "environment": {
            "torch": torch.__version__,
            "commit": git_commit(Path(__file__).parent),
            "cpus": os.cpu_count(),
        },
        "variant": VARIANT,
        "batch_size_per_rank": args.batch_size,
        "s_per_iteration": {"world_size_1": t1, "world_size_2": t2},
        "overhead_ratio_2_vs_1": t2 / t1,
        "all_reduce_s_per_iteration_world_size_2": two["all_reduce_s"],
        "bytes_all_reduced": {"cpu_demo": one["bytes"], "stl10_shape": stl10_shape_bytes()},
    }
    print(f"{VARIANT}, per-rank batch {args.batch_size}, one thread per rank, gloo")
    print(f"  world size 1: {t1 * 1000:.1f} ms/iteration")
    print(f"  world size 2: {t2 * 1000:.1f} ms/iteration (ratio {t2 / t1:.2f}; ideal 1.00 with a free core per rank)")
    print(f"  of which all-reducing one iteration's bytes alone (gloo, 2 ranks): {two['all_reduce_s'] * 1000:.1f} ms")
    for name, counted in report["bytes_all_reduced"].items():
        kib = {key: value / 2**10 for key, value in counted.items()}
        print(
            f"  {name}: {kib['per_iteration']:.0f} KiB all-reduced per iteration per rank (classifier gradients"
            f" {kib['classifier_gradients']:.0f} KiB, latent gradients {kib['latent_gradients_per_meta_step']:.1f} KiB"
            " per meta-step)"
        )
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
