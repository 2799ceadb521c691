"""The noisy-latent reward model of Flow-NRG on the tiny zoo: cutting the generator, seeds, block limits, the saved
directory round trip, load errors and dimension weights."""

from __future__ import annotations

import json
import re

import pytest
import torch

from vpt.errors import VptError
from vpt.models.latent_reward import (
    cut_generator, load_latent_reward, read_latent_reward_record, save_latent_reward,
)

DIMENSIONS = ["vq", "mq"]
HINT = "train one with `vpt train-reward --kind latent`"


@pytest.fixture(scope="module")
def pipe(tiny_zoo):
    from vpt.models.loading import load_wan_pipeline

    return load_wan_pipeline(tiny_zoo)


@pytest.fixture(scope="module")
def generator(pipe):
    """The tiny zoo's 2-block WanTransformer3DModel."""
    return pipe.transformer


@pytest.fixture(scope="module")
def prompts(pipe):
    """Embeddings [2, L, D] of two different prompts."""
    from vpt.models.wan import encode_prompts

    return encode_prompts(pipe, ["a red ball bouncing on a blue floor", "a green cube resting in the dark"])[0]


def latents(batch=2, seed=0):
    """Noisy latents of 9x32x32 videos: [B, 16, 3, 4, 4]."""
    return torch.randn(batch, 16, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def snapshot(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def score(model, x, sigma, embeds):
    with torch.no_grad():
        return model(x, sigma, embeds)


@pytest.mark.parametrize("blocks", [1, 2])
def test_cut_copies_the_generator_front_and_leaves_it_untouched(generator, prompts, blocks):
    """The trunk holds the generator's patch embedding, condition embedder and first k blocks bit for bit (and no
    later block), has num_layers k and a fresh 32-channel output projection; the generator and the global RNG are
    left as they were; rewards are [B, D] float32, finite, and depend on σ and on the prompt."""
    before = snapshot(generator)
    rng = torch.random.get_rng_state()
    model = cut_generator(generator, blocks, DIMENSIONS, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng)
    after = snapshot(generator)
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    assert generator.config.num_layers == 2 and generator.config.out_channels == 16

    assert model.blocks == blocks and model.trunk.config.num_layers == blocks and len(model.trunk.blocks) == blocks
    assert model.trunk.config.out_channels == 32 and model.dimensions == ("vq", "mq") and not model.training
    trunk = model.trunk.state_dict()
    copied = [name for name in trunk if not name.startswith("proj_out.")]
    assert any(name.startswith("patch_embedding.") for name in copied)
    assert any(name.startswith("condition_embedder.") for name in copied)
    assert {int(name.split(".")[1]) for name in copied if name.startswith("blocks.")} == set(range(blocks))
    for name in copied:
        assert torch.equal(trunk[name], before[name]), name
    assert trunk["proj_out.weight"].shape[0] != before["proj_out.weight"].shape[0]  # fresh, head_channels wide
    assert model.head.weight.shape == (2, 32)

    x, embeds = latents(), prompts
    sigma = torch.tensor([0.5, 0.5])
    rewards = score(model, x, sigma, embeds)
    assert rewards.shape == (2, 2) and rewards.dtype == torch.float32 and torch.isfinite(rewards).all()
    assert not torch.allclose(score(model, x, torch.tensor([0.9, 0.9]), embeds), rewards)
    assert not torch.allclose(score(model, x, sigma, embeds.flip(0)), rewards)
    # the samples of a batch do not interact: each scores as it would alone
    torch.testing.assert_close(score(model, x[:1], sigma[:1], embeds[:1]), rewards[:1], rtol=0, atol=1e-5)


def test_same_seed_same_model_other_seed_other_head(generator, prompts):
    """The seed fixes the fresh output projection and head: the same seed gives an identical model, another seed
    another head and projection over the same copied generator weights."""
    first = cut_generator(generator, 2, DIMENSIONS, seed=0)
    again = cut_generator(generator, 2, DIMENSIONS, seed=0)
    other = cut_generator(generator, 2, DIMENSIONS, seed=1)
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    sigma = torch.tensor([0.3, 0.7])
    assert torch.equal(score(first, latents(), sigma, prompts), score(again, latents(), sigma, prompts))
    assert not torch.equal(a["head.weight"], c["head.weight"])
    assert not torch.equal(a["trunk.proj_out.weight"], c["trunk.proj_out.weight"])
    assert all(torch.equal(a[name], c[name]) for name in a if not name.startswith(("head.", "trunk.proj_out.")))
    assert not torch.allclose(score(first, latents(), sigma, prompts), score(other, latents(), sigma, prompts))


def test_blocks_beyond_the_generator_are_refused_and_the_default_takes_all_it_has(generator):
    """--blocks 3 (or 0) of a 2-block generator is a VptError naming the range; no --blocks cuts min(4, 2) = 2."""
    for blocks in (3, 0):
        with pytest.raises(VptError) as error:
            cut_generator(generator, blocks, DIMENSIONS)
        assert str(error.value) == f"--blocks {blocks}: the generator's transformer has 2 blocks; choose 1 to 2"
    assert cut_generator(generator, None, DIMENSIONS).blocks == 2


def test_save_and_load_round_trip_bit_for_bit(generator, prompts, tmp_path):
    """A saved model loads back (safetensors and JSON only, no pickle) with the same dimensions, blocks, info and
    bit-identical rewards; the record holds kind, version, shape and the extra fields."""
    info = {"generator": "/zoo/wan", "vae_id": "vae-123", "text_encoder_id": "text-456"}
    model = cut_generator(generator, 1, DIMENSIONS, seed=3, info=info)
    save_latent_reward(model, tmp_path / "reward", extra={"note": "round trip"})

    directory = tmp_path / "reward"
    assert (directory / "latent_reward.json").is_file() and (directory / "head.safetensors").is_file()
    assert (directory / "trunk" / "config.json").is_file() and list((directory / "trunk").glob("*.safetensors"))
    files = [path.name for path in directory.rglob("*") if path.is_file()]
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]

    record = read_latent_reward_record(directory)
    assert record == {"kind": "vpt-latent-reward", "version": 1, "dimensions": DIMENSIONS, "blocks": 1,
                      "head_channels": 32, **info, "note": "round trip"}
    assert json.loads((directory / "latent_reward.json").read_text(encoding="utf-8")) == record

    loaded = load_latent_reward(directory)
    assert loaded.dimensions == ("vq", "mq") and loaded.blocks == 1 and not loaded.training
    assert loaded.info == {**info, "note": "round trip"}
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[name], restored[name]) for name in saved)
    sigma = torch.tensor([0.2, 0.8])
    assert torch.equal(score(loaded, latents(seed=5), sigma, prompts), score(model, latents(seed=5), sigma, prompts))


