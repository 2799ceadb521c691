"""The toy world: short clips of one moving shape with known, varied attributes.

Every later algorithm is trained and evaluated on these clips, because here the truth is known: a reward for
brightness must rank clips by ``brightness``, a motion metric must see ``jitter``, ``frozen_frames`` and ``flicker``,
a text-alignment reward must match ``color`` / ``shape`` / ``direction`` words in the prompt.

A clip is a flat grey background (level ``brightness`` in [0, 1]) with one saturated shape (square / circle /
triangle, side ``size`` x the shorter frame side: at most ~9 % of the frame area) moving ``speed`` whole pixels per
frame towards ``direction``. Defects, each often absent:

- ``jitter``: every odd frame is displaced by ``jitter`` pixels on both axes (random signs) relative to its even
  neighbour, so the shake shows inside a temporal pair of frames (a VLM with temporal patch 2 sees pairs);
- ``frozen_start`` / ``frozen_frames``: frames ``start .. start + frozen_frames - 1`` are all equal to frame
  ``start`` (the clip hangs, then jumps back to its timeline); ``frozen_frames == 0`` means no freeze;
- ``flicker``: the whole frame is scaled by ``1 + flicker * u_t`` with ``u_t`` in [-1, 1] zero-mean noise.

The shape is small enough that the mean luma of a clip is monotone in ``brightness`` up to small swaps between
near-equal clips. A path that does not fit in the frame is centred, and the shape crosses the frame edges.

Everything is a function of a seed (``numpy.random.default_rng``) and deterministic. :func:`true_flow` is a clip's
exact optical flow, the reference of ``vpt eval flow``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Iterator

import numpy as np

# the prompts of the GRPO learning tests and tables (examples/grpo/Makefile writes the same four)
TOY_PROMPTS = ("a red ball rolling on grass", "a blue cube spinning slowly", "a white ring on a dark floor",
               "a cat walking in the snow")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
    "magenta": (220, 50, 210),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = (0, 1, 2, 3)  # pixels per frame
_SPEED_PROBS = (0.1, 0.3, 0.3, 0.3)
_DIRECTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy)

BRIGHTNESS_RANGE = (0.1, 0.9)
SIZE_RANGE = (0.22, 0.30)

ATTRIBUTE_TYPES: dict[str, type] = {
    "brightness": float,
    "color": str,
    "shape": str,
    "speed": float,
    "direction": str,
    "jitter": float,
    "frozen_start": int,
    "frozen_frames": int,
    "flicker": float,
    "size": float,
    "start_x": float,
    "start_y": float,
    "noise_seed": int,
}


def sample_attributes(rng: np.random.Generator, frames: int = 17) -> dict:
    """Draw one clip's attributes; the frozen span (if any) fits in ``frames`` frames."""
    attrs = {
        "brightness": float(rng.uniform(*BRIGHTNESS_RANGE)),
        "color": str(rng.choice(list(COLORS))),
        "shape": str(rng.choice(SHAPES)),
        "speed": float(rng.choice(SPEEDS, p=_SPEED_PROBS)),
        "direction": str(rng.choice(DIRECTIONS)),
        "jitter": float(rng.choice([1, 2, 3])) if rng.random() < 0.4 else 0.0,
        "frozen_start": 0,
        "frozen_frames": 0,
        "flicker": float(rng.uniform(0.05, 0.25)) if rng.random() < 0.35 else 0.0,
        "size": float(rng.uniform(*SIZE_RANGE)),
        "start_x": float(rng.random()),
        "start_y": float(rng.random()),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }
    freeze = rng.random() < 0.3
    length = int(rng.integers(3, 6))
    start_u = float(rng.random())
    if freeze and frames >= 4:
        length = min(length, frames - 2)
        attrs["frozen_frames"] = length
        # start >= 1 so the clip moves before it hangs; the span ends inside the clip.
        attrs["frozen_start"] = 1 + int(start_u * (frames - length - 1))
    return attrs


