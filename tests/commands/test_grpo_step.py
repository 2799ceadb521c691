"""grpo-step end to end on the tiny zoo: the checkpoint it writes (peft + diffusers layouts, optimizer, RNG,
state, metrics), the first ratio exactly 1, the next iteration, reproducibility, and bad inputs with exact
messages."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from vpt.io.tables import read_table, write_table

SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "4", "--guidance", "3", "-q"]
TRAIN = ["--reward", "brightness", "--lr", "1e-2", "--clip-range", "1e-2", "-q"]
CHECKPOINT_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors", "config.json",
                    "extra_state.pt", "metrics.parquet", "optimizer.pt", "policy.json",
                    "pytorch_lora_weights.safetensors", "rng_state.pt", "scheduler.pt", "trainer_state.json"}


@pytest.fixture(scope="module")
def world(run_vpt, tiny_zoo, tmp_path_factory):
    """Rollouts of the base generator (2 prompts x 3), their brightness scores and the first policy."""
    root = tmp_path_factory.mktemp("grpo")
    (root / "prompts.txt").write_text("a red ball bouncing\na white ring on a dark floor\n")
    sample(run_vpt, tiny_zoo, root, "r0")
    score(run_vpt, root, "r0")
    result = run_vpt(["grpo-step", "--init", tiny_zoo, "--rollouts", root / "r0", "--scores",
                      root / "r0.scores.parquet", "-o", root / "p1", *TRAIN])
    assert result.exit_code == 0, result.stderr
    return root


def sample(run_vpt, zoo, root, name, *extra):
    result = run_vpt(["sample-rollouts", "-m", zoo, "--prompts", root / "prompts.txt", "-o", root / name, "-g", "3",
                      "--seed", "5", *SMALL, *extra])
    assert result.exit_code == 0, result.stderr


def score(run_vpt, root, name):
    result = run_vpt(["score", root / name / "rollouts.parquet", "-m", "brightness", "-o",
                      root / f"{name}.scores.parquet", "-q"])
    assert result.exit_code == 0, result.stderr


def metrics(checkpoint) -> dict:
    rows = pq.read_table(checkpoint / "metrics.parquet").to_pylist()
    return {(row["step"], row["name"]): row["value"] for row in rows}


def test_the_first_iteration_writes_a_complete_checkpoint(world):
    p1 = world / "p1"
    assert {p.name for p in p1.iterdir()} == CHECKPOINT_FILES
    table = metrics(p1)
    # --init: the rollouts came from the base generator, which is the LoRA policy at zero: ratios are exactly 1
    assert table[(None, "ratio_min")] == 1.0 and table[(None, "ratio_max")] == 1.0
    assert table[(None, "items")] == 6 * 3  # 3 recorded steps of 4 (the last is deterministic)
    assert table[(1, "clip_fraction")] == 0.0 and table[(1, "grad_norm")] > 0
    info = json.loads((p1 / "policy.json").read_text())
    assert info["iteration"] == 1 and info["step"] == 1 and info["parent"] == "base"
    assert json.loads((p1 / "trainer_state.json").read_text())["step"] == 1
    assert read_table(p1 / "metrics.parquet", "metrics").num_rows == len(table)


def test_the_policy_loads_through_peft_and_diffusers_alike(world, tiny_zoo):
    from diffusers import WanPipeline

    from vpt.models.loading import load_policy, load_wan_pipeline

    policy, _ = load_policy(load_wan_pipeline(tiny_zoo).transformer, world / "p1")
    pipe = WanPipeline.from_pretrained(tiny_zoo / "wan", local_files_only=True)
    plain = pipe.transformer
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 3, 4, 4, generator=generator), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=generator), return_dict=False)
    with torch.no_grad():
        before = plain(**inputs)[0]
        pipe.load_lora_weights(world / "p1")
        loaded = pipe.transformer(**inputs)[0]
        expected = policy(**inputs)[0]
    assert not torch.allclose(before, expected)  # the adapter learned something
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-6)


def test_the_next_iteration_continues_the_policy_and_reproduces_exactly(run_vpt, world, tiny_zoo):
    sample(run_vpt, tiny_zoo, world, "r1", "--policy", world / "p1")
    score(run_vpt, world, "r1")
    command = ["grpo-step", "--policy", world / "p1", "--rollouts", world / "r1", "--scores",
               world / "r1.scores.parquet", "--bpgo", "--kl-beta", "0.1", *TRAIN]
    assert run_vpt([*command, "-o", world / "p2"]).exit_code == 0
    p2 = world / "p2"
    info = json.loads((p2 / "policy.json").read_text())
    assert info["iteration"] == 2 and info["step"] == 2 and info["parent"].startswith(str((world / "p1").resolve()))
    table = metrics(p2)
    assert table[(None, "ratio_min")] == 1.0 and table[(None, "ratio_max")] == 1.0  # sampled by p1 itself
    assert table[(2, "kl")] > 0  # p1 already differs from the reference
    assert torch.load(p2 / "extra_state.pt", weights_only=True)["iteration"] == 2
    # continuing from p1 again in a new run gives the same bytes: weights, optimizer moments, RNG, state
    assert run_vpt([*command, "-o", world / "p2-again"]).exit_code == 0
    for name in ("adapter_model.safetensors", "rng_state.pt", "extra_state.pt"):
        assert (world / "p2-again" / name).read_bytes() == (p2 / name).read_bytes(), name
    first, again = (torch.load(d / "optimizer.pt", weights_only=True) for d in (p2, world / "p2-again"))
    for key, value in first["state"].items():
        assert torch.equal(value["exp_avg"], again["state"][key]["exp_avg"])


def _scores_with(world, name, change):
    rows = read_table(world / "r0.scores.parquet", "scores").to_pylist()
    rows = change(rows)
    write_table(rows, world / name, "scores")
    return world / name


def test_bad_inputs_get_one_line_and_exit_2(run_vpt, world, tiny_zoo, tmp_path):
    ids = [row["id"] for row in read_table(world / "r0" / "rollouts.parquet", "rollouts").to_pylist()]
    base = ["grpo-step", "--rollouts", world / "r0", "--reward", "brightness", "-o", tmp_path / "out", "-q"]
    missing = _scores_with(world, "missing.parquet", lambda rows: rows[1:])
    nan = _scores_with(world, "nan.parquet", lambda rows: [dict(row, brightness=float("nan")) if i == 2 else row
                                                          for i, row in enumerate(rows)])
    other_model = tmp_path / "copy"
    shutil.copytree(tiny_zoo / "wan", other_model)
    cases = [
        (["--init", tiny_zoo, "--scores", missing],
         f"{missing}: no score for rollout {ids[0]!r} (1 of 6 rollouts of {world / 'r0'} unscored); score every "
         "video of the rollouts"),
        (["--init", tiny_zoo, "--scores", nan],
         f"{nan}: row 3: column 'brightness' of rollout {ids[2]!r} is not a finite number (nan); score it again or "
         "drop the rollout's group"),
        (["--policy", world / "p1", "--scores", world / "r0.scores.parquet"],
         f"{world / 'r0'}: row 1: sampled by base, not by the policy "
         f"#{_digest(world / 'p1')}; GRPO "
         "trains the policy that sampled the rollouts (sample-rollouts --policy with this checkpoint)"),
        (["--init", other_model, "--scores", world / "r0.scores.parquet"],
         f"{world / 'r0'}: row 1: sampled from the generator {(tiny_zoo / 'wan').resolve()}, not "
         f"{other_model.resolve()}; train on rollouts of the policy's own generator"),
        (["--init", tiny_zoo, "--policy", world / "p1", "--scores", world / "r0.scores.parquet"],
         "give exactly one of --policy CKPT (continue a policy) or --init WAN_DIR (start one)"),
    ]
    for extra, message in cases:
        result = run_vpt([*base, *extra])
        assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n"), extra
    assert not (tmp_path / "out").exists()


def test_groups_of_one_are_refused(run_vpt, world, tiny_zoo, tmp_path):
    result = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", world / "prompts.txt", "-o", tmp_path / "r",
                      "-g", "1", *SMALL])
    assert result.exit_code == 0
    score(run_vpt, tmp_path, "r")
    group = read_table(tmp_path / "r" / "rollouts.parquet", "rollouts").to_pylist()[0]["group_id"]
    result = run_vpt(["grpo-step", "--init", tiny_zoo, "--rollouts", tmp_path / "r", "--scores",
                      tmp_path / "r.scores.parquet", "--reward", "brightness", "-o", tmp_path / "out", "-q"])
    assert (result.exit_code, result.stderr) == (2, f"vpt: error: {tmp_path / 'r'}: group {group!r} has 1 sample "
                                                    "(2 such groups); GRPO compares samples of one prompt, sample "
                                                    "with --group-size 2 or more\n")


def _digest(checkpoint) -> str:
    from vpt.models.loading import policy_digest

    return policy_digest(checkpoint)


def test_a_new_policy_is_seeded(run_vpt, world, tiny_zoo):
    command = ["grpo-step", "--init", tiny_zoo, "--rollouts", world / "r0", "--scores", world / "r0.scores.parquet",
               *TRAIN]
    assert run_vpt([*command, "-o", world / "p1-again"]).exit_code == 0
    assert run_vpt([*command, "--seed", "1", "-o", world / "p1-seed1"]).exit_code == 0
    first = (world / "p1" / "adapter_model.safetensors").read_bytes()
    assert (world / "p1-again" / "adapter_model.safetensors").read_bytes() == first
    assert (world / "p1-seed1" / "adapter_model.safetensors").read_bytes() != first


def test_the_model_card_names_the_stage_and_command_without_local_paths(world, tiny_zoo):
    card = (world / "p1" / "README.md").read_text()
    assert card.startswith("---\nbase_model: wan\nlibrary_name: peft\ntags:\n- vpt\n- grpo\n- lora\n- text-to-video\n"
                           "---\n")
    for path in (world, tiny_zoo):
        for text in (str(path), str(path.resolve()), "/" + path.resolve().parts[1]):
            assert text not in card, text
    assert "- **Stage:** grpo (iteration 1, step 1)\n- **Rollouts:** `r0`\n" in card
    assert "\nvpt grpo-step --init tiny-v" in card and " --rollouts r0 --scores r0.scores.parquet " in card
    assert json.loads((world / "p1" / "adapter_config.json").read_text())["base_model_name_or_path"] == "wan"
