"""Generator adapters: tiny randomly initialised models of the real classes, saved and loaded through the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runner.generators.base import Generator
from runner.registry import GENERATORS
from schemas import UserError
from schemas.generators import BigGAN, Consistency, DiT, LocalGAN, SDTurbo

CPU = torch.device("cpu")
CLASSES = ["shirt", "shoe", "bag"]


def tiny_consistency(root: Path) -> Path:
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=5,
    )
    torch.nn.init.normal_(unet.class_embedding.weight, std=1.0)
    ConsistencyModelPipeline(unet=unet, scheduler=CMStochasticIterativeScheduler()).save_pretrained(root)
    return root


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )


def tiny_dit(root: Path) -> Path:
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=5,
    )
    # diffusers zero-initialises the adaLN modulation and the output projection: give them weights to test with.
    for name, param in transformer.named_parameters():
        if "norm1.linear" in name or "proj_out" in name:
            torch.nn.init.normal_(param, std=0.2)
    transformer.save_pretrained(root / "transformer")
    tiny_vae().save_pretrained(root / "vae")
    DDIMScheduler().save_pretrained(root / "scheduler")
    return root


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def tiny_clip_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges: buildable offline."""
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    vocab = {token: i for i, token in enumerate([*symbols, *(s + "</w>" for s in symbols)])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16).save_pretrained(folder)


def tiny_sd(root: Path) -> Path:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tiny_clip_tokenizer(root / "tokenizer")
    text_config = CLIPTextConfig(
        vocab_size=514,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=512,
        eos_token_id=513,
    )
    CLIPTextModel(text_config).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    ).save_pretrained(root / "unet")
    tiny_vae().save_pretrained(root / "vae")
    EulerDiscreteScheduler(timestep_spacing="trailing", beta_schedule="scaled_linear").save_pretrained(
        root / "scheduler"
    )
    return root


def tiny_biggan(root: Path) -> Path:
    """A tiny randomly initialised BigGAN of the package's real class, saved as the adapter loads a directory."""
    import pytorch_pretrained_biggan as biggan  # in the dev extra: a missing package fails here, never skips

    config = biggan.BigGANConfig(
        output_dim=32,
        z_dim=16,
        class_embed_dim=16,
        channel_width=4,
        num_classes=7,
        layers=[(True, 16, 8), (True, 8, 4), (True, 4, 2), (False, 2, 1)],
        attention_layer_position=2,
        n_stats=51,
    )
    torch.manual_seed(0)
    model = biggan.BigGAN(config).train()
    with torch.no_grad():  # the package zero-initialises the last batch norm's affine and attention's gamma
        model.generator.bn.weight.fill_(0.02)  # small: random activations would saturate the final tanh
        model.generator.bn.bias.normal_(0.0, 0.1)
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.fill_(0.5)
        for _ in range(20):  # spectral norm's power iteration only runs in train mode; converge it before saving
            model(torch.randn(4, config.z_dim), torch.rand(4, config.num_classes), 0.5)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(config.to_json_string())
    torch.save(model.state_dict(), root / "pytorch_model.bin")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("generators")


def build(config) -> Generator:
    return GENERATORS.build(config, class_names=CLASSES, device=CPU)


def make_consistency(root: Path) -> Generator:
    return build(Consistency(model=str(tiny_consistency(root / "cm"))))


def make_dit(root: Path) -> Generator:
    return build(DiT(model=str(tiny_dit(root / "dit")), steps=2))


def make_sd(root: Path) -> Generator:
    return build(SDTurbo(model=str(tiny_sd(root / "sd")), resolution=16, prompt_template="a photo of a {}"))


def make_biggan(root: Path) -> Generator:
    return build(BigGAN(model=str(tiny_biggan(root / "biggan")), truncation=0.5))


def make_local_gan(root: Path) -> Generator:
    from runner.pretraining.model import ConditionalGenerator

    torch.manual_seed(0)
    model = ConditionalGenerator(noise_dim=8, num_classes=4, embed_dim=8, base_channels=8, image_size=12)
    torch.nn.init.normal_(model.class_embedding.weight, std=2.0)
    model.save_pretrained(root / "local_gan")
    return build(LocalGAN(path=root / "local_gan"))


