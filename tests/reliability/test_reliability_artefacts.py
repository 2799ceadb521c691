"""The same inputs and seed give the same bytes: in another process, and with the data moved to another directory
(ids come from the tables' ids or from paths relative to the table, never from absolute paths)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from reliability_world import SAMPLER, VPT

# the model card and peft's config name no local path: the same bytes wherever the data lay
POLICY_FILES = ("adapter_model.safetensors", "pytorch_lora_weights.safetensors", "metrics.parquet", "README.md",
                "adapter_config.json")


def files(directory: Path) -> dict[str, bytes]:
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def test_sampled_videos_and_shards_are_the_same_bytes_in_another_process_and_directory(world, run_vpt, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    shutil.copyfile(world.prompts, here / "prompts.txt")
    result = run_vpt(["sample-rollouts", "-m", world.zoo, "--prompts", here / "prompts.txt", "-g", "3", *SAMPLER,
                      "-o", here / "rollouts"])
    assert result.exit_code == 0, result.stderr
    elsewhere = tmp_path / "else" / "where"
    elsewhere.mkdir(parents=True)
    shutil.copyfile(world.prompts, elsewhere / "prompts.txt")
    subprocess.run([VPT, "sample-rollouts", "-m", str(world.zoo), "--prompts", "prompts.txt", "-g", "3", *SAMPLER,
                    "-o", "rollouts"], cwd=elsewhere, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    written = files(here / "rollouts")
    assert sum(name.endswith(".mp4") for name in written) == 6
    assert files(elsewhere / "rollouts") == written
    assert files(world.rollouts) == written  # and the same as the world's, sampled earlier in this session


def test_moving_the_data_changes_no_pair_id_side_noise_or_weight(world, run_vpt, tmp_path):
    runs = {}
    for place in (tmp_path / "here", tmp_path / "moved" / "far" / "away"):
        shutil.copytree(world.toy.parent, place / "toy")
        shutil.copytree(world.rollouts, place / "rollouts")
        shutil.copyfile(world.scores, place / "scores.parquet")
        for args in (["build-prefs", "--from-scores", place / "scores.parquet", "--videos",
                      place / "rollouts" / "rollouts.parquet", "--reward", "brightness", "--top-k", "2", "--label",
                      "vq", "-o", place / "prefs.parquet"],
                     ["build-prefs", "--synthetic", "reverse,shuffle", "--videos", place / "toy" / "videos.parquet",
                      "--out-dir", place / "negatives", "-o", place / "synthetic.parquet"],
                     ["sft", "-m", world.zoo, "--data", place / "toy" / "videos.parquet", "--max-steps", "2",
                      "--batch-size", "2", "--lr", "1e-3", "--cache", place / "cache", "-o", place / "sft"],
                     ["dpo", "-m", world.zoo, "--prefs", place / "prefs.parquet", "--dim", "vq", "--beta", "500",
                      "--max-steps", "2", "--lr", "1e-3", "--cache", place / "cache", "-o", place / "dpo"]):
            result = run_vpt([*args, "-q"])
            assert result.exit_code == 0, result.stderr
        runs[place] = {"prefs.parquet": (place / "prefs.parquet").read_bytes(),
                       "synthetic.parquet": (place / "synthetic.parquet").read_bytes(),
                       **{f"negatives/{name}": data for name, data in files(place / "negatives").items()},
                       **{f"{stage}/{name}": (place / stage / name).read_bytes() for stage in ("sft", "dpo")
                          for name in POLICY_FILES}}
    here, moved = runs.values()
    assert sorted(here) == sorted(moved)
    for name in here:
        assert here[name] == moved[name], name
