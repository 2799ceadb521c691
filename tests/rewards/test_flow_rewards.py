"""The optical-flow rewards and their estimator: expected values on hand-made clips, the toy world's ranking (real
mp4s, real decode) and the command line."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from vpt.errors import VptError
from vpt.io.video import DecodedVideo, VideoInfo, decode, write_video
from vpt.models.optical_flow import estimate_flow
from vpt.rewards.flow import DynamicDegree, dynamic_degree, motion_smoothness, vbench_stride
from vpt.rewards.registry import load_reward_model
from vpt.toyworld import render_clip, sample_attributes


def texture(size: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth random grey texture as uint8 RGB [size, size, 3]: structure at every pixel for the flow to track."""
    import cv2

    noise = np.random.default_rng(seed).random((size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 1.5)
    grey = np.clip((smooth - smooth.mean()) * 900 + 128, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def translating(shifts, size: int = 64, seed: int = 0) -> np.ndarray:
    """Windows of one texture whose content sits at ``shifts[t] = (x, y)`` pixels in frame t: uint8 [T, size, size,
    3]; the content moves by ``shifts[t + 1] - shifts[t]`` between frames."""
    canvas = texture(2 * size, seed)
    corner = size // 2
    return np.stack([canvas[corner - y : corner - y + size, corner - x : corner - x + size] for x, y in shifts])


def auc(positives, negatives) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    positives, negatives = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(((positives > negatives).sum() + 0.5 * (positives == negatives).sum()) / (positives.size *
                                                                                            negatives.size))


# ------------------------------------------------------------------------------------------------------ estimator


@pytest.mark.parametrize("shift", [(2, 0), (0, -3), (3, 2)])
def test_the_flow_of_a_translated_texture_is_the_shift(shift):
    flow = estimate_flow(translating([(0, 0), shift]))
    assert flow.shape == (1, 64, 64, 2) and flow.dtype == np.float32
    inner = flow[0, 8:-8, 8:-8]  # away from the borders, where content enters the frame
    assert np.linalg.norm(inner - np.array(shift, np.float32), axis=-1).mean() < 0.2


def test_the_estimate_is_the_same_on_every_run_and_zero_on_still_frames():
    frames = translating([(0, 0), (2, 1), (4, 2)])
    np.testing.assert_array_equal(estimate_flow(frames), estimate_flow(frames))
    assert not estimate_flow(np.repeat(frames[:1], 3, axis=0)).any()


def test_small_and_wide_frames_are_padded_not_crashed_on():
    # OpenCV 5.1's DIS segfaults on 12x40 frames and refuses 8x8 ones; the estimator pads them
    for height, width in [(12, 40), (8, 8), (1, 1)]:
        frames = translating([(0, 0), (1, 0)])[:, :height, :width]
        assert estimate_flow(frames).shape == (1, height, width, 2)


# ------------------------------------------------------------------------------------------------- dynamic degree


def test_a_still_clip_has_no_dynamic_degree():
    still = np.repeat(translating([(0, 0)]), 9, axis=0)
    assert dynamic_degree(still) == (0.0, 0.0)
    assert dynamic_degree(still[:1]) == (0.0, 0.0)


@pytest.mark.parametrize("speed, expected", [(1, (4.0, 0.0)), (2, (8.0, 1.0))])
def test_dynamic_degree_of_a_steady_translation(speed, expected):
    # 64x64: scale = 64/256, so `speed` px per frame is 4 * speed px at 256; VBench's threshold is 6 * 64/256 = 1.5 px
    frames = translating([(speed * t, 0) for t in range(9)])
    degree, dynamic = dynamic_degree(frames)
    # the top 5 % of estimated magnitudes pick the estimator's overshoots too: a few percent above the truth
    assert (degree, dynamic) == (pytest.approx(expected[0], rel=0.06), expected[1])


def test_vbench_reads_about_8_frames_per_second():
    assert [vbench_stride(fps) for fps in (4, 8, 12, 16, 24, 30, 60)] == [1, 1, 2, 2, 3, 4, 8]  # round(1.5) = 2
    frames = translating([(t, 0) for t in range(13)])
    info = VideoInfo(path="clip.mp4", fps=24.0, frames=13, height=64, width=64)
    scores = DynamicDegree().score([DecodedVideo(frames, info, np.arange(13))], [None])
    # every third frame: 3 px per sampled pair -> 12 px at 256, dynamic
    assert (scores["dynamic_degree"][0], scores["dynamic"][0]) == (pytest.approx(12.0, rel=0.06), 1.0)
    assert scores["dynamic_degree"].dtype == np.float64


# ---------------------------------------------------------------------------------------------- motion smoothness


def test_still_frames_are_perfectly_smooth():
    assert motion_smoothness(np.repeat(translating([(0, 0)]), 5, axis=0)) == 1.0
    assert motion_smoothness(translating([(0, 0), (3, 0)])) == 1.0  # no interior frame


def test_steady_motion_is_smoother_than_the_same_frames_out_of_order():
    steady = translating([(2 * t, t) for t in range(9)])
    shuffled = steady[np.random.default_rng(0).permutation(9)]
    shaken = translating([(2 * t + 3 * (t % 2), t) for t in range(9)])
    assert motion_smoothness(steady) > 0.99
    assert motion_smoothness(steady) > motion_smoothness(shaken) + 0.02
    assert motion_smoothness(steady) > motion_smoothness(shuffled) + 0.02


# ---------------------------------------------------------------------------------------------------- toy world


@pytest.fixture(scope="module")
def toy_sweeps(tmp_path_factory):
    """Scores of toy clips (17 frames, 64x64, written and decoded as mp4) over 8 seeds that differ only in speed
    (0 or 3, no jitter) or only in jitter (0, 2 or 3 at speed 2); no flicker and no freeze."""
    directory = tmp_path_factory.mktemp("flow-sweeps")
    degree, smoothness = {0: [], 3: []}, {0: [], 2: [], 3: []}
    for seed in range(8):
        base = {**sample_attributes(np.random.default_rng(seed)), "flicker": 0.0, "frozen_frames": 0}

        def decoded(**attrs):
            path = directory / f"clip-{seed}.mp4"
            write_video(path, render_clip({**base, **attrs}, 17, 64, 64), fps=8)
            return decode(path).frames

        for speed in degree:
            degree[speed].append(dynamic_degree(decoded(speed=float(speed), jitter=0.0)))
        for jitter in smoothness:
            smoothness[jitter].append(motion_smoothness(decoded(speed=2.0, jitter=float(jitter))))
    return degree, smoothness


def test_dynamic_degree_ranks_fast_clips_above_still_ones(toy_sweeps):
    degree, _ = toy_sweeps
    assert auc([d for d, _ in degree[3]], [d for d, _ in degree[0]]) >= 0.9
    assert [dynamic for _, dynamic in degree[3]] == [1.0] * 8  # 3 px/frame at 64 px = 12 px at 256 > 6
    assert [dynamic for _, dynamic in degree[0]] == [0.0] * 8
    assert max(d for d, _ in degree[0]) < 0.5  # codec noise only


def test_motion_smoothness_ranks_steady_clips_above_jittered_ones(toy_sweeps):
    _, smoothness = toy_sweeps
    assert auc(smoothness[0], smoothness[2] + smoothness[3]) >= 0.9
    assert auc(smoothness[2], smoothness[3]) >= 0.75  # more shake, less smooth


# -------------------------------------------------------------------------------------------- registry and CLI


def test_the_flow_models_take_no_weights():
    assert load_reward_model("dynamic-degree").dimensions == ("dynamic_degree", "dynamic")
    assert load_reward_model("motion-smoothness").dimensions == ("motion_smoothness",)
    with pytest.raises(VptError, match=r"^dynamic-degree:/w: dynamic-degree takes no weights; name it bare "
                                       r"\(--model dynamic-degree\)$"):
        load_reward_model("dynamic-degree:/w")


def test_vpt_score_writes_both_flow_models_columns(run_vpt, tmp_path):
    still = np.repeat(translating([(0, 0)]), 9, axis=0)
    write_video(tmp_path / "still.mp4", still, fps=8)
    write_video(tmp_path / "moving.mp4", translating([(2 * t, 0) for t in range(9)]), fps=8)
    result = run_vpt(["score", "-q", "-m", "dynamic-degree,motion-smoothness", tmp_path])
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(io.BytesIO(result.stdout))
    assert table.column_names == ["id", "path", "prompt", "model", "score", "error", "dynamic_degree", "dynamic",
                                  "motion_smoothness"]
    rows = {row["id"]: row for row in table.to_pylist()}
    assert rows["still"]["model"] == "dynamic-degree,motion-smoothness"
    assert (rows["still"]["score"], rows["still"]["dynamic"], rows["still"]["motion_smoothness"]) == (0.0, 0.0, 1.0)
    assert rows["moving"]["dynamic"] == 1.0 and rows["moving"]["score"] == rows["moving"]["dynamic_degree"] > 6
    assert rows["moving"]["motion_smoothness"] > 0.98
