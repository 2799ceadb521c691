"""The tiny zoo: deterministic offline build, loadable by diffusers, a VAE that responds to latents."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vpt.errors import VptError
from vpt.models import zoo
from vpt.models.dinov2 import dinov2_patch_features
from vpt.models.loading import load_dinov2, load_wan_pipeline, zoo_component

PROMPT = "a red circle moving slowly to the left on a dark background"


def weights(zoo_dir) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted((zoo_dir / "wan").rglob("*.safetensors")):
        for name, tensor in load_file(path).items():
            tensors[f"{path.parent.name}/{name}"] = tensor
    return tensors


@pytest.fixture(scope="module")
def quick_builds(tmp_path_factory):
    """Three quick builds (3 VAE steps): seed 0 twice, seed 1 once."""
    root = tmp_path_factory.mktemp("builds")
    return [zoo.build_tiny_zoo(root / name, seed=seed, vae_steps=3) for name, seed in
            (("a", 0), ("b", 0), ("c", 1))]


def test_same_seed_builds_identical_weights(quick_builds):
    a, b, _ = quick_builds
    first, second = weights(a), weights(b)
    assert {k.split("/")[0] for k in first} == {"transformer", "vae", "text_encoder"}
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (a / "wan/tokenizer/tokenizer.json").read_bytes() == (b / "wan/tokenizer/tokenizer.json").read_bytes()
    for config in ("model_index.json", "vae/config.json", "transformer/config.json", "scheduler/scheduler_config.json"):
        assert (a / "wan" / config).read_text() == (b / "wan" / config).read_text()


def test_dinov2_is_deterministic_from_the_seed(quick_builds):
    a, b, c = (load_file(build / "dinov2" / "model.safetensors") for build in quick_builds)
    assert a.keys() == b.keys() == c.keys() and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (quick_builds[0] / "dinov2/config.json").read_text() == (quick_builds[1] / "dinov2/config.json").read_text()


def test_another_seed_builds_other_weights(quick_builds):
    first, other = weights(quick_builds[0]), weights(quick_builds[2])
    assert first.keys() == other.keys()
    for component in ("transformer", "vae", "text_encoder"):
        assert any(not torch.equal(first[k], other[k]) for k in first if k.startswith(component)), component


def test_build_restores_torch_threads_and_rng(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    zoo.build_tiny_zoo(tmp_path / "z", seed=2, vae_steps=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == 1
    with pytest.raises(VptError, match="already holds a zoo"):
        zoo.build_tiny_zoo(tmp_path / "z", seed=2, vae_steps=1)


def test_layout_and_index(tiny_zoo):
    index = json.loads((tiny_zoo / "zoo.json").read_text())
    assert tiny_zoo.name == f"tiny-v{zoo.ZOO_VERSION}-seed0"
    assert index["zoo_version"] == zoo.ZOO_VERSION and index["seed"] == 0
    assert {"torch", "diffusers", "transformers", "tokenizers"} <= index["versions"].keys()
    wan = index["components"]["wan"]
    assert zoo_component(tiny_zoo, "wan") == tiny_zoo / "wan"
    assert (tiny_zoo / "wan" / "model_index.json").is_file()
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_zoo / "wan" / part).is_dir()
    assert wan["vae_training"]["steps"] == zoo.VAE_STEPS
    assert wan["scheduler"] == {"class": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
    dinov2 = index["components"]["dinov2"]
    assert zoo_component(tiny_zoo, "dinov2") == tiny_zoo / "dinov2"
    assert (tiny_zoo / "dinov2" / "config.json").is_file() and (tiny_zoo / "dinov2" / "model.safetensors").is_file()
    assert dinov2["format"] == "transformers" and dinov2["class"] == "Dinov2Model"
    assert dinov2["patch_size"] == 4 and dinov2["hidden_size"] == 32 and dinov2["parameters"] > 0


def test_trained_vae_reconstructs_and_responds_to_latents(tiny_zoo):
    figures = json.loads((tiny_zoo / "zoo.json").read_text())["components"]["wan"]["vae_training"]
    assert figures["recon_pixel_range"] == "[-1, 1]"
    # measured: 0.0495 trained vs 0.321 untrained (pixel variance of the held-out clips ~0.20)
    assert figures["recon_mse"] < 0.07
    assert figures["recon_mse"] < 0.25 * figures["recon_mse_untrained"]
    # measured: 0.0434 trained vs 0.00048 untrained (a random tiny VAE decodes every latent to one grey)
    assert figures["brightness_spread"] > 0.02
    assert figures["brightness_spread"] > 10 * figures["brightness_spread_untrained"]


def test_normalised_latents_are_roughly_standard(tiny_zoo):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(tiny_zoo / "wan" / "vae").eval()
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == vae.config.z_dim
    videos = zoo._vae_clips(16, seed=99)
    with torch.no_grad():
        latents = vae.encode(videos).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    normalised = (latents - mean) / std
    assert latents.shape == (16, vae.config.z_dim, 3, 4, 4)
    assert normalised.mean().abs() < 0.3 and 0.6 < normalised.std() < 1.5


def test_tokenizer_works_the_way_wan_pipeline_calls_it(tiny_zoo):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_zoo / "wan" / "tokenizer")
    batch = tokenizer([PROMPT, "A Zebra, surfing!"], padding="max_length", max_length=24, truncation=True,
                      add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    assert batch.input_ids.shape == (2, 24)
    lengths = batch.attention_mask.sum(1)
    assert lengths[0] == len(PROMPT.split()) + 1  # toy-world words are single tokens, plus </s>
    assert batch.input_ids[0, lengths[0] - 1] == tokenizer.eos_token_id == 1
    assert (batch.input_ids[0, lengths[0]:] == tokenizer.pad_token_id).all() and tokenizer.pad_token_id == 0
    assert tokenizer.unk_token_id not in batch.input_ids[1].tolist()  # unseen words fall back to characters


def test_diffusers_loads_the_pipeline_and_generates(tiny_zoo):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_zoo / "wan")
    generator = torch.Generator().manual_seed(0)
    latents = pipe(PROMPT, num_frames=9, height=32, width=32, num_inference_steps=4, generator=generator,
                   output_type="latent").frames
    assert latents.shape == (1, 16, 3, 4, 4) and torch.isfinite(latents).all()


def test_load_wan_pipeline_generates_deterministic_videos(tiny_zoo):
    pipe = load_wan_pipeline(tiny_zoo / "wan")
    assert not pipe.transformer.training and not pipe.vae.training and not pipe.text_encoder.training

    def generate(seed):
        generator = torch.Generator().manual_seed(seed)
        return pipe(PROMPT, num_frames=9, height=32, width=32, num_inference_steps=4, generator=generator,
                    output_type="np").frames

    first, again, other = generate(0), generate(0), generate(1)
    assert first.shape == (1, 9, 32, 32, 3) and first.min() >= 0 and first.max() <= 1
    assert (first == again).all()
    assert abs(first - other).max() > 1e-3
    # a zoo directory resolves to its pipeline
    assert load_wan_pipeline(tiny_zoo).transformer.config.in_channels == 16


def test_loader_errors_are_one_line(tmp_path):
    with pytest.raises(VptError) as error:
        load_wan_pipeline(tmp_path)
    assert str(error.value) == (
        f"{tmp_path}: not a diffusers Wan pipeline directory (model_index.json missing); build one with `vpt zoo tiny DIR`"
    )
    with pytest.raises(VptError) as error:
        load_wan_pipeline(tmp_path / "nope")
    assert str(error.value) == (
        f"{tmp_path / 'nope'}: not a diffusers Wan pipeline directory (no such directory); build one with `vpt zoo tiny DIR`"
    )
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(VptError) as error:
        load_wan_pipeline(tmp_path)
    assert "model_index.json names _class_name 'StableDiffusionPipeline', expected 'WanPipeline'" in str(error.value)
    assert "\n" not in str(error.value)


def toy_frames(frames=9, height=32, width=32, seed=0):
    from vpt.toyworld import toy_clips

    return toy_clips(1, seed=seed, frames=frames, height=height, width=width)[0][1]


def test_load_dinov2_gives_deterministic_patch_features(tiny_zoo):
    model = load_dinov2(tiny_zoo)  # a zoo directory resolves to its dinov2
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert type(model).__name__ == "Dinov2Model" and model.config.patch_size == 4
    frames = toy_frames()
    assert frames.shape == (9, 32, 32, 3) and frames.dtype == "uint8"
    features = dinov2_patch_features(model, frames)
    assert features.shape == (9, 8, 8, 32) and features.dtype == torch.float32 and torch.isfinite(features).all()
    again = dinov2_patch_features(load_dinov2(tiny_zoo / "dinov2"), frames, batch_size=2)
    assert torch.allclose(features, again, atol=1e-5)
    assert torch.equal(features, dinov2_patch_features(model, frames))
    assert features.std(dim=(0, 1, 2)).mean() > 1e-3  # the content shows in the features
    # frames that are no whole number of patches are resized to the nearest grid (at least one patch)
    assert dinov2_patch_features(model, toy_frames(3, 30, 42)).shape == (3, 8, 10, 32)
    assert dinov2_patch_features(model, np.zeros((2, 1, 1, 3), dtype=np.uint8)).shape == (2, 1, 1, 32)
    with pytest.raises(ValueError, match="uint8"):
        dinov2_patch_features(model, frames.astype("float32"))


def test_load_dinov2_errors_are_one_line(tmp_path):
    with pytest.raises(VptError) as error:
        load_dinov2(tmp_path / "nope")
    assert str(error.value) == (
        f"{tmp_path / 'nope'}: not a DINOv2 model directory (no such directory); build one with `vpt zoo tiny DIR`"
    )
    with pytest.raises(VptError) as error:
        load_dinov2(tmp_path)
    assert str(error.value) == (
        f"{tmp_path}: not a DINOv2 model directory (config.json missing); build one with `vpt zoo tiny DIR`"
    )
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(VptError, match="names model_type 'clip', expected 'dinov2'") as error:
        load_dinov2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))  # no weights
    with pytest.raises(VptError, match="cannot load the DINOv2 model") as error:
        load_dinov2(tmp_path)
    assert "\n" not in str(error.value)
    old_zoo = tmp_path / "old"
    old_zoo.mkdir()
    (old_zoo / "zoo.json").write_text(json.dumps({"components": {"wan": {"path": "wan"}}}))
    with pytest.raises(VptError, match="this zoo has no dinov2 component") as error:
        load_dinov2(old_zoo)
    assert "\n" not in str(error.value)


def test_cached_tiny_zoo_returns_the_cache_instantly(tiny_zoo):
    assert zoo.cached_tiny_zoo(seed=0, cache_dir=tiny_zoo.parent) == tiny_zoo


def test_cli_tiny_copies_the_cached_build(tiny_zoo, tmp_path, run_vpt, monkeypatch):
    monkeypatch.setattr(zoo, "zoo_cache_root", lambda: tiny_zoo.parent)
    result = run_vpt(["zoo", "tiny", tmp_path / "zoo"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "zoo" / "zoo.json").read_bytes() == (tiny_zoo / "zoo.json").read_bytes()
    assert weights(tmp_path / "zoo").keys() == weights(tiny_zoo).keys()
    assert "recon MSE" in result.stderr and result.stdout == b""
    again = run_vpt(["zoo", "tiny", tmp_path / "zoo"])
    assert again.exit_code == 2
    assert again.stderr == f"vpt: error: {tmp_path / 'zoo'}: exists and is not empty; remove it or choose another directory\n"


def test_zoo_command_module_does_not_import_torch():
    code = "import sys, vpt.commands.zoo; print(sorted({'torch', 'diffusers', 'vpt.models'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_clip_family_is_deterministic_from_the_seed(quick_builds):
    for component, name in (("clip", "model.safetensors"), ("siglip", "model.safetensors")):
        a, b, c = (load_file(build / component / name) for build in quick_builds)
        assert a.keys() == b.keys() == c.keys() and len(a) > 10
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)
    heads = [torch.load(build / "aesthetic" / zoo.AESTHETIC_HEAD_FILE, weights_only=True) for build in quick_builds]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert any(not torch.equal(heads[0][k], heads[2][k]) for k in heads[0])
    for name in ("tokenizer.json", "preprocessor_config.json", "config.json"):
        assert (quick_builds[0] / "clip" / name).read_bytes() == (quick_builds[1] / "clip" / name).read_bytes()


def test_clip_family_layout_and_index(tiny_zoo):
    from transformers import AutoTokenizer

    components = json.loads((tiny_zoo / "zoo.json").read_text())["components"]
    assert {name: components[name]["class"] for name in ("clip", "siglip", "aesthetic")} == {
        "clip": "CLIPModel", "siglip": "SiglipModel", "aesthetic": "CLIPModel"}
    for name in ("clip", "siglip", "aesthetic"):
        assert zoo_component(tiny_zoo, name) == tiny_zoo / name
        for file in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
            assert (tiny_zoo / name / file).is_file(), (name, file)
    assert (tiny_zoo / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth").is_file()
    aesthetic, clip = tiny_zoo / "aesthetic" / "model.safetensors", tiny_zoo / "clip" / "model.safetensors"
    assert aesthetic.read_bytes() == clip.read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(tiny_zoo / "clip")
    assert type(tokenizer).__name__ == "CLIPTokenizer"
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT
    unseen = tokenizer("A Zebra, surfing!")["input_ids"]
    assert tokenizer.unk_token_id not in unseen[1:-1]  # byte-level: no unknowns (CLIP's unk is its end-of-text)
