"""vpt dpo under `accelerate launch` with 2 CPU processes: the clips are encoded by both, the pairs shared out, the
gradient-decoupled step's gradients averaged, and the policy equals the one-process policy with the same effective
batch up to float summation order (noise is keyed by seed, epoch and pair, not by process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from vpt.io.tables import read_table, write_table

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
VPT = str(Path(sys.executable).with_name("vpt"))
LR = 1e-3


def _free_port() -> int:
    # not accelerate's default 29500, which another launch on this machine may hold
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_the_dpo_policy_one_process_trains(run_vpt, tiny_zoo, tmp_path):
    from vpt.toyworld import write_toy_videos

    clips = read_table(write_toy_videos(tmp_path, n=8, seed=0, frames=9, height=32, width=32), "videos").to_pylist()
    write_table([{"pair_id": f"p{i}", "path_a": clips[i]["path"], "path_b": clips[i + 1]["path"],
                  "prompt": clips[i]["prompt"], "overall": "a" if i % 4 else "b"} for i in range(0, 8, 2)],
                tmp_path / "prefs.parquet", "prefs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    command = ["dpo", "--model", str(tiny_zoo), "--prefs", str(tmp_path / "prefs.parquet"), "--decoupled",
               "--batch-size", "1", "--max-steps", "2", "--lr", str(LR), "--log-every", "1", "-q"]
    launched = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                               str(_free_port()), VPT, *command, "--cache", str(tmp_path / "cache-two"), "-o",
                               str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    # one process, one pair per forward pass as in each of the two: the same errors to the bit, so only the sum of
    # the two pairs' gradients is ordered differently (--batch-size 2 would also change the forward's rounding)
    result = run_vpt([*command, "--grad-accum", "2", "--cache", tmp_path / "cache-one", "-o", tmp_path / "one"])
    assert result.exit_code == 0, result.stderr

    one, two = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("one", "two"))
    assert one.keys() == two.keys()
    # Adam's first step is lr*g/(|g| + eps): where |g| is near eps, the other summation order of the all-reduced
    # gradient shows at up to a few % of a step on single elements (measured 0.6%), while a pair left out or counted
    # twice moves most elements by a whole step, lr. lora_B starts at zero, so it holds the whole update.
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=5e-2 * LR)
    update = torch.cat([one[key].flatten() for key in one if "lora_B" in key])
    difference = torch.cat([(two[key] - one[key]).flatten() for key in one if "lora_B" in key])
    assert update.abs().max() > LR  # two steps moved the adapter
    assert difference.norm() < 1e-3 * update.norm()  # measured 1e-4
    one_metrics, two_metrics = (
        {(row["step"], row["name"]): row["value"] for row in pq.read_table(tmp_path / name / "metrics.parquet")
         .to_pylist()} for name in ("one", "two"))
    assert two_metrics[(None, "pairs")] == one_metrics[(None, "pairs")] == 4
    assert two_metrics[(1, "grad_norm")] == pytest.approx(one_metrics[(1, "grad_norm")], rel=1e-5)
    assert two_metrics[(1, "loss")] == pytest.approx(one_metrics[(1, "loss")], rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf") == [
        "cache-one", "cache-two", "clips", "one", "prefs.parquet", "two", "videos.parquet"]
