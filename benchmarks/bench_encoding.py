"""Video encoding: what vpt's deterministic x264 settings cost against x264's defaults, and that they give the same
bytes in every process.

    .venv/bin/python benchmarks/bench_encoding.py [--clips 4] [--processes 6]

Prints one table: per clip size and setting, the mean file size, PSNR of the decoded frames against the source and
encoding time per clip, for toy-world renders with a little per-pixel noise (closer to generated video than flat
shapes) and for clean ones; how far a still toy scene moves once decoded (goal: 0 levels: a still scene stays
still); then how many distinct files the same frames gave across separate processes (goal: 1).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import time

import numpy as np

SIZES = [(17, 64, 64), (33, 256, 448), (81, 480, 832)]


def clips(count: int, frames: int, height: int, width: int, noise: bool = True) -> list[np.ndarray]:
    from vpt.toyworld import toy_clips

    rng = np.random.default_rng(0)
    rendered = [clip for _, clip in toy_clips(count, seed=1, frames=frames, height=height, width=width)]
    if not noise:
        return rendered
    return [(clip.astype(np.int16) + rng.integers(-6, 7, size=clip.shape)).clip(0, 255).astype(np.uint8)
            for clip in rendered]


def still_scene(frames: int = 17, size: int = 64) -> np.ndarray:
    """A toy clip whose shape does not move or flicker."""
    from vpt.toyworld import toy_clips

    return next(clip for attrs, clip in toy_clips(64, seed=0, frames=frames, height=size, width=size)
                if attrs["speed"] == 0 and not attrs["flicker"])


def decoded(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def encode(frames: np.ndarray, options: dict[str, str]) -> bytes:
    """``write_video``'s encoder with ``options`` in place of vpt's, into memory."""
    import av
    from fractions import Fraction

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(16))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10", **options}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def psnr(data: bytes, frames: np.ndarray) -> float:
    mse = float(((decoded(data).astype(np.float64) - frames) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def digests(count: int) -> None:
    """Child process: the sha256 of vpt's encoding of every clip of the middle size."""
    from vpt.io.video import DETERMINISTIC_X264

    print(" ".join(hashlib.sha256(encode(clip, DETERMINISTIC_X264)).hexdigest()[:12]
                   for clip in clips(count, *SIZES[1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--digests", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.digests:
        digests(args.clips)
        return
    from vpt.io.video import DETERMINISTIC_X264

    settings = {"x264 defaults": {}, "vpt (deterministic)": DETERMINISTIC_X264}
    print(f"{'clip':<22}{'setting':<22}{'bytes':>12}{'PSNR dB':>10}{'ms/clip':>10}")
    for size in SIZES:
        for noise in (True, False):
            sources = clips(args.clips, *size, noise=noise)
            for name, options in settings.items():
                began = time.perf_counter()
                files = [encode(frames, options) for frames in sources]
                seconds = (time.perf_counter() - began) / len(sources)
                quality = np.mean([psnr(data, frames) for data, frames in zip(files, sources)])
                label = "x".join(map(str, size)) + (" noisy" if noise else " clean")
                print(f"{label:<22}{name:<22}{np.mean([len(f) for f in files]):>12.0f}{quality:>10.2f}"
                      f"{seconds * 1000:>10.0f}")
    still = still_scene()
    for name, options in settings.items():
        frames = decoded(encode(still, options)).astype(np.int16)
        print(f"still scene, largest frame-to-frame change once decoded, {name}: "
              f"{int(np.abs(np.diff(frames, axis=0)).max())} levels (goal: 0)")
    children = [subprocess.Popen([sys.executable, __file__, "--digests", "--clips", str(args.clips)],
                                 stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
    outputs = {child.communicate()[0] for child in children}
    print(f"distinct files for the same frames across {args.processes} concurrent processes "
          f"({args.clips} clips {'x'.join(map(str, SIZES[1]))}): {len(outputs)} (goal: 1)")


if __name__ == "__main__":
    main()
