"""vpt dpo end to end on the tiny zoo: the policy checkpoint (grpo-step's layout, loadable by peft and diffusers),
exact resume (from a finished checkpoint and from an interrupted run), joint vs gradient-decoupled steps, β schedules
and references, stages chained in any order, and bad inputs with exact messages."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from vpt.io.tables import read_table, write_table
from vpt.train.policy import read_policy_metrics as metrics

CHECKPOINT_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors", "config.json",
                    "metrics.parquet", "optimizer.pt", "policy.json", "pytorch_lora_weights.safetensors",
                    "rng_state.pt", "scheduler.pt", "trainer_state.json"}
ROLLOUTS = ["-g", "3", "--seed", "5", "--frames", "9", "--height", "32", "--width", "32", "--steps", "4",
            "--guidance", "3", "-q"]


@pytest.fixture(scope="module")
def world(run_vpt, tiny_zoo, tmp_path_factory):
    """8 toy clips (9x32x32), 4 labelled pairs plus a tie and an invalid label, and the policy `d1` of 2 DPO steps."""
    from vpt.toyworld import write_toy_videos

    root = tmp_path_factory.mktemp("dpo")
    clips = read_table(write_toy_videos(root, n=8, seed=0, frames=9, height=32, width=32), "videos").to_pylist()
    pairs = [pair(f"p{i}", clips[i], clips[i + 1], "a" if clips[i]["brightness"] > clips[i + 1]["brightness"]
                  else "b") for i in range(0, 8, 2)]
    pairs.insert(2, pair("tie", clips[0], clips[2], "tie"))
    pairs.append(pair("invalid", clips[1], clips[3], "invalid"))
    write_table(pairs, root / "prefs.parquet", "prefs")
    dpo(run_vpt, tiny_zoo, root, "d1")
    return root


def pair(pair_id, a, b, label):
    return {"pair_id": pair_id, "path_a": a["path"], "path_b": b["path"], "prompt": a["prompt"], "overall": label}


def dpo(run_vpt, zoo, root, out, *extra, steps=2):
    """Run `vpt dpo` on the world's pairs into root/out; assert it succeeded."""
    result = run_vpt(["dpo", "--model", zoo, "--prefs", root / "prefs.parquet", "--max-steps", str(steps), "--lr",
                      "1e-3", "--log-every", "1", "--cache", root / "cache", "-o", root / out, "-q", *extra])
    assert result.exit_code == 0, result.stderr
    return root / out


def adapter(checkpoint) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "adapter_model.safetensors"))


def test_dpo_writes_a_policy_checkpoint_in_the_shared_layout(world, tiny_zoo):
    d1 = world / "d1"
    assert {p.name for p in d1.iterdir()} == CHECKPOINT_FILES
    assert not (world / "d1.run").exists()
    info = json.loads((d1 / "policy.json").read_text())
    assert (info["stage"], info["step"], info["parent"]) == ("dpo", 2, "base")
    assert info["model"] == str((tiny_zoo / "wan").resolve())
    assert info["data"] == str((world / "prefs.parquet").resolve())
    assert {key: info["dpo"][key] for key in ("dimension", "beta", "beta_schedule", "decoupled", "reference")} == \
        {"dimension": "overall", "beta": 5000.0, "beta_schedule": "constant", "decoupled": False,
         "reference": "policy"}
    assert json.loads((d1 / "trainer_state.json").read_text())["step"] == 2
    table = metrics(d1)
    assert (table[(None, "pairs")], table[(None, "skipped_ties")], table[(None, "skipped_invalid")]) == (4, 1, 1)
    for step in (1, 2):
        for name in ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "chosen_error",
                     "reference_chosen_error", "grad_norm"):
            assert (step, name) in table, (step, name)
    # the fresh LoRA is the generator at step 0: no implicit reward yet, the loss is log 2
    assert table[(1, "chosen_reward")] == table[(1, "rejected_reward")] == table[(1, "margin")] == 0.0
    assert table[(1, "loss")] == pytest.approx(0.6931472)
    assert table[(2, "chosen_reward")] != 0.0


