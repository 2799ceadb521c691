"""Reward models from dense optical flow (:mod:`vpt.models.optical_flow`, OpenCV DIS): ``dynamic-degree`` and
``motion-smoothness``. Weight-free, deterministic, on the CPU.

``dynamic-degree`` (VBench ``dynamic_degree``, Huang et al., "VBench", CVPR 2024; ``vbench/dynamic_degree.py``,
which uses RAFT where we use DIS). Frames: every ``stride``-th frame with ``stride = max(1, round(fps / 8))``
(VBench's ``interval = round(fps / 8)``: about 8 frames per second; all frames of a clip at 8 fps or less). For
each consecutive pair of the ``T`` sampled frames, ``m = mean of the top 5 % of |flow|`` (the ``cut = int(H W
0.05)`` largest per-pixel flow magnitudes, at least one). With ``scale = min(H, W)``:

* ``dynamic_degree`` (primary) ``= mean over pairs of m / (scale / 256)``: the largest motions in pixels per
  sampled frame at VBench's 256-pixel reference size; 0 for a still clip or a single frame;
* ``dynamic``: VBench's verdict, 1 when at least ``count_num = round(4 T / 16)`` pairs have ``m > thres = 6 scale
  / 256``, else 0. One difference: we ask for at least one such pair, where VBench's ``count_num`` of 0 (``T <= 2``)
  calls every clip dynamic.

``motion-smoothness`` (after VBench ``motion_smoothness``, which predicts the odd frames from the even ones with
the AMT interpolation network and scores ``(255 - mean |pred - true|) / 255``). All frames at the native rate;
each interior frame ``t`` is predicted from its neighbours by optical-flow interpolation: ``F`` = flow of frame
``t-1`` to frame ``t+1``, ``pred(p) = (I[t-1](p - F(p)/2) + I[t+1](p + F(p)/2)) / 2`` (``cv2.remap``, bilinear,
edges replicated). ``motion_smoothness = 1 - mean over interior t, pixels and RGB channels of |pred - I[t]| /
255``, in [0, 1]; clips of fewer than 3 frames score 1. Steady motion is interpolated well; shake, freezes and
jumps are not, and neither are whole-frame brightness changes: as VBench's, this score falls with flicker too (a
toy clip with flicker 0.2 scores about 0.91, one with jitter 3 about 0.99, a steady one 0.999).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from vpt.errors import VptError
from vpt.io.video import FrameSampling, check_frames
from vpt.metrics.flow import METRICS, flow_errors
from vpt.models.optical_flow import dis_estimator, estimate_flow, flow_between, grey
from vpt.rewards.model import RewardModel

VBENCH_FPS = 8.0  # VBench reads about 8 frames per second for dynamic degree
TOP_FRACTION = 0.05
REFERENCE_SIZE = 256.0
THRESHOLD = 6.0  # pixels at the reference size


def vbench_stride(fps: float) -> int:
    """VBench's frame interval ``round(fps / 8)``, at least 1 (Python's rounding, as VBench's)."""
    return max(1, round(fps / VBENCH_FPS))


def top_motion(flow: np.ndarray) -> np.ndarray:
    """Mean of the top 5 % flow magnitudes of each pair: ``float64 [P]`` from ``flow [P, H, W, 2]``."""
    magnitude = np.linalg.norm(flow, axis=-1).reshape(len(flow), -1)
    cut = max(1, int(magnitude.shape[1] * TOP_FRACTION))
    # the cut largest values of each row, in any order
    return np.partition(magnitude, magnitude.shape[1] - cut, axis=1)[:, -cut:].mean(axis=1, dtype=np.float64)


def dynamic_degree(frames: np.ndarray) -> tuple[float, float]:
    """``(dynamic_degree, dynamic)`` of already sampled frames ``uint8 [T, H, W, 3]`` (module notes)."""
    frames = check_frames(frames)
    if len(frames) < 2:
        return 0.0, 0.0
    scale = min(frames.shape[1:3]) / REFERENCE_SIZE
    motion = top_motion(estimate_flow(frames))
    count_num = max(1, round(4 * len(frames) / 16))
    moving = int(np.count_nonzero(motion > THRESHOLD * scale))
    return float(motion.mean() / scale), float(moving >= count_num)


