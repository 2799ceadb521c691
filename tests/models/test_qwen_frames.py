"""The Qwen2-VL patchifier equals transformers' Qwen2-VL image processor (PIL backend) on the same resized frames,
and the resize is VideoAlign's (antialiased bicubic, as torchvision computes it) against a float64 computation."""

import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from vpt.models import qwen_frames
from vpt.models.qwen_frames import MAX_PIXELS, MIN_PIXELS, smart_resize, video_patches

# (height, width, min_pixels, max_pixels): tiny test frames, odd sizes, portrait/landscape, shrink and grow
CASES = [
    (56, 56, 56 * 56, MAX_PIXELS),
    (60, 90, 56 * 56, MAX_PIXELS),
    (100, 37, 56 * 56, MAX_PIXELS),
    (33, 47, MIN_PIXELS, MAX_PIXELS),  # grows to the minimum
    (480, 640, MIN_PIXELS, MAX_PIXELS),  # shrinks to the maximum
    (720, 1280, MIN_PIXELS, MAX_PIXELS),
    (64, 64, 28 * 28, 28 * 28 * 4),
]


def hf(image, min_pixels, max_pixels):
    out = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)(images=[image], return_tensors="np")
    return out["pixel_values"], tuple(int(v) for v in out["image_grid_thw"][0])


def frames(rng, count, height, width):
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_smart_resize_is_qwens_rule():
    for height in (1, 13, 28, 55, 56, 57, 100, 333, 720, 1080):
        for width in (28, 41, 56, 90, 640, 1920):
            if max(height, width) / min(height, width) > 200:
                continue
            for bounds in ((56 * 56, MAX_PIXELS), (MIN_PIXELS, MAX_PIXELS), (28 * 28, 28 * 28 * 1280)):
                assert smart_resize(height, width, 28, *bounds) == hf_smart_resize(height, width, 28, *bounds)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)


def resized(image, min_pixels, max_pixels):
    """``image`` resized to Qwen's target size by vpt's resize: what transformers is given, so that it does not
    resize with Pillow (it leaves a frame at its target size as it is)."""
    height, width = smart_resize(image.shape[0], image.shape[1], 28, min_pixels, max_pixels)
    return qwen_frames.resize_for_qwen(image[None], height, width)[0]


@pytest.mark.parametrize("height, width, min_pixels, max_pixels", CASES)
def test_single_image_equals_transformers(height, width, min_pixels, max_pixels):
    image = frames(np.random.default_rng(height * 1000 + width), 1, height, width)[0]
    expected, grid = hf(resized(image, min_pixels, max_pixels), min_pixels, max_pixels)
    ours = video_patches(np.stack([image, image]), min_pixels, max_pixels)  # an image = 2 equal frames
    assert ours.grid_thw == grid
    assert ours.pixel_values.dtype == np.float32 and ours.pixel_values.shape == (grid[1] * grid[2], 3 * 2 * 14 * 14)
    assert np.array_equal(ours.pixel_values, expected)  # exact, not just close
    assert ours.size == (grid[1] * 14, grid[2] * 14)
    assert ours.num_tokens == grid[1] * grid[2] // 4


@pytest.mark.parametrize("height, width, min_pixels, max_pixels", CASES[:5])
def test_frame_pairs_and_temporal_order_equal_transformers(height, width, min_pixels, max_pixels):
    clip = frames(np.random.default_rng(7), 4, height, width)
    ours = video_patches(clip, min_pixels, max_pixels)
    per_frame = [hf(resized(frame, min_pixels, max_pixels), min_pixels, max_pixels) for frame in clip]
    _, gh, gw = per_frame[0][1]
    assert ours.grid_thw == (2, gh, gw)
    # rows: temporal patch first; within a row (channel, frame-in-pair, y, x)
    patches = ours.pixel_values.reshape(2, gh * gw, 3, 2, 14, 14)
    for t in range(2):
        for k in range(2):
            reference = per_frame[2 * t + k][0].reshape(gh * gw, 3, 2, 14, 14)[:, :, k]
            assert np.array_equal(patches[t, :, :, k], reference)


def test_odd_frame_count_repeats_the_last_frame():
    clip = frames(np.random.default_rng(3), 5, 56, 84)
    padded = np.concatenate([clip, clip[-1:]])
    odd, even = video_patches(clip, 56 * 56), video_patches(padded, 56 * 56)
    assert odd.grid_thw == even.grid_thw == (3, 4, 6)
    assert np.array_equal(odd.pixel_values, even.pixel_values)
    single = video_patches(clip[:1], 56 * 56)
    assert single.grid_thw == (1, 4, 6)


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; a = -0.5 is the antialiasing kernel of Pillow, torchvision and torch."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def antialiased_weights(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` float64 resampling matrix: the kernel stretched by the shrink factor when shrinking,
    centred on each output pixel's centre, cut to its support and normalised to sum 1."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        centre = scale * (i + 0.5)
        low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        taps = cubic((np.arange(low, high) - centre + 0.5) / stretch)
        matrix[i, low:high] = taps / taps.sum()
    return matrix


@pytest.mark.parametrize("shape, target", [((3, 45, 61), (28, 56)), ((2, 56, 56), (84, 112)),
                                           ((2, 480, 640), (420, 560)), ((1, 37, 90), (56, 28))])
def test_resize_is_antialiased_bicubic(shape, target):
    clip = frames(np.random.default_rng(sum(shape)), *shape)
    rows, columns = antialiased_weights(shape[1], target[0]), antialiased_weights(shape[2], target[1])
    exact = np.einsum("yh,thwc,xw->tyxc", rows, clip.astype(np.float64), columns, optimize=True)
    out = qwen_frames.resize_for_qwen(clip, *target)
    assert out.shape == (shape[0], *target, 3) and out.dtype == np.uint8
    expected = np.clip(np.rint(exact), 0, 255)
    # torch resizes in float32 (as torchvision does), which is off the float64 value by up to 0.014 grey levels at
    # 480x640 (measured); a value that close to a rounding boundary may round either way
    decisive = np.abs(np.abs(exact - np.floor(exact)) - 0.5) > 0.02
    assert decisive.mean() > 0.95
    assert np.array_equal(out[decisive], expected[decisive])
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_resize_leaves_frames_at_the_target_size_alone():
    clip = frames(np.random.default_rng(4), 2, 56, 56)
    assert qwen_frames.resize_for_qwen(clip, 56, 56) is clip


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        video_patches(np.zeros((2, 56, 56, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        video_patches(np.zeros((56, 56, 3), dtype=np.uint8))