def test_the_policy_loads_through_peft_and_diffusers_alike(world, tiny_zoo):
    from vpt.models.loading import load_policy, load_wan_pipeline

    policy, _ = load_policy(load_wan_pipeline(tiny_zoo).transformer, world / "d1")
    pipe = load_wan_pipeline(tiny_zoo)
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 3, 4, 4, generator=generator), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=generator), return_dict=False)
    with torch.no_grad():
        before = pipe.transformer(**inputs)[0]
        pipe.load_lora_weights(world / "d1")
        loaded = pipe.transformer(**inputs)[0]
        expected = policy(**inputs)[0]
    assert not torch.allclose(before, expected)  # two steps moved the adapter
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-6)


def test_resuming_a_finished_checkpoint_equals_training_straight_on(run_vpt, world, tiny_zoo):
    # batch 2 of 4 pairs: step 1 stops inside epoch 0 and the resumed part crosses into epoch 1 (new noise)
    common = ["--batch-size", "2", "--save-every", "0"]
    straight = dpo(run_vpt, tiny_zoo, world, "straight", *common, steps=4)
    first = dpo(run_vpt, tiny_zoo, world, "first", *common, steps=1)
    resumed = dpo(run_vpt, tiny_zoo, world, "resumed", *common, "--resume", first, steps=4)
    assert (resumed / "adapter_model.safetensors").read_bytes() == (straight / "adapter_model.safetensors").read_bytes()
    assert json.loads((resumed / "trainer_state.json").read_text())["step"] == 4
    assert json.loads((resumed / "policy.json").read_text())["parent"] == "base"
    # the published metrics cover the whole training: step 1 from the finished checkpoint, 2-4 from the resumed run
    def measured(checkpoint):  # everything but the throughput
        return {key: value for key, value in metrics(checkpoint).items() if key[1] != "examples_per_s"}

    assert measured(resumed) == measured(straight)
    # each epoch meets every pair once, with noise levels drawn anew: the epochs' mean sigma differ
    sigma = {step: value for (step, name), value in metrics(straight).items() if name == "sigma"}
    assert abs((sigma[1] + sigma[2]) - (sigma[3] + sigma[4])) > 1e-3


def test_an_interrupted_run_resumes_to_the_same_weights(run_vpt, world, tiny_zoo, monkeypatch):
    from vpt.stages.dpo import FlowDpoTask

    common = ["--save-every", "2"]
    straight = dpo(run_vpt, tiny_zoo, world, "straight-2", *common, steps=4)
    original, calls = FlowDpoTask.__call__, []

    def interrupted(self, model, batch, backward):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C during step 3, after checkpoint-2 was saved
            raise KeyboardInterrupt
        return original(self, model, batch, backward)

    monkeypatch.setattr(FlowDpoTask, "__call__", interrupted)
    command = ["dpo", "--model", tiny_zoo, "--prefs", world / "prefs.parquet", "--max-steps", "4", "--lr", "1e-3",
               "--log-every", "1", "--cache", world / "cache", "-o", world / "cut", "-q", *common]
    assert run_vpt(command).exit_code == 130
    monkeypatch.setattr(FlowDpoTask, "__call__", original)
    run = world / "cut.run"
    assert not (world / "cut").exists() and (run / "checkpoint-2").is_dir()

    refused = run_vpt(command)
    assert (refused.exit_code, refused.stderr) == (
        2, f"vpt: error: {run}: holds an unfinished run of {world / 'cut'}; continue it with --resume {run}, or "
           "remove it\n")
    assert run_vpt([*command, "--resume", run]).exit_code == 0
    assert not run.exists()
    cut = world / "cut"
    assert (cut / "adapter_model.safetensors").read_bytes() == (straight / "adapter_model.safetensors").read_bytes()
    # the metrics of steps 1-2 (before the cut) and 3-4 (after) read like one run's
    losses = {key: value for key, value in metrics(cut).items() if key[1] == "loss"}
    assert losses == {key: value for key, value in metrics(straight).items() if key[1] == "loss"}
    assert sorted(step for step, _ in losses) == [1, 2, 3, 4]


