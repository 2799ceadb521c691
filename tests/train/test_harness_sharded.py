"""Exact distribution: a step's examples dealt out over 2 CPU processes (gloo) — ragged steps included — give the
gradient of one process, with data-parallel averaging (DDP) and with the model sharded by FSDP2 (an accelerate
launch with ``--use_fsdp --fsdp_version 2``); a checkpoint of either resumes under the other process count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_harness_distributed import ACCELERATE, SCRIPT, _free_port

from vpt.train.plan import StepPlan

# 13 examples, micro-batches of 2, 4 examples per optimizer step: steps of 4, 4, 4 and 1 example per epoch (rank 1
# runs a padding pass in the 4th), and 6 steps cross into the second epoch
TASK = ("--blocks", "--examples", "13")


def launch(out: Path, *args: str, fsdp: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(out / "hf")}
    mode = ["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]
    return subprocess.run([ACCELERATE, "launch", *mode, "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(_free_port()), SCRIPT, str(out), *TASK, *args],
                          capture_output=True, text=True, env=env, timeout=240)


def alone(out: Path, *args: str) -> subprocess.CompletedProcess:
    """One process with two micro-batches per step: the same 4 examples per optimizer step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, SCRIPT, str(out), *TASK, "--grad-accum", "2", *args],
                          capture_output=True, text=True, env=env, timeout=240)


def evidence(out: Path, rank: int = 0, resumed: bool = False) -> dict:
    return json.loads((out / f"seen-{rank}{'-resumed' if resumed else ''}.json").read_text())


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(torch.tensor(a[key]), torch.tensor(b[key]), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    ran = alone(out)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return out


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_ragged_steps_on_two_processes_train_what_one_process_trains(reference, tmp_path, fsdp):
    launched = launch(tmp_path, fsdp=fsdp)
    assert launched.returncode == 0, launched.stderr[-3000:]
    seen = [evidence(tmp_path, rank)["seen"] for rank in (0, 1)]
    assert all(micro["sharded"] == fsdp for rank in (0, 1) for micro in seen[rank])
    if fsdp:  # each process holds half of every unit's parameters
        whole = sum(p.numel() for p in __import__("train_tasks").block_model().parameters())
        assert seen[0][0]["parameter_elements"] + seen[1][0]["parameter_elements"] == whole
    # the first epoch's 4 steps: every example exactly once; the ragged 4th step runs a padding pass on rank 1
    first_epoch = [index for rank in (0, 1) for micro in seen[rank][:4] for index in micro["indices"]]
    assert seen[1][3]["indices"] == seen[0][3]["indices"]  # the padding pass reruns rank 0's example, weight 0
    assert sorted(first_epoch) == sorted([*range(13), *seen[0][3]["indices"]])
    assert_same_weights(evidence(tmp_path)["weights"], evidence(reference)["weights"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (reference / "run" / "metrics.jsonl").read_text().splitlines()]
    for row, expected in zip(rows, one, strict=True):
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-6)  # the mean over the step's examples
        assert row["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)


def test_a_sharded_checkpoint_resumes_on_one_process_and_back(reference, tmp_path):
    died = launch(tmp_path / "sharded", "--die-after", "4", fsdp=True)  # killed in step 5: checkpoint-4 is newest
    assert died.returncode != 0 and (tmp_path / "sharded" / "run" / "checkpoint-4").is_dir()
    one_files = sorted(p.name for p in (reference / "run" / "checkpoint-4").iterdir())
    assert sorted(p.name for p in (tmp_path / "sharded" / "run" / "checkpoint-4").iterdir()) == one_files
    resumed = alone(tmp_path / "sharded", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(evidence(tmp_path / "sharded", resumed=True)["weights"], evidence(reference)["weights"])

    (tmp_path / "plain").mkdir()
    shutil.copytree(reference / "run" / "checkpoint-2", tmp_path / "plain" / "checkpoint-2")
    resumed = launch(tmp_path / "again", "--resume", str(tmp_path / "plain" / "checkpoint-2"), fsdp=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert evidence(tmp_path / "again", resumed=True)["seen"][0]["sharded"]
    assert_same_weights(evidence(tmp_path / "again", resumed=True)["weights"], evidence(reference)["weights"])


@pytest.mark.parametrize("size, micro_batch, step_examples, processes", [
    (15, 2, 4, 2), (21, 1, 21, 2), (5, 1, 2, 2), (7, 3, 7, 3), (9, 2, 3, 4), (1, 4, 8, 2)])
def test_every_step_is_the_weighted_mean_of_its_examples(size, micro_batch, step_examples, processes):
    """Float64: sum over processes of (scale x micro-batch mean) / processes is the weighted mean over the step."""
    weights = [1.0 + (i % 4) for i in range(size)]
    values = torch.arange(size, dtype=torch.float64) ** 1.5
    order = list(torch.randperm(size, generator=torch.Generator().manual_seed(size)))
    order = [int(i) for i in order]
    plans = [StepPlan(size, micro_batch, step_examples, processes, rank, weights) for rank in range(processes)]
    for step in range(plans[0].steps_per_epoch):
        chunk = order[step * step_examples:(step + 1) * step_examples]
        expected = sum(weights[i] * values[i] for i in chunk) / sum(weights[i] for i in chunk)
        per_rank = [plan.step(order, step) for plan in plans]
        assert len({len(micro_batches) for micro_batches in per_rank}) == 1  # the same passes on every process
        real = sorted(i for micro_batches in per_rank for micro in micro_batches if micro.examples
                      for i in micro.indices)
        assert real == sorted(chunk)  # each example of the step exactly once
        averaged = sum(micro.scale * sum(weights[i] * values[i] for i in micro.indices) /
                       sum(weights[i] for i in micro.indices)
                       for micro_batches in per_rank for micro in micro_batches) / processes
        assert float(averaged) == pytest.approx(float(expected), rel=1e-12)


def test_context_parallel_groups_share_their_micro_batches_and_the_gradient_averages_right():
    """4 processes in context-parallel groups of 2: members of a group get the same items and micro-batches; each
    member's loss scaled by the degree and averaged over all 4 processes (as data-parallel averaging does, each
    member holding half of a micro-batch's gradient) gives the step's mean."""
    from vpt.distributed import Processes

    views = [Processes(rank=rank, count=4).data_groups(2) for rank in range(4)]
    assert [(view.group, view.member, view.writes) for view in views] == [
        (0, 0, True), (0, 1, False), (1, 0, True), (1, 1, False)]
    assert views[0].shard(range(5)) == views[1].shard(range(5)) == [0, 2, 4]
    assert views[2].shard(range(5)) == views[3].shard(range(5)) == [1, 3]
    values = torch.arange(7, dtype=torch.float64) ** 2
    order = [3, 6, 0, 5, 1, 4, 2]
    plans = [StepPlan(7, 1, 3, view.groups, view.group) for view in views]
    for step in range(plans[0].steps_per_epoch):
        per_process = [plan.step(order, step) for plan in plans]
        assert per_process[0] == per_process[1] and per_process[2] == per_process[3]
        chunk = order[step * 3:(step + 1) * 3]
        # each member's backward carries half of its micro-batch's gradient
        averaged = sum(micro.scale * views[rank].degree * float(values[list(micro.indices)].mean()) / 2
                       for rank, micro_batches in enumerate(per_process) for micro in micro_batches) / 4
        assert averaged == pytest.approx(float(values[chunk].mean()), rel=1e-12)
