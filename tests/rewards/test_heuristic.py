"""vpt.rewards.heuristic: values worked out by hand on tiny frame arrays, and monotonicity."""

from __future__ import annotations

import numpy as np
import pytest

from vpt.rewards.heuristic import (
    HEURISTIC_DESCRIPTIONS,
    HEURISTICS,
    brightness,
    flicker,
    luma,
    motion,
    pixel_smoothness,
)

METRICS = [brightness, motion, pixel_smoothness, flicker]


def grey(values, height: int = 4, width: int = 4) -> np.ndarray:
    """Frames of one grey level each: ``values[t]`` everywhere in frame ``t``."""
    return np.broadcast_to(np.asarray(values, np.uint8)[:, None, None, None], (len(values), height, width, 3)).copy()


def square_clip(xs, size: int = 2, height: int = 8, width: int = 16, background: int = 100, square: int = 200):
    """A ``size`` x ``size`` square of grey ``square`` at column ``xs[t]`` (row 2) over a uniform background."""
    frames = np.full((len(xs), height, width, 3), background, np.uint8)
    for t, x in enumerate(xs):
        frames[t, 2 : 2 + size, x : x + size] = square
    return frames


def test_luma_weights():
    frames = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]]], np.uint8)
    out = luma(frames)
    assert out.dtype == np.float32 and out.shape == (1, 1, 4)
    np.testing.assert_allclose(out[0, 0], [0.299 * 255, 0.587 * 255, 0.114 * 255, 255.0], rtol=1e-6)


def test_constant_frames():
    frames = grey([100] * 4)
    assert brightness(frames) == pytest.approx(100 / 255)
    assert motion(frames) == 0.0
    assert pixel_smoothness(frames) == 1.0
    assert flicker(frames) == 1.0


@pytest.mark.parametrize("rgb, expected", [((255, 0, 0), 0.299), ((0, 255, 0), 0.587), ((0, 0, 255), 0.114),
                                           ((255, 255, 255), 1.0), ((0, 0, 0), 0.0)])
def test_brightness_of_pure_colours(rgb, expected):
    frames = np.broadcast_to(np.array(rgb, np.uint8), (2, 3, 5, 3)).copy()
    assert brightness(frames) == pytest.approx(expected, abs=1e-6)


def test_single_pixel_changing():
    # 2x2 frames: black, then one white pixel. Frame means 0 and 63.75; the black frame has no gain to undo, the
    # second is scaled to the clip level 31.875 (gain 0.5), so its white pixel counts as 127.5.
    frames = np.zeros((2, 2, 2, 3), np.uint8)
    frames[1, 0, 0] = 255
    assert motion(frames) == pytest.approx(0.125)  # mean |dL'| = 127.5 / 4 -> / 255
    assert flicker(frames) == pytest.approx(0.75)  # frame means 0 and 63.75
    assert brightness(frames) == pytest.approx(0.125)  # (0 + 63.75) / 2 / 255
    assert pixel_smoothness(frames) == 1.0  # fewer than three frames


def test_black_white_swap_has_no_uint8_wraparound():
    # left half black / right half white, then swapped, then back: every frame has the same mean (gain 1)
    frames = np.zeros((3, 2, 4, 3), np.uint8)
    frames[0, :, 2:] = frames[1, :, :2] = frames[2, :, 2:] = 255
    assert motion(frames) == pytest.approx(1.0, abs=1e-6)  # every pixel changes by 255 at every step
    assert flicker(frames) == pytest.approx(1.0, abs=1e-9)
    assert pixel_smoothness(frames) == pytest.approx(0.0, abs=1e-6)  # middle predicted as frame 0, is its opposite
    assert brightness(frames) == pytest.approx(0.5, abs=1e-6)