ADAPTERS = {
    "consistency": make_consistency,
    "dit": make_dit,
    "sd_turbo": make_sd,
    "biggan": make_biggan,
    "local_gan": make_local_gan,
}


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def generator(request: pytest.FixtureRequest, models: Path) -> Generator:
    return ADAPTERS[request.param](models)


def test_latents_get_gradients_and_weights_none(generator: Generator) -> None:
    latents = generator.sample_latents(2, generator=torch.Generator().manual_seed(0))
    for tensor in latents.values():
        tensor.requires_grad_(True)
    images = generator(latents)
    assert images.shape == (2, generator.channels, generator.native_size, generator.native_size)
    (images * torch.linspace(-1.0, 1.0, images.numel()).view_as(images)).sum().backward()
    for key, tensor in latents.items():
        assert tensor.grad is not None, key
        assert torch.isfinite(tensor.grad).all(), key
        assert tensor.grad.abs().sum() > 0, key
    assert all(p.grad is None and not p.requires_grad for p in generator.parameters())
    assert not generator.training
    generator.train()
    assert not generator.training  # a frozen generator stays in eval mode


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (96, 3)])
def test_outputs_in_range_after_resizing(generator: Generator, size: int, channels: int) -> None:
    latents = generator.sample_latents(3, generator=torch.Generator().manual_seed(1), truncation=1.5)
    assert latents["noise"].abs().max() <= 1.5
    with torch.no_grad():
        images = generator(latents, size=size, channels=channels)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert torch.isfinite(images).all()


def test_condition_changes_output(generator: Generator) -> None:
    latents = generator.sample_latents(2, generator=torch.Generator().manual_seed(2))
    assert generator.spec.condition in ("class", "prompt")
    other = {**latents, "condition": latents["condition"] + 3.0 * torch.randn_like(latents["condition"])}
    if generator.spec.condition == "class":  # a different soft class vector
        other["condition"] = latents["condition"].flip(-1) * 4.0
    with torch.no_grad():
        assert (generator(latents) - generator(other)).abs().max() > 1e-4


def test_latent_shape_mismatch_is_one_line(generator: Generator) -> None:
    latents = generator.sample_latents(2)
    latents["noise"] = latents["noise"][..., :-1]
    with pytest.raises(ValueError, match="latent noise shape") as error:
        generator(latents)
    assert "\n" not in str(error.value)


def test_soft_class_mixes_the_embedding_table(models: Path) -> None:
    generator = make_consistency(models)
    one_hot = torch.full((1, 5), -1e4)
    one_hot[0, 2] = 1e4
    noise = torch.randn(1, *generator.spec.noise_shape)
    with torch.no_grad():
        soft = generator({"noise": noise, "condition": one_hot})
        embedding = generator.unet.class_embedding
        hard = generator.unet.class_embedding.table(torch.tensor([2]))
        assert torch.allclose(embedding(torch.softmax(one_hot, -1)), hard, atol=1e-5)
    assert soft.shape == (1, 3, 16, 16)


def test_sd_turbo_initial_condition_cycles_class_prompts(models: Path) -> None:
    generator = make_sd(models)
    latents = generator.sample_latents(5)
    assert latents["condition"].shape == (5, 16, 16)
    assert torch.equal(latents["condition"][0], latents["condition"][3])
    assert not torch.equal(latents["condition"][0], latents["condition"][1])


