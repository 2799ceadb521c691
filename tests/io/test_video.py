"""vpt.io.video: real mp4 round trips, the VideoAlign frame rule, resizing, bad files, atomic writes."""

from __future__ import annotations

import os
import re
from fractions import Fraction

import av
import numpy as np
import pytest

from vpt.errors import VideoReadError
from vpt.io import video
from vpt.io.video import (
    DecodedVideo,
    FrameSampling,
    VideoInfo,
    decode,
    probe,
    read_frames,
    resize_frames,
    uniform_indices,
    videoalign_indices,
    write_video,
)


def smooth_clip(frames: int, height: int, width: int) -> np.ndarray:
    """Smooth colour gradients that drift over time (the kind of content a codec keeps well)."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    r = 128 + 80 * np.sin(np.pi * x / width + 0.3 * t)
    g = 128 + 80 * np.cos(np.pi * y / height - 0.2 * t)
    b = 128 + 60 * np.sin(np.pi * (x + y) / (width + height) + 0.1 * t)
    return np.clip(np.rint(np.stack(np.broadcast_arrays(r, g, b), -1)), 0, 255).astype(np.uint8)


def grey_clip(frames: int, height: int, width: int) -> np.ndarray:
    return np.rint(smooth_clip(frames, height, width).mean(-1, keepdims=True)).astype(np.uint8).repeat(3, -1)


@pytest.fixture(scope="module")
def clip48(tmp_path_factory):
    """48 frames at 24 fps, 48x80 (decord path), written once for the module."""
    frames = smooth_clip(48, 48, 80)
    path = tmp_path_factory.mktemp("clip48") / "clip.mp4"
    write_video(path, frames, fps=24)
    return path, frames


# --- writing, probing, decoding ----------------------------------------------------------------------------------


# Measured mean absolute error of smooth colour content through libx264 yuv420p at crf 10 (decord 0.6.0, PyAV 18.1):
# 1.84 (32x48), 1.53 (64x64), 1.63 (48x80), 1.41 (96x128); max single error 7..10. The loss is mostly the 4:2:0
# chroma subsampling (crf 0 is only ~0.1 better), so the bound is 2.5 with a margin, and 16 for any one value.
@pytest.mark.parametrize(
    "fps, count, height, width",
    [(4, 8, 32, 48), (8, 16, 64, 64), (24, 48, 48, 80), (30, 30, 96, 128)],
)
def test_write_probe_decode_round_trip(tmp_path, fps, count, height, width):
    frames = smooth_clip(count, height, width)
    path = tmp_path / "v.mp4"
    write_video(path, frames, fps=fps)

    info = probe(path)
    assert info == VideoInfo(path=str(path), fps=float(fps), frames=count, height=height, width=width)
    assert info.duration == pytest.approx(count / fps)

    decoded = read_frames(path)
    assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
    error = np.abs(decoded.astype(np.float64) - frames)
    assert error.mean() < 2.5
    assert error.max() <= 16


def test_grey_content_is_near_lossless_at_crf_0(tmp_path):
    # Without chroma the only loss at crf 0 is the RGB <-> limited-range YUV rounding: measured max 1, mean 0.50.
    # At crf 10 grey content measured mean 0.62..0.66, max <= 5.
    frames = grey_clip(12, 32, 64)
    write_video(tmp_path / "lossless.mp4", frames, fps=8, crf=0)
    write_video(tmp_path / "crf10.mp4", frames, fps=8)
    lossless = np.abs(read_frames(tmp_path / "lossless.mp4").astype(int) - frames)
    crf10 = np.abs(read_frames(tmp_path / "crf10.mp4").astype(int) - frames)
    assert lossless.max() <= 1 and lossless.mean() < 0.6
    assert crf10.mean() < 1.0 and crf10.max() <= 8


@pytest.mark.parametrize("fps, expected", [(2.5, Fraction(5, 2)), (30000 / 1001, Fraction(30000, 1001)), (12.5, 12.5)])
def test_fractional_frame_rates_survive(tmp_path, fps, expected):
    write_video(tmp_path / "v.mp4", grey_clip(6, 16, 32), fps=fps)
    assert probe(tmp_path / "v.mp4").fps == pytest.approx(float(expected), rel=1e-9)


def test_write_without_extension_and_into_new_directories(tmp_path):
    target = tmp_path / "a" / "b" / "clip"  # no .mp4 suffix: the format is named explicitly
    write_video(target, grey_clip(4, 16, 32), fps=4)
    assert probe(target).frames == 4
    assert [p.name for p in target.parent.iterdir()] == ["clip"]  # no temporary left behind


def test_read_frames_subsets_in_given_order_with_repeats(clip48):
    path, _ = clip48
    every = read_frames(path)
    picked = read_frames(path, [47, 0, 5, 5, 31])
    np.testing.assert_array_equal(picked, every[[47, 0, 5, 5, 31]])
    assert read_frames(path, np.array([], dtype=np.int64)).shape == (0, 48, 80, 3)


@pytest.mark.parametrize("indices", [[48], [-1], [[0, 1]], [0.5]])
def test_read_frames_rejects_bad_indices(clip48, indices):
    with pytest.raises(ValueError):
        read_frames(clip48[0], indices)


@pytest.mark.parametrize("width", [16, 48])  # widths decord 0.6.0 cannot return: decoded with PyAV
def test_widths_decord_cannot_handle_are_decoded_with_pyav(tmp_path, width):
    frames = grey_clip(10, 32, width)
    write_video(tmp_path / "v.mp4", frames, fps=8)
    every = read_frames(tmp_path / "v.mp4")
    assert every.shape == frames.shape
    assert np.abs(every.astype(int) - frames).mean() < 1.0
    np.testing.assert_array_equal(read_frames(tmp_path / "v.mp4", [9, 2, 2]), every[[9, 2, 2]])


def test_pyav_fallback_matches_decord_bit_for_bit(clip48):
    path, _ = clip48
    info = probe(path)
    indices = np.array([0, 7, 7, 30, 47])
    np.testing.assert_array_equal(video._decode_pyav(info, indices), video._decode_decord(info, indices))


def test_decode_with_each_sampling_mode(clip48):
    path, frames = clip48
    everything = decode(path)
    assert isinstance(everything, DecodedVideo)
    assert everything.frames.shape == frames.shape
    np.testing.assert_array_equal(everything.indices, np.arange(48))
    assert everything.info == probe(path)

    two_fps = decode(path, FrameSampling(mode="fps"))  # 2 s at 24 fps -> 4 frames
    np.testing.assert_array_equal(two_fps.indices, [0, 16, 31, 47])
    np.testing.assert_array_equal(two_fps.frames, everything.frames[[0, 16, 31, 47]])

    counted = decode(path, FrameSampling(mode="count", count=6, height=24, width=40))
    np.testing.assert_array_equal(counted.indices, [0, 9, 19, 28, 38, 47])
    assert counted.frames.shape == (6, 24, 40, 3)
    assert (counted.info.height, counted.info.width) == (48, 80)  # info describes the file
    assert counted.indices.dtype == np.int64


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "every"}, {"mode": "count"}, {"mode": "count", "count": 0}, {"height": 32}, {"width": 32},
     {"height": 0, "width": 4}, {"mode": "fps", "fps": 0}, {"mode": "fps", "min_frames": 10, "max_frames": 8}],
)
def test_frame_sampling_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        FrameSampling(**kwargs)


def test_frame_sampling_is_hashable():  # consumers key decoded videos by their sampling
    assert len({FrameSampling(), FrameSampling(), FrameSampling(mode="fps")}) == 2


# --- frame indices -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames, fps, expected",
    [
        (48, 24, [0, 16, 31, 47]),  # 2 s at 2 fps = 4 frames; linspace 0, 15.67, 31.33, 47
        (300, 30, [0, 16, 31, 47, 63, 79, 94, 110, 126, 142, 157, 173, 189, 205, 220, 236, 252, 268, 283, 299]),
        (10, 30, [0, 3, 6, 9]),  # 0.67 wanted -> clamped up to min_frames
        (78, 30, [0, 15, 31, 46, 62, 77]),  # 5.2 wanted -> nearest even 6; linspace step 15.4
        (75, 30, [0, 25, 49, 74]),  # 5.0 wanted -> tie: 2 * round(2.5) = 4 (ties to even, as the reference)
        (105, 30, [0, 15, 30, 45, 59, 74, 89, 104]),  # 7.0 wanted -> tie: 2 * round(3.5) = 8
        (7, 1, [0, 1, 2, 4, 5, 6]),  # 14 wanted, capped at the clip: 7 frames -> 6 (even)
        (6, 1, [0, 1, 2, 3, 4, 5]),
        (5, 30, [0, 1, 3, 4]),  # shorter than 2 s but >= min_frames
    ],
)
def test_videoalign_indices_hand_worked(num_frames, fps, expected):
    got = videoalign_indices(num_frames, fps)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_videoalign_indices_caps_long_videos_at_max_frames():
    hour = videoalign_indices(30 * 3600, 30)  # 7200 wanted
    assert len(hour) == 768 and hour[0] == 0 and hour[-1] == 30 * 3600 - 1
    assert np.all(np.diff(hour) > 0)
    assert len(videoalign_indices(30 * 3600, 30, max_frames=63)) == 62  # odd maximum rounded down to even


def test_videoalign_indices_target_fps_and_minimum():
    assert videoalign_indices(48, 24, target_fps=4).tolist() == [0, 7, 13, 20, 27, 34, 40, 47]
    assert len(videoalign_indices(48, 24, min_frames=5)) == 6  # odd minimum rounded up to even
    for num_frames in range(1, 200):
        for fps in (8, 16, 24, 30):
            count = len(videoalign_indices(num_frames, fps))
            assert count % 2 == 0 and 4 <= count <= max(4, num_frames)


@pytest.mark.parametrize(
    "num_frames, expected",
    [(3, [0, 1, 1, 2]), (1, [0, 0, 0, 0]), (2, [0, 0, 1, 1])],
)
def test_videoalign_indices_clips_shorter_than_min_frames_repeat_frames(num_frames, expected):
    # Documented choice: still min_frames (rounded up to even) indices, spread over the clip with repeats.
    assert videoalign_indices(num_frames, 24).tolist() == expected


@pytest.mark.parametrize("args", [(0, 24), (10, 0), (10, -1), (10, 24, 0), (10, 24, 2, 0), (10, 24, 2, 8, 4)])
def test_videoalign_indices_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        videoalign_indices(*args)


def test_uniform_indices():
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_indices(10, 1).tolist() == [0]
    assert uniform_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert uniform_indices(3, 5).tolist() == [0, 0, 1, 2, 2]  # linspace 0, .5, 1, 1.5, 2; ties to even
    assert uniform_indices(10, 4).dtype == np.int64
    for bad in [(0, 3), (4, 0)]:
        with pytest.raises(ValueError):
            uniform_indices(*bad)


# --- resizing ------------------------------------------------------------------------------------------------------


def test_resize_keeps_constant_frames_and_shapes():
    frames = np.full((3, 20, 30, 3), (10, 120, 250), np.uint8)
    out = resize_frames(frames, 7, 11)
    assert out.shape == (3, 7, 11, 3) and out.dtype == np.uint8
    assert (out == np.array([10, 120, 250], np.uint8)).all()
    same = resize_frames(frames, 20, 30)
    np.testing.assert_array_equal(same, frames)
    assert same is not frames
    assert resize_frames(frames, 40, 60).shape == (3, 40, 60, 3)


def test_resize_antialiases_when_shrinking():
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    frames = np.repeat(checker[None, :, :, None], 3, -1)
    half = resize_frames(frames, 16, 16)
    # averaged, not sampled (plain bilinear would give 0 or 255 here); the border sees the edge clamp
    assert np.abs(half[:, 1:-1, 1:-1].astype(int) - 127.5).max() <= 1
    assert np.abs(half.astype(int) - 127.5).max() <= 3


def test_resize_matches_torch_antialiased_bilinear():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 30, 45, 3), dtype=np.uint8)
    for height, width in [(15, 22), (13, 40), (60, 90)]:
        ours = resize_frames(frames, height, width).astype(np.float64)
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear",
            antialias=True, align_corners=False,
        ).round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
        assert np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize(
    "frames, size",
    [(np.zeros((2, 4, 4, 3), np.float32), (2, 2)), (np.zeros((4, 4, 3), np.uint8), (2, 2)),
     (np.zeros((2, 4, 4, 4), np.uint8), (2, 2)), (np.zeros((2, 4, 4, 3), np.uint8), (0, 2))],
)
def test_resize_rejects_bad_input(frames, size):
    with pytest.raises(ValueError):
        resize_frames(frames, *size)


# --- bad files -----------------------------------------------------------------------------------------------------


def _packet_positions(path) -> list[int]:
    with av.open(str(path)) as container:
        return [p.pos for p in container.demux(container.streams.video[0]) if p.size]


def _reason(path, call=probe) -> str:
    with pytest.raises(VideoReadError) as caught:
        call(path)
    assert caught.value.path == str(path)
    return str(caught.value)


@pytest.mark.parametrize("call", [probe, read_frames, decode])
def test_missing_empty_and_non_video_files(tmp_path, call):
    missing, empty, text, folder = tmp_path / "missing.mp4", tmp_path / "empty.mp4", tmp_path / "text.mp4", tmp_path
    empty.write_bytes(b"")
    text.write_text("this is not a video\n" * 20)
    assert _reason(missing, call) == f"{missing}: file not found"
    assert _reason(empty, call) == f"{empty}: file is empty (0 bytes)"
    assert _reason(text, call) == f"{text}: not a readable video (invalid data found when processing input)"
    assert _reason(folder, call) == f"{folder}: is a directory, not a video file"


def test_truncated_streamable_mp4(clip48, tmp_path):
    # write_video puts the index first (faststart): cut in half, the index promises 48 frames, about half are there
    data = clip48[0].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    for call in (probe, read_frames, decode):
        assert re.fullmatch(
            re.escape(f"{cut}: not a readable video (truncated: ") + r"\d+ of 48 frames present\)", _reason(cut, call)
        )


def test_truncated_mp4_with_index_at_the_end(tmp_path):
    # the common layout of other writers: cut in half, the index (moov) is gone
    path = tmp_path / "plain.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        for frame in grey_clip(8, 16, 32):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert probe(path).frames == 8
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path) == f"{path}: not a readable video (invalid data found when processing input)"


def test_file_without_video_stream(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate = 8000
        container.mux(stream.encode(samples))
        container.mux(stream.encode())
    assert _reason(path, read_frames) == f"{path}: not a readable video (no video stream)"


@pytest.mark.parametrize("width", [64, 16])  # decord path and PyAV path
def test_corrupt_frame_data_fails_cleanly(tmp_path, width):
    path = tmp_path / "v.mp4"
    write_video(path, grey_clip(24, 32, width), fps=8)
    data = bytearray(path.read_bytes())
    start = _packet_positions(path)[12]
    data[start : start + 8] = b"\xff" * 8  # an impossible NAL length in frame 12
    path.write_bytes(bytes(data))
    assert probe(path).frames == 24  # the container is intact ...
    message = f"{path}: not a readable video (decoding failed: corrupt or unsupported frame data)"
    assert _reason(path, read_frames) == message  # ... the frames are not: no partial result
    assert _reason(path, lambda p: read_frames(p, [20])) == message
    # Frames before the damage are intact. PyAV returns them; decord's decoder thread reads ahead, so it may reach
    # the damage first and fail: either way the answer is the right frames or the clean error, never garbage.
    try:
        early = read_frames(path, [0, 1])
    except VideoReadError as error:
        assert width not in video._DECORD_BAD_WIDTHS and str(error) == message
    else:
        assert np.abs(early.astype(int) - grey_clip(24, 32, width)[:2]).mean() < 1.0


# --- write_video arguments and atomicity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, fps, crf",
    [
        (np.zeros((2, 16, 16, 3), np.float32), 8, 10),  # dtype
        (np.zeros((16, 16, 3), np.uint8), 8, 10),  # no time axis
        (np.zeros((2, 16, 16, 4), np.uint8), 8, 10),  # RGBA
        (np.zeros((0, 16, 16, 3), np.uint8), 8, 10),  # no frames
        (np.zeros((2, 15, 16, 3), np.uint8), 8, 10),  # odd height
        (np.zeros((2, 16, 16, 3), np.uint8), 0, 10),
        (np.zeros((2, 16, 16, 3), np.uint8), float("nan"), 10),
        (np.zeros((2, 16, 16, 3), np.uint8), 8, 52),
        (np.zeros((2, 16, 16, 3), np.uint8), 8, 2.5),
        ([[[[0, 0, 0]]]], 8, 10),  # not an array
    ],
)
def test_write_video_rejects_bad_arguments(tmp_path, frames, fps, crf):
    with pytest.raises(ValueError):
        write_video(tmp_path / "v.mp4", frames, fps=fps, crf=crf)
    assert os.listdir(tmp_path) == []


def test_failure_midway_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "v.mp4"
    real = av.VideoFrame.from_ndarray
    calls = []

    def failing(array, format):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("disk on fire")
        return real(array, format=format)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_video(target, grey_clip(8, 16, 32), fps=8)
    assert len(calls) == 4
    assert os.listdir(tmp_path) == []


def test_failure_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "v.mp4"
    write_video(target, grey_clip(4, 16, 32), fps=8)
    before = target.read_bytes()

    def failing(array, format):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(RuntimeError):
        write_video(target, grey_clip(8, 16, 32), fps=8)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["v.mp4"]
