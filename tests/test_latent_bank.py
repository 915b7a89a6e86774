"""The latent bank: initialization, row-wise Adam, the latent constraint, and resuming mid-meta-phase."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
from method_toys import SourceTinyGenerator, TinyGenerator, ToyData, one_thread, tiny_classifier, toy_components

from runner.methods.latent_bank import LatentBank, initial_latents
from runner.methods.metassl import MetaSSL
from runner.methods.row_adam import RowAdam
from schemas import UserError
from schemas.methods import LatentInit


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_row_adam_is_adam_when_every_row_is_in_every_batch() -> None:
    torch.manual_seed(0)
    start = {"noise": torch.randn(5, 4), "condition": torch.randn(5, 3)}
    bank = LatentBank(start)
    optimizer = RowAdam(bank.tensors(), lr=0.1)
    reference = [torch.nn.Parameter(start["noise"].clone()), torch.nn.Parameter(start["condition"].clone())]
    adam = torch.optim.Adam(reference, lr=0.1)
    rows = torch.arange(5)
    for _ in range(4):
        grads = {"noise": torch.randn(5, 4), "condition": torch.randn(5, 3)}
        bank.step(optimizer, rows, grads)
        reference[0].grad, reference[1].grad = grads["noise"], grads["condition"]
        adam.step()
    assert torch.allclose(bank.noise, reference[0], atol=1e-6)
    assert torch.allclose(bank.condition, reference[1], atol=1e-6)


def test_only_the_rows_of_a_batch_move() -> None:
    bank = LatentBank({"noise": torch.randn(6, 4)})
    optimizer = RowAdam(bank.tensors(), lr=0.1)
    bank.step(optimizer, torch.tensor([0, 1]), {"noise": torch.ones(2, 4)})
    after_first = bank.noise.detach().clone()
    bank.step(optimizer, torch.tensor([2]), {"noise": torch.ones(1, 4)})
    # rows 0 and 1 keep their moments but take no step while absent (torch's Adam would keep moving them)
    assert torch.equal(bank.noise[:2], after_first[:2])
    assert not torch.equal(bank.noise[2], after_first[2])
    assert torch.equal(bank.noise[3:], after_first[3:])
    assert optimizer.steps.tolist() == [1, 1, 1, 0, 0, 0]
    assert bank.revision.tolist() == [1, 1, 1, 0, 0, 0]  # what a sample cache reads


def test_batches_are_copies_that_take_gradients() -> None:
    bank = LatentBank({"noise": torch.randn(6, 4), "condition": torch.randn(6, 3)})
    batch = bank.batch(torch.tensor([4, 1]), requires_grad=True)
    assert batch["noise"].requires_grad and batch["noise"].is_leaf
    assert torch.equal(batch["condition"], bank.condition[[4, 1]])
    assert sorted(bank.sample_indices(6).tolist()) == list(range(6))  # distinct rows when n <= M


def test_renormalize_and_clip_constraints() -> None:
    bank = LatentBank({"noise": 5 * torch.randn(8, 16)})
    before = bank.noise.detach().clone()
    bank.constrain(torch.tensor([0, 3]), "renormalize")
    norms = bank.noise.norm(dim=1)
    assert torch.allclose(norms[[0, 3]], torch.full((2,), math.sqrt(16.0)))
    assert torch.equal(bank.noise[1], before[1])
    bank.constrain(torch.arange(8), "clip", clip=1.5)
    assert bank.noise.abs().max() <= 1.5


def test_state_round_trip_with_the_owners_optimizer() -> None:
    bank = LatentBank({"noise": torch.randn(6, 4), "condition": torch.randn(6, 3)})
    optimizer = RowAdam(bank.tensors(), lr=0.05)
    bank.step(optimizer, torch.tensor([1, 2]), {"noise": torch.randn(2, 4), "condition": torch.randn(2, 3)})
    state, optimizer_state = copy.deepcopy(bank.state_dict()), optimizer.state_dict()
    assert set(state) == {"noise", "condition"}  # the bank holds latents only; its owner keeps the optimizer
    fresh = LatentBank({"noise": torch.zeros(6, 4), "condition": torch.zeros(6, 3)})
    fresh_optimizer = RowAdam(fresh.tensors(), lr=0.05)
    fresh.load_state_dict(state)
    fresh_optimizer.load_state_dict(optimizer_state)
    grads = {"noise": torch.randn(2, 4), "condition": torch.randn(2, 3)}
    bank.step(optimizer, torch.tensor([1, 5]), grads)
    fresh.step(fresh_optimizer, torch.tensor([1, 5]), grads)
    assert torch.equal(bank.noise, fresh.noise) and torch.equal(bank.condition, fresh.condition)
    with pytest.raises(ValueError, match="shape"):
        LatentBank({"noise": torch.zeros(7, 4), "condition": torch.zeros(7, 3)}).load_state_dict(state)


def test_initialization_is_seeded_and_follows_the_recipe() -> None:
    generator = SourceTinyGenerator()
    images = ToyData().labeled_images()
    first = initial_latents(generator, LatentInit(bank_size=10, truncation=1.0), 3, lambda: images)
    again = initial_latents(generator, LatentInit(bank_size=10, truncation=1.0), 3, lambda: images)
    other = initial_latents(generator, LatentInit(bank_size=10, truncation=1.0), 4, lambda: images)
    assert torch.equal(first["noise"], again["noise"]) and not torch.equal(first["noise"], other["noise"])
    assert first["noise"].abs().max() <= 1.0
    uniform = initial_latents(generator, LatentInit(bank_size=10, classes="uniform"), 0, lambda: images)
    assert torch.equal(uniform["condition"], torch.zeros(10, 3))
    pseudo = initial_latents(generator, LatentInit(bank_size=20, classes="pseudo"), 0, lambda: images)
    expected = generator.source_logits(images)[torch.arange(20) % len(images)]
    assert torch.allclose(pseudo["condition"], expected)


def test_pseudo_latents_need_a_source_classifier() -> None:
    with pytest.raises(UserError, match=r"method\.latents\.classes: 'pseudo' needs a source classifier"):
        initial_latents(TinyGenerator(), LatentInit(classes="pseudo"), 0, ToyData().labeled_images)


def build_toy_method(seed: int = 0) -> MetaSSL:
    config = {
        "name": "metassl",
        "latents": {"bank_size": 24},
        "meta": {"latent_batch_size": 8, "virtual_lr": 0.5, "gradient": "exact"},
    }
    method = toy_components(config, tiny_classifier(seed=seed), ToyData(), TinyGenerator(), seed=seed).method
    assert isinstance(method, MetaSSL)
    return method


def test_resume_mid_meta_phase_matches_an_uninterrupted_run() -> None:
    torch.manual_seed(0)
    uninterrupted = build_toy_method()
    for _ in range(3):
        uninterrupted.meta_step()
    saved_state = copy.deepcopy(uninterrupted.state_dict())
    saved_rng = torch.get_rng_state()
    for _ in range(4):
        uninterrupted.meta_step()

    resumed = build_toy_method()
    for _ in range(2):  # move the fresh method off the saved state first, so loading must do the work
        resumed.meta_step()
    resumed.load_state_dict(saved_state)
    torch.set_rng_state(saved_rng)
    for _ in range(4):
        resumed.meta_step()

    assert torch.equal(resumed.bank.noise, uninterrupted.bank.noise)
    assert torch.equal(resumed.bank.condition, uninterrupted.bank.condition)
    ours, theirs = resumed.bank_optimizer, uninterrupted.bank_optimizer
    assert torch.equal(ours.steps, theirs.steps)
    assert all(torch.equal(a, b) for a, b in zip(ours.exp_avg_sq, theirs.exp_avg_sq, strict=True))