def motion_smoothness(frames: np.ndarray) -> float:
    """``1 - mean |pred - true| / 255`` of every interior frame predicted by flow interpolation (module notes)."""
    import cv2

    frames = check_frames(frames)
    count, height, width = frames.shape[:3]
    if count < 3:
        return 1.0
    grey_frames = grey(frames)
    dis = dis_estimator()
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    total = 0.0
    for t in range(1, count - 1):
        half = flow_between(grey_frames[t - 1], grey_frames[t + 1], dis, height, width) / 2
        before = cv2.remap(frames[t - 1], xs - half[..., 0], ys - half[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        after = cv2.remap(frames[t + 1], xs + half[..., 0], ys + half[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
        predicted = (before.astype(np.float32) + after.astype(np.float32)) / 2
        total += float(np.abs(predicted - frames[t]).mean(dtype=np.float64))
    return 1.0 - total / (count - 2) / 255.0


@dataclass
class DynamicDegree(RewardModel):
    """VBench dynamic degree from DIS flow (module notes)."""

    name: str = "dynamic-degree"

    def __post_init__(self):
        self.dimensions = ("dynamic_degree", "dynamic")
        self.primary = "dynamic_degree"
        self.sampling = FrameSampling(mode="all")  # thinned to ~8 fps per video, from its own frame rate

    def score(self, videos, prompts):
        values = np.array([dynamic_degree(video.frames[::vbench_stride(video.info.fps)]) for video in videos],
                          dtype=np.float64).reshape(len(videos), 2)
        return {"dynamic_degree": values[:, 0], "dynamic": values[:, 1]}


@dataclass
class MotionSmoothness(RewardModel):
    """Flow-interpolation motion smoothness (module notes)."""

    name: str = "motion-smoothness"

    def __post_init__(self):
        self.dimensions = ("motion_smoothness",)
        self.primary = "motion_smoothness"
        self.sampling = FrameSampling(mode="all")

    def score(self, videos, prompts):
        return {"motion_smoothness": np.array([motion_smoothness(video.frames) for video in videos], np.float64)}


def _weight_free(name: str, source: str | None) -> None:
    if source is not None:
        raise VptError(f"{name}:{source}: {name} takes no weights; name it bare (--model {name})")


def load_dynamic_degree(source: str | None, *, device: str, batch_size: int, dtype: str) -> RewardModel:
    """The ``dynamic-degree`` reward (the registry's loader; device, batch size and dtype do not apply)."""
    _weight_free("dynamic-degree", source)
    return DynamicDegree()


def load_motion_smoothness(source: str | None, *, device: str, batch_size: int, dtype: str) -> RewardModel:
    """The flow-based ``motion-smoothness`` reward (the registry's loader; device, batch size and dtype do not
    apply)."""
    _weight_free("motion-smoothness", source)
    return MotionSmoothness()


def check_stems(items) -> None:
    """Flow files are found by the video's file name stem, so two videos of one stem would share one; VptError."""
    seen: dict[str, str] = {}
    for item in items:
        stem = item.file.stem
        if stem in seen:
            raise VptError(f"two videos have the file name '{stem}' ({seen[stem]} and {item.path}); flow files are "
                           "found by file name (DIR/<name>.flow.safetensors), so give the videos distinct names")
        seen[stem] = item.path


def evaluate_video(item, reference: str | os.PathLike, flow_dir: str | os.PathLike | None = None) -> dict:
    """One ``flow_metrics`` row: the flow of the video ``item`` (a :class:`~vpt.io.manifest.VideoItem`), estimated
    (:func:`vpt.models.optical_flow.estimate_flow` on all frames) or read from ``flow_dir``, against its reference
    file in ``reference`` (layout of :mod:`vpt.io.flow`). A video, or file, that cannot be read or whose flow does
    not match its reference in shape gives a row with ``error`` and null metrics."""
    from vpt.errors import VptError
    from vpt.io.flow import flow_path, read_flow

    row = {"id": item.id, "path": item.path, **dict.fromkeys(METRICS), "pairs": None, "error": None}
    try:
        truth, valid = read_flow(flow_path(reference, item.file.stem))
        if flow_dir is not None:
            flow, _ = read_flow(flow_path(flow_dir, item.file.stem))
            what = f"{flow_path(flow_dir, item.file.stem)} has shape {list(flow.shape)}"
        else:
            from vpt.io.video import decode

            frames = decode(item.file).frames
            flow = estimate_flow(frames)
            what = (f"the video has {len(frames)} frames of {frames.shape[1]}x{frames.shape[2]} "
                    f"(flow {list(flow.shape)})")
        if flow.shape != truth.shape:
            raise VptError(f"{what}, its reference {flow_path(reference, item.file.stem)} {list(truth.shape)}")
    except VptError as error:
        return {**row, "error": str(error)}
    values = flow_errors(flow, truth, valid)
    if values["pixels"] == 0:
        return {**row, "error": f"{flow_path(reference, item.file.stem)}: marks no pixel valid"}
    return {**row, **{name: values[name] for name in METRICS}, "pairs": int(len(flow))}
