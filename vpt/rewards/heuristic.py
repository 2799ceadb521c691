"""Heuristic video metrics that need no model weights: pure numpy on ``uint8 [T, H, W, 3]`` RGB frames.

Every metric works on Rec.601 luma ``L = 0.299 R + 0.587 G + 0.114 B`` (0..255, float32) and returns a Python
``float`` in ``[0, 1]``. All four come from one pass over the frames (:func:`luma_statistics`), a cache-sized block of
frames at a time: no clip-sized float array is made, and few array calls let decode threads run alongside. Asking
for several heuristics together costs what one costs (:class:`HeuristicReward` scores them as one model).

========================  =================================================================  ==========================
name                      formula                                                            reading
========================  =================================================================  ==========================
``brightness``            mean over frames and pixels of ``L / 255``                         0 black .. 1 white
``motion``                mean over t, pixels of ``|L[t+1] - L[t]| / 255``                   higher = more motion
``pixel-smoothness``      ``1 - mean over interior t, pixels of |L[t] - (L[t-1]+L[t+1])/2|   higher = smoother
                          / 255``
``flicker``               ``1 - mean over t of |m[t+1] - m[t]| / 255``, ``m[t]`` = mean of   higher = steadier
                          ``L[t]``
========================  =================================================================  ==========================

``motion`` and ``pixel-smoothness`` read gain-normalised luma ``L'[t] = L[t] * mean(m) / m[t]`` (``m[t]`` the mean
luma of frame ``t``): a whole-frame brightness change (flicker, a fade) is not motion, just as optical flow ignores
it; ``flicker`` measures exactly that change.

A single frame has ``motion`` 0 and ``flicker`` 1; fewer than three frames have ``pixel-smoothness`` 1.
``pixel-smoothness`` is the weight-free stand-in for VBench's motion smoothness; the flow-based
``motion-smoothness`` (:mod:`vpt.rewards.flow`) interpolates along the motion instead.
The CLI names map to functions in :data:`HEURISTICS`, with one-line help in :data:`HEURISTIC_DESCRIPTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from vpt.errors import VptError
from vpt.io.video import FrameSampling, check_frames
from vpt.rewards.model import RewardModel

__all__ = [
    "HEURISTICS",
    "HEURISTIC_DESCRIPTIONS",
    "HeuristicReward",
    "LumaStatistics",
    "brightness",
    "flicker",
    "luma",
    "luma_statistics",
    "motion",
    "pixel_smoothness",
]

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_BLACK = 1e-3  # a frame whose mean luma is at most this has no gain to undo


_BLOCK_VALUES = 1 << 17  # pixels per array operation: a block stays in cache, and few calls hand the GIL over rarely


def _block_frames(count: int, pixels: int) -> int:
    return max(1, min(count, _BLOCK_VALUES // pixels))


def _luma_into(frames: np.ndarray, rgb: np.ndarray, out: np.ndarray) -> None:
    """Luma of ``uint8 [n, H, W, 3]`` frames into ``out`` (``float32 [n, H*W]``), through the float scratch ``rgb``."""
    part = rgb[: out.size]
    part[...] = frames.reshape(-1, 3)
    np.matmul(part, _LUMA_WEIGHTS, out=out.reshape(-1))


def luma(frames: np.ndarray) -> np.ndarray:
    """Rec.601 luma ``0.299 R + 0.587 G + 0.114 B`` of ``uint8 [T, H, W, 3]`` frames: ``float32 [T, H, W]``, 0..255."""
    frames = check_frames(frames)
    count, height, width, _ = frames.shape
    block = _block_frames(count, height * width)
    out = np.empty((count, height * width), dtype=np.float32)
    rgb = np.empty((block * height * width, 3), dtype=np.float32)
    for start in range(0, count, block):
        _luma_into(frames[start:start + block], rgb, out[start:start + block])
    return out.reshape(count, height, width)


@dataclass(frozen=True)
class LumaStatistics:
    """What every heuristic needs from a clip, from one pass over its luma."""

    frame_means: np.ndarray  # float64 [T]: m[t], the mean luma of frame t (0..255)
    motion: float  # mean |L'[t+1] - L'[t]| / 255 over the T - 1 pairs (0 for one frame)
    pixel_smoothness: float  # 1 - mean |L'[t] - (L'[t-1] + L'[t+1]) / 2| / 255 (1 for fewer than 3 frames)

    @property
    def brightness(self) -> float:
        return float(self.frame_means.mean()) / 255.0  # frames are the same size: the mean of means is the mean

    @property
    def flicker(self) -> float:
        if len(self.frame_means) < 2:
            return 1.0
        return 1.0 - float(np.abs(np.diff(self.frame_means)).mean()) / 255.0


def luma_statistics(frames: np.ndarray) -> LumaStatistics:
    """All four heuristics' inputs from ``uint8 [T, H, W, 3]`` frames in one pass.

    Gain normalisation ``L'[t] = L[t] * level / m[t]`` (``level`` the mean of ``m``) is applied as ``L[t] / m[t]``
    and the common factor ``level`` taken out of the sums, so a frame is normalised as soon as its luma is known. A
    black frame (``m[t] <= 1e-3``) keeps its own values: its factor is ``1 / level``, known only at the end, so a clip
    with a black frame takes a second pass.
    """
    frames = check_frames(frames)
    means, change, roughness = _luma_pass(frames, black_factor=None)
    level = float(means.mean())
    reference = level if level > 0 else 1.0
    if change is None:
        means, change, roughness = _luma_pass(frames, black_factor=1.0 / reference)
    count = len(means)
    pixels = frames.shape[1] * frames.shape[2]
    motion_value = reference * change / (pixels * (count - 1)) / 255.0 if count >= 2 else 0.0
    smoothness = 1.0 - reference * roughness / (pixels * (count - 2)) / 255.0 if count >= 3 else 1.0
    return LumaStatistics(frame_means=means, motion=motion_value, pixel_smoothness=smoothness)


def _luma_pass(frames: np.ndarray, black_factor: float | None) -> tuple[np.ndarray, float | None, float | None]:
    """One streaming pass, a cache-sized block of frames at a time: the frame means ``m`` (float64 ``[T]``) and the
    sums over the clip of ``|L[t]/m[t] - L[t-1]/m[t-1]|`` and ``|L[t]/m[t] - (L[t-1]/m[t-1] + L[t+1]/m[t+1]) / 2|``
    (each frame's sum float32 pairwise, the sum over frames float64). A black frame is scaled by ``black_factor``;
    with none given, the first one stops the sums (returned as ``None``) and only the means are finished."""
    count, height, width, _ = frames.shape
    pixels = height * width
    block = _block_frames(count, pixels)
    rgb = np.empty((block * pixels, 3), dtype=np.float32)
    window = np.empty((block + 2, pixels), dtype=np.float32)  # the last two frames of the previous block, then this
    scratch = np.empty((block + 1, pixels), dtype=np.float32)
    means = np.empty(count, dtype=np.float64)
    change = roughness = 0.0
    summing, kept = True, 0
    for start in range(0, count, block):
        stop = min(start + block, count)
        current = window[2:2 + stop - start]
        _luma_into(frames[start:stop], rgb, current)
        block_means = current.sum(axis=1).astype(np.float64) / pixels
        means[start:stop] = block_means
        black = block_means <= _BLACK
        if black.any() and black_factor is None:
            summing = False
        if not summing:
            continue
        factors = np.where(black, black_factor or 0.0, 1.0 / np.maximum(block_means, _BLACK)).astype(np.float32)
        current *= factors[:, None]
        frames_now = window[2 - kept:2 + stop - start]
        stepping = frames_now[1:] if kept == 2 else frames_now  # the steps into this block's frames
        if len(stepping) >= 2:  # steps L'[t] - L'[t-1]
            step = scratch[: len(stepping) - 1]
            np.subtract(stepping[1:], stepping[:-1], out=step)
            change += float(np.abs(step, out=step).sum(axis=1).sum(dtype=np.float64))
        if len(frames_now) >= 3:  # bends L'[t] - (L'[t-1] + L'[t+1]) / 2, each centred at most one frame back
            bend = scratch[: len(frames_now) - 2]
            np.add(frames_now[2:], frames_now[:-2], out=bend)
            bend *= np.float32(0.5)
            np.subtract(frames_now[1:-1], bend, out=bend)
            roughness += float(np.abs(bend, out=bend).sum(axis=1).sum(dtype=np.float64))
        kept = min(2, len(frames_now))
        window[2 - kept:2] = frames_now[len(frames_now) - kept:].copy()
    return (means, change, roughness) if summing else (means, None, None)


def brightness(frames: np.ndarray) -> float:
    """Mean luma: ``mean_{t,y,x} L[t,y,x] / 255`` in ``[0, 1]`` (0 = black, 1 = white)."""
    return luma_statistics(frames).brightness


def motion(frames: np.ndarray) -> float:
    """Dynamic degree: ``mean_{t,y,x} |L'[t+1] - L'[t]| / 255`` over the ``T - 1`` consecutive pairs, in ``[0, 1]``.

    ``L'`` is gain-normalised luma (see the module notes), so flicker is not counted as motion. Higher = more motion.
    0 for a single frame or a still clip.
    """
    return luma_statistics(frames).motion


def pixel_smoothness(frames: np.ndarray) -> float:
    """Smoothness: ``1 - mean_{t=1..T-2, y, x} |L'[t] - (L'[t-1] + L'[t+1]) / 2| / 255``, in ``[0, 1]``.

    Each interior frame is predicted from its two neighbours by linear interpolation (a weight-free stand-in for
    VBench's frame-interpolation model) in gain-normalised luma ``L'``; the score is one minus the mean prediction
    error. Higher = smoother: a still clip, a fade and any change linear in time score 1; jitter, stutter and frames
    out of order score lower. Pixel-space interpolation also costs a little for fast motion of hard edges, so compare
    clips of similar speed. Fewer than three frames give 1.0.
    """
    return luma_statistics(frames).pixel_smoothness


def flicker(frames: np.ndarray) -> float:
    """Global brightness steadiness: ``1 - mean_{t} |m[t+1] - m[t]| / 255`` with ``m[t] = mean_{y,x} L[t,y,x]``.

    In ``[0, 1]``; higher = steadier, following VBench's temporal-flickering convention (a score of 1 is no
    flicker). Only the frame-mean luma enters, so an object moving over a uniform background (the frame mean does
    not change) is not flicker, while a whole-frame brightness pulse is. Values sit close to 1 for most clips (a
    pulse of 10 grey levels every frame gives 0.961): compare differences, not absolute levels. A single frame gives
    1.0.
    """
    return luma_statistics(frames).flicker


HEURISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "brightness": brightness,
    "motion": motion,
    "pixel-smoothness": pixel_smoothness,
    "flicker": flicker,
}

HEURISTIC_DESCRIPTIONS: dict[str, str] = {
    "brightness": "mean Rec.601 luma in [0, 1] (0 black, 1 white)",
    "motion": "mean absolute change of gain-normalised luma between frames in [0, 1]; higher = more motion",
    "pixel-smoothness": "1 - error of predicting each frame as the average of its neighbours in pixels; higher = "
                        "smoother",
    "flicker": "1 - mean change of whole-frame brightness between frames; higher = steadier (less flicker)",
}

_FROM_STATISTICS: dict[str, Callable[[LumaStatistics], float]] = {
    "brightness": lambda statistics: statistics.brightness,
    "motion": lambda statistics: statistics.motion,
    "pixel-smoothness": lambda statistics: statistics.pixel_smoothness,
    "flicker": lambda statistics: statistics.flicker,
}


class HeuristicReward(RewardModel):
    """One or more heuristics scored as one model: one luma pass per video serves them all."""

    def __init__(self, names: Sequence[str]):
        unknown = [name for name in names if name not in HEURISTICS]
        if unknown or not names:
            raise ValueError(f"not heuristics: {unknown or 'none given'}")
        self.names = tuple(names)
        self.dimensions = tuple(name.replace("-", "_") for name in self.names)
        if len(set(self.dimensions)) != len(self.dimensions):
            repeated = next(d for d in self.dimensions if self.dimensions.count(d) > 1)
            raise VptError(f"two reward models write the column '{repeated}'; score them in separate runs")
        self.name = ",".join(self.names)
        self.primary = self.dimensions[0]
        self.sampling = FrameSampling(mode="all")

    def score(self, videos, prompts):
        return self.score_prepared([self.prepare(video) for video in videos], prompts)

    def prepare(self, video) -> LumaStatistics:
        return luma_statistics(video.frames)

    def score_prepared(self, prepared, prompts):
        return {dimension: np.array([_FROM_STATISTICS[name](s) for s in prepared], dtype=np.float64)
                for name, dimension in zip(self.names, self.dimensions)}
