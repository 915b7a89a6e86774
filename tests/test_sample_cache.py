"""The sample cache: the images it serves are the images the current bank generates, rendered only when stale."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from method_toys import TinyGenerator, ToyData, one_thread, tiny_classifier, toy_components

from runner.methods.generative import Generative
from runner.methods.latent_bank import LatentBank
from runner.methods.row_adam import RowAdam
from runner.methods.sample_cache import SampleCache
from runner.run.build import Components
from runner.run.train_step import grad_scaler, train_step


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def bank_and_cache(rows: int = 10) -> tuple[LatentBank, SampleCache, TinyGenerator]:
    generator = TinyGenerator()
    rng = torch.Generator().manual_seed(0)
    bank = LatentBank({"noise": torch.randn(rows, 5, generator=rng), "condition": torch.randn(rows, 3, generator=rng)})
    return bank, SampleCache(bank, generator, render_batch=4), generator


def fresh(generator: TinyGenerator, bank: LatentBank, rows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return generator(bank.batch(rows))


def test_rows_render_once_until_their_latents_change() -> None:
    bank, cache, generator = bank_and_cache()
    rows = torch.tensor([3, 1, 3, 7])  # a repeat is served twice and rendered once
    assert torch.allclose(cache.get(rows), fresh(generator, bank, rows), atol=1e-6)
    assert cache.last_rendered == 3
    cache.get(torch.tensor([1, 7]))
    assert cache.last_rendered == 0

    moved = torch.tensor([1, 4])
    bank.step(RowAdam(bank.tensors(), 0.1), moved, {"noise": torch.ones(2, 5), "condition": torch.ones(2, 3)})
    after = cache.get(torch.tensor([1, 3, 4]))
    assert cache.last_rendered == 2  # row 1 moved, row 4 was never drawn, row 3 is still current
    assert torch.allclose(after, fresh(generator, bank, torch.tensor([1, 3, 4])), atol=1e-6)
    assert not torch.allclose(after[0], cache.get(torch.tensor([3]))[0])

    bank.constrain(torch.tensor([3]), "renormalize")
    cache.get(torch.tensor([3]))
    assert cache.last_rendered == 1


def test_an_image_does_not_depend_on_which_rows_were_stale_with_it(tmp_path: Path) -> None:
    """A real convolutional generator sums in a batch-size-dependent order on the CPU. Two caches with different
    histories (one render of everything; stale sets of 3, 8 and 13 rows) still serve identical images, bit for bit:
    what makes a resumed run, whose cache starts empty, render what the uninterrupted run served."""
    from runner.pretraining.model import ConditionalGenerator
    from runner.registry import GENERATORS
    from schemas.generators import LocalGAN

    torch.manual_seed(0)
    ConditionalGenerator(noise_dim=8, num_classes=4, embed_dim=8, base_channels=8, image_size=12).save_pretrained(
        tmp_path / "gan"
    )
    generator = GENERATORS.build(LocalGAN(path=tmp_path / "gan"), class_names=list("abcd"), device=torch.device("cpu"))
    bank = LatentBank(generator.sample_latents(24, generator=torch.Generator().manual_seed(0)))
    everything = torch.arange(len(bank))
    at_once, in_pieces = (SampleCache(bank, generator, render_batch=4) for _ in range(2))
    for piece in (everything[:3], everything[3:11], everything[11:]):
        in_pieces.get(piece)
    assert torch.equal(at_once.get(everything), in_pieces.get(everything))
    assert in_pieces.last_rendered == 0  # served from the cache


def test_loading_a_checkpoint_marks_every_row_stale() -> None:
    bank, cache, generator = bank_and_cache()
    state = copy.deepcopy(bank.state_dict())
    everything = torch.arange(len(bank))
    cache.get(everything)
    grads = {"noise": torch.ones(1, 5), "condition": torch.ones(1, 3)}
    bank.step(RowAdam(bank.tensors(), 0.1), torch.tensor([0]), grads)
    bank.load_state_dict(state)
    assert torch.allclose(cache.get(everything), fresh(generator, bank, everything), atol=1e-6)
    assert cache.last_rendered == len(bank)


def toy_run(cache_samples: bool) -> Components:
    config = {
        "name": "metassl",
        "unlabeled_batch_size": 12,
        "cache_samples": cache_samples,
        "latents": {"bank_size": 16},
        "meta": {"latent_batch_size": 8, "virtual_lr": 0.5},
    }
    return toy_components(config, tiny_classifier(), ToyData(), TinyGenerator())


def test_the_method_trains_the_same_with_and_without_the_cache() -> None:
    """The cache changes what is generated when, not what the classifier and the latents see."""
    histories = []
    for cache_samples in (True, False):
        torch.manual_seed(0)
        components = toy_run(cache_samples)
        method, scaler = components.method, grad_scaler(components)
        assert isinstance(method, Generative)
        losses, generated = [], []
        for iteration in range(6):
            loss, metrics = train_step(components, iteration, scaler)
            losses.append(float(loss.detach()))
            generated.append(metrics.get("synthetic/generated"))
        histories.append((losses, method.bank.noise.detach().clone(), generated))
    (cached, cached_bank, cached_generated), (uncached, uncached_bank, uncached_generated) = histories
    assert cached == pytest.approx(uncached, rel=1e-5)
    assert torch.allclose(cached_bank, uncached_bank, atol=1e-5)
    assert uncached_generated == [None] * 6
    # 12 of 16 rows drawn per step: fewer are generated than drawn once the bank has been seen.
    assert sum(cached_generated) < 6 * 12