def test_dit_guidance_changes_output(models: Path) -> None:
    plain = make_dit(models)
    guided = build(DiT(model=str(models / "dit"), steps=2, guidance_scale=3.0))
    latents = plain.sample_latents(1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (plain(latents) - guided(latents)).abs().max() > 1e-4


def test_gradient_checkpointing_keeps_gradients(models: Path) -> None:
    generator = build(DiT(model=str(tiny_dit(models / "dit_ckpt")), steps=2, gradient_checkpointing=True))
    assert generator.transformer.is_gradient_checkpointing
    latents = generator.sample_latents(1)
    latents["noise"].requires_grad_(True)
    generator(latents).sum().backward()
    assert latents["noise"].grad.abs().sum() > 0


@pytest.mark.parametrize(
    "config",
    [
        Consistency(model="openai/diffusers-cd_imagenet64_l2"),
        DiT(model="facebook/DiT-XL-2-256"),
        SDTurbo(model="stabilityai/sd-turbo"),
    ],
    ids=lambda config: config.name,
)
def test_missing_weights_offline_is_one_line(config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError) as error:
        build(config)
    assert str(error.value) == (
        f"generator.model: cannot load '{config.model}' offline (not a local directory and not in the Hugging Face"
        " cache); allow the download with -o generator.local_files_only=false, or point generator.model at a local"
        " copy"
    )


def test_biggan_missing_weights_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pytorch_pretrained_biggan import file_utils

    monkeypatch.setattr(file_utils, "PYTORCH_PRETRAINED_BIGGAN_CACHE", tmp_path)
    with pytest.raises(UserError, match="cannot load 'biggan-deep-128' offline"):
        build(BigGAN())


def test_biggan_missing_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pytorch_pretrained_biggan", None)
    with pytest.raises(UserError, match=r"pip install 'metassl\[biggan\]'"):
        build(BigGAN())


def test_local_directory_without_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no 'unet' folder"):
        build(Consistency(model=str(tmp_path)))


def test_unknown_generator_name() -> None:
    with pytest.raises(UserError, match=r"unknown generator 'consistensy'.*did you mean 'consistency'"):
        GENERATORS.get("consistensy")


def test_local_gan_missing_checkpoint_without_pretrain(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no checkpoint at .*metassl pretrain"):
        build(LocalGAN(path=tmp_path / "nothing"))


def test_local_gan_round_trip_is_identical(models: Path, tmp_path: Path) -> None:
    from runner.generators.local_gan import load_local_gan

    first = make_local_gan(models)
    first.model.save_pretrained(tmp_path / "again")
    second = load_local_gan(tmp_path / "again")
    latents = first.sample_latents(4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(first(latents), second(latents))
    assert torch.equal(first.model.centroids, second.model.centroids)


def test_local_gan_source_logits(models: Path) -> None:
    generator = make_local_gan(models)
    generator.model.centroids.copy_(torch.rand_like(generator.model.centroids))
    images = torch.nn.functional.interpolate(generator.model.centroids[[2, 0]], size=28).expand(-1, 3, -1, -1)
    logits = generator.source_logits(images)
    assert logits.shape == (2, 4)
    assert logits.argmax(1).tolist() == [2, 0]


@pytest.mark.parametrize(
    "scheduler",
    [
        {"clip_sample": True},  # DDIMScheduler's default: x0 clamped to [-1, 1]
        {"clip_sample": False, "prediction_type": "v_prediction"},
        {"clip_sample": True, "clip_sample_range": 0.5, "prediction_type": "sample", "set_alpha_to_one": False},
    ],
    ids=["clip", "v_prediction", "sample_no_final_one"],
)
def test_dit_steps_as_diffusers_ddim_with_trailing_spacing(scheduler: dict, tmp_path: Path) -> None:
    """Each step is DDIMScheduler.step's (eta 0) on the trailing timesteps, with the checkpoint's own settings."""
    from diffusers import DDIMScheduler

    root = tiny_dit(tmp_path / "dit")
    DDIMScheduler(**scheduler).save_pretrained(root / "scheduler")
    generator = build(DiT(model=str(root), steps=2))
    latents = generator.sample_latents(2, generator=torch.Generator().manual_seed(0))
    reference = DDIMScheduler(**scheduler, timestep_spacing="trailing")
    reference.set_timesteps(2)
    x, probs = latents["noise"], generator.class_probabilities(latents)
    with torch.no_grad():
        for t in reference.timesteps:
            out = generator.transformer(x, timestep=t.expand(len(x)), class_labels=probs).sample[:, :4]
            x = reference.step(out, t, x).prev_sample
        expected = generator.to_unit_range(generator.vae.decode(x / generator.vae.config.scaling_factor).sample)
        assert torch.allclose(generator(latents), expected.clamp(0.0, 1.0), atol=1e-5)


def test_dit_scheduler_with_thresholding_is_refused_in_one_line(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler

    root = tiny_dit(tmp_path / "dit")
    DDIMScheduler(thresholding=True).save_pretrained(root / "scheduler")
    with pytest.raises(UserError, match=r"its scheduler sets thresholding .* use a checkpoint whose scheduler has"):
        build(DiT(model=str(root), steps=2))
