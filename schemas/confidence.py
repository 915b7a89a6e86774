"""The options of each confidence policy (runner/methods/confidence.py): how a pseudo-label's confidence becomes
its weight. A real-data method (`fixmatch`, `flexmatch`, `freematch`, `softmatch`) has its own policy's options; a
generative method picks a policy with `unsup_loss` and has every policy's options, of which only the picked one's
may differ from their defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat

from schemas.base import Block


class ThresholdOptions(Block):
    """FixMatch: a fixed confidence threshold."""

    threshold: float = Field(default=0.95, ge=0.0, le=1.0, description="tau: the confidence a pseudo-label needs")


class FlexMatchOptions(ThresholdOptions):
    """FlexMatch: per-class thresholds tau * M(beta(c)) from each class's learning effect."""

    threshold_warmup: bool = Field(
        default=True, description="normalise the learning effect by the unused images too while they are the most"
    )
    mapping: Literal["convex", "linear", "concave"] = Field(
        default="convex", description="M: x / (2 - x), x, or ln(x + 1) / ln 2"
    )


class EmaOptions(Block):
    ema_decay: float = Field(default=0.999, ge=0.0, lt=1.0, description="decay of the policy's EMAs")


class FreeMatchOptions(EmaOptions):
    """FreeMatch: self-adaptive thresholds from EMAs of the confidence, and the fairness term."""

    fairness_weight: float = Field(
        default=0.001, ge=0.0, description="w_f: weight of the self-adaptive fairness term L_f inside L_u; 0: off"
    )


class SoftMatchOptions(EmaOptions):
    """SoftMatch: a truncated Gaussian weight from the EMA mean and variance of the confidence."""

    n_sigma: PositiveFloat = Field(
        default=2.0, description="the Gaussian's width is sigma_t / n_sigma (1: the paper's equation, 2: USB's)"
    )
    uniform_alignment: bool = Field(default=True, description="align the probabilities to a uniform class prior")


POLICY_OPTIONS: dict[str, type[Block]] = {
    "fixmatch": ThresholdOptions,
    "flexmatch": FlexMatchOptions,
    "freematch": FreeMatchOptions,
    "softmatch": SoftMatchOptions,
}
"""Each confidence policy's options; the name is the real-data method's and the generative `unsup_loss`."""


class AnyPolicyOptions(FlexMatchOptions, FreeMatchOptions, SoftMatchOptions):
    """Every policy's options, for a method whose `unsup_loss` picks the policy."""


def policy_option_error(field: str, holder: str, fix: str) -> ValueError:
    """`field` belongs to other confidence policies than the one `holder` uses: one line, naming the fix."""
    owners = [name for name, options in POLICY_OPTIONS.items() if field in options.model_fields]
    return ValueError(
        f"{field} is an option of the {' or '.join(owners)} confidence policy, and {holder} has none;"
        f" remove it or set {fix}: {owners[0]}"
    )


def check_policy_options(block: Block, policy: str) -> None:
    """A method whose `unsup_loss` picks the policy: refuse an option set away from its default that it does not read.

    (Defaults pass, so a resolved recipe, which lists every option, stays valid.)
    """
    own = POLICY_OPTIONS[policy].model_fields if policy in POLICY_OPTIONS else {}
    for field, info in AnyPolicyOptions.model_fields.items():
        if field not in own and getattr(block, field) != info.default:
            raise policy_option_error(field, f"unsup_loss '{policy}'", "method.unsup_loss")


def check_own_policy_options(block: type[Block], data: object) -> None:
    """A real-data method: a recipe key that is another policy's option names that policy, not just 'unknown'."""
    if not isinstance(data, dict):
        return
    for field in data:
        if field in AnyPolicyOptions.model_fields and field not in block.model_fields:
            raise policy_option_error(field, f"method '{data.get('name')}'", "method.name")
