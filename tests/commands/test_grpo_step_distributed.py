"""grpo-step sharded with FSDP2 over 2 CPU processes (the shipped examples/accelerate/fsdp2.yaml): 21 micro-batches
(7 groups x 3 recorded steps) do not split evenly, so one process pads with a weightless pass, and the policy and
gradient norm equal the one-process ones up to float summation order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
VPT = str(Path(sys.executable).with_name("vpt"))
FSDP2 = str(Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "fsdp2.yaml")


def test_two_processes_train_the_policy_one_process_trains(tiny_zoo, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    (tmp_path / "prompts.txt").write_text("".join(f"a {colour} ball bouncing\n" for colour in (
        "red", "white", "blue", "green", "black", "grey", "yellow")))
    subprocess.run([VPT, "sample-rollouts", "-m", str(tiny_zoo), "--prompts", str(tmp_path / "prompts.txt"), "-o",
                    str(tmp_path / "r"), "-g", "2", "--steps", "4", "--frames", "9", "--height", "32", "--width", "32",
                    "--guidance", "1", "-q"], check=True, env=env, timeout=300)
    subprocess.run([VPT, "score", str(tmp_path / "r" / "rollouts.parquet"), "-m", "brightness", "-o",
                    str(tmp_path / "s.parquet"), "-q"], check=True, env=env, timeout=300)
    step = ["grpo-step", "--init", str(tiny_zoo), "--rollouts", str(tmp_path / "r"), "--scores",
            str(tmp_path / "s.parquet"), "--reward", "brightness", "--lr", "1e-2", "--judge", "motion", "--report-to",
            "tensorboard", "-q"]
    launched = subprocess.run([ACCELERATE, "launch", "--config_file", FSDP2, "--num_processes", "2", VPT, *step,
                               "-o", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    subprocess.run([VPT, *step, "-o", str(tmp_path / "one")], check=True, env=env, timeout=300)
    one, two = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("one", "two"))
    assert one.keys() == two.keys()
    moved = 0.0
    for key in one:
        # Adam's first step is g / (|g| + eps) * lr: where |g| is near eps, the other summation order of the
        # all-reduced gradient shows at ~1e-6; 1e-5 is 0.1% of the step (lr 1e-2)
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
        moved = max(moved, float(one[key].abs().max()))
    assert moved > 1e-4  # the step did change the adapter (lora_B starts at zero)
    one_table, table = ({(row["step"], row["name"]): row["value"]
                         for row in pq.read_table(tmp_path / name / "metrics.parquet").to_pylist()}
                        for name in ("one", "two"))
    assert table[(None, "items")] == 7 * 2 * 3 and table[(None, "ratio_min")] == table[(None, "ratio_max")] == 1.0
    assert table[(1, "grad_norm")] == pytest.approx(one_table[(1, "grad_norm")], rel=1e-5)
    for name in ("judge/motion/mean", "drift/0.50"):  # the judge's figures and the drift, measured on two as on one
        assert table[(None, name)] == pytest.approx(one_table[(None, name)], rel=1e-5)
    assert len(list((tmp_path / "two" / "logs" / "two").glob("events.out.tfevents.*"))) == 1  # the main process's
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf") == ["one", "prompts.txt", "r", "s.parquet", "two"]