def _shape_mask(shape: str, side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    centre = (side - 1) / 2.0
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        return (yy - centre) ** 2 + (xx - centre) ** 2 <= (side / 2.0) ** 2
    if shape == "triangle":  # apex up, base on the last row
        half_width = (yy + 1) / side * (side / 2.0)
        return np.abs(xx - centre) <= half_width
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def shape_side(attrs: dict, height: int, width: int) -> int:
    return max(3, int(round(attrs["size"] * min(height, width))))


def trajectory(attrs: dict, frames: int, height: int, width: int) -> np.ndarray:
    """Top-left corner (x, y) of the shape in each frame, before wrapping: int array [frames, 2].

    Includes the jitter offsets (odd frames) but not the frozen span (a rendering effect). The whole path stays
    inside the frame when it fits; a longer path is centred and the shape crosses the edges (clipped, not wrapped).
    """
    side = shape_side(attrs, height, width)
    speed = int(round(attrs["speed"]))
    jitter = int(round(attrs["jitter"]))
    dx, dy = _DIRECTION_VECTORS[attrs["direction"]]
    travel = speed * (frames - 1)

    def start(u: float, extent: int, moving: bool, negative: bool) -> int:
        room = extent - side - 2 * jitter - (travel if moving else 0)
        # A path longer than the frame is centred: the shape enters and leaves across the edges.
        low = jitter + (int(round(u * room)) if room >= 0 else -((-room) // 2))
        return low + travel if (moving and negative) else low

    x0 = start(attrs["start_x"], width, dx != 0, dx < 0)
    y0 = start(attrs["start_y"], height, dy != 0, dy < 0)
    t = np.arange(frames)
    xy = np.stack([x0 + dx * speed * t, y0 + dy * speed * t], axis=1)
    if jitter:
        rng = np.random.default_rng([attrs["noise_seed"], 1])
        signs = rng.choice([-1, 1], size=(frames, 2))
        xy[1::2] += jitter * signs[1::2]
    return xy


def flicker_gains(attrs: dict, frames: int) -> np.ndarray:
    """Per-frame global gain ``1 + flicker * u_t`` (all ones without flicker)."""
    if not attrs["flicker"]:
        return np.ones(frames)
    rng = np.random.default_rng([attrs["noise_seed"], 2])
    u = rng.uniform(-1.0, 1.0, size=frames)
    u = u - u.mean()
    u = u / max(np.abs(u).max(), 1e-9)
    return 1.0 + attrs["flicker"] * u


def render_clip(attrs: dict, frames: int = 17, height: int = 64, width: int = 64) -> np.ndarray:
    """Render a clip: uint8 [frames, height, width, 3]."""
    level = float(np.clip(attrs["brightness"], 0.0, 1.0)) * 255.0
    colour = np.asarray(COLORS[attrs["color"]], np.float64)
    side = shape_side(attrs, height, width)
    mask = _shape_mask(attrs["shape"], side)
    my, mx = np.nonzero(mask)
    xy = trajectory(attrs, frames, height, width)
    gains = flicker_gains(attrs, frames)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        frame = np.full((height, width, 3), level, np.float64)
        ys, xs = my + xy[t, 1], mx + xy[t, 0]
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        frame[ys[inside], xs[inside]] = colour
        video[t] = np.clip(np.rint(frame * gains[t]), 0, 255).astype(np.uint8)
    start, length = int(attrs["frozen_start"]), int(attrs["frozen_frames"])
    if length > 1 and start < frames:
        video[start + 1 : min(start + length, frames)] = video[start]
    return video


def timeline(attrs: dict, frames: int) -> np.ndarray:
    """Which instant of the shape's path each rendered frame shows: ``int [frames]``, ``t`` except inside a frozen
    span, where every frame repeats the span's first one (see :func:`render_clip`)."""
    shown = np.arange(frames)
    start, length = int(attrs["frozen_start"]), int(attrs["frozen_frames"])
    if length > 1 and start < frames:
        shown[start + 1 : min(start + length, frames)] = start
    return shown


def true_flow(attrs: dict, frames: int = 17, height: int = 64, width: int = 64) -> np.ndarray:
    """The exact forward optical flow of :func:`render_clip`'s clip: ``float32 [frames - 1, height, width, 2]``.

    ``flow[t, y, x] = (dx, dy)``: where the content at pixel ``(x, y)`` of frame ``t`` is in frame ``t + 1``, in
    pixels. Pixels of the shape in frame ``t`` move by the difference of its corners (:func:`trajectory`, jitter
    included; 0 inside a frozen span, and the jump back to the timeline after one); every other pixel is background,
    which stands still (0). Flicker changes brightness, not positions, so it does not show. The flow is defined at
    every pixel (the background is flat and static, the shape moves rigidly), so no validity mask goes with it;
    shape pixels whose target lies outside the frame keep their motion.
    """
    side = shape_side(attrs, height, width)
    my, mx = np.nonzero(_shape_mask(attrs["shape"], side))
    xy = trajectory(attrs, frames, height, width)[timeline(attrs, frames)]
    flow = np.zeros((max(frames - 1, 0), height, width, 2), np.float32)
    for t in range(frames - 1):
        ys, xs = my + xy[t, 1], mx + xy[t, 0]
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        flow[t, ys[inside], xs[inside]] = xy[t + 1] - xy[t]
    return flow


def brightness_word(brightness: float) -> str:
    if brightness < 0.3:
        return "dark"
    if brightness < 0.5:
        return "dim"
    if brightness < 0.7:
        return "bright"
    return "very bright"


def speed_word(speed: float) -> str:
    if speed <= 0:
        return "still"
    if speed <= 1:
        return "slowly"
    if speed <= 2:
        return "steadily"
    return "quickly"


_DIRECTION_WORDS = {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"}


def describe(attrs: dict) -> str:
    """The clip's content in words (defects such as jitter, freezes and flicker are not part of the prompt)."""
    background = brightness_word(attrs["brightness"])
    thing = f"a {attrs['color']} {attrs['shape']}"
    if attrs["speed"] <= 0:
        return f"{thing} standing still on a {background} background"
    return f"{thing} moving {speed_word(attrs['speed'])} {_DIRECTION_WORDS[attrs['direction']]} on a {background} background"


def prompt_id(prompt: str) -> str:
    return "p-" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:10]


def iter_toy_clips(seed: int = 0, frames: int = 17, height: int = 64, width: int = 64) -> Iterator[tuple[dict, np.ndarray]]:
    """An endless stream of ``(attributes, clip)``; its first ``n`` items are ``toy_clips(n, seed, ...)``."""
    rng = np.random.default_rng(seed)
    while True:
        attrs = sample_attributes(rng, frames)
        yield attrs, render_clip(attrs, frames, height, width)


def toy_clips(n: int, seed: int = 0, frames: int = 17, height: int = 64, width: int = 64) -> list[tuple[dict, np.ndarray]]:
    """``n`` clips in memory: ``[(attributes, uint8 [frames, height, width, 3]), ...]``."""
    return list(itertools.islice(iter_toy_clips(seed, frames, height, width), n))


def all_prompts() -> list[str]:
    """Every distinct prompt :func:`describe` can produce, sorted (e.g. to train a tokenizer)."""
    prompts = set()
    for colour in COLORS:
        for shape in SHAPES:
            for speed in SPEEDS:
                for direction in DIRECTIONS:
                    for brightness in (0.2, 0.4, 0.6, 0.8):
                        attrs = {"color": colour, "shape": shape, "speed": float(speed), "direction": direction,
                                 "brightness": brightness}
                        prompts.add(describe(attrs))
    return sorted(prompts)


def write_toy_videos(
    out_dir: str | os.PathLike,
    n: int = 24,
    seed: int = 0,
    frames: int = 17,
    height: int = 64,
    width: int = 64,
    fps: float = 8.0,
    flow: bool = False,
) -> Path:
    """Write ``n`` clips as ``out_dir/clips/toy-NNNN.mp4`` and their ``videos`` manifest; return the manifest path.

    The manifest (``out_dir/videos.parquet``) holds the declared ``videos`` columns plus every true attribute as a
    flat column (``brightness``, ``color``, ``shape``, ``speed``, ``direction``, ``jitter``, ``frozen_start``,
    ``frozen_frames``, ``flicker``, ``size``, ``start_x``, ``start_y``, ``noise_seed``).

    With ``flow`` each clip's exact optical flow (:func:`true_flow`) is written too, as
    ``out_dir/flow/toy-NNNN.flow.safetensors`` in the layout of :mod:`vpt.io.flow`: the reference directory of
    ``vpt eval flow``.
    """
    from vpt.io.tables import write_table
    from vpt.io.video import write_video

    if n < 1:
        raise ValueError("n must be at least 1")
    out_dir = Path(out_dir)
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (attrs, video) in enumerate(toy_clips(n, seed, frames, height, width)):
        clip_id = f"toy-{index:04d}"
        relative = f"clips/{clip_id}.mp4"
        write_video(out_dir / relative, video, fps=fps)
        if flow:
            from vpt.io.flow import flow_path, write_flow

            write_flow(flow_path(out_dir / "flow", clip_id), true_flow(attrs, frames, height, width))
        prompt = describe(attrs)
        row = {
            "id": clip_id,
            "path": relative,
            "prompt": prompt,
            "prompt_id": prompt_id(prompt),
            "fps": float(fps),
            "frames": int(frames),
            "height": int(height),
            "width": int(width),
            "seed": int(seed),
        }
        row.update({key: ATTRIBUTE_TYPES[key](attrs[key]) for key in ATTRIBUTE_TYPES})
        rows.append(row)
    manifest = out_dir / "videos.parquet"
    write_table(rows, manifest, schema="videos")
    return manifest


def _vote(difference: float, tie: float) -> str:
    """'a' when A is better by more than ``tie``, 'b' when B is, else 'tie'."""
    if difference > tie:
        return "a"
    if difference < -tie:
        return "b"
    return "tie"


def toy_mos(clip: dict, prompt_clip: dict) -> dict[str, float]:
    """Mean opinion scores (1..5) of ``clip`` shown with ``prompt_clip``'s prompt, consistent with the labels of
    :func:`toy_preferences` (up to its brightness tie band): ``vq`` grows with brightness, ``mq`` falls with jitter,
    ``ta`` is 5 when the prompt names the clip's colour and shape, else 1."""
    low, high = BRIGHTNESS_RANGE
    return {
        "vq": 1.0 + 4.0 * (float(clip["brightness"]) - low) / (high - low),
        "mq": 5.0 - 4.0 * float(clip["jitter"]) / 3.0,
        "ta": 5.0 if (clip["color"], clip["shape"]) == (prompt_clip["color"], prompt_clip["shape"]) else 1.0,
    }


def toy_preferences(clips: list[dict], n_pairs: int, seed: int = 0, brightness_tie: float = 0.05,
                    mos: bool = False) -> list[dict]:
    """Preference pairs between toy clips, labelled by the truth (rows of the ``prefs`` table).

    ``clips`` are ``videos`` manifest rows carrying the true attributes. For a random pair (A, B), shown with the
    prompt of one of them (chosen at random):

    - ``vq``: the brighter clip wins; brightness within ``brightness_tie`` is a tie;
    - ``mq``: the clip with less jitter wins; equal jitter is a tie;
    - ``ta``: the clip whose colour and shape the prompt names wins; a tie when both have them;
    - ``overall``: the majority of the three votes (a tie when they cancel).

    With ``mos`` every row also carries mean opinion scores ``vq_mos_a, vq_mos_b, mq_mos_a, ...`` (:func:`toy_mos`).
    """
    if len(clips) < 2:
        raise ValueError("need at least two clips to pair")
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(n_pairs):
        a, b = (clips[i] for i in rng.choice(len(clips), size=2, replace=False))
        shown = a if rng.random() < 0.5 else b
        content = (shown["color"], shown["shape"])
        votes = {
            "vq": _vote(a["brightness"] - b["brightness"], brightness_tie),
            "mq": _vote(b["jitter"] - a["jitter"], 0.0),
            "ta": _vote(float((a["color"], a["shape"]) == content) - float((b["color"], b["shape"]) == content), 0.0),
        }
        balance = sum({"a": 1, "b": -1, "tie": 0}[vote] for vote in votes.values())
        pairs.append({
            "pair_id": f"toy-pair-{index:05d}",
            "path_a": a["path"],
            "path_b": b["path"],
            "prompt": shown["prompt"],
            "id_a": a["id"],
            "id_b": b["id"],
            **votes,
            "overall": _vote(balance, 0.0),
            "source": "toyworld",
        })
        if mos:
            score_a, score_b = toy_mos(a, shown), toy_mos(b, shown)
            for dimension in ("vq", "mq", "ta"):
                pairs[-1][f"{dimension}_mos_a"] = score_a[dimension]
                pairs[-1][f"{dimension}_mos_b"] = score_b[dimension]
    return pairs