def test_joint_and_decoupled_steps_train_the_same_adapter(run_vpt, world, tiny_zoo):
    from peft import get_peft_model_state_dict

    from vpt.models.loading import load_wan_transformer
    from vpt.train.policy import DEFAULT_LORA_TARGETS, new_policy

    joint = world / "d1"
    decoupled = dpo(run_vpt, tiny_zoo, world, "d1-decoupled", "--decoupled")
    # the first gradient (before clipping) is equal up to float32 summation order: nothing has amplified it yet
    assert metrics(decoupled)[(1, "grad_norm")] == pytest.approx(metrics(joint)[(1, "grad_norm")], rel=1e-5)
    assert metrics(decoupled)[(1, "margin")] == metrics(joint)[(1, "margin")] == 0.0
    initial = {key.replace(".default", ""): value for key, value in get_peft_model_state_dict(
        new_policy(load_wan_transformer(tiny_zoo), DEFAULT_LORA_TARGETS, 8, 16.0, 0)).items()}
    first, second = adapter(joint), adapter(decoupled)
    # Adam turns a gradient g with |g| near its eps into a step of lr*g/(|g| + eps), so float32 rounding differences
    # in the tiny cross-attention gradients (block 1's attn2.to_q, whose gradients are ~1e-8) can move single
    # elements by up to a step: measured on 4 of 8,640 elements, 1.0% of the update's norm (6e-5 with the toy clips
    # of another x264 setting); a wrong gradient (a lost branch, a sign, another eta) moves most elements by a whole
    # step, lr
    update = torch.cat([(first[key] - initial[key]).flatten() for key in first])
    difference = torch.cat([(second[key] - first[key]).flatten() for key in first])
    assert update.abs().max() > 1e-3  # lr 1e-3, two steps
    assert (difference.abs() > 5e-2 * 1e-3).float().mean() < 1e-3  # 999 of 1000 elements within 5% of a step
    assert difference.norm() < 2e-2 * update.norm()


def test_the_timestep_beta_schedule_scales_the_implicit_reward(run_vpt, world, tiny_zoo):
    constant, timestep = world / "d1", dpo(run_vpt, tiny_zoo, world, "d1-timestep", "--beta-schedule", "timestep")
    assert json.loads((timestep / "policy.json").read_text())["dpo"]["beta_schedule"] == "timestep"
    a, b = metrics(constant), metrics(timestep)
    # at step 1 the implicit reward is 0, so beta only scales the gradient, which clipping (its norm is >> 1) undoes:
    # both runs take the same first step, and at step 2 beta_t = beta*(1 - sigma)^2 scales the same error gaps
    assert a[(1, "grad_norm")] > 10 and b[(1, "grad_norm")] > 10
    assert a[(2, "sigma")] == b[(2, "sigma")]
    ratio = (1 - b[(2, "sigma")]) ** 2
    for name in ("chosen_reward", "rejected_reward", "margin"):
        assert b[(2, name)] == pytest.approx(ratio * a[(2, name)], rel=1e-3), name


def test_with_a_fresh_lora_both_references_are_the_generator(run_vpt, world, tiny_zoo):
    base = dpo(run_vpt, tiny_zoo, world, "d1-base", "--reference", "base")
    assert (base / "adapter_model.safetensors").read_bytes() == \
        (world / "d1" / "adapter_model.safetensors").read_bytes()


