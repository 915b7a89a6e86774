"""The `method` block: supervised, FixMatch, the generative baselines, and the method itself.

Defaults for the generative method are this project's reading of the paper (see
docs/METHOD.md), not settings verified against its full text.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from schemas.base import Block
from schemas.components import Component
from schemas.confidence import (
    AnyPolicyOptions,
    FlexMatchOptions,
    FreeMatchOptions,
    SoftMatchOptions,
    ThresholdOptions,
    check_own_policy_options,
    check_policy_options,
)


class MetaCadence(Block):
    """When phase (i) runs: `steps` updates whenever `iteration % every == 0` (after the warm-up)."""

    every: PositiveInt = Field(default=1, description="phase (i) every k iterations")
    steps: PositiveInt = Field(default=1, description="meta-steps each time phase (i) runs")


class MethodBase(Component, kind="method"):
    """A method's block. Its capabilities are declared here, once per class, and the runner reads them; a plugin's
    block declares them the same way."""

    needs_generator: ClassVar[bool] = False
    # A block with a meta phase has a `meta` block deriving from MetaCadence (checked when the class is defined).
    has_meta_phase: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("meta")
        annotation = None if field is None else field.annotation
        if cls.has_meta_phase and not (isinstance(annotation, type) and issubclass(annotation, MetaCadence)):
            raise TypeError(f"{cls.__name__}: a method with a meta phase declares `meta: <a MetaCadence subclass>`")

    def meta_cadence(self) -> MetaCadence | None:
        """`method.meta`'s every and steps for a method with a meta phase; None without one."""
        return self.meta if self.has_meta_phase else None  # type: ignore[attr-defined]  # checked above

    def unlabeled_per_step(self) -> int:
        """Unlabeled images each phase (ii) step draws besides the labeled batch (for images/s)."""
        return 0

    def latent_init(self) -> LatentInit | None:
        """How a method with a latent bank draws its latents; None for a method without one."""
        return None


class Supervised(MethodBase, builder="runner.methods.supervised:build_supervised"):
    """Cross-entropy on the labeled set only."""

    name: Literal["supervised"] = "supervised"


class RealDataSSL(MethodBase):
    """FixMatch's step with *real* unlabeled data; the subclasses differ in their confidence policy."""

    name: str
    lambda_u: float = Field(default=1.0, ge=0.0)
    unlabeled_batch_size: PositiveInt = Field(default=128, description="unlabeled images per step (mu * B)")

    @model_validator(mode="before")
    @classmethod
    def _only_its_own_policy_options(cls, data: Any) -> Any:
        check_own_policy_options(cls, data)
        return data

    def unlabeled_per_step(self) -> int:
        return self.unlabeled_batch_size


class FixMatch(RealDataSSL, ThresholdOptions, builder="runner.methods.fixmatch:build_fixmatch"):
    """FixMatch with *real* unlabeled data (the images outside the labeled set, or STL-10's unlabeled split)."""

    name: Literal["fixmatch"] = "fixmatch"


class FlexMatch(RealDataSSL, FlexMatchOptions, builder="runner.methods.fixmatch:build_flexmatch"):
    """FlexMatch with *real* unlabeled data: per-class thresholds from each class's learning effect."""

    name: Literal["flexmatch"] = "flexmatch"


class FreeMatch(RealDataSSL, FreeMatchOptions, builder="runner.methods.fixmatch:build_freematch"):
    """FreeMatch with *real* unlabeled data: self-adaptive thresholds and the fairness term."""

    name: Literal["freematch"] = "freematch"


class SoftMatch(RealDataSSL, SoftMatchOptions, builder="runner.methods.fixmatch:build_softmatch"):
    """SoftMatch with *real* unlabeled data: truncated Gaussian weights under uniform alignment."""

    name: Literal["softmatch"] = "softmatch"


class LatentInit(Block):
    """How the latent bank Lambda = {(z_j, a_j)} starts."""

    bank_size: PositiveInt = Field(default=1024, description="M, the number of latents in the bank")
    truncation: PositiveFloat | None = Field(default=None, le=4.0, description="resample |z| above this")
    classes: Literal["random", "uniform", "pseudo"] = Field(
        default="random",
        description="class logits a_j: random normal, all-equal, or pseudo-conditional from a source classifier",
    )
    temperature: PositiveFloat = Field(default=1.0, description="tau in c_j = softmax(a_j / tau)")


class Generative(MethodBase, AnyPolicyOptions, builder="runner.methods.generative:build_generative"):
    """The generative baseline: synthetic unlabeled samples from *fixed* latents (no phase (i))."""

    needs_generator: ClassVar[bool] = True
    name: Literal["generative"] = "generative"
    unsup_loss: Literal["feature_cosine", "fixmatch", "flexmatch", "freematch", "softmatch", "none"] = Field(
        default="feature_cosine",
        description="L_u on the synthetic batch: feature_cosine, a pseudo-label loss with that confidence policy"
        " (its options: method.threshold, ...), or none",
    )
    lambda_u: float = Field(default=1.0, ge=0.0)
    stop_grad: bool = True
    unlabeled_batch_size: PositiveInt = Field(default=128, description="synthetic images per SSL step")
    latents: LatentInit = LatentInit()
    views: Literal["strong_weak", "weak_weak"] = Field(
        default="strong_weak",
        description="the two views of each synthetic image in L_u (both phases): online strong + target weak, or two"
        " weak draws",
    )
    grid_size: PositiveInt = Field(default=64, description="the first N latents of the bank shown in sample grids")
    cache_samples: bool = Field(
        default=True,
        description="keep each bank row's image and regenerate it only after its latents change (same images,"
        " less generator time; holds bank_size images in memory)",
    )
    render_batch: PositiveInt = Field(
        default=16,
        description="rows the cache renders per generator call, always this many (the last call padded): a row's"
        " image then never depends on which rows were stale with it, so a resumed run renders it bit for bit",
    )

    @model_validator(mode="after")
    def _policy_options_fit_unsup_loss(self) -> Generative:
        check_policy_options(self, self.unsup_loss)
        return self

    def unlabeled_per_step(self) -> int:
        return self.unlabeled_batch_size

    def latent_init(self) -> LatentInit:
        return self.latents


