"""``vpt guide``: Flow-NRG sampling from the command line — same noises as ``sample-rollouts``, scale 0 is unguided
sampling bit for bit, classifier-free guidance composes with reward guidance, the table records how each video was
made, and bad input gets one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vpt.io.tables import read_table
from vpt.io.video import read_frames

SAMPLER = ["--steps", "4", "--frames", "9", "--height", "32", "--width", "32"]
PROMPTS = "a red square moving left\na blue circle standing still\n"


@pytest.fixture(scope="module")
def guide_world(tiny_zoo, tmp_path_factory):
    """A latent reward model (vq, mq) cut from the zoo's generator with its head trained a little off zero, so its
    gradient is not degenerate, and a prompts file."""
    from vpt.models.latent_reward import cut_generator, save_latent_reward
    from vpt.models.loading import load_wan_transformer, resolve_wan_directory
    from vpt.encoding.cache import EncodedCache

    root = tmp_path_factory.mktemp("guide")
    wan = resolve_wan_directory(tiny_zoo)
    store = EncodedCache(root / "cache")
    info = {"generator": str(wan), "vae_id": store.component_identity(wan / "vae"),
            "text_encoder_id": store.component_identity(wan / "text_encoder", wan / "tokenizer")}
    model = cut_generator(load_wan_transformer(tiny_zoo), 2, ["vq", "mq"], seed=3, info=info)
    save_latent_reward(model, root / "rm")
    (root / "prompts.txt").write_text(PROMPTS)
    return root


@pytest.fixture(autouse=True)
def private_cache(guide_world, monkeypatch):
    monkeypatch.setenv("VPT_CACHE_DIR", str(guide_world / "cache-root"))


def guide(run_vpt, zoo, world: Path, out: Path, *extra):
    return run_vpt(["guide", "-m", zoo, "--reward", world / "rm", "--prompts", world / "prompts.txt", "-n", "2",
                    *SAMPLER, "-o", out, "--quiet", *extra])




@pytest.mark.parametrize("cfg", ["1", "3"])
def test_scale_zero_is_sample_rollouts_bit_for_bit(run_vpt, tiny_zoo, guide_world, tmp_path, cfg):
    """Same prompts, seed and sampler: guide --scale 0 ends in the very latents sample-rollouts (ODE) records, with
    and without classifier-free guidance — its table's reward scores of the final latents equal the reward model's
    scores of the recorded ones exactly — and a positive scale changes them. (The mp4s are not compared byte for
    byte: x264 was seen to encode identical frames differently now and then.)"""
    from vpt.models.latent_reward import load_latent_reward
    from vpt.rollouts.store import load_rollouts

    unguided = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", guide_world / "prompts.txt", "-g", "2",
                        "--noise-level", "0", "--guidance", cfg, "--seed", "5", *SAMPLER, "-o", tmp_path / "roll",
                        "--quiet"])
    assert unguided.exit_code == 0, unguided.stderr
    tables = {}
    for scale in ("0", "2"):
        result = guide(run_vpt, tiny_zoo, guide_world, tmp_path / f"g{scale}", "--scale", scale, "--guidance", cfg,
                       "--seed", "5", "--weights", "vq=1")
        assert result.exit_code == 0, result.stderr
        tables[scale] = read_table(tmp_path / f"g{scale}" / "videos.parquet").to_pylist()
    rollouts = load_rollouts(tmp_path / "roll")
    reward = load_latent_reward(guide_world / "rm")
    assert [row["id"] for row in rollouts.rows] == [row["id"] for row in tables["0"]] == \
        [row["id"] for row in tables["2"]]
    for first in range(0, len(rollouts.rows), 2):  # a prompt's two samples, scored in one batch as guide does
        group = rollouts.rows[first:first + 2]
        latents = torch.stack([rollouts.final_latent(row) for row in group])
        embeds, _ = rollouts.embeddings(group[0])
        with torch.no_grad():
            expected = reward(latents, torch.zeros(2), embeds.expand(2, -1, -1))
        for k, (at_zero, guided) in enumerate(zip(tables["0"][first:first + 2], tables["2"][first:first + 2])):
            assert (at_zero["nrg_vq"], at_zero["nrg_mq"]) == (float(expected[k, 0]), float(expected[k, 1]))
            assert guided["nrg_vq"] > at_zero["nrg_vq"]


def test_scale_zero_never_runs_the_reward(tiny_zoo):
    """At library level: the group sampled with a scale-0 steer has the very latents and videos of the plain one,
    and the reward model is never called."""
    from vpt.models.loading import load_wan_pipeline
    from vpt.models.wan import encode_prompts
    from vpt.rollouts.guided import reward_steer
    from vpt.rollouts.sampling import RolloutOptions, sample_group

    def refuse(*args):
        raise AssertionError("the reward ran at scale 0")

    pipe = load_wan_pipeline(tiny_zoo)
    options = RolloutOptions(group_size=2, steps=4, noise_level=0.0, guidance=3.0, frames=9, height=32, width=32)
    embeds, negative = encode_prompts(pipe, ["a red square"], guidance=3.0)
    plain = sample_group(pipe, embeds, negative, "p", options)
    steered = sample_group(pipe, embeds, negative, "p", options, steer=reward_steer(refuse, torch.ones(2), 0.0))
    assert torch.equal(plain.latents, steered.latents)
    assert np.array_equal(plain.videos, steered.videos)


def test_the_table_records_how_each_video_was_made(run_vpt, tiny_zoo, guide_world, tmp_path):
    """videos.parquet (schema videos) names the weights of every dimension, the scale, the reward model, policy,
    generator and sampler, and the reward model's scores of the final latent."""
    result = run_vpt(["guide", "-m", tiny_zoo, "--reward", guide_world / "rm", "--prompts",
                      guide_world / "prompts.txt", "-n", "2", *SAMPLER, "--weights", "mq=0.25", "--scale", "1.5",
                      "--guidance", "2", "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"guide: 4 videos of 2 prompts (scale 1.5, weights "
                                                      f"vq=0,mq=0.25) in {tmp_path / 'out'}")
    rows = read_table(tmp_path / "out" / "videos.parquet", "videos").to_pylist()
    assert [row["id"] for row in rows] == ["p0000@0#0", "p0000@0#1", "p0001@0#0", "p0001@0#1"]
    first = rows[0]
    assert first["path"] == "videos/p0000-000.mp4" and first["prompt"] == "a red square moving left"
    assert (first["guidance_scale"], first["guidance_weights"], first["cfg_scale"], first["steps"]) == \
        (1.5, "vq=0,mq=0.25", 2.0, 4)
    assert first["reward_model"] == str((guide_world / "rm").resolve())
    assert first["policy_id"] == "base" and first["noise_level"] == 0.0
    assert (first["frames"], first["height"], first["width"], first["fps"]) == (9, 32, 32, 16.0)
    assert all(np.isfinite(row["nrg_vq"]) and np.isfinite(row["nrg_mq"]) for row in rows)
    assert read_frames(tmp_path / "out" / first["path"]).shape == (9, 32, 32, 3)


def test_weights_trade_dimensions_off(run_vpt, tiny_zoo, guide_world, tmp_path):
    """Weight on one dimension raises the reward model's own score of that dimension on the final latent, against
    the unguided videos of the same noises."""
    scores = {}
    for name, weights, scale in (("none", "vq=1", "0"), ("vq", "vq=1", "3"), ("mq", "mq=1", "3")):
        result = guide(run_vpt, tiny_zoo, guide_world, tmp_path / name, "--weights", weights, "--scale", scale)
        assert result.exit_code == 0, result.stderr
        rows = read_table(tmp_path / name / "videos.parquet").to_pylist()
        scores[name] = {dim: np.array([row[f"nrg_{dim}"] for row in rows]) for dim in ("vq", "mq")}
    assert (scores["vq"]["vq"] > scores["none"]["vq"]).all()
    assert (scores["mq"]["mq"] > scores["none"]["mq"]).all()


@pytest.mark.parametrize("args, message", [
    (["--weights", "ta=1"], "--weights names 'ta', but the latent reward model scores vq, mq; weight those"),
    (["--weights", "vq=x"], "--weights vq=x: expected DIM=WEIGHT,... with finite weights and each dimension once "
                            "(e.g. vq=0.1,mq=0.1,ta=0.8)"),
    (["--scale", "-1"], "--scale must be a finite number >= 0, got -1.0"),
    (["--frames", "8"], "--frames 8 --height 32 --width 32: frames must be 1 + a multiple of 4 (e.g. 5, 17), got 8"),
    (["--samples", "0"], "--samples 0: give at least 1 sample per prompt"),
])
def test_bad_options_get_one_line(run_vpt, tiny_zoo, guide_world, tmp_path, args, message):
    """One line naming the option and what to do, exit code 2, nothing written."""
    result = guide(run_vpt, tiny_zoo, guide_world, tmp_path / "out", *args)
    assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_reward_model_of_another_vae_is_refused(run_vpt, tiny_zoo, guide_world, tmp_path):
    """A reward model trained on another VAE's latents would steer along meaningless directions: refused."""
    import shutil

    from vpt.models.loading import resolve_wan_directory

    other = tmp_path / "rm"
    shutil.copytree(guide_world / "rm", other)
    record = json.loads((other / "latent_reward.json").read_text())
    record["vae_id"] = "0" * 16
    (other / "latent_reward.json").write_text(json.dumps(record))
    result = run_vpt(["guide", "-m", tiny_zoo, "--reward", other, "--prompts", guide_world / "prompts.txt",
                      *SAMPLER, "-o", tmp_path / "out"])
    wan = resolve_wan_directory(tiny_zoo)
    assert (result.exit_code, result.stderr) == (2, (
        f"vpt: error: the latent reward model was trained on another VAE (its latents) than the generator {wan} "
        f"has; train one on this generator (vpt train-reward --kind latent --model {wan})\n"))


def test_missing_reward_model_and_existing_output(run_vpt, tiny_zoo, guide_world, tmp_path):
    """Not a reward model directory; an output that exists already."""
    result = run_vpt(["guide", "-m", tiny_zoo, "--reward", tmp_path / "nothing", "--prompts",
                      guide_world / "prompts.txt", "-o", tmp_path / "out"])
    assert (result.exit_code, result.stderr) == (2, (
        f"vpt: error: {tmp_path / 'nothing'}: not a latent reward model (no such directory); train one with "
        "`vpt train-reward --kind latent`\n"))
    (tmp_path / "out").mkdir()
    result = guide(run_vpt, tiny_zoo, guide_world, tmp_path / "out")
    assert (result.exit_code, result.stderr) == (
        2, f"vpt: error: {tmp_path / 'out'}: already exists; remove it or choose another --out\n")