def test_stages_chain_in_any_order(run_vpt, world, tiny_zoo):
    # sft -> dpo --policy sft
    sft = world / "sft"
    result = run_vpt(["sft", "--model", tiny_zoo, "--data", world / "videos.parquet", "--max-steps", "2", "--lr",
                      "1e-2", "--cache", world / "cache", "-o", sft, "-q"])
    assert result.exit_code == 0, result.stderr
    from_sft = dpo(run_vpt, tiny_zoo, world, "dpo-sft", "--policy", sft)
    info = json.loads((from_sft / "policy.json").read_text())
    assert info["parent"] == f"{sft.resolve()}#{_digest(sft)}" and info["dpo"]["lora"] == "parent"
    fresh, parent, base = metrics(world / "d1"), metrics(from_sft), metrics(
        dpo(run_vpt, tiny_zoo, world, "dpo-sft-base", "--policy", sft, "--reference", "base"))
    # the same pair and noise at step 1: the policy starts as the sft adapter (not the generator, whose errors the
    # fresh run d1 shows), the default reference is that adapter too, and --reference base is the generator
    assert parent[(1, "chosen_error")] != fresh[(1, "chosen_error")]
    assert parent[(1, "reference_chosen_error")] == parent[(1, "chosen_error")]
    assert parent[(1, "reference_rejected_error")] == parent[(1, "rejected_error")]
    assert base[(1, "chosen_error")] == parent[(1, "chosen_error")]
    assert base[(1, "reference_chosen_error")] == pytest.approx(fresh[(1, "chosen_error")], rel=1e-6)
    assert base[(1, "margin")] != 0.0

    # dpo -> sample-rollouts --policy dpo, score, grpo-step --policy dpo: a new stage, a fresh optimizer
    (world / "prompts.txt").write_text("a red ball bouncing\na white ring on a dark floor\n")
    for command in (["sample-rollouts", "-m", tiny_zoo, "--policy", from_sft, "--prompts", world / "prompts.txt",
                     "-o", world / "r", *ROLLOUTS],
                    ["score", world / "r" / "rollouts.parquet", "-m", "brightness", "-o", world / "r.scores.parquet",
                     "-q"],
                    ["grpo-step", "--policy", from_sft, "--rollouts", world / "r", "--scores",
                     world / "r.scores.parquet", "--reward", "brightness", "--lr", "1e-2", "-o", world / "grpo",
                     "-q"]):
        result = run_vpt(command)
        assert result.exit_code == 0, result.stderr
    grpo = world / "grpo"
    info = json.loads((grpo / "policy.json").read_text())
    assert (info["stage"], info["iteration"], info["step"]) == ("grpo", 1, 1)
    assert info["parent"] == f"{from_sft.resolve()}#{_digest(from_sft)}"
    assert json.loads((grpo / "trainer_state.json").read_text())["step"] == 1
    assert {int(state["step"]) for state in torch.load(grpo / "optimizer.pt", weights_only=True)["state"].values()} \
        == {1}

    # grpo-step -> sft --policy grpo: the adapter carries over (a learning rate too small to move it)
    result = run_vpt(["sft", "--policy", grpo, "--data", world / "videos.parquet", "--max-steps", "1", "--lr",
                      "1e-12", "--cache", world / "cache", "-o", world / "sft-grpo", "-q"])
    assert result.exit_code == 0, result.stderr
    info = json.loads((world / "sft-grpo" / "policy.json").read_text())
    assert (info["stage"], info["parent"]) == ("sft", f"{grpo.resolve()}#{_digest(grpo)}")
    assert info["model"] == str((tiny_zoo / "wan").resolve())
    continued, start = adapter(world / "sft-grpo"), adapter(grpo)
    assert continued.keys() == start.keys()
    for key in start:
        torch.testing.assert_close(continued[key], start[key], rtol=0, atol=1e-9)


def _digest(checkpoint) -> str:
    from vpt.models.loading import policy_digest

    return policy_digest(checkpoint)


