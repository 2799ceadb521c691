"""The harness under ``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo): sharded data, reduced
metrics, one writer, exact resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
SCRIPT = str(Path(__file__).with_name("harness_dist_script.py"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(out / "hf")}  # no user accelerate config
    return subprocess.run(
        [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), SCRIPT, str(out), *args],
        capture_output=True, text=True, env=env, timeout=240,
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    launched = launch(out)
    if launched.returncode != 0:
        _skip_unless_accelerate_can_launch(out / "probe")
    assert launched.returncode == 0, launched.stderr[-3000:]
    return out


def _skip_unless_accelerate_can_launch(directory: Path) -> None:
    """After a failed launch: skip when even a bare two-process launch fails here, so harness bugs still fail."""
    directory.mkdir()
    probe = directory / "probe.py"
    probe.write_text("from accelerate import PartialState\nassert PartialState(cpu=True).num_processes == 2\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(directory / "hf")}
    try:
        bare = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                               str(_free_port()), str(probe)], capture_output=True, text=True, env=env, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"accelerate cannot launch two CPU processes here: {error}")
    if bare.returncode != 0:
        pytest.skip(f"accelerate cannot launch two CPU processes here: {bare.stderr.strip()[-300:]}")


def test_two_processes_share_the_data_and_one_writes_the_files(straight):
    run = straight / "run"
    assert sorted(p.name for p in run.iterdir()) == [".vpt-owned", "checkpoint-2", "checkpoint-4", "checkpoint-6",
                                                    "metrics.jsonl"]
    assert json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())["num_processes"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]

    seen = [json.loads((straight / f"seen-{rank}.json").read_text())["seen"] for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6
    first_epoch = [{i for micro in seen[rank][:4] for i in micro["indices"]} for rank in (0, 1)]
    assert not first_epoch[0] & first_epoch[1]  # different examples on the two processes
    assert first_epoch[0] | first_epoch[1] == set(range(16))  # together: the whole epoch, once
    for step, row in enumerate(rows):  # logged metrics are the mean over both processes
        assert row["loss"] == pytest.approx((seen[0][step]["loss"] + seen[1][step]["loss"]) / 2, rel=1e-6)
        assert row["rank"] == 0.5
    weights = [json.loads((straight / f"seen-{rank}.json").read_text())["weights"] for rank in (0, 1)]
    assert weights[0] == weights[1]  # the processes stay in sync


def test_two_process_run_resumes_bit_identically(straight, tmp_path):
    died = launch(tmp_path, "--die-after", "5")  # killed during step 6; checkpoint-4 is the newest
    assert died.returncode != 0
    assert (tmp_path / "run" / "checkpoint-4").is_dir() and not (tmp_path / "run" / "checkpoint-6").exists()
    resumed = launch(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):
        a = json.loads((straight / f"seen-{rank}.json").read_text())
        b = json.loads((tmp_path / f"seen-{rank}-resumed.json").read_text())
        assert a["weights"] == b["weights"]
        assert [m["indices"] for m in a["seen"][4:]] == [m["indices"] for m in b["seen"]]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
