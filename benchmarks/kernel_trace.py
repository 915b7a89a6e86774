"""Where two CPUs' runs of one command part: a digest of every ATen operator's output, in the order they ran.

    env PIN python benchmarks/kernel_trace.py trace native.txt -- pretrain recipes/fashion_mnist_40labels.yaml \
        -o runtime.cpu_isa=avx2 -o generator.pretrain.iterations=1 -o generator.path=/tmp/g1
    env PIN qemu-x86_64 -cpu EPYC "$(which python)" benchmarks/kernel_trace.py trace emulated.txt -- pretrain ...
    python benchmarks/kernel_trace.py compare native.txt emulated.txt

`PIN` is what `runtime.cpu_isa: avx2` sets (runner/cpu_isa.py); it must be in the environment because this
script imports torch before the CLI does. `trace` runs the real CLI in this process under a dispatch mode that
sees every ATen operator, forward and backward, and writes one line per float output: its index, the operator,
the tensor's shape and a digest of its bytes. `compare` prints the first event whose digest differs, with the
events around it, and how many differ in all (fresh allocations left out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kernel_digests import digest  # this folder's: the same digest of a tensor's bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def trace(output: Path, command: list[str]) -> int:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from runner.cli import run_cli

    lines: list[str] = []

    def record(what: str, value: Any) -> None:
        tensors = value if isinstance(value, (tuple, list)) else (value,)
        for position, tensor in enumerate(tensors):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.device.type == "cpu":
                lines.append(f"{len(lines)} {what}[{position}] {tuple(tensor.shape)} {digest(tensor)}")

    class EveryOperator(TorchDispatchMode):
        """Sees every ATen operator that runs, forward and backward, with its outputs."""

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            result = func(*args, **(kwargs or {}))
            with torch.utils._python_dispatch._disable_current_modes():
                record(str(func), result)
            return result

    with EveryOperator():
        code = run_cli(command)
    output.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} events, capability {torch.backends.cpu.get_cpu_capability()}: {output}")
    return code


def kernel_results(path: Path) -> list[str]:
    """A trace's events, less fresh allocations: they hold whatever the memory held before, not a result."""
    return [line for line in path.read_text().splitlines() if ".empty" not in line]


def compare(first: Path, second: Path) -> int:
    a, b = kernel_results(first), kernel_results(second)
    differing = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    print(f"{len(a)} and {len(b)} events; {len(differing)} of the first {min(len(a), len(b))} differ")
    if not differing:
        return 0
    start = differing[0]
    for i in range(max(0, start - 5), min(start + 5, len(a), len(b))):
        print(f"   {a[i]}" if a[i] == b[i] else f"!= {a[i]}\n   {b[i]}")
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="action", required=True)
    traced = commands.add_parser("trace", help="run `metassl ARGS...` and write its events to OUTPUT")
    traced.add_argument("output", type=Path)
    traced.add_argument("command", nargs=argparse.REMAINDER, help="-- then the metassl command and its arguments")
    compared = commands.add_parser("compare", help="the first event where two traces differ")
    compared.add_argument("first", type=Path)
    compared.add_argument("second", type=Path)
    args = parser.parse_args()
    if args.action == "compare":
        return compare(args.first, args.second)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return trace(args.output, command)


if __name__ == "__main__":
    sys.exit(main())