def test_global_brightness_change_is_flicker_not_motion():
    ramp = grey([10, 20, 30, 40, 50])
    assert motion(ramp) == pytest.approx(0.0, abs=1e-7)  # every frame rescaled to the level 30
    assert pixel_smoothness(ramp) == pytest.approx(1.0, abs=1e-7)
    assert flicker(ramp) == pytest.approx(1 - 10 / 255)
    # a multiplicative fade of a textured frame is the same: a gain, not motion (up to uint8 rounding)
    base = np.arange(40, 88, dtype=np.float64).reshape(1, 4, 4, 3)
    fade = np.concatenate([np.rint(base * (0.6 + 0.1 * t)) for t in range(6)]).astype(np.uint8)
    raw_change = np.abs(np.diff(fade.astype(np.float64), axis=0)).mean() / 255
    assert raw_change > 0.02 and motion(fade) < 0.002 and pixel_smoothness(fade) > 0.998


def test_jitter_hand_worked():
    # a 1x4 strip with one white pixel at x = 0, 2, 0: the middle frame is predicted as the average of its
    # neighbours (white at x = 0) and is white at x = 2 instead: error 255 on 2 of 4 pixels.
    frames = np.zeros((3, 1, 4, 3), np.uint8)
    frames[0, 0, 0] = frames[1, 0, 2] = frames[2, 0, 0] = 255
    assert pixel_smoothness(frames) == pytest.approx(1 - 0.5)
    assert motion(frames) == pytest.approx(0.5)  # 2 of 4 pixels change by 255 at each step
    assert flicker(frames) == pytest.approx(1.0)


def test_flicker_tells_global_pulse_from_moving_object():
    pulse = grey([100, 120, 100, 120], height=8, width=16)
    moving = square_clip([2, 3, 4, 5])
    assert flicker(pulse) == pytest.approx(1 - 20 / 255)
    assert flicker(moving) == pytest.approx(1.0, abs=1e-9)  # the square moves, the frame mean does not change
    assert flicker(moving) > flicker(pulse)
    # only the square moves: it changes 4 of 128 pixels by 100 grey levels per step; the pulse is no motion
    assert motion(moving) == pytest.approx(4 * 100 / 128 / 255, rel=1e-6)
    assert motion(pulse) == pytest.approx(0.0, abs=1e-7)


def test_single_and_two_frame_clips():
    one = grey([77])
    assert (motion(one), pixel_smoothness(one), flicker(one)) == (0.0, 1.0, 1.0)
    assert brightness(one) == pytest.approx(77 / 255)
    assert pixel_smoothness(grey([0, 200])) == 1.0


def test_more_motion_scores_higher():
    # a 4x4 square moving 1..4 px per frame changes 8 * speed pixels per step
    scores = [motion(square_clip([speed * t for t in range(4)], size=4, width=24)) for speed in (1, 2, 3, 4)]
    assert scores == sorted(scores) and len(set(scores)) == 4
    np.testing.assert_allclose(scores, [8 * s * 100 / (8 * 24) / 255 for s in (1, 2, 3, 4)], rtol=1e-6)


def test_jitter_scores_lower_smoothness():
    steady = square_clip([0, 1, 2, 3, 4, 5], size=4, width=16)
    jittery = square_clip([0, 3, 1, 4, 2, 5], size=4, width=16)
    assert pixel_smoothness(jittery) < pixel_smoothness(steady) < 1.0
    # growing noise on a smooth ramp: strictly falling smoothness
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((8, 6, 6, 1))
    base = np.linspace(60, 130, 8)[:, None, None, None]
    scores = [pixel_smoothness(np.repeat(np.rint(base + a * noise), 3, -1).astype(np.uint8)) for a in (0, 2, 5, 10)]
    assert scores[0] == pytest.approx(1.0, abs=1e-7)
    assert all(a > b for a, b in zip(scores, scores[1:]))


def test_results_are_python_floats_in_unit_range():
    frames = np.random.default_rng(1).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    for metric in METRICS:
        value = metric(frames)
        assert type(value) is float and 0.0 <= value <= 1.0


@pytest.mark.parametrize(
    "frames",
    [np.zeros((2, 4, 4, 3), np.float32), np.zeros((4, 4, 3), np.uint8), np.zeros((2, 4, 4, 4), np.uint8),
     np.zeros((0, 4, 4, 3), np.uint8), [[[[0, 0, 0]]]]],
)
def test_rejects_bad_frames(frames):
    for metric in METRICS:
        with pytest.raises(ValueError):
            metric(frames)


