"""Schedule, optimization, tracking and runtime blocks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from schemas.base import Block


class MetaSchedule(Block):
    """Phase (i) runs `steps` latent updates whenever `iteration % every == 0`."""

    every: PositiveInt = 1
    steps: PositiveInt = 1


class Schedule(Block):
    iterations: PositiveInt = Field(default=1000, description="total training iterations")
    warmup: NonNegativeInt = Field(default=0, description="supervised-only iterations before any SSL or meta step")
    meta: MetaSchedule = MetaSchedule()
    eval_every: PositiveInt = 200
    checkpoint_every: PositiveInt = 200
    log_every: PositiveInt = 20

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


class Tracking(Block):
    experiment: str = "metassl"
    tracking_uri: str = Field(default="sqlite:///mlruns/mlflow.db", description="MLflow tracking URI")
    artifact_root: str = Field(
        default="mlruns", description="where new experiments of a local store keep artifacts (a server keeps its own)"
    )
    run_name: str | None = None
    log_model: bool = Field(default=True, description="log the final classifier weights as safetensors")


class Runtime(Block):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="bf16", description="autocast dtype on CUDA; CPU is fp32"
    )
    threads: PositiveInt | None = Field(default=None, description="torch CPU threads; default: torch's choice")
    deterministic: bool = Field(default=True, description="deterministic algorithms (CPU runs repeat exactly)")
