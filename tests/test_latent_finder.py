"""The latent finder (`method.meta.finder: mlp`): starts as the identity, moves every row, resumes exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from runner.methods.metassl import MetaSSL
from schemas.errors import RecipeError
from tests.method_toys import TinyGenerator, ToyData, one_thread, tiny_classifier, toy_components


def build(finder: str = "mlp", seed: int = 0, anchor: float = 0.0) -> MetaSSL:
    meta = {"latent_batch_size": 8, "virtual_lr": 0.5, "finder": finder, "finder_lr": 0.05, "finder_anchor": anchor}
    config = {"name": "metassl", "latents": {"bank_size": 24}, "meta": meta}
    method = toy_components(config, tiny_classifier(seed=seed), ToyData(), TinyGenerator(), seed=seed).method
    assert isinstance(method, MetaSSL)
    return method


def all_rows(method: MetaSSL) -> torch.Tensor:
    return torch.arange(len(method.bank))


def test_the_finder_starts_as_the_identity_and_leaves_the_global_rng_alone():
    with one_thread():
        torch.manual_seed(0)
        plain = build("none")
        after_plain = torch.rand(3)
        torch.manual_seed(0)
        found = build("mlp")
        assert torch.equal(torch.rand(3), after_plain)
        assert torch.allclose(
            found.render(found.bank.batch(all_rows(found))), plain.render(plain.bank.batch(all_rows(plain)))
        )


def test_one_meta_step_moves_every_row_and_no_bank_row():
    with one_thread():
        torch.manual_seed(0)
        method = build()
        rows = all_rows(method)
        before = method.generated_latents(method.bank.batch(rows))
        bank_before = method.bank.noise.detach().clone()
        revision = method.bank.revision.clone()
        metrics = method.meta_step()
        after = method.generated_latents(method.bank.batch(rows))
        moved = (after["noise"] - before["noise"]).norm(dim=1)
        assert bool((moved > 0).all()), "a batch of 8 moved all 24 rows"
        assert torch.equal(method.bank.noise, bank_before)
        assert bool((method.bank.revision > revision).all())  # every cached image is now stale
        assert torch.allclose(after["noise"].norm(dim=1), before["noise"].norm(dim=1), atol=1e-5)  # renormalized
        assert float(metrics["meta/latent_grad_norm"]) > 0


def test_resume_restores_the_finder_and_its_optimizer():
    with one_thread():
        torch.manual_seed(0)
        uninterrupted = build()
        for _ in range(2):
            uninterrupted.meta_step()
        state, rng = copy.deepcopy(uninterrupted.state_dict()), torch.get_rng_state()
        for _ in range(3):
            uninterrupted.meta_step()
        resumed = build()
        resumed.meta_step()
        resumed.load_state_dict(state)
        torch.set_rng_state(rng)
        for _ in range(3):
            resumed.meta_step()
        for ours, theirs in zip(resumed.finder.parameters(), uninterrupted.finder.parameters(), strict=True):
            assert torch.equal(ours, theirs)


def test_the_anchor_keeps_the_generated_latents_closer_to_the_bank():
    def drift_after_steps(anchor: float) -> float:
        with one_thread():
            torch.manual_seed(0)
            method = build(anchor=anchor)
            for _ in range(5):
                metrics = method.meta_step()
            assert ("meta/finder_drift" in metrics) == (anchor > 0)
            rows = all_rows(method)
            bank = method.bank.batch(rows)
            with torch.no_grad():
                moved = method.generated_latents(bank)
            return sum(float((moved[key] - bank[key]).pow(2).mean()) for key in bank)

    free, anchored = drift_after_steps(0.0), drift_after_steps(100.0)
    assert free > 0
    assert anchored < 0.5 * free


def test_the_anchor_without_a_finder_is_refused():
    with pytest.raises(RecipeError, match=r"method\.meta\.finder_anchor acts on the latent finder"):
        build(finder="none", anchor=1.0)
