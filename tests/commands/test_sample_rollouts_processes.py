"""sample-rollouts across processes and under signals: 2 CPU processes give the same rollouts as 1 — each with the
whole transformer, or sharing it sharded with FSDP2 (then the process with fewer prompts runs padding groups to
keep in step), and with TempFlow's branches in a MixGRPO window —, and a killed run leaves no output directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
VPT = str(Path(sys.executable).with_name("vpt"))
FSDP2 = str(Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "fsdp2.yaml")
LAUNCH = {"ddp": ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
          "fsdp2": ["--config_file", FSDP2]}
SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "3", "-g", "2", "--guidance", "1", "-q"]


def command(zoo, prompts, out, *extra):
    return [VPT, "sample-rollouts", "-m", str(zoo), "--prompts", str(prompts), "-o", str(out), "--seed", "3",
            *SMALL, *extra]


# TempFlow's branches (2 noises x 2 branch points x 2 draws per prompt) in MixGRPO's window with the second-order
# deterministic steps
BRANCHED = ["--steps", "5", "--sde-window", "progressive", "--window-size", "2", "--branch", "2:2", "--ode-solver",
            "dpm-solver++"]


@pytest.mark.parametrize("mode, extra, per_prompt", [("ddp", [], 2), ("fsdp2", [], 2), ("ddp", BRANCHED, 8)])
def test_two_processes_write_the_same_rollouts_as_one(tiny_zoo, tmp_path, mode, extra, per_prompt):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(5)))  # uneven split: 3 + 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    launched = subprocess.run([ACCELERATE, "launch", *LAUNCH[mode], "--num_processes", "2",
                               *command(tiny_zoo, prompts, tmp_path / "two", *extra)], capture_output=True, text=True,
                              env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    subprocess.run(command(tiny_zoo, prompts, tmp_path / "one", *extra), check=True, env=env, timeout=300)
    one, two = (pq.read_table(tmp_path / name / "rollouts.parquet").to_pylist() for name in ("one", "two"))
    assert len(two) == 5 * per_prompt and len({row["id"] for row in two}) == 5 * per_prompt
    assert two == one
    for relative in sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.safetensors")):
        assert (tmp_path / "two" / relative).read_bytes() == (tmp_path / "one" / relative).read_bytes()
    assert (tmp_path / "two" / "shards.json").read_text() == (tmp_path / "one" / "shards.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf") == ["one", "prompts.txt", "two"]


def _start_and_stop(zoo, prompts, out, sig):
    process = subprocess.Popen(command(zoo, prompts, out), env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # stop once the first video of the run is on disk
        if any(p.name.endswith(".mp4") for p in out.parent.glob(f".{out.name}.tmp-*/videos/*")):
            break
        time.sleep(0.05)
    process.send_signal(sig)
    stderr = process.communicate(timeout=60)[1].decode(errors="replace")
    return process.returncode, stderr


def test_a_killed_run_leaves_no_output(tiny_zoo, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(40)))
    assert _start_and_stop(tiny_zoo, prompts, tmp_path / "killed", signal.SIGKILL)[0] == -signal.SIGKILL
    assert not (tmp_path / "killed").exists()  # at most a hidden temporary remains
    returncode, stderr = _start_and_stop(tiny_zoo, prompts, tmp_path / "stopped", signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert not (tmp_path / "stopped").exists()
    assert not list(tmp_path.glob(".stopped*"))  # SIGTERM also removes the temporary
