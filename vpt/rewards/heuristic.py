"""Heuristic video metrics that need no model weights: pure numpy on ``uint8 [T, H, W, 3]`` RGB frames.

Every metric works on Rec.601 luma ``L = 0.299 R + 0.587 G + 0.114 B`` (0..255, float32) and returns a Python
``float`` in ``[0, 1]``. All four come from one pass over the frames (:func:`luma_statistics`): luma is computed
frame by frame while the frame is in cache, each frame's sums are float32 pairwise sums and the sums over frames are
float64. Asking for several heuristics together costs what one costs (:class:`HeuristicReward` scores them as one
model).

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


def luma(frames: np.ndarray) -> np.ndarray:
    """Rec.601 luma ``0.299 R + 0.587 G + 0.114 B`` of ``uint8 [T, H, W, 3]`` frames: ``float32 [T, H, W]``, 0..255."""
    frames = check_frames(frames)
    count, height, width, _ = frames.shape
    out = np.empty((count, height * width), dtype=np.float32)
    rgb = np.empty((height * width, 3), dtype=np.float32)
    for t in range(count):  # one frame at a time: its float copy stays in cache for the product
        rgb[...] = frames[t].reshape(-1, 3)
        np.matmul(rgb, _LUMA_WEIGHTS, out=out[t])
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
    and the common factor ``level`` taken out of the sums, so the frame differences are formed as each frame is
    reached. A black frame (``m[t] <= 1e-3``) keeps its own values: its factor is ``1 / level``.
    """
    lum = luma(frames)
    count = lum.shape[0]
    pixels = lum.shape[1] * lum.shape[2]
    flat = lum.reshape(count, pixels)
    means = np.array([float(frame.sum()) for frame in flat]) / pixels
    level = float(means.mean())
    reference = level if level > 0 else 1.0
    factors = np.where(means > _BLACK, 1.0 / np.maximum(means, _BLACK), 1.0 / reference).astype(np.float32)
    scratch = np.empty(pixels, dtype=np.float32)
    change = roughness = 0.0
    for t in range(count):
        flat[t] *= factors[t]
        if t >= 1:
            np.subtract(flat[t], flat[t - 1], out=scratch)
            change += float(np.abs(scratch, out=scratch).sum())
        if t >= 2:
            np.add(flat[t], flat[t - 2], out=scratch)
            scratch *= np.float32(0.5)
            np.subtract(flat[t - 1], scratch, out=scratch)
            roughness += float(np.abs(scratch, out=scratch).sum())
    motion_value = reference * change / (pixels * (count - 1)) / 255.0 if count >= 2 else 0.0
    smoothness = 1.0 - reference * roughness / (pixels * (count - 2)) / 255.0 if count >= 3 else 1.0
    return LumaStatistics(frame_means=means, motion=motion_value, pixel_smoothness=smoothness)


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
        statistics = [luma_statistics(video.frames) for video in videos]
        return {dimension: np.array([_FROM_STATISTICS[name](s) for s in statistics], dtype=np.float64)
                for name, dimension in zip(self.names, self.dimensions)}
