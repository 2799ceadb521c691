"""sample-rollouts end to end on the tiny zoo: stored log-probs recomputed independently in float64, bit-identical
reload, seeding, a LoRA policy, and a damaged directory reported with its path."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vpt.algo.flow_sde import state_indices_of
from vpt.errors import VptError
from vpt.models.loading import load_policy, load_wan_pipeline
from vpt.models.wan import WanVelocity, encode_prompts
from vpt.rollouts.sampling import RolloutOptions, sample_group
from vpt.io.digest import file_digest
from vpt.rollouts.store import load_rollouts

SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "4", "-g", "3", "--guidance", "3", "-q"]
PROMPTS = "a red ball bouncing\na blue cube on green grass\n"


@pytest.fixture(scope="module")
def pipe(tiny_zoo):
    return load_wan_pipeline(tiny_zoo)


@pytest.fixture(scope="module")
def rollouts(run_vpt, tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("rollouts")
    (root / "prompts.txt").write_text(PROMPTS)
    result = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", root / "prompts.txt", "-o", root / "run",
                      "--seed", "7", *SMALL])
    assert result.exit_code == 0, result.stderr
    return root


def test_table_and_files(rollouts, run_vpt):
    rows = pq.read_table(rollouts / "run" / "rollouts.parquet").to_pylist()
    assert [row["id"] for row in rows] == [f"p000{p}@7#{k}" for p in range(2) for k in range(3)]
    assert [row["group_id"] for row in rows] == ["p0000@7"] * 3 + ["p0001@7"] * 3
    assert all(row["recorded_steps"] == [0, 1, 2] and len(row["log_probs"]) == 3 for row in rows)
    assert len({row["seed"] for row in rows}) == 6 and len({row["step_seed"] for row in rows}) == 6
    assert rows[0]["sigmas"][0] == 1.0 and rows[0]["sigmas"][-1] == 0.0 and len(rows[0]["sigmas"]) == 5
    assert {row["embeds_shard"] for row in rows} == {"embeds/p0000.safetensors", "embeds/p0001.safetensors"}
    assert run_vpt(["schema", "check", rollouts / "run" / "rollouts.parquet"]).exit_code == 0
    from vpt.io.video import probe

    info = probe(rollouts / "run" / rows[0]["path"])
    assert (info.frames, info.height, info.width, info.fps) == (9, 32, 32, 16.0)


def test_stored_log_probs_recompute_in_float64(rollouts, pipe):
    loaded = load_rollouts(rollouts / "run")
    for row in loaded.rows:
        states = loaded.states(row)
        embeds, negative = loaded.embeddings(row)
        velocity = WanVelocity(pipe.transformer, embeds, negative, row["guidance"])
        sigmas = row["sigmas"]
        positions = state_indices_of(row["recorded_steps"])
        for step, stored in zip(row["recorded_steps"], row["log_probs"]):
            x = states[positions.index(step)][None]
            x_next = states[positions.index(step + 1)][None].double().numpy()
            with torch.no_grad():
                v = velocity(x, step, torch.tensor(sigmas[step], dtype=torch.float32)).double().numpy()
            x = x.double().numpy()
            s, s_next, a = sigmas[step], sigmas[step + 1], row["noise_level"]
            dt = s_next - s
            std_scale = a * math.sqrt(s / (1 - (sigmas[1] if s >= 1 else s)))
            mean = x + (v + std_scale**2 / (2 * s) * (x + (1 - s) * v)) * dt
            std = std_scale * math.sqrt(-dt)
            expected = np.mean(-((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi))
            assert stored == pytest.approx(expected, abs=1e-4)


def test_reload_is_bit_identical_to_the_sampled_tensors(rollouts, pipe):
    loaded = load_rollouts(rollouts / "run")
    row = loaded.rows[3]
    options = RolloutOptions(group_size=3, steps=4, noise_level=0.7, guidance=3.0, frames=9, height=32, width=32,
                             seed=7)
    embeds, negative = encode_prompts(pipe, [row["prompt"]], guidance=3.0)
    stored_embeds, stored_negative = loaded.embeddings(row)
    assert torch.equal(stored_embeds, embeds) and torch.equal(stored_negative, negative)
    group = sample_group(pipe, embeds, negative, row["prompt_id"], options)
    for k in range(3):
        assert torch.equal(loaded.states(loaded.rows[3 + k]), group.states[k])
        assert torch.equal(loaded.log_probs(loaded.rows[3 + k]), group.log_probs[k])


def test_same_noise_shares_the_start_but_not_the_steps(pipe):
    embeds, negative = encode_prompts(pipe, ["a cat"], guidance=1.0)
    options = RolloutOptions(group_size=3, steps=4, guidance=1.0, frames=9, height=32, width=32, same_noise=True)
    group = sample_group(pipe, embeds, negative, "p", options)
    assert torch.equal(group.states[0, 0], group.states[1, 0]) and torch.equal(group.states[0, 0], group.states[2, 0])
    assert not torch.equal(group.states[0, 1], group.states[1, 1])
    independent = sample_group(pipe, embeds, negative, "p", RolloutOptions(**{**options.__dict__, "same_noise": False}))
    assert not torch.equal(independent.states[0, 0], independent.states[1, 0])
    window = sample_group(pipe, embeds, negative, "p", RolloutOptions(**{**options.__dict__, "sde_window": (1, 3)}))
    assert window.recorded_steps == [1, 2] and window.state_indices == [1, 2, 3] and window.states.shape[1] == 3
    ode = sample_group(pipe, embeds, negative, "p", RolloutOptions(**{**options.__dict__, "noise_level": 0.0}))
    assert ode.recorded_steps == [] and ode.states.shape[1] == 0 and ode.log_probs.shape == (3, 0)


def test_a_lora_policy_changes_the_samples(pipe, tiny_zoo, tmp_path):
    from vpt.train.lora import apply_lora

    adapted = apply_lora(load_wan_pipeline(tiny_zoo).transformer, ["to_q", "to_v"], rank=2, alpha=4.0)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    adapted.save_pretrained(tmp_path / "policy")
    policy, policy_id = load_policy(load_wan_pipeline(tiny_zoo).transformer, tmp_path / "policy")
    assert policy_id.startswith(str((tmp_path / "policy").resolve()) + "#")
    x = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    embeds, _ = encode_prompts(pipe, ["a cat"])
    sigma = torch.tensor(0.5)
    with torch.no_grad():
        base = WanVelocity(pipe.transformer, embeds)(x, 0, sigma)
        ours = WanVelocity(policy, embeds)(x, 0, sigma)
        theirs = WanVelocity(adapted.eval(), embeds)(x, 0, sigma)
    assert torch.equal(ours, theirs) and (ours - base).abs().max() > 1e-3
    with pytest.raises(VptError, match=r"not a LoRA policy checkpoint \(adapter_config.json and "
                                       r"adapter_model.safetensors expected\)"):
        load_policy(pipe.transformer, tmp_path)


def copy_run(rollouts, tmp_path):
    shutil.copytree(rollouts / "run", tmp_path / "run")
    return tmp_path / "run"


def test_missing_and_corrupt_shards_are_named(rollouts, tmp_path):
    run = copy_run(rollouts, tmp_path)
    (run / "latents" / "p0001.safetensors").unlink()
    with pytest.raises(VptError) as error:
        load_rollouts(run)
    assert str(error.value) == (f"{run}/latents/p0001.safetensors: shard missing (used by {run}/rollouts.parquet "
                                f"row 4); sample the rollouts again")

    run = copy_run(rollouts, tmp_path / "flipped")
    shard = run / "latents" / "p0000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(VptError) as error:
        load_rollouts(run)
    assert str(error.value) == (f"{shard}: corrupt shard (size or sha256 differs from shards.json); sample the "
                                f"rollouts again")

    run = copy_run(rollouts, tmp_path / "truncated")
    shard = run / "embeds" / "p0000.safetensors"
    shard.write_bytes(shard.read_bytes()[:20])
    checksums = json.loads((run / "shards.json").read_text())
    with pytest.raises(VptError, match=r"embeds/p0000.safetensors: corrupt shard \(size or sha256"):
        load_rollouts(run)
    checksums["embeds/p0000.safetensors"] = file_digest(shard)
    (run / "shards.json").write_text(json.dumps(checksums))
    with pytest.raises(VptError, match=r"embeds/p0000.safetensors: corrupt shard \("):  # a consistent but broken file
        load_rollouts(run)


def test_bad_options_and_inputs(run_vpt, tiny_zoo, rollouts, tmp_path):
    prompts = rollouts / "prompts.txt"
    exists = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", prompts, "-o", rollouts / "run", *SMALL])
    assert exists.exit_code == 2
    assert exists.stderr == f"vpt: error: {rollouts / 'run'}: already exists; remove it or choose another --out\n"
    window = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", prompts, "-o", tmp_path / "w", "--sde-window",
                      "2:9", *SMALL])
    assert window.stderr == ("vpt: error: --sde-window 2:9: need 0 <= START < END <= steps - 1 = 3 (the last step "
                             "is never stochastic)\n")
    assert run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", prompts, "-o", tmp_path / "w", "--sde-window",
                    "x", *SMALL]).stderr == ("vpt: error: --sde-window x: expected START:END step indices (e.g. 0:5), or "
                                            "progressive or random\n")
    table = tmp_path / "prompts.csv"
    table.write_text("prompt_id,prompt\na,cat\na,dog\n")
    duplicate = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", table, "-o", tmp_path / "d", *SMALL])
    assert duplicate.stderr == (f"vpt: error: {table}: row 2: prompt id 'a' is already used by row 1; give every "
                                f"prompt its own id\n")
    frames = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", prompts, "-o", tmp_path / "f", *SMALL,
                      "--frames", "8"])
    assert frames.exit_code == 2 and "frames must be 1 + a multiple of 4" in frames.stderr
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # nothing half-written


def test_rollouts_feed_score_and_build_prefs(rollouts, run_vpt, tmp_path):
    table = rollouts / "run" / "rollouts.parquet"
    scored = run_vpt(["score", "-q", "-m", "brightness", table, "-o", tmp_path / "scores.parquet"])
    assert scored.exit_code == 0, scored.stderr
    scores = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    assert [row["group_id"] for row in scores] == ["p0000@7"] * 3 + ["p0001@7"] * 3 and scores[0]["error"] is None
    built = run_vpt(["build-prefs", "--from-scores", tmp_path / "scores.parquet", "--videos", table, "-o",
                     tmp_path / "prefs.parquet"])
    assert built.stderr == "build-prefs: 2 pairs from 2 groups (by group_id)\n"


def test_final_latents_decode_to_the_videos_exactly(pipe):
    """``GroupRollout.latents`` are the final states the videos were decoded from: decoding them again gives the
    group's uint8 videos bit for bit."""
    from vpt.models.wan import decode_latents, latent_shape, to_uint8

    embeds, negative = encode_prompts(pipe, ["a red ball bouncing"], guidance=3.0)
    options = RolloutOptions(group_size=3, steps=4, guidance=3.0, frames=9, height=32, width=32, seed=2,
                             batch_size=2)
    group = sample_group(pipe, embeds, negative, "p", options)
    assert group.latents.shape == (3, *latent_shape(pipe, 9, 32, 32)) and group.latents.dtype == torch.float32
    assert np.array_equal(to_uint8(decode_latents(pipe, group.latents[:2])), group.videos[:2])
    assert np.array_equal(to_uint8(decode_latents(pipe, group.latents[2:])), group.videos[2:])
    assert not torch.equal(group.latents[0], group.latents[1])


