"""Interrupted runs: kill -9, SIGTERM and Ctrl-C (SIGINT) in the middle of score, sample-rollouts, sft, dpo,
grpo-step and train-reward. The output is absent or whole, never half-written; SIGTERM and SIGINT leave no temporary
behind (SIGKILL can leave a hidden one, never the output's name); and a stage that resumes (sft, dpo, grpo-step,
train-reward) ends bit-identical to a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from reliability_world import SAMPLER, VPT, leftovers
from vpt.io.atomic import OWNER_FILE
from vpt.io.tables import read_table, write_table

EXIT = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT, signal.SIGKILL: -signal.SIGKILL}


def start(args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # as from a shell: a test runner's worker may ignore SIGINT, and an ignored signal stays ignored across exec
    return subprocess.Popen([VPT, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt_when(process: subprocess.Popen, ready, signum: int, timeout: float = 300) -> str:
    """Send ``signum`` once ``ready()`` holds; returns stderr after checking the exit code."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before it could be interrupted: {process.stderr.read()}"
        assert time.monotonic() < deadline, "never got ready to be interrupted"
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == EXIT[signum], stderr
    assert "Traceback" not in stderr
    return stderr


def hidden(directory: Path, name: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(f".{name}."))


def checkpoint(run: Path, step: int):
    return lambda: (run / f"checkpoint-{step}" / "trainer_state.json").is_file()


def assert_no_partial_output(out: Path, signum: int) -> None:
    assert not out.exists()
    if signum != signal.SIGKILL:
        assert leftovers(out) == []


def weights(directory: Path) -> bytes:
    return (directory / "adapter_model.safetensors").read_bytes()


# -------------------------------------------------------------------------------------------------------- score
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_score(world, run_vpt, tmp_path, signum):
    rows = read_table(world.toy, "videos").to_pylist()
    many = [{**row, "id": f"{row['id']}-{k}", "path": str(world.toy.parent / row["path"])} for k in range(60)
            for row in rows]
    write_table(many, tmp_path / "many.parquet", "videos")
    out = tmp_path / "scores.parquet"
    args = ["score", "-m", "brightness,motion,flicker", tmp_path / "many.parquet", "-o", out, "--batch-size", "1",
            "--workers", "1", "-q"]
    interrupt_when(start(args), lambda: bool(hidden(tmp_path, out.name)), signum)
    assert_no_partial_output(out, signum)
    assert run_vpt(args).exit_code == 0
    assert read_table(out, "scores").num_rows == len(many)


# -------------------------------------------------------------------------------------------------------- sample-rollouts
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_sample_rollouts(world, run_vpt, tmp_path, signum):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {k}\n" for k in range(12)))
    out = tmp_path / "rollouts"
    args = ["sample-rollouts", "-m", world.zoo, "--prompts", prompts, "-g", "2", *SAMPLER, "-o", out]

    def sampling() -> bool:
        return any(any(part.glob("videos/*.mp4")) for part in hidden(tmp_path, out.name))

    interrupt_when(start(args), sampling, signum)
    assert_no_partial_output(out, signum)


# -------------------------------------------------------------------------------------------------------- sft, dpo
def flow_args(stage: str, world, out: Path, cache: Path, steps: int) -> list:
    data = ["--data", world.toy] if stage == "sft" else ["--prefs", world.prefs, "--dim", "vq", "--beta", "500"]
    return [stage, "-m", world.zoo, *data, "--max-steps", str(steps), "--save-every", "1", "--lr", "1e-3", "--cache",
            cache, "-q", "-o", out]


@pytest.mark.parametrize("stage, signum", [("sft", signal.SIGKILL), ("sft", signal.SIGINT), ("dpo", signal.SIGKILL),
                                           ("dpo", signal.SIGTERM)])
def test_training_stage_resumes_bit_identical(world, run_vpt, tmp_path, stage, signum):
    cache = tmp_path / "cache"
    straight = run_vpt(flow_args(stage, world, tmp_path / "straight", cache, 4))
    assert straight.exit_code == 0, straight.stderr
    out = tmp_path / "out"
    run = tmp_path / "out.run"
    interrupt_when(start(flow_args(stage, world, out, cache, 4)), checkpoint(run, 2), signum)
    assert_no_partial_output(out, signum)
    assert (run / OWNER_FILE).is_file() and (run / "checkpoint-2").is_dir()  # what to resume from is kept
    resumed = run_vpt([*flow_args(stage, world, out, cache, 4), "--resume", run])
    assert resumed.exit_code == 0, resumed.stderr
    assert weights(out) == weights(tmp_path / "straight")
    assert not run.exists()


