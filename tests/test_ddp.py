"""One run over two processes (gloo on the CPU), checked in-process: the parameter update of 2 ranks x B/2 equals
1 rank x B, the latent bank stays one bank after many meta steps, and a sharded evaluation is one process's."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

from runner import distributed
from runner.classifiers.base import Classifier
from runner.distributed import SINGLE, Distributed
from runner.methods.confidence import ConfidencePolicy, make_policy
from runner.run.train_step import grad_scaler, train_step
from schemas.confidence import AnyPolicyOptions
from tests.method_toys import SIZE, TinyGenerator, ToyData, tiny_classifier, toy_components

pytestmark = pytest.mark.slow

WORLD = 2
BATCH = 8  # the global batch: each of the 2 ranks draws BATCH // 2


def spawn(worker, tmp_path: Path, *args) -> None:  # type: ignore[no-untyped-def]
    """Run `worker(dist, tmp_path, *args)` on 2 processes joined in one gloo group."""
    torch.multiprocessing.spawn(_join, args=(worker, tmp_path, args), nprocs=WORLD, join=True)


def _join(rank: int, worker, tmp_path: Path, args: tuple) -> None:  # type: ignore[no-untyped-def]
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=rank, world_size=WORLD)
    try:
        worker(distributed.current(), tmp_path, *args)
    finally:
        distributed.stop()
    # A passing worker leaves at once: in a pytest process that ran autograd before spawning (test_data's
    # gradient test), the child's interpreter teardown aborts ("terminate called without an active exception")
    # after every assertion passed. A failing worker still raises, and spawn reports its traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def batch_free_classifier() -> Classifier:
    """Smooth blocks without BatchNorm: the gradient of a mean loss is then the mean of the ranks' gradients."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 12), nn.Tanh()), nn.Sequential(nn.Linear(12, 8))]
    return Classifier(blocks, feature_dim=8, num_classes=3).train()


class FixedBatches(ToyData):
    """The same BATCH labeled images every iteration, rank r taking its slice of them (no augmentation)."""

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__()
        per_rank = BATCH // world_size
        self.rows = slice(rank * per_rank, (rank + 1) * per_rank)

    def labeled_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[:BATCH][self.rows], self.labels[:BATCH][self.rows]


def _trained_parameters(dist: Distributed, iterations: int) -> list[torch.Tensor]:
    components = toy_components(
        {"name": "supervised"},
        batch_free_classifier(),
        FixedBatches(dist.rank, dist.world_size),
        None,
        lr=0.5,
        batch_size=BATCH // dist.world_size,
        dist=dist,
    )
    scaler = grad_scaler(components)
    for iteration in range(iterations):
        train_step(components, iteration, scaler)
    return [p.detach().clone() for p in components.classifier.parameters()]


def _equivalence_worker(dist: Distributed, tmp_path: Path) -> None:
    two_ranks = _trained_parameters(dist, iterations=3)
    one_rank = _trained_parameters(SINGLE, iterations=3)  # the same samples, all on this process
    moved = max(float((p - q).abs().max()) for p, q in zip(one_rank, _initial(), strict=True))
    assert moved > 1e-2  # the steps did something
    for mine, reference in zip(two_ranks, one_rank, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-6)


def _initial() -> list[torch.Tensor]:
    return [p.detach().clone() for p in batch_free_classifier().parameters()]


def test_two_ranks_with_half_batches_update_like_one_rank_with_the_whole_batch(tmp_path: Path) -> None:
    spawn(_equivalence_worker, tmp_path)


META = {
    "name": "metassl",
    "unlabeled_batch_size": 6,
    "latents": {"bank_size": 12},
    "meta": {"latent_batch_size": 4, "validation_batch_size": 6, "lr": 0.05},
}


def _bank_worker(dist: Distributed, tmp_path: Path, gradient: str, finder: str) -> None:
    method = {**META, "meta": {**META["meta"], "gradient": gradient, "finder": finder}}
    components = toy_components(method, tiny_classifier(), ToyData(), TinyGenerator(), dist=dist)
    bank = components.method.bank
    start = [t.detach().clone() for t in bank.tensors()]
    scaler = grad_scaler(components)
    for iteration in range(20):  # a meta step every iteration
        train_step(components, iteration, scaler)
    scalar = torch.tensor(float(bank.revision.sum()), dtype=torch.float64)  # 0-dim tensors are compared too
    tensors = [*bank.tensors(), bank.revision, scalar, *(p.detach() for p in components.classifier.parameters())]
    if components.method.finder is not None:
        tensors += [p.detach() for p in components.method.finder.parameters()]
    assert dist.identical(tensors), "the ranks' banks (or classifiers) differ"
    moved = components.method.generated_latents(bank.batch(torch.arange(len(bank))))["noise"]
    assert float((moved - start[0]).abs().max()) > 1e-3  # the bank moved, as one
    draws = dist.gather_objects(torch.randint(1000, (8,)).tolist())
    assert draws[0] != draws[1]  # yet each rank draws from its own stream


