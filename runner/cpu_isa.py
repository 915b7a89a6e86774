"""The CPU's vector instruction set, and `runtime.cpu_isa`: pinning the float kernels to one every machine has.

torch's CPU float kernels come from three libraries that each pick their code for the CPU they find: ATen's own
kernels (softmax, reductions, elementwise), oneDNN (convolutions) and MKL (matrix products). AVX-512 and AVX2
code sum in another order, so the same recipe, seed, torch build and thread count ends at a slightly different
accuracy on an AVX-512 machine. `cpu_isa: avx2` caps ATen and oneDNN at AVX2, which every x86-64 CPU since 2015
has, and puts MKL in its vendor-independent mode.
Each library reads its setting once, when torch (or the library) first starts: it must be in the environment
before torch is imported, so the CLI pins it before it imports torch, and a run checks it took effect.
What no pin reaches (`torch.sqrt`, whose bits depend on the CPU) portable mode replaces in
runner/common/portable.py.
Imports no torch.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from functools import cache
from pathlib import Path

from schemas import UserError

# What each library reads, and the value that caps it at AVX2.
AVX2_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions); DNNL_ is its older name
    "DNNL_MAX_CPU_ISA": "AVX2",
    # MKL's reproducible mode. Its AVX2 mode still sums differently on Intel and AMD CPUs (benchmarks/
    # kernel_digests.py under an emulated Haswell); COMPATIBLE runs one code path on both.
    "MKL_CBWR": "COMPATIBLE",
}
AVX2_FLAGS = ("avx2", "fma")  # what ATen's AVX2 kernels need
VECTOR_FLAG = re.compile(r"sse4_2|avx\w*|fma|amx\w*")


@cache
def cpu_flags() -> tuple[str, ...]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return tuple(sorted(value.split()))
    return ()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "CPU part"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_extensions() -> list[str]:
    """The flags that decide which float kernels run: sse4_2, avx, avx2, fma, avx512*, amx*."""
    return [flag for flag in cpu_flags() if VECTOR_FLAG.fullmatch(flag)]


def pinned_environment() -> dict[str, str]:
    """The kernel-choice variables set in this process (by `cpu_isa: avx2`, or by hand)."""
    return {key: os.environ[key] for key in AVX2_ENVIRONMENT if key in os.environ}


def portable() -> bool:
    """Whether this process runs in portable mode: every pin of `cpu_isa: avx2` in its environment."""
    return pinned_environment() == AVX2_ENVIRONMENT


def _check_machine() -> None:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        raise UserError(f"runtime.cpu_isa: 'avx2' is for x86-64 CPUs; this one is {machine}: use native")
    missing = [flag for flag in AVX2_FLAGS if cpu_flags() and flag not in cpu_flags()]
    if missing:
        raise UserError(f"runtime.cpu_isa: 'avx2' needs a CPU with {', '.join(missing)}; this one has not: use native")


def pin(cpu_isa: str) -> None:
    """Set the kernels' instruction set for this process: before torch is imported, or check it already is."""
    if cpu_isa != "avx2":  # native (an unknown value is the recipe's validation to report)
        return
    _check_machine()
    if "torch" not in sys.modules:
        os.environ.update(AVX2_ENVIRONMENT)
        return
    import torch

    if torch.backends.cpu.get_cpu_capability() != "AVX2" or not portable():
        settings = " ".join(f"{key}={value}" for key, value in AVX2_ENVIRONMENT.items())
        raise UserError(
            "runtime.cpu_isa: 'avx2' must be set before torch starts, and this process started it with"
            f" {torch.backends.cpu.get_cpu_capability()} kernels; run it through `metassl`, or start Python with"
            f" {settings}"
        )