def test_loading_what_is_not_a_latent_reward_model_says_what_to_do(tmp_path):
    """A directory without latent_reward.json, a missing path and a record of another kind are VptErrors that name
    the path, the reason and how to make a model."""
    with pytest.raises(VptError) as error:
        load_latent_reward(tmp_path)
    assert str(error.value) == f"{tmp_path}: not a latent reward model (latent_reward.json missing); {HINT}"

    missing = tmp_path / "nowhere"
    with pytest.raises(VptError) as error:
        load_latent_reward(missing)
    assert str(error.value) == f"{missing}: not a latent reward model (no such directory); {HINT}"

    (tmp_path / "latent_reward.json").write_text(json.dumps({"kind": "other"}), encoding="utf-8")
    message = f"{tmp_path / 'latent_reward.json'}: not a latent reward model record (kind 'other'); {HINT}"
    with pytest.raises(VptError, match=re.escape(message) + "$"):
        load_latent_reward(tmp_path)


def test_weight_vector_orders_weights_by_dimension(generator):
    """Weights by name become a float32 [D] in the model's dimension order (missing names weigh 0); an unknown
    name is a VptError listing the dimensions the model scores."""
    model = cut_generator(generator, 1, DIMENSIONS)
    vector = model.weight_vector({"mq": 2})
    assert vector.dtype == torch.float32 and vector.tolist() == [0.0, 2.0]
    assert model.weight_vector({"mq": 0.5, "vq": -1}).tolist() == [-1.0, 0.5]
    assert model.weight_vector({}).tolist() == [0.0, 0.0]
    with pytest.raises(VptError) as error:
        model.weight_vector({"vq": 1, "ta": 1})
    assert str(error.value) == "the latent reward model has no dimension 'ta'; it scores vq, mq"