@pytest.mark.parametrize(("gradient", "finder"), [("exact", "none"), ("finite_difference", "mlp")])
def test_the_latent_bank_stays_one_bank_across_ranks(tmp_path: Path, gradient: str, finder: str) -> None:
    spawn(_bank_worker, tmp_path, gradient, finder)


def _evaluation_worker(dist: Distributed, tmp_path: Path) -> None:
    from runner.data.device_data import DeviceData
    from runner.registry import CLASSIFIERS
    from runner.run.build import prepare_data
    from runner.run.evaluate import evaluate
    from schemas import load_recipe
    from tests.helpers import RECIPES

    recipe = load_recipe(RECIPES / "digits_tiny.yaml")
    prepared = prepare_data(recipe)
    data = DeviceData(prepared.splits, prepared.label_split, recipe.data, torch.device("cpu"))
    torch.manual_seed(0)
    model = CLASSIFIERS.build(recipe.classifier, data.num_classes, data.channels, data.image_size)
    size = 35
    sharded = evaluate(model, data.test_batches(size, (dist.rank, dist.world_size)), data.num_classes, dist=dist)
    whole = evaluate(model, data.test_batches(size), data.num_classes)
    batches = -(-len(data.test) // size)
    assert batches % 2 == 1 and len(data.test) % size  # uneven shards, and a short last batch
    assert torch.equal(sharded.confusion, whole.confusion)
    assert sharded.accuracy == whole.accuracy and sharded.loss == whole.loss
    assert int(whole.confusion.sum()) == len(data.test)


def test_a_sharded_evaluation_equals_one_process_evaluation_exactly(tmp_path: Path) -> None:
    spawn(_evaluation_worker, tmp_path)


def test_one_process_has_no_process_group() -> None:
    assert distributed.current() == SINGLE and not torch_dist.is_initialized()
    assert distributed.rank_seed(7, 0) == 7 and distributed.rank_seed(7, 1) != 7
    assert SINGLE.on_main(lambda: 3) == 3 and SINGLE.any_rank(True)


POLICY_CLASSES, POLICY_POOL, POLICY_STEPS = 4, 12, 5


def _policy_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rank `rank`'s (probabilities, pool indices) for each step: its own draws."""
    rng = torch.Generator().manual_seed(100 + rank)
    per_rank = BATCH // WORLD
    return [
        (
            torch.softmax(3 * torch.randn(per_rank, POLICY_CLASSES, generator=rng), dim=1),
            torch.randint(POLICY_POOL, (per_rank,), generator=rng),
        )
        for _ in range(POLICY_STEPS)
    ]


def _learn(policy: ConfidencePolicy, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for probs, index in batches:
        policy.weigh(policy.align(probs, learn=True), index, learn=True)


def _policy_worker(dist: Distributed, tmp_path: Path, name: str) -> None:
    options = AnyPolicyOptions(threshold=0.5)
    make = partial(make_policy, name, options, POLICY_CLASSES, POLICY_POOL, torch.device("cpu"))
    shared = make(dist.gather_batches)
    _learn(shared, _policy_batches(dist.rank))
    # One process given every rank's rows, step by step, learns the same state.
    global_batches = [
        (torch.cat([probs for probs, _ in step]), torch.cat([index for _, index in step]))
        for step in zip(*(_policy_batches(rank) for rank in range(WORLD)), strict=True)
    ]
    alone = make()
    _learn(alone, global_batches)
    state = shared.state_dict()
    assert state.keys() == alone.state_dict().keys() and state
    for key, value in alone.state_dict().items():
        assert torch.equal(state[key], value), key
    states = dist.gather_objects(state)
    assert all(torch.equal(states[0][key], states[1][key]) for key in state)


@pytest.mark.parametrize("name", ["flexmatch", "freematch", "softmatch"])
def test_a_confidence_policy_learns_from_the_global_batch_on_every_rank(tmp_path: Path, name: str) -> None:
    """FlexMatch's records, FreeMatch's and SoftMatch's EMAs: every rank ends with one process's state on the
    concatenated batches, so the replicas stay identical."""
    spawn(_policy_worker, tmp_path, name)
