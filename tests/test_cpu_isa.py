"""`runtime.cpu_isa`: the CPU kernels' instruction set, pinned before torch starts, or refused when it is too late."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from runner import cpu_isa
from schemas import UserError
from tests.helpers import ROOT

X86_WITH_AVX2 = platform.machine() in ("x86_64", "AMD64") and "avx2" in cpu_isa.cpu_flags()

# Softmax (ATen), a convolution (oneDNN) and a matrix product (MKL), bit for bit, in a fresh process.
PROBE = """
import hashlib, sys
from runner import cpu_isa
cpu_isa.pin(sys.argv[1])
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
x, w, a = torch.randn(8, 16, 12, 12), torch.randn(16, 16, 3, 3), torch.randn(64, 96)
outputs = [torch.softmax(a, 1), torch.nn.functional.conv2d(x, w, padding=1), a @ a.T]
digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in outputs)).hexdigest()
print(torch.backends.cpu.get_cpu_capability(), digest)
"""


def probe(mode: str) -> tuple[str, str]:
    process = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    capability, digest = process.stdout.split()
    return capability, digest


def test_the_cpu_is_described():
    assert cpu_isa.cpu_model()
    if X86_WITH_AVX2:
        assert {"avx2", "fma"} <= set(cpu_isa.vector_extensions())


@pytest.mark.skipif(not X86_WITH_AVX2, reason="the AVX2 pin is for x86-64 CPUs with AVX2")
def test_too_late_in_a_process_that_started_torch_is_one_line(monkeypatch: pytest.MonkeyPatch):
    import torch

    for key in cpu_isa.AVX2_ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UserError) as caught:
        cpu_isa.pin("avx2")
    assert str(caught.value).startswith(
        "runtime.cpu_isa: 'avx2' must be set before torch starts, and this process started it with"
        f" {torch.backends.cpu.get_cpu_capability()} kernels"
    )
    cpu_isa.pin("native")  # nothing to pin


@pytest.mark.slow
@pytest.mark.skipif(not X86_WITH_AVX2, reason="the AVX2 pin is for x86-64 CPUs with AVX2")
def test_pinned_before_torch_the_kernels_are_avx2():
    capability, _ = probe("avx2")
    assert capability == "AVX2"
    native_capability, _ = probe("native")
    assert native_capability == ("AVX512" if "avx512f" in cpu_isa.cpu_flags() else "AVX2")


# portable.sqrt against numpy's (correctly rounded) square root, and whether Adam is torch's fused kernel.
PORTABLE_PROBE = """
import sys
from runner import cpu_isa
cpu_isa.pin(sys.argv[1])
import numpy as np, torch
from runner.common import portable
from runner.run.optim import build_optimizer
from schemas.training import Optimizer
x = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 10
exact = float((portable.sqrt(x).numpy() == np.sqrt(x.numpy())).mean())
fused = [bool(o.defaults["fused"]) for o in (
    build_optimizer(Optimizer(name="adam", lr=0.1), torch.nn.Linear(2, 2)),
    build_optimizer(Optimizer(name="adamw", lr=0.1), torch.nn.Linear(2, 2)),
    portable.adam(torch.nn.Linear(2, 2).parameters(), lr=0.1),
)]
print(cpu_isa.portable(), exact, *fused)
"""


@pytest.mark.skipif(not X86_WITH_AVX2, reason="the AVX2 pin is for x86-64 CPUs with AVX2")
@pytest.mark.parametrize("mode", ["avx2", "native"])
def test_portable_mode_takes_exact_square_roots_and_fused_adam(mode: str):
    process = subprocess.run(
        [sys.executable, "-c", PORTABLE_PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-3000:]
    portable, exact, *fused = process.stdout.split()
    if mode == "avx2":
        assert portable == "True"
        assert float(exact) == 1.0  # every value correctly rounded
        assert fused == ["True", "True", "True"]
    else:  # native mode keeps torch's defaults, so its figures stay where they were
        assert portable == "False"
        assert fused == ["False", "False", "False"]