def test_registry():
    assert list(HEURISTICS) == ["brightness", "motion", "pixel-smoothness", "flicker"]
    assert HEURISTICS["pixel-smoothness"] is pixel_smoothness and HEURISTICS["flicker"] is flicker
    assert set(HEURISTIC_DESCRIPTIONS) == set(HEURISTICS)
    assert all(isinstance(text, str) and text and "\n" not in text for text in HEURISTIC_DESCRIPTIONS.values())


def float64_reference(frames: np.ndarray) -> dict[str, float]:
    """The four heuristics written straight from their formulas in float64, with the gains applied per frame."""
    lum = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    means = lum.reshape(len(lum), -1).mean(axis=1)
    level = means.mean()
    gains = np.where(means > 1e-3, level / np.maximum(means, 1e-3), 1.0)
    normalised = lum * gains[:, None, None]
    return {
        "brightness": means.mean() / 255,
        "motion": np.abs(np.diff(normalised, axis=0)).mean() / 255 if len(lum) > 1 else 0.0,
        "pixel-smoothness": (1 - np.abs(normalised[1:-1] - (normalised[:-2] + normalised[2:]) / 2).mean() / 255
                             if len(lum) > 2 else 1.0),
        "flicker": 1 - np.abs(np.diff(means)).mean() / 255 if len(lum) > 1 else 1.0,
    }


@pytest.mark.parametrize("seed, shape", [(0, (7, 9, 11, 3)), (1, (2, 5, 5, 3)), (2, (1, 4, 6, 3)), (3, (12, 16, 8, 3))])
@pytest.mark.parametrize("block_frames", [1, 2, 3, None])  # frames per block: block edges anywhere, or one block
@pytest.mark.parametrize("black", [(), (0,), ("middle",), ("middle", -1)])
def test_one_pass_equals_the_float64_formulas(seed, shape, block_frames, black, monkeypatch):
    import vpt.rewards.heuristic as heuristic

    if block_frames is not None:
        monkeypatch.setattr(heuristic, "_BLOCK_VALUES", block_frames * shape[1] * shape[2])
    frames = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    for position in black:  # a black frame keeps its own values
        frames[len(frames) // 2 if position == "middle" else position] = 0
    expected = float64_reference(frames)
    for name, metric in HEURISTICS.items():
        assert metric(frames) == pytest.approx(expected[name], rel=1e-6, abs=1e-7), name


def test_an_all_black_clip():
    frames = np.zeros((5, 4, 6, 3), np.uint8)
    assert [metric(frames) for metric in METRICS] == [0.0, 0.0, 1.0, 1.0]


def test_heuristics_together_are_one_model_with_the_same_values():
    from vpt.io.video import DecodedVideo
    from vpt.rewards.heuristic import HeuristicReward

    clips = [np.random.default_rng(seed).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8) for seed in range(3)]
    videos = [DecodedVideo(frames=clip, info=None, indices=np.arange(5)) for clip in clips]
    model = HeuristicReward(["flicker", "brightness", "pixel-smoothness"])
    assert (model.name, model.dimensions, model.primary) == (
        "flicker,brightness,pixel-smoothness", ("flicker", "brightness", "pixel_smoothness"), "flicker")
    scores = model.score(videos, [None] * 3)
    for name in model.names:
        assert scores[name.replace("-", "_")].tolist() == [HEURISTICS[name](clip) for clip in clips]


def test_heuristics_named_twice_are_refused():
    from vpt.errors import VptError
    from vpt.rewards.heuristic import HeuristicReward

    with pytest.raises(VptError, match="two reward models write the column 'motion'"):
        HeuristicReward(["motion", "brightness", "motion"])


def test_loading_several_models_bundles_the_heuristics_in_place():
    from vpt.rewards.registry import load_reward_models

    models = load_reward_models(["motion", "flicker"])
    assert [model.name for model in models] == ["motion,flicker"]
    assert [model.dimensions for model in models] == [("motion", "flicker")]
