"""The heuristic rewards measure what the toy world's manifest says about each clip (real mp4s, real decode)."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from vpt.io.video import decode, write_video
from vpt.rewards.heuristic import HEURISTICS
from vpt.toyworld import render_clip, sample_attributes, write_toy_videos


def average_ranks(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # ties share their mean rank
        ranks[values == value] = ranks[values == value].mean()
    return ranks


def spearman(a, b) -> float:
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


@pytest.fixture(scope="module", params=[0, 1, 2])
def scored_world(request, tmp_path_factory, run_vpt):
    """A 24-clip toy world per seed, scored by `vpt score` with all four heuristics."""
    manifest = write_toy_videos(tmp_path_factory.mktemp(f"world{request.param}"), n=24, seed=request.param)
    result = run_vpt(["score", "-q", "-m", "brightness,motion,pixel-smoothness,flicker", manifest])
    assert result.exit_code == 0, result.stderr
    return pq.read_table(manifest).to_pylist(), pq.read_table(io.BytesIO(result.stdout)).to_pylist()


def test_brightness_ranks_clips_in_true_brightness_order(scored_world):
    truth, scores = scored_world
    assert spearman([r["brightness"] for r in scores], [r["brightness"] for r in truth]) >= 0.95


def test_flicker_scores_every_steady_clip_above_every_flickering_one(scored_world):
    truth, scores = scored_world
    steady = [s["flicker"] for t, s in zip(truth, scores) if t["flicker"] == 0]
    flickering = [s["flicker"] for t, s in zip(truth, scores) if t["flicker"] > 0]
    assert steady and flickering
    assert min(steady) > max(flickering)


def sweep(tmp_path, seed: int, attribute: str, values) -> dict[str, list[float]]:
    """Score clips that differ only in ``attribute`` (written and decoded as mp4)."""
    base = sample_attributes(np.random.default_rng(seed))
    base.update(speed=2.0, jitter=0.0, flicker=0.0, frozen_frames=0, brightness=0.3, color="yellow")
    scores = {name: [] for name in HEURISTICS}
    for value in values:
        path = tmp_path / f"{attribute}-{value}.mp4"
        write_video(path, render_clip({**base, attribute: value}, 17, 64, 64), fps=8)
        frames = decode(path).frames
        for name, metric in HEURISTICS.items():
            scores[name].append(metric(frames))
    return scores


def strictly_increasing(values) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motion_grows_with_speed(tmp_path, seed):
    scores = sweep(tmp_path, seed, "speed", [0.0, 1.0, 2.0, 3.0])
    assert strictly_increasing(scores["motion"])
    assert scores["motion"][0] < 0.2 * scores["motion"][1]  # a still shape is (codec noise aside) no motion


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothness_falls_with_jitter(tmp_path, seed):
    scores = sweep(tmp_path, seed, "jitter", [0.0, 1.0, 2.0, 3.0])
    assert strictly_increasing(scores["pixel-smoothness"][::-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flicker_is_seen_by_flicker_not_by_motion(tmp_path, seed):
    scores = sweep(tmp_path, seed, "flicker", [0.0, 0.1, 0.2])
    assert strictly_increasing(scores["flicker"][::-1])
    flicker_drop = scores["flicker"][0] - scores["flicker"][2]
    assert abs(scores["motion"][2] - scores["motion"][0]) < 0.25 * flicker_drop
