"""``vpt train-reward`` under ``accelerate launch --num_processes 2`` on CPU: the two processes together take the
same optimizer steps as one process with the combined batch, and only the main process writes the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpt.io.atomic import OWNER_FILE

from vpt.io.tables import read_table
from vpt.io.video import decode
from vpt.models.videoreward_checkpoint import load_videoreward

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
VPT = str(Path(sys.executable).with_name("vpt"))
SMALL = ["--frames", "8", "--min-pixels", "3136", "--max-pixels", "3136"]


@pytest.fixture(scope="module")
def world(small_prefs_world):
    return small_prefs_world(clips=8, pairs=12, seed=5)


def _train(world: Path, zoo: Path, out: Path, batch_size: int, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(out.parent / "hf")}  # no user accelerate config
    command = [VPT, "train-reward", str(world / "prefs.parquet"), "-m", str(zoo), "-o", str(out), "--max-steps",
               "3", "--batch-size", str(batch_size), "--lora-rank", "4", "--lora-dropout", "0", "--eval-fraction",
               "0.25", "--eval-every", "0", "--save-every", "2", "--log-every", "1", "--lr", "1e-3", "--seed", "3", "-q",
               *SMALL]
    if processes > 1:
        command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", *command]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_two_processes_train_like_one_process_with_the_combined_batch(world, tiny_zoo, tmp_path):
    two = _train(world, tiny_zoo, tmp_path / "two", batch_size=1, processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _train(world, tiny_zoo, tmp_path / "one", batch_size=2, processes=1)
    assert one.returncode == 0, one.stderr[-3000:]

    state = json.loads((tmp_path / "two" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 3
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3]
    hidden = [p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]
    assert hidden == [OWNER_FILE]  # no temporaries left, only the mark that vpt made the directory

    videos = read_table(world / "videos.parquet", "videos").to_pylist()
    prompts = [row["prompt"] for row in videos]

    def raw_scores(model):
        frames = [decode(world / row["path"], model.sampling).frames for row in videos]
        return model.raw_scores(frames, prompts).double().numpy()

    scores = {name: raw_scores(load_videoreward(tmp_path / name)) for name in ("one", "two")}
    before = raw_scores(load_videoreward(tiny_zoo).with_config(num_frames=8, min_pixels=3136, max_pixels=3136))
    assert np.abs(scores["two"] - before).max() > 1e-3  # training moved the model
    np.testing.assert_allclose(scores["two"], scores["one"], rtol=1e-4, atol=1e-5)
    for name in ("one", "two"):
        summary = json.loads((tmp_path / name / "reward_training.json").read_text())
        assert summary["steps"] == 3
    np.testing.assert_allclose(json.loads((tmp_path / "two" / "reward_training.json").read_text())["norm_mean"],
                               json.loads((tmp_path / "one" / "reward_training.json").read_text())["norm_mean"],
                               rtol=1e-4, atol=1e-5)
