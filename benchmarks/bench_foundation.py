"""Foundation benchmarks: `vpt --help` start-up time, and heuristic scoring throughput vs raw decoding.

    .venv/bin/python benchmarks/bench_foundation.py [--clips 32] [--frames 49] [--size 128] [--rounds 7]

Prints one table. Scoring runs through the same engine as `vpt score` (background decode threads, batches); the
raw-decode rows decode the same files with nothing else, sequentially and with the same number of threads.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from timing import best_of


def help_time(repeats: int = 7) -> tuple[float, float]:
    vpt = str(Path(sys.executable).with_name("vpt"))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([vpt, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def make_clips(folder: Path, count: int, frames: int, size: int) -> list[Path]:
    from vpt.io.video import write_video
    from vpt.toyworld import render_clip, sample_attributes

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"clip-{index:03d}.mp4"
        write_video(path, render_clip(sample_attributes(rng, frames), frames, size, size), fps=16)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds; each measure's best round is shown")
    args = parser.parse_args()

    from vpt.io.manifest import VideoItem
    from vpt.io.video import FrameSampling, decode
    from vpt.rewards.engine import score_videos
    from vpt.rewards.heuristic import HEURISTICS
    from vpt.rewards.registry import load_reward_models

    median, best = help_time()
    rows = [("vpt --help wall time", f"{median * 1000:.0f} ms (best {best * 1000:.0f} ms)", "target <= 300 ms")]
    with tempfile.TemporaryDirectory() as folder:
        paths = make_clips(Path(folder), args.clips, args.frames, args.size)
        items = [VideoItem(id=p.stem, path=str(p), file=p) for p in paths]
        decode(paths[0], FrameSampling())  # warm the decoder libraries up
        runs = {"raw decode, 1 thread": lambda: [decode(p, FrameSampling()) for p in paths]}
        pool = ThreadPoolExecutor(args.workers)
        threaded = f"raw decode, {args.workers} threads"
        runs[threaded] = lambda: list(pool.map(lambda p: decode(p, FrameSampling()), paths))
        for names in [[name] for name in HEURISTICS] + [list(HEURISTICS)]:
            models = load_reward_models(names)  # as vpt score loads them: the heuristics as one model
            runs[f"vpt score -m {','.join(names)}"] = (
                lambda models=models: list(score_videos(items, models, batch_size=8, workers=args.workers)))
        # rounds interleave every measure so that a slow spell of the machine hits them all alike
        seconds = {name: float("inf") for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                seconds[name] = min(seconds[name], best_of(run, repeats=1))
        pool.shutdown()
        decode_rate = len(paths) / seconds[threaded]
        for name, best in seconds.items():
            rate = len(paths) / best
            note = "" if name.startswith("raw decode, 1") else f"{rate / decode_rate:.2f}x"
            if name.count(",") > 1:
                note += " (goal >= 0.80x)"
            rows.append((name, f"{rate:.1f} videos/s", note))

    print(f"clips: {args.clips} x {args.frames} frames x {args.size}x{args.size}, decode workers: {args.workers}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'value':<28}  vs raw decode / target")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:<28}  {note}")


if __name__ == "__main__":
    main()
