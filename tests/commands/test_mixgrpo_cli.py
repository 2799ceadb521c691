"""MixGRPO end to end on the tiny zoo: the SDE window slides with the policy's recorded iteration (sample-rollouts
reads it from the checkpoint grpo-step wrote), the post-window steps take DPM-Solver++(2M) and Flash's compressed
tail, and grpo-step trains the window with first ratios of exactly 1."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from vpt.algo.mixgrpo import sliding_window
from vpt.io.tables import read_table

SMALL = ["--frames", "5", "--height", "16", "--width", "16", "--steps", "8", "--guidance", "1", "-g", "3", "-q"]
MIX = ["--sde-window", "progressive", "--window-size", "2", "--window-every", "1", "--ode-solver", "dpm-solver++",
       "--tail-ratio", "0.5"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixgrpo")
    (root / "prompts.txt").write_text("a red ball bouncing\na white ring on a dark floor\n")
    return root


def sample(run_vpt, zoo, root, name, *extra):
    result = run_vpt(["sample-rollouts", "-m", zoo, "--prompts", root / "prompts.txt", "-o", root / name, "--seed",
                      "4", *SMALL, *extra])
    assert result.exit_code == 0, result.stderr
    result = run_vpt(["score", root / name / "rollouts.parquet", "-m", "brightness", "-o",
                      root / f"{name}.scores.parquet", "-q"])
    assert result.exit_code == 0, result.stderr
    return read_table(root / name / "rollouts.parquet", "rollouts").to_pylist()


def step(run_vpt, zoo, root, name, out, start):
    result = run_vpt(["grpo-step", *start, "--rollouts", root / name, "--scores", root / f"{name}.scores.parquet",
                      "-o", root / out, "--lr", "1e-2", "--reward", "brightness", "-q"])
    assert result.exit_code == 0, result.stderr
    metrics = {(row["step"], row["name"]): row["value"] for row in pq.read_table(root / out / "metrics.parquet")
               .to_pylist()}
    assert metrics[(None, "ratio_min")] == 1.0 and metrics[(None, "ratio_max")] == 1.0
    return json.loads((root / out / "policy.json").read_text())


def test_the_window_moves_with_the_policys_iteration_and_trains_at_ratio_one(run_vpt, tiny_zoo, root):
    first = sample(run_vpt, tiny_zoo, root, "mix-1", *MIX)
    # the base policy: window 0:2; after it 6 steps of the 8 remain, compressed to 3 (sigmas: 3 + 3 + 1 values)
    assert {tuple(row["recorded_steps"]) for row in first} == {(0, 1)}
    assert {len(row["sigmas"]) for row in first} == {6}
    record = step(run_vpt, tiny_zoo, root, "mix-1", "mix-p1", ["--init", tiny_zoo])
    assert record["iteration"] == 1

    second = sample(run_vpt, tiny_zoo, root, "mix-2", *MIX, "--policy", root / "mix-p1")
    assert {tuple(row["recorded_steps"]) for row in second} == {(1, 2)}  # iteration 1: one step on
    assert {len(row["sigmas"]) for row in second} == {6}  # 5 steps after the window -> floor(2.5) = 2
    assert step(run_vpt, tiny_zoo, root, "mix-2", "mix-p2", ["--policy", root / "mix-p1"])["iteration"] == 2

    strided = sample(run_vpt, tiny_zoo, root, "mix-2-strided", *MIX, "--window-stride", "2", "--policy",
                     root / "mix-p1")
    assert {tuple(row["recorded_steps"]) for row in strided} == {(2, 3)}  # two steps on after one iteration


def test_the_random_window_is_drawn_from_the_seed_and_iteration(run_vpt, tiny_zoo, root):
    rows = sample(run_vpt, tiny_zoo, root, "random", "--sde-window", "random", "--window-size", "3")
    start, end = sliding_window("random", 0, steps=8, size=3, seed=4)
    assert {tuple(row["recorded_steps"]) for row in rows} == {tuple(range(start, end))}


def test_the_ode_solver_changes_only_the_deterministic_steps(run_vpt, tiny_zoo, root):
    from vpt.rollouts.store import load_rollouts

    window = ["--sde-window", "1:3"]
    euler_rows = sample(run_vpt, tiny_zoo, root, "euler", *window)
    dpm_rows = sample(run_vpt, tiny_zoo, root, "dpm", *window, "--ode-solver", "dpm-solver++")
    euler, dpm = load_rollouts(root / "euler"), load_rollouts(root / "dpm")
    # step 0 is deterministic and first order either way, so the recorded steps start from the same state and draw
    # the same noise: equal states and log-probs; the steps after the window take the other solver
    for a, b in zip(euler_rows, dpm_rows):
        assert torch.equal(euler.states(a), dpm.states(b)) and a["log_probs"] == b["log_probs"]
        assert not torch.equal(euler.final_latent(a), dpm.final_latent(b))


def test_the_summary_names_the_window(run_vpt, tiny_zoo, root):
    result = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", root / "prompts.txt", "-o", root / "told",
                      *SMALL[:-1], "--sde-window", "progressive", "--window-size", "3"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[-1] == (f"sample-rollouts: 6 videos of 2 prompts (3 per prompt, 3 recorded steps "
                                              f"each, SDE window 0:3) in {root / 'told'}")