def test_a_run_stopped_before_its_first_checkpoint_leaves_nothing(world, tmp_path):
    out = tmp_path / "out"
    run = tmp_path / "out.run"
    args = flow_args("sft", world, out, tmp_path / "cache", 50)
    interrupt_when(start([*args[:-2], "--save-every", "40", *args[-2:]]), lambda: (run / OWNER_FILE).is_file(),
                   signal.SIGTERM)
    assert not out.exists() and not run.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


# -------------------------------------------------------------------------------------------------------- grpo-step
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_grpo_step(world, run_vpt, tmp_path, signum):
    def args(out: Path) -> list:
        return ["grpo-step", "--init", world.zoo, "--rollouts", world.rollouts, "--scores", world.scores, "--reward",
                "brightness", "--steps-per-iteration", "3", "--lr", "1e-3", "-q", "-o", out]

    out = tmp_path / "policy"
    interrupt_when(start(args(out)), lambda: (tmp_path / "policy.run" / OWNER_FILE).is_file(), signum)
    assert_no_partial_output(out, signum)
    assert run_vpt(args(out)).exit_code == 0
    assert run_vpt(args(tmp_path / "again")).exit_code == 0
    assert weights(out) == weights(tmp_path / "again")


@pytest.fixture(scope="module")
def rollouts_with_means(world, run_vpt, tmp_path_factory):
    """(rollouts, scores): the world's sampling again, with each recorded step's mean (--record-means)."""
    root = tmp_path_factory.mktemp("means")
    for args in (["sample-rollouts", "-m", world.zoo, "--prompts", world.prompts, "-g", "3", "-o", root / "rollouts",
                  "--record-means", *SAMPLER],
                 ["score", "-m", "brightness,motion", root / "rollouts" / "rollouts.parquet", "-o",
                  root / "scores.parquet", "-q"]):
        result = run_vpt(args)
        assert result.exit_code == 0, result.stderr
    return root / "rollouts", root / "scores.parquet"


# the modes of issue 18 that change the loss, the weights or the advantages, two runs' worth
GRPO_MODES = {
    "plain": [],
    "release": ["--preset", "teleboost", "--bpgo", "--timestep-weight", "tempflow", "--grad-reweight", "flow-grpo",
                "--ratio-norm", "--clip-range", "1e-2"],
    "dppo": ["--trust-region", "kl", "--kl-max", "1e-4", "--std", "global", "--timestep-fraction", "0.5",
             "--reward", "brightness,motion", "--aggregation", "min-norm"],
}


@pytest.mark.parametrize("mode", sorted(GRPO_MODES))
def test_grpo_step_resumes_bit_identical(world, run_vpt, rollouts_with_means, tmp_path, mode):
    rollouts, scores = (world.rollouts, world.scores) if mode == "plain" else rollouts_with_means

    def args(out: Path) -> list:
        return ["grpo-step", "--init", world.zoo, "--rollouts", rollouts, "--scores", scores, "--reward",
                "brightness", "--steps-per-iteration", "3", "--save-every", "1", "--lr", "1e-3", "-q", "-o", out,
                *GRPO_MODES[mode]]

    straight = run_vpt(args(tmp_path / "straight"))
    assert straight.exit_code == 0, straight.stderr
    out = tmp_path / "policy"
    run = tmp_path / "policy.run"
    interrupt_when(start(args(out)), checkpoint(run, 1), signal.SIGKILL)
    assert_no_partial_output(out, signal.SIGKILL)
    assert (run / OWNER_FILE).is_file()  # what to resume from is kept
    resumed = run_vpt([*args(out), "--resume", run])
    assert resumed.exit_code == 0, resumed.stderr
    assert weights(out) == weights(tmp_path / "straight")
    assert not run.exists()


# -------------------------------------------------------------------------------------------------------- train-reward
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_train_reward_resumes_bit_identical(world, run_vpt, small_prefs_world, tmp_path, signum):
    prefs = small_prefs_world(clips=6, pairs=8, seed=4) / "prefs.parquet"

    def args(out: Path) -> list:
        return ["train-reward", prefs, "-m", world.zoo, "-o", out, "--max-steps", "4", "--save-every", "1",
                "--batch-size", "2", "--lora-rank", "2", "--frames", "8", "--min-pixels", "3136", "--max-pixels",
                "3136", "-q"]

    assert run_vpt(args(tmp_path / "straight")).exit_code == 0
    out = tmp_path / "out"
    interrupt_when(start(args(out)), checkpoint(out, 2), signum)
    assert not (out / "vpt_videoreward.json").exists()  # the model was not published
    resumed = run_vpt([*args(out), "--resume", out])
    assert resumed.exit_code == 0, resumed.stderr
    for name in ("head.safetensors", "non_lora.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
