"""Heuristic video metrics that need no model weights: pure numpy on ``uint8 [T, H, W, 3]`` RGB frames.

Every metric works on Rec.601 luma ``L = 0.299 R + 0.587 G + 0.114 B`` (0..255, computed in float32, one vectorised
pass, means accumulated in float64) and returns a Python ``float`` in ``[0, 1]``. They are cheap enough to run on
thousands of decoded clips (about 10 ms per metric for 16 frames at 448x448 on one core).

========================  =================================================================  ==========================
name                      formula                                                            reading
========================  =================================================================  ==========================
``brightness``            mean over frames and pixels of ``L / 255``                         0 black .. 1 white
``motion``                mean over t, pixels of ``|L[t+1] - L[t]| / 255``                   higher = more motion
``motion-smoothness``     ``1 - mean over interior t, pixels of |L[t] - (L[t-1]+L[t+1])/2|   higher = smoother
                          / 255``
``flicker``               ``1 - mean over t of |m[t+1] - m[t]| / 255``, ``m[t]`` = mean of   higher = steadier
                          ``L[t]``
========================  =================================================================  ==========================

``motion`` and ``motion-smoothness`` read gain-normalised luma ``L'[t] = L[t] * mean(m) / m[t]`` (``m[t]`` the mean
luma of frame ``t``): a whole-frame brightness change (flicker, a fade) is not motion, just as optical flow ignores
it; ``flicker`` measures exactly that change.

A single frame has ``motion`` 0 and ``flicker`` 1; fewer than three frames have ``motion-smoothness`` 1.
The CLI names map to functions in :data:`HEURISTICS`, with one-line help in :data:`HEURISTIC_DESCRIPTIONS`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vpt.io.video import check_frames

__all__ = [
    "HEURISTICS",
    "HEURISTIC_DESCRIPTIONS",
    "brightness",
    "flicker",
    "luma",
    "motion",
    "motion_smoothness",
]

_R, _G, _B = np.float32(0.299), np.float32(0.587), np.float32(0.114)


def luma(frames: np.ndarray) -> np.ndarray:
    """Rec.601 luma ``0.299 R + 0.587 G + 0.114 B`` of ``uint8 [T, H, W, 3]`` frames: ``float32 [T, H, W]``, 0..255."""
    frames = check_frames(frames)
    out = frames[..., 0] * _R  # uint8 * float32 scalar -> float32, one channel at a time (no [T,H,W,3] float copy)
    out += frames[..., 1] * _G
    out += frames[..., 2] * _B
    return out


def _gain_normalised_luma(frames: np.ndarray) -> np.ndarray:
    """Luma with every frame rescaled to the clip's mean level, so global brightness changes cancel out."""
    lum = luma(frames)
    frame_means = lum.reshape(lum.shape[0], -1).mean(axis=1, dtype=np.float64)
    level = frame_means.mean()
    # A black frame has no gain to undo; leave it as it is.
    gains = np.where(frame_means > 1e-3, level / np.maximum(frame_means, 1e-3), 1.0).astype(np.float32)
    lum *= gains[:, None, None]
    return lum


def _mean(array: np.ndarray) -> float:
    return float(array.mean(dtype=np.float64))


def brightness(frames: np.ndarray) -> float:
    """Mean luma: ``mean_{t,y,x} L[t,y,x] / 255`` in ``[0, 1]`` (0 = black, 1 = white)."""
    return _mean(luma(frames)) / 255.0


def motion(frames: np.ndarray) -> float:
    """Dynamic degree: ``mean_{t,y,x} |L'[t+1] - L'[t]| / 255`` over the ``T - 1`` consecutive pairs, in ``[0, 1]``.

    ``L'`` is gain-normalised luma (see the module notes), so flicker is not counted as motion. Higher = more motion.
    0 for a single frame or a still clip.
    """
    lum = _gain_normalised_luma(frames)
    if lum.shape[0] < 2:
        return 0.0
    return _mean(np.abs(lum[1:] - lum[:-1])) / 255.0


def motion_smoothness(frames: np.ndarray) -> float:
    """Smoothness: ``1 - mean_{t=1..T-2, y, x} |L'[t] - (L'[t-1] + L'[t+1]) / 2| / 255``, in ``[0, 1]``.

    Each interior frame is predicted from its two neighbours by linear interpolation (a weight-free stand-in for
    VBench's frame-interpolation model) in gain-normalised luma ``L'``; the score is one minus the mean prediction
    error. Higher = smoother: a still clip, a fade and any change linear in time score 1; jitter, stutter and frames
    out of order score lower. Pixel-space interpolation also costs a little for fast motion of hard edges, so compare
    clips of similar speed. Fewer than three frames give 1.0.
    """
    lum = _gain_normalised_luma(frames)
    if lum.shape[0] < 3:
        return 1.0
    predicted = (lum[:-2] + lum[2:]) * np.float32(0.5)
    return 1.0 - _mean(np.abs(lum[1:-1] - predicted)) / 255.0


def flicker(frames: np.ndarray) -> float:
    """Global brightness steadiness: ``1 - mean_{t} |m[t+1] - m[t]| / 255`` with ``m[t] = mean_{y,x} L[t,y,x]``.

    In ``[0, 1]``; higher = steadier, following VBench's temporal-flickering convention (a score of 1 is no
    flicker). Only the frame-mean luma enters, so an object moving over a uniform background (the frame mean does
    not change) is not flicker, while a whole-frame brightness pulse is. Values sit close to 1 for most clips (a
    pulse of 10 grey levels every frame gives 0.961): compare differences, not absolute levels. A single frame gives
    1.0.
    """
    lum = luma(frames)
    if lum.shape[0] < 2:
        return 1.0
    means = lum.reshape(lum.shape[0], -1).mean(axis=1, dtype=np.float64)
    return 1.0 - float(np.abs(np.diff(means)).mean()) / 255.0


HEURISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "brightness": brightness,
    "motion": motion,
    "motion-smoothness": motion_smoothness,
    "flicker": flicker,
}

HEURISTIC_DESCRIPTIONS: dict[str, str] = {
    "brightness": "mean Rec.601 luma in [0, 1] (0 black, 1 white)",
    "motion": "mean absolute change of gain-normalised luma between frames in [0, 1]; higher = more motion",
    "motion-smoothness": "1 - error of predicting each frame as the average of its neighbours; higher = smoother",
    "flicker": "1 - mean change of whole-frame brightness between frames; higher = steadier (less flicker)",
}
