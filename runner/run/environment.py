"""What a run ran on: package versions, git commit, the CPU and its vector instructions, pip freeze."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

import torch

from runner import cpu_isa

KEY_PACKAGES = ("metassl", "torch", "torchvision", "diffusers", "mlflow", "pydantic", "numpy")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit(path: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def describe() -> dict[str, object]:
    info: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in KEY_PACKAGES},
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # set per child by sweeps and tuning
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "cpu": describe_cpu(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe_cpu() -> dict[str, object]:
    """The CPU and the instruction set its float kernels ran with: they decide a CPU run's last digits."""
    return {
        "model": cpu_isa.cpu_model(),
        "machine": platform.machine(),
        "vector_extensions": cpu_isa.vector_extensions(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "pinned": cpu_isa.pinned_environment(),
    }


def pip_freeze() -> str:
    lines = sorted(f"{dist.metadata['Name']}=={dist.version}" for dist in distributions() if dist.metadata["Name"])
    return "\n".join(dict.fromkeys(lines)) + "\n"