def test_bad_inputs_get_one_line_and_exit_2(run_vpt, world, tiny_zoo, tmp_path):
    from vpt.toyworld import write_toy_videos

    small = read_table(world / "videos.parquet", "videos").to_pylist()
    big = read_table(write_toy_videos(tmp_path / "big", n=2, seed=1, frames=9, height=48, width=32),
                     "videos").to_pylist()
    for clip in big:
        clip["path"] = str(tmp_path / "big" / clip["path"])
    for clip in small:
        clip["path"] = str(world / clip["path"])

    def prefs(name, rows):
        write_table(rows, tmp_path / name, "prefs")
        return tmp_path / name

    good = pair("p0", small[0], small[1], "a")
    missing = prefs("missing.parquet", [good, pair("p1", small[2], {**small[3], "path": "clips/gone.mp4"}, "b")])
    ties = prefs("ties.parquet", [pair(f"t{i}", small[i], small[i + 1], "tie") for i in range(3)])
    within = prefs("within.parquet", [pair("p0", small[0], big[1], "a")])
    across = prefs("across.parquet", [good, pair("p1", big[0], big[1], "b")])
    no_prompt = prefs("no-prompt.parquet", [{**good, "prompt": None}])
    table = pq.read_table(world / "prefs.parquet")
    newer = tmp_path / "v99.parquet"
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"vpt.schema_version": b"99"}), newer)
    exists = tmp_path / "exists"
    exists.mkdir()
    cases = [
        (missing, [], f"{missing}: row 2: path_b clips/gone.mp4 does not exist; fix the path or drop the pair"),
        (ties, [], f"{ties}: no pair has a preferred side for --dim overall (3 ties, 0 invalid or unlabelled); DPO "
                   "needs pairs labelled a or b"),
        (within, [], f"{within}: row 1: the clips have different sizes (chosen toy-0000.mp4 is 9×32×32, rejected "
                     "toy-0001.mp4 is 9×48×32); both clips of a pair share noise, pass --frames/--height/--width to "
                     "resample every clip to one size"),
        (across, [], f"{across}: row 2: clips are 9×48×32, those of {across}: row 1 are 9×32×32; pass "
                     "--frames/--height/--width to resample every clip to one size"),
        (newer, [], f"{newer}: was written with schema prefs v99, this vpt reads prefs v1; convert it with the vpt "
                    "version that wrote it or regenerate it"),
        (world / "prefs.parquet", ["--dim", "vq"],
         f"{world / 'prefs.parquet'}: has no 'vq' label column; choose --dim among overall"),
        (no_prompt, [], f"{no_prompt}: row 1: no prompt; DPO conditions both clips on the prompt they answer, give "
                        "one"),
        (world / "prefs.parquet", ["-o", exists], f"{exists}: already exists; remove it or choose another --out"),
        (world / "prefs.parquet", ["--frames", "9"],
         "give --frames, --height and --width together (the size every clip is resampled to)"),
        (world / "prefs.parquet", ["--beta-schedule", "sigma"], "--beta-schedule sigma: choose one of constant, "
                                                                "timestep"),
        (world / "prefs.parquet", ["--resume", tmp_path / "nothing"],
         f"{tmp_path / 'nothing'}: holds no checkpoint to resume from; give the OUT.run of an interrupted run, one "
         "of its checkpoint-N directories, or a finished checkpoint of this stage"),
    ]
    for source, extra, message in cases:
        result = run_vpt(["dpo", "--model", tiny_zoo, "--prefs", source, "--max-steps", "1", "--cache",
                          tmp_path / "cache", "-o", tmp_path / "out", "-q", *extra])
        assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n"), extra or source
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.run").exists()
    # every case is refused before a clip is encoded
    assert not (tmp_path / "cache").exists() and list(exists.iterdir()) == []


def test_a_resume_of_another_parent_stage_or_batch_is_refused(run_vpt, world, tiny_zoo, tmp_path):
    sft = tmp_path / "sft"
    result = run_vpt(["sft", "--model", tiny_zoo, "--data", world / "videos.parquet", "--max-steps", "1", "--cache",
                      world / "cache", "-o", sft, "-q"])
    assert result.exit_code == 0, result.stderr
    d1 = world / "d1"
    cases = [
        (["--policy", d1, "--resume", d1],
         f"{d1}: was trained with parent base, not {d1.resolve()}#{_digest(d1)}; resume with the same --model and "
         "--policy"),
        (["--resume", sft], f"{sft}: holds a run of the sft stage, not of dpo; --resume continues a run of the same "
                            "stage, --policy starts this stage from a finished checkpoint"),
        (["--resume", d1, "--batch-size", "2"],
         f"{d1}: was trained with 1 examples per optimizer step (--batch-size x --grad-accum x processes), now 2; "
         "resume with the same product (e.g. twice the --grad-accum on half the processes)"),
    ]
    for extra, message in cases:
        result = run_vpt(["dpo", "--model", tiny_zoo, "--prefs", world / "prefs.parquet", "--max-steps", "3",
                          "--cache", world / "cache", "-o", tmp_path / "out", "-q", *extra])
        assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n"), extra
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.run").exists()
