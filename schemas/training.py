"""Schedule, optimization, tracking and runtime blocks."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from schemas.base import Block


class Schedule(Block):
    iterations: PositiveInt = Field(default=1000, description="total training iterations")
    warmup: NonNegativeInt = Field(default=0, description="supervised-only iterations before any SSL or meta step")
    eval_every: PositiveInt = 200
    checkpoint_every: PositiveInt = 200
    log_every: PositiveInt = 20

    @model_validator(mode="before")
    @classmethod
    def _meta_moved(cls, document: Any) -> Any:
        if isinstance(document, dict) and "meta" in document:
            old = document["meta"] if isinstance(document["meta"], dict) else {}
            every, steps = old.get("every", 1), old.get("steps", 1)
            raise ValueError(
                f"schedule.meta: phase (i)'s settings moved to method.meta; write method.meta.every: {every} and"
                f" method.meta.steps: {steps} there (drop them for a method without a meta phase)"
            )
        return document

    @model_validator(mode="after")
    def _warmup_fits(self) -> Schedule:
        if self.warmup > self.iterations:
            raise ValueError(f"schedule.warmup ({self.warmup}) exceeds schedule.iterations ({self.iterations})")
        return self


class Optimizer(Block):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.03
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0.0)


class LRSchedule(Block):
    name: Literal["constant", "cosine", "step"] = "cosine"
    warmup_iterations: NonNegativeInt = 0
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="final lr as a fraction of the initial")
    step_size: PositiveInt = Field(default=1000, description="with name=step: iterations between decays")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)


class EMA(Block):
    enabled: bool = False
    decay: float = Field(default=0.999, gt=0.0, lt=1.0)
    evaluate_with_ema: bool = True


class Optim(Block):
    classifier: Optimizer = Optimizer()
    lr_schedule: LRSchedule = LRSchedule()
    ema: EMA = EMA()
    grad_clip: PositiveFloat | None = None


NAME_MAX = 250  # MLflow's limit on a run name
URI_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file", "http", "https", "databricks")


def check_name(name: str) -> str:
    if not name.strip():
        raise ValueError("empty; give it a name")
    return name


def check_tracking_uri(uri: str) -> str:
    """The store URIs MLflow accepts, with the traps (a bare path, `sqlite://` with two slashes) spelled out."""
    if not uri.strip():
        raise ValueError("empty; set an MLflow store such as sqlite:///mlruns/mlflow.db")
    scheme = urlparse(uri).scheme.lower()
    if len(scheme) <= 1:  # none, or a Windows drive letter
        raise ValueError(f"'{uri}' is a path, not a URI; write sqlite:///{uri} (a SQLite file) instead")
    if scheme.split("+", 1)[0] not in URI_SCHEMES:
        raise ValueError(
            f"unknown scheme '{scheme}'; use sqlite:///path.db, postgresql://user@host/db, http(s)://host:port"
            " or file:///path"
        )
    if scheme == "sqlite" and (not uri.startswith("sqlite:///") or uri == "sqlite:///"):
        raise ValueError(
            f"'{uri}': a SQLite URI has three slashes and a file, sqlite:///relative/path.db or"
            " sqlite:////absolute/path.db"
        )
    if scheme in ("http", "https") and not urlparse(uri).netloc:
        raise ValueError(f"'{uri}' names no host; write {scheme}://host:port")
    return uri


class Tracking(Block):
    experiment: str = Field(default="metassl", max_length=NAME_MAX)
    tracking_uri: str = Field(default="sqlite:///mlruns/mlflow.db", description="MLflow tracking URI")
    artifact_root: str = Field(
        default="mlruns",
        min_length=1,
        description="where new experiments of a local store keep artifacts (a server keeps its own)",
    )
    run_name: str | None = Field(default=None, max_length=NAME_MAX)
    log_model: bool = Field(
        default=True, description="log the final classifier: safetensors weights and an MLflow Model (runs:/ID/model)"
    )
    register_model: str | None = Field(
        default=None, max_length=NAME_MAX, description="register each finished run's model as a version of this name"
    )
    system_metrics: bool = Field(default=True, description="log CPU, memory (and GPU) use while the run trains")
    system_metrics_interval: PositiveFloat = Field(default=10.0, description="seconds between system-metric samples")
    server_wait: NonNegativeInt = Field(
        default=600,
        description="seconds a run on a tracking server rides out its outage (training goes on, logging queued)"
        " before it stops with its checkpoint saved locally",
    )

    @field_validator("experiment", "run_name", "register_model")
    @classmethod
    def _named(cls, name: str | None) -> str | None:
        return None if name is None else check_name(name)

    @field_validator("tracking_uri")
    @classmethod
    def _known_uri(cls, uri: str) -> str:
        return check_tracking_uri(uri)

    @model_validator(mode="after")
    def _registered_model_is_logged(self) -> Tracking:
        if self.register_model and not self.log_model:
            raise ValueError("tracking.register_model needs tracking.log_model: true (there is no model to register)")
        return self


class Runtime(Block):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="bf16", description="autocast dtype on CUDA; CPU is fp32"
    )
    threads: PositiveInt | None = Field(default=None, description="torch CPU threads; default: torch's choice")
    deterministic: bool = Field(default=True, description="deterministic algorithms (CPU runs repeat exactly)")
    cpu_isa: Literal["native", "avx2"] = Field(
        default="native",
        description="vector instructions of the CPU float kernels (ATen, oneDNN, MKL): native, the fastest this CPU"
        " has; avx2, the same numbers on any x86-64 CPU with AVX2 (2015 on), AVX-512 or not",
    )
    sync_batchnorm: bool = Field(
        default=True,
        description="under torchrun on GPUs, BatchNorm statistics over every rank's batch (SyncBatchNorm); on the"
        " CPU (gloo) each rank always normalizes its own batch",
    )
