"""`vpt build-prefs --from-annotations` on a VideoAlign-sized annotation table: wall time and peak memory.

    .venv/bin/python benchmarks/bench_build_prefs.py [--rows 182000] [--videos 100000] [--repeats 3]

Generates a CSV in VideoAlign's training layout (path_A, path_B, prompt, VQ, MQ, TA, fps/num_frames columns) over
empty stand-in video files (build-prefs checks that files exist; it does not decode them), then runs the command as
a user would, in a fresh process: the time includes start-up and imports, the memory is the process's peak RSS.
Targets: <= 5 s and <= 500 MB for 182,000 rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_annotations(folder: Path, rows: int, videos: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "videos").mkdir()
    for index in range(videos):
        (folder / "videos" / f"v{index:06d}.mp4").touch()
    first = rng.integers(0, videos, rows)
    second = (first + rng.integers(1, videos, rows)) % videos  # never the same video
    prompts = rng.integers(0, rows // 11 + 1, rows)
    labels = np.array(["A", "B", "same"])[rng.integers(0, 3, (rows, 3))]
    lines = ["path_A,path_B,prompt,VQ,MQ,TA,fps_A,num_frames_A,fps_B,num_frames_B"]
    lines += [f"./videos/v{a:06d}.mp4,./videos/v{b:06d}.mp4,prompt number {p} with some words,{vq},{mq},{ta},"
              f"8,81,16,81" for a, b, p, (vq, mq, ta) in zip(first, second, prompts, labels)]
    path = folder / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_once(csv: Path, out: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB and pairs written of one `vpt build-prefs` process."""
    vpt = str(Path(sys.executable).with_name("vpt"))
    start = time.perf_counter()
    process = subprocess.Popen([vpt, "build-prefs", "--from-annotations", str(csv), "--skip-invalid", "-o",
                                str(out)], stderr=subprocess.PIPE, text=True)
    _, _, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read()
    process.stderr.close()
    pairs = int(stderr.split("build-prefs: ")[1].split(" pairs")[0])
    return seconds, usage.ru_maxrss / 1024, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=182_000)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        csv = write_annotations(Path(folder), args.rows, args.videos)
        runs = [run_once(csv, Path(folder) / "prefs.parquet") for _ in range(args.repeats)]
    seconds = min(run[0] for run in runs)
    peak = max(run[1] for run in runs)
    print(f"{'annotation rows':<22}{args.rows:>12,}")
    print(f"{'distinct videos':<22}{args.videos:>12,}")
    print(f"{'pairs written':<22}{runs[0][2]:>12,}")
    print(f"{'wall time (best) s':<22}{seconds:>12.2f}   target <= 5")
    print(f"{'peak RSS (max) MB':<22}{peak:>12.0f}   target <= 500")


if __name__ == "__main__":
    main()
