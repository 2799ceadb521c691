"""The toy world renders what its attributes say, deterministically, and writes decodable clips + a manifest."""

import numpy as np
import pytest

from vpt import toyworld
from vpt.toyworld import COLORS, DIRECTIONS, SHAPES, describe, render_clip, sample_attributes, toy_clips


def plain(**overrides) -> dict:
    """Attributes of a defect-free clip (no jitter, freeze or flicker), with overrides."""
    attrs = sample_attributes(np.random.default_rng(7))
    attrs.update(jitter=0.0, frozen_start=0, frozen_frames=0, flicker=0.0, brightness=0.3, color="yellow")
    attrs.update(overrides)
    return attrs


def shape_box(frame: np.ndarray, background: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels that differ from the background colour."""
    ys, xs = np.nonzero(np.any(frame != background, axis=-1))
    assert len(xs), "no shape in frame"
    return xs.min(), ys.min(), xs.max(), ys.max()


def spearman(a, b) -> float:
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731 (values are continuous: no ties)
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def test_attributes_and_clips_are_deterministic_per_seed():
    first, again, other = (sample_attributes(np.random.default_rng(s)) for s in (3, 3, 4))
    assert first == again and first != other
    a, b = toy_clips(3, seed=5, frames=9, height=32, width=32), toy_clips(3, seed=5, frames=9, height=32, width=32)
    assert [x for x, _ in a] == [x for x, _ in b]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert not np.array_equal(a[0][1], toy_clips(1, seed=6, frames=9, height=32, width=32)[0][1])


def test_attributes_cover_the_declared_ranges():
    rng = np.random.default_rng(0)
    samples = [sample_attributes(rng, frames=17) for _ in range(400)]
    assert {s["color"] for s in samples} == set(COLORS)
    assert {s["shape"] for s in samples} == set(SHAPES)
    assert {s["direction"] for s in samples} == set(DIRECTIONS)
    assert {s["speed"] for s in samples} == {0.0, 1.0, 2.0, 3.0}
    assert all(0.1 <= s["brightness"] <= 0.9 for s in samples)
    assert 0 < np.mean([s["jitter"] > 0 for s in samples]) < 1
    assert 0 < np.mean([s["flicker"] > 0 for s in samples]) < 1
    frozen = [s for s in samples if s["frozen_frames"]]
    assert 0 < len(frozen) < len(samples)
    assert all(s["frozen_start"] >= 1 and s["frozen_start"] + s["frozen_frames"] <= 17 for s in frozen)
    assert all(s["frozen_start"] == 0 for s in samples if not s["frozen_frames"])


def test_rendered_clip_is_uint8_thwc_and_the_shape_is_small():
    attrs = plain(shape="square", size=0.3)
    video = render_clip(attrs, 17, 64, 64)
    assert video.dtype == np.uint8 and video.shape == (17, 64, 64, 3)
    background = np.full(3, round(0.3 * 255), np.uint8)
    area = np.any(video[0] != background, axis=-1).mean()
    assert 0.05 <= area <= 0.10


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mean_luma_ranks_clips_in_brightness_order(seed):
    clips = toy_clips(24, seed=seed)
    luma = [(video.astype(np.float64) @ [0.299, 0.587, 0.114]).mean() for _, video in clips]
    assert spearman(luma, [attrs["brightness"] for attrs, _ in clips]) >= 0.95


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("speed", [1, 2, 3])
def test_a_jitter_free_shape_moves_exactly_speed_pixels_per_frame(direction, speed):
    video = render_clip(plain(direction=direction, speed=float(speed), shape="circle"), 17, 64, 64)
    background = video[0, 0, 0] if not np.array_equal(video[0, 0, 0], COLORS["yellow"]) else video[0, -1, -1]
    boxes = np.array([shape_box(frame, background) for frame in video])
    step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    assert (np.diff(boxes, axis=0) == [step[0] * speed, step[1] * speed] * 2).all()
    assert np.array_equal(video[1], np.roll(video[0], (step[1] * speed, step[0] * speed), axis=(0, 1)))


def test_the_path_stays_in_the_frame_when_it_fits():
    for attrs, video in toy_clips(40, seed=11, frames=9, height=32, width=32):
        if attrs["jitter"] == 0 and attrs["speed"] * 8 + toyworld.shape_side(attrs, 32, 32) <= 32:
            mask = np.any(video != video[:, :1, :1], axis=-1)
            assert mask.any(axis=(1, 2)).all(), "the shape left the frame"


def test_a_still_shape_does_not_move():
    video = render_clip(plain(speed=0.0), 9, 32, 32)
    assert all(np.array_equal(frame, video[0]) for frame in video)


def test_jitter_displaces_every_odd_frame_from_its_even_neighbour():
    attrs = plain(speed=0.0, jitter=2.0, shape="square")
    video = render_clip(attrs, 17, 64, 64)
    background = np.full(3, round(0.3 * 255), np.uint8)
    boxes = np.array([shape_box(frame, background) for frame in video])
    assert (boxes[0::2] == boxes[0]).all()  # even frames: no shake
    offsets = boxes[1::2, :2] - boxes[0, :2]
    assert (np.abs(offsets) == 2).all()  # odd frames: displaced by the amplitude on both axes
    assert len({tuple(o) for o in offsets}) > 1  # random signs
    assert not any(np.array_equal(video[t], video[t + 1]) for t in range(0, 16, 2))


def test_frozen_span_repeats_one_frame_exactly():
    attrs = plain(speed=2.0, frozen_start=4, frozen_frames=5)
    video = render_clip(attrs, 17, 64, 64)
    assert all(np.array_equal(video[t], video[4]) for t in range(5, 9))
    assert not np.array_equal(video[3], video[4]) and not np.array_equal(video[9], video[8])
    # after the freeze the clip is back on its timeline (a jump)
    assert np.array_equal(video[9], render_clip({**attrs, "frozen_frames": 0}, 17, 64, 64)[9])


def test_flicker_scales_whole_frames_and_averages_out():
    steady = render_clip(plain(speed=0.0, brightness=0.5), 17, 64, 64).astype(np.float64)
    flicker = render_clip(plain(speed=0.0, brightness=0.5, flicker=0.2), 17, 64, 64).astype(np.float64)
    steady_means, flicker_means = steady.mean(axis=(1, 2, 3)), flicker.mean(axis=(1, 2, 3))
    assert np.ptp(steady_means) == 0
    assert np.ptp(flicker_means / steady_means) > 0.2
    assert abs(flicker.mean() / steady.mean() - 1) < 0.02


def test_prompts_describe_the_clip_in_words():
    rng = np.random.default_rng(1)
    for _ in range(50):
        attrs = sample_attributes(rng)
        prompt = describe(attrs)
        assert attrs["color"] in prompt and attrs["shape"] in prompt and prompt.endswith("background")
        assert toyworld.brightness_word(attrs["brightness"]) in prompt
        if attrs["speed"] > 0:
            assert toyworld.speed_word(attrs["speed"]) in prompt
            assert {"left": "left", "right": "right", "up": "upward", "down": "downward"}[attrs["direction"]] in prompt
        else:
            assert "still" in prompt
    attrs = plain(color="red", shape="circle", speed=1.0, direction="left", brightness=0.85)
    assert describe(attrs) == "a red circle moving slowly to the left on a very bright background"


def test_write_toy_videos_writes_decodable_clips_and_a_manifest(tmp_path):
    from vpt.io.tables import check_table, read_table
    from vpt.io.video import decode, probe

    manifest = toyworld.write_toy_videos(tmp_path / "toy", n=4, seed=3, frames=9, height=32, width=48, fps=6.0)
    assert manifest == tmp_path / "toy" / "videos.parquet"
    check_table(manifest, "videos")
    rows = read_table(manifest).to_pylist()
    assert [r["id"] for r in rows] == [f"toy-{i:04d}" for i in range(4)]
    clips = toy_clips(4, seed=3, frames=9, height=32, width=48)
    for row, (attrs, video) in zip(rows, clips):
        assert row["path"] == f"clips/{row['id']}.mp4"
        assert row["prompt"] == describe(attrs) and row["prompt_id"] == toyworld.prompt_id(row["prompt"])
        assert (row["fps"], row["frames"], row["height"], row["width"], row["seed"]) == (6.0, 9, 32, 48, 3)
        for key in ("brightness", "color", "shape", "speed", "direction", "jitter", "frozen_start",
                    "frozen_frames", "flicker"):
            assert row[key] == attrs[key], key
        info = probe(manifest.parent / row["path"])
        assert (info.frames, info.height, info.width) == (9, 32, 48) and info.fps == pytest.approx(6.0)
        decoded = decode(manifest.parent / row["path"]).frames
        assert decoded.shape == video.shape
        assert np.abs(decoded.astype(np.float64) - video).mean() < 6  # near-lossless H.264 (crf 10)


def test_cli_toy_videos(tmp_path, run_vpt):
    result = run_vpt(["zoo", "toy-videos", tmp_path / "toy", "--n", "2", "--frames", "5", "--height", "32",
                      "--width", "32", "--seed", "1"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "toy" / "videos.parquet").is_file()
    assert sorted(p.name for p in (tmp_path / "toy" / "clips").iterdir()) == ["toy-0000.mp4", "toy-0001.mp4"]
    assert "videos.parquet" in result.stderr and result.stdout == b""
    bad = run_vpt(["zoo", "toy-videos", tmp_path / "odd", "--height", "33"])
    assert bad.exit_code == 2 and "must be even" in bad.stderr