class Meta(MetaCadence):
    """Phase (i): when it runs, and the meta-step on the latents."""

    lr: PositiveFloat = Field(default=0.05, description="beta, Adam learning rate of the latents")
    virtual_lr: PositiveFloat | None = Field(
        default=None, description="eta of the virtual step; default: the classifier's learning rate"
    )
    gradient: Literal["exact", "finite_difference"] = Field(
        default="exact",
        description="exact: second order through the virtual step; finite_difference: DARTS-style, first order only"
        " (less memory)",
    )
    fd_epsilon: PositiveFloat = Field(
        default=0.01, description="finite_difference: eps = fd_epsilon / |grad_theta' L_val| (DARTS)"
    )
    fd_scheme: Literal["central", "forward"] = Field(
        default="central",
        description="finite_difference: central (theta +- eps v, DARTS) or forward (theta + eps v against theta:"
        " one classifier pass fewer, first-order accurate in eps)",
    )
    scope: Literal["all", "last_blocks"] = Field(
        default="all", description="what the virtual step moves: every parameter, or the last feature blocks + head"
    )
    scope_blocks: PositiveInt = Field(default=1, description="with scope=last_blocks: how many feature blocks")
    resemblance: Literal["mmd", "mean_feature_l2", "nearest_cosine", "none"] = Field(
        default="mmd", description="R: how synthetic features are pulled toward real labeled ones (theta fixed)"
    )
    lambda_r: float = Field(default=1.0, ge=0.0, description="weight of R in L_meta")
    lambda_v: float = Field(
        default=1.0, ge=0.0, description="weight of the validation term CE(h_theta'(x_v)) in L_meta; 0: R alone"
    )
    latent_batch_size: PositiveInt = Field(default=64, description="latents per meta-step")
    validation_batch_size: PositiveInt = Field(default=64, description="validation images per meta-step (also R's)")
    validation_source: Literal["labeled", "holdout"] = Field(
        default="labeled",
        description="x_v of the meta-step: another draw of the labeled set, or the held-out validation set (which"
        " then trains the latents and can no longer select settings fairly)",
    )
    validation_augment: Literal["weak", "strong"] = Field(
        default="weak",
        description="x_v's augmentation: weak, or strong views the classifier has not memorized",
    )
    latent_constraint: Literal["none", "renormalize", "clip"] = Field(
        default="renormalize", description="after each update: z to norm sqrt(d), or each coordinate to [-clip, clip]"
    )
    clip: PositiveFloat = Field(default=3.0, description="with latent_constraint=clip: |z| bound")
    finder: Literal["none", "mlp"] = Field(
        default="none",
        description="none: Adam moves the batch's bank rows; mlp: a shared network maps every row's fixed latents"
        " to the generated ones, and Adam moves its weights, so every meta-step moves every row",
    )
    finder_hidden: PositiveInt = Field(default=256, description="with finder=mlp: hidden width")
    finder_lr: PositiveFloat = Field(default=1e-3, description="with finder=mlp: Adam learning rate of its weights")
    finder_anchor: float = Field(
        default=0.0,
        ge=0.0,
        description="with finder=mlp: weight of the mean squared move of the generated latents from the bank's in"
        " L_meta, a trust region against the bank collapsing onto one sample; 0: off",
    )


class MetaSSL(Generative, builder="runner.methods.metassl:build_metassl"):
    """The method: meta-optimized latents (phase i) plus SSL with the feature-cosine loss (phase ii)."""

    has_meta_phase: ClassVar[bool] = True
    name: Literal["metassl"] = "metassl"  # type: ignore[assignment]
    meta: Meta = Meta()

    @model_validator(mode="after")
    def _meta_needs_a_virtual_loss(self) -> MetaSSL:
        if self.unsup_loss == "none" and self.meta.resemblance == "none":
            raise ValueError("method.unsup_loss 'none' with meta.resemblance 'none' leaves phase (i) nothing to do")
        if self.meta.lambda_v == 0 and (self.meta.lambda_r == 0 or self.meta.resemblance == "none"):
            raise ValueError("method.meta.lambda_v 0 with no resemblance term leaves phase (i) nothing to do")
        if self.meta.finder_anchor > 0 and self.meta.finder != "mlp":
            raise ValueError("method.meta.finder_anchor acts on the latent finder: set method.meta.finder: mlp, or 0")
        if self.meta.latent_batch_size > self.latents.bank_size:
            raise ValueError(
                f"method.meta.latent_batch_size ({self.meta.latent_batch_size}) exceeds the bank"
                f" (method.latents.bank_size = {self.latents.bank_size})"
            )
        return self