def test_rollouts_record_each_sample_final_latent(rollouts, pipe):
    """Every row names its final latent in the latents shard: the sampler's final state (resampled bit-identically)
    of shape [C, F, h, w], which decodes to the row's mp4 up to its compression."""
    from vpt.io.video import read_frames
    from vpt.models.wan import decode_latents, to_uint8

    loaded = load_rollouts(rollouts / "run")
    assert [row["final_latents_key"] for row in loaded.rows] == [f"final-{k}" for _ in range(2) for k in range(3)]
    for row in loaded.rows:
        latent = loaded.final_latent(row)
        assert latent.shape == (16, 3, 4, 4) and latent.dtype == torch.float32
        decoded = to_uint8(decode_latents(pipe, latent[None]))[0].astype(np.int16)
        frames = read_frames(rollouts / "run" / row["path"]).astype(np.int16)
        assert decoded.shape == frames.shape == (9, 32, 32, 3)
        assert np.abs(decoded - frames).mean() < 4, (row["id"], np.abs(decoded - frames).mean())
    options = RolloutOptions(group_size=3, steps=4, noise_level=0.7, guidance=3.0, frames=9, height=32, width=32,
                             seed=7)
    row = loaded.rows[3]
    embeds, negative = loaded.embeddings(row)
    group = sample_group(pipe, embeds, negative, row["prompt_id"], options)
    for k in range(3):
        assert torch.equal(loaded.final_latent(loaded.rows[3 + k]), group.latents[k])


def test_rollouts_written_before_final_latents_still_load(rollouts, run_vpt, tmp_path):
    """A rollouts table without the ``final_latents_key`` column (older runs) loads and checks as before; its rows
    have no final latent."""
    run = copy_run(rollouts, tmp_path)
    table = pq.read_table(run / "rollouts.parquet")
    older = table.drop_columns(["final_latents_key"]).replace_schema_metadata(table.schema.metadata)
    pq.write_table(older, run / "rollouts.parquet")
    assert "final_latents_key" not in pq.read_schema(run / "rollouts.parquet").names
    assert run_vpt(["schema", "check", run / "rollouts.parquet"]).exit_code == 0
    loaded = load_rollouts(run)
    assert len(loaded.rows) == 6
    assert all(loaded.final_latent(row) is None for row in loaded.rows)
    assert torch.equal(loaded.states(loaded.rows[0]), load_rollouts(rollouts / "run").states(loaded.rows[0]))
