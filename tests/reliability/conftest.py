"""The standing bad-input and interruption suite: one small world shared by every test of the session."""

from __future__ import annotations

import shutil

import pytest

from reliability_world import SAMPLER, World


@pytest.fixture(scope="session")
def world(run_vpt, tiny_zoo, tmp_path_factory) -> World:
    from vpt.toyworld import write_toy_videos

    root = tmp_path_factory.mktemp("reliability")
    toy = write_toy_videos(root / "toy", n=6, seed=0, frames=9, height=32, width=32)
    clips = root / "toy" / "clips"
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    whole = (clips / "toy-0001.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (bad / "text.mp4").write_text("not a video\n")
    unicode_clip = root / "ünï cödé" / "sp ace" / "clip é 1.mp4"
    unicode_clip.parent.mkdir(parents=True)
    shutil.copyfile(clips / "toy-0002.mp4", unicode_clip)
    prompts = root / "prompts.txt"
    prompts.write_text("a red ball\na blue cube\n")
    rollouts = root / "rollouts"
    for args in (["sample-rollouts", "-m", tiny_zoo, "--prompts", prompts, "-g", "3", "-o", rollouts, *SAMPLER],
                 ["score", "-m", "brightness,motion", rollouts / "rollouts.parquet", "-o", root / "scores.parquet",
                  "-q"],
                 ["score", "-m", "brightness", toy, "-o", root / "toy-scores.parquet", "-q"],
                 ["build-prefs", "--from-scores", root / "scores.parquet", "--videos", rollouts / "rollouts.parquet",
                  "--reward", "brightness", "--label", "vq", "-o", root / "prefs.parquet", "-q"]):
        result = run_vpt(args)
        assert result.exit_code == 0, result.stderr
    return World(root=root, zoo=tiny_zoo, toy=toy, clips=clips, bad=bad, unicode_clip=unicode_clip, prompts=prompts,
                 rollouts=rollouts, scores=root / "scores.parquet", prefs=root / "prefs.parquet",
                 toy_scores=root / "toy-scores.parquet")

