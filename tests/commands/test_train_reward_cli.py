"""``vpt train-reward``: a tiny run end to end, then scoring with the trained model; one-line errors."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest


SMALL = ["--frames", "8", "--min-pixels", "3136", "--max-pixels", "3136"]


@pytest.fixture(scope="module")
def world(small_prefs_world):
    return small_prefs_world(clips=6, pairs=8, seed=4)


def test_train_reward_then_score_with_the_trained_model(run_vpt, world, tiny_zoo, tmp_path):
    out = tmp_path / "reward"
    result = run_vpt(["train-reward", world / "prefs.parquet", "--model", tiny_zoo, "--out", out, "--max-steps", "2",
                      "--batch-size", "2", "--lora-rank", "4", "--eval-fraction", "0.25", "--eval-every", "1",
                      "--save-every", "1", "--lr", "1e-3", "--seed", "1", *SMALL])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b""
    assert "train-reward: 2 steps on 6 pairs; accuracy (%) on 2 held-out pairs; model in" in result.stderr
    for name in ("vq", "mq", "ta", "norm mean", "acc w/ ties"):
        assert name in result.stderr
    assert {"vpt_videoreward.json", "metrics.jsonl", "reward_training.json", "checkpoint-2", "adapter",
            "non_lora.safetensors", "head.safetensors", "tokenizer", "base"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "reward_training.json").read_text())
    assert summary["seed"] == 1 and summary["options"]["lora_rank"] == 4 and summary["options"]["lora_alpha"] == 8
    meta = json.loads((out / "vpt_videoreward.json").read_text())
    assert meta["config"]["norm_mean"] == summary["norm_mean"] and meta["config"]["num_frames"] == 8

    scored = run_vpt(["score", "--model", out, "-q", world / "videos.parquet"])
    assert scored.exit_code == 0, scored.stderr
    table = pq.read_table(io.BytesIO(scored.stdout))
    assert {"vq", "mq", "ta", "overall"} <= set(table.column_names)
    assert table.num_rows == 6 and table.column("error").null_count == 6


def test_resume_and_refusing_a_used_directory(run_vpt, world, tiny_zoo, tmp_path):
    out = tmp_path / "reward"
    args = ["train-reward", world / "prefs.parquet", "-m", tiny_zoo, "-o", out, "--max-steps", "1", "--batch-size",
            "2", "--lora-rank", "2", "-q", *SMALL]
    assert run_vpt(args).exit_code == 0
    again = run_vpt(args)
    assert again.exit_code == 2
    assert again.stderr.startswith(f"vpt: error: {out}: already holds a training run") and again.stderr.count("\n") == 1
    resumed = run_vpt([*args, "--resume", out, "--max-steps", "2"])
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads((out / "reward_training.json").read_text())["steps"] == 2


@pytest.mark.parametrize("case", ["loss", "mos", "label", "video"])
def test_errors_are_one_line(run_vpt, world, tiny_zoo, tmp_path, case):
    prefs = world / "prefs.parquet"
    extra = []
    if case == "loss":
        extra, expected = ["--loss", "hinge"], "--loss hinge: choose one of btt, bt, reg"
    elif case == "mos":
        extra = ["--loss", "reg"]
        expected = (f"{prefs}: loss 'reg' needs mean opinion score columns vq_mos_a, vq_mos_b, mq_mos_a, mq_mos_b, "
                    "ta_mos_a, ta_mos_b; missing: vq_mos_a, vq_mos_b, mq_mos_a, mq_mos_b, ta_mos_a, ta_mos_b (add "
                    "them, or train with loss btt or bt)")
    elif case == "label":
        prefs = tmp_path / "prefs.csv"
        prefs.write_text("pair_id,path_a,path_b,prompt,vq,mq,ta\n"
                         f"p0,{world / 'clips/toy-0000.mp4'},{world / 'clips/toy-0001.mp4'},a red square,a,b,same\n")
        expected = f"{prefs}: row 1: column 'ta' has 'same'; expected one of a, b, tie, invalid"
    else:
        prefs = tmp_path / "prefs.csv"
        prefs.write_text("pair_id,path_a,path_b,prompt,vq,mq,ta\n"
                         f"p0,{world / 'clips/toy-0000.mp4'},gone.mp4,a red square,a,b,tie\n")
        expected = f"{tmp_path / 'gone.mp4'}: file not found (prefs row 1, pair 'p0', path_b of {prefs})"
    result = run_vpt(["train-reward", prefs, "--model", tiny_zoo, "--out", tmp_path / "out", *SMALL, *extra])
    assert result.exit_code == 2
    assert result.stderr == f"vpt: error: {expected}\n"
    assert not (tmp_path / "out").exists()
