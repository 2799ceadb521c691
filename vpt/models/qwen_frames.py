"""Decoded frames -> Qwen2-VL video inputs (``pixel_values_videos``, ``video_grid_thw``), without torchvision.

transformers' Qwen2-VL *video* processor needs torchvision, which cannot be installed here, so this module does the
same job with torch and numpy. The frames are resized as VideoAlign's own pipeline resizes them, and the output is
laid out exactly as transformers lays out Qwen2-VL pixel patches, with the values transformers' image processor
(``Qwen2VLImageProcessorPil``) gives on the resized frames:

1. **Size** (:func:`smart_resize`, Qwen2-VL's rule): round H and W to multiples of ``factor = patch_size *
   merge_size`` (28), keeping the aspect ratio; if the frame then holds more than ``max_pixels`` pixels, shrink
   (floor to the factor), if fewer than ``min_pixels``, grow (ceil to the factor). VideoAlign's defaults are
   ``min_pixels = 128 * 28 * 28`` (qwen-vl-utils' ``VIDEO_MIN_PIXELS``) and ``max_pixels = 448 * 448`` (its
   ``max_frame_pixels``).
2. **Resize** (:func:`resize_for_qwen`): as qwen-vl-utils' ``fetch_video`` does with torchvision
   (``resize(video, [h, w], interpolation=BICUBIC, antialias=True)`` on the uint8 frames): antialiased bicubic
   (``torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)``, the same kernel
   torchvision calls) on float32 frames, then clamped to 0..255 and rounded to uint8. A frame already at the target
   size is left as is. Pillow's bicubic, which the HF *image* processor uses, differs from this by up to a few grey
   levels and moved VideoReward's raw scores by up to 1.6e-3 against the official code.
3. **Values**: ``x / 255`` (computed in float64, stored float32), then CLIP mean/std normalisation per channel in
   float32.
4. **Patches**: an even number of frames (an odd count repeats the last frame); each group of
   ``temporal_patch_size`` (2) consecutive frames is cut into ``patch_size`` (14) squares. Rows are ordered
   ``(t, h / merge, w / merge, merge_h, merge_w)`` so each 2x2 block the vision merger fuses is contiguous; a row
   is ``(channel, frame-in-pair, y, x)`` flattened, i.e. ``3 * 2 * 14 * 14 = 1176`` values.
   ``video_grid_thw = (T / 2, H / 14, W / 14)``; the language model sees ``t * h * w / merge**2`` video tokens.

A single image is a 2-frame temporal patch of the same frame, which is how the HF image processor patchifies images:
``video_patches(np.stack([img, img]))`` equals ``Qwen2VLImageProcessorPil()(images=[img])`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vpt.io.video import check_frames

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MAX_PIXELS",
    "MIN_PIXELS",
    "MERGE_SIZE",
    "PATCH_SIZE",
    "TEMPORAL_PATCH_SIZE",
    "VideoPatches",
    "normalise_frames",
    "patchify",
    "resize_for_qwen",
    "smart_resize",
    "video_patches",
]

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 128 * 28 * 28  # qwen-vl-utils VIDEO_MIN_PIXELS
MAX_PIXELS = 448 * 448  # VideoAlign max_frame_pixels
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, as transformers' OPENAI_CLIP_MEAN
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int = PATCH_SIZE * MERGE_SIZE, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's target size: multiples of ``factor`` near ``height x width`` with ``min_pixels <= h*w <=
    max_pixels`` (up to the rounding), aspect ratio kept. ``ValueError`` for an aspect ratio above 200."""
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be at most 200, got {height}x{width}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_for_qwen(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` -> ``uint8 [T, height, width, 3]``: antialiased bicubic as VideoAlign's pipeline
    resizes video frames (see the module notes); the frames themselves when already at the target size."""
    import torch

    frames = check_frames(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)
    resized = torch.nn.functional.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True,
                                              align_corners=False)
    resized = resized.clamp_(0, 255).round_().to(torch.uint8)
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy())


def normalise_frames(frames: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` -> ``float32 [T, 3, H, W]``: ``(x / 255 - mean) / std`` (same float steps as HF)."""
    scaled = (frames.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean32) / std32).transpose(0, 3, 1, 2))


def patchify(frames: np.ndarray, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
             temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``float32 [T, C, H, W]`` (H, W multiples of ``patch_size * merge_size``) -> (``[t*h*w, C*tp*p*p]``,
    ``(t, h, w)``); an incomplete last temporal patch is completed by repeating the last frame."""
    count, channels, height, width = frames.shape
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise ValueError(f"frame size {height}x{width} is not a multiple of {factor}")
    if pad := -count % temporal_patch_size:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        count += pad
    grid_t, grid_h, grid_w = count // temporal_patch_size, height // patch_size, width // patch_size
    blocks = frames.reshape(grid_t, temporal_patch_size, channels, grid_h // merge_size, merge_size, patch_size,
                            grid_w // merge_size, merge_size, patch_size)
    # -> [t, h/merge, w/merge, merge_h, merge_w, channel, frame-in-pair, y, x]
    blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = np.ascontiguousarray(blocks).reshape(grid_t * grid_h * grid_w,
                                                channels * temporal_patch_size * patch_size * patch_size)
    return flat, (grid_t, grid_h, grid_w)


@dataclass(frozen=True)
class VideoPatches:
    """One video as Qwen2-VL inputs."""

    pixel_values: np.ndarray  # float32 [t*h*w, 3*2*14*14]
    grid_thw: tuple[int, int, int]  # (frames / 2, height / 14, width / 14)
    size: tuple[int, int]  # resized (height, width) in pixels
    merge_size: int = MERGE_SIZE

    @property
    def num_tokens(self) -> int:
        """Video tokens the language model sees: ``t * h * w / merge**2``."""
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size * self.merge_size)


def video_patches(frames: np.ndarray, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                  patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
                  temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> VideoPatches:
    """Decoded ``uint8 [T, H, W, 3]`` RGB frames -> :class:`VideoPatches` (see the module docstring)."""
    frames = check_frames(frames)
    height, width = smart_resize(frames.shape[1], frames.shape[2], patch_size * merge_size, min_pixels, max_pixels)
    resized = resize_for_qwen(frames, height, width)
    pixel_values, grid = patchify(normalise_frames(resized), patch_size, merge_size, temporal_patch_size)
    return VideoPatches(pixel_values=pixel_values, grid_thw=grid, size=(height, width), merge_size=merge_size)
