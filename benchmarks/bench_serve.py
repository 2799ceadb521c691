"""Reward server benchmark: `vpt score` through `vpt serve` vs the same models scored locally, on the same videos.

    .venv/bin/python benchmarks/bench_serve.py [--clips 32] [--frames 17] [--size 64] [--learned-clips 8]

Prints one table. Every run goes through the engine of `vpt score` (2 decode threads, batches of 8); the server runs
as a real `vpt serve` subprocess on 127.0.0.1 (2 decode threads, dynamic batches of up to 16), scored by one client
and by two concurrent clients each scoring half the videos. The learned rows use the tiny zoo's VideoReward (one
torch thread); the last row is how far the server's VideoReward scores are from local ones when both score 8
videos per forward pass, the server's batches mixing the two clients' videos (see the README's "Reward server").
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from timing import best_of

os.environ.setdefault("OMP_NUM_THREADS", "1")


def start_server(*args) -> tuple[subprocess.Popen, str]:
    vpt = str(Path(sys.executable).with_name("vpt"))
    process = subprocess.Popen([vpt, "serve", "--port", "0", "-q", *map(str, args)], stderr=subprocess.PIPE,
                               text=True)
    for line in process.stderr:
        match = re.match(r"vpt serve: (http://\S+) ", line)
        if match:
            return process, match.group(1)
    raise SystemExit(f"vpt serve did not start (exit {process.wait()})")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--learned-clips", type=int, default=8)
    args = parser.parse_args()

    from vpt.io.manifest import collect_videos
    from vpt.models.zoo import cached_tiny_zoo
    from vpt.rewards.engine import score_videos
    from vpt.rewards.registry import load_reward_model, load_reward_models
    from vpt.toyworld import write_toy_videos

    def run(items, models) -> list[dict]:
        return [row for rows in score_videos(items, models, batch_size=8, workers=2) for row in rows]

    def two_clients(items, model) -> list[dict]:
        with ThreadPoolExecutor(2) as pool:
            return [row for part in pool.map(lambda part: run(part, [model]), [items[::2], items[1::2]])
                    for row in part]

    zoo = cached_tiny_zoo(seed=0)
    learned = str(zoo / "videoreward")
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        manifest = write_toy_videos(folder, n=args.clips, seed=0, frames=args.frames, height=args.size,
                                    width=args.size)
        items = collect_videos([str(manifest)])
        for label, names, count, goal in [("brightness,motion", ["brightness", "motion"], len(items), 0.5),
                                          ("tiny VideoReward", [learned], args.learned_clips, 0.8)]:
            chosen = items[:count]
            local_models = load_reward_models(names, batch_size=8)
            local = count / best_of(lambda: run(chosen, local_models))
            rows.append((f"{label}: local vpt score", f"{local:.1f} videos/s", "1.00x"))
            process, url = start_server("-m", ",".join(names), "--batch-size", "8")
            try:
                remote = load_reward_model(url, batch_size=8)
                one = count / best_of(lambda: run(chosen, [remote]))
                two = count / best_of(lambda: two_clients(chosen, remote))
                rows.append((f"{label}: server, 1 client", f"{one:.1f} videos/s",
                             f"{one / local:.2f}x (goal >= {goal:.2f}x)"))
                rows.append((f"{label}: server, 2 clients", f"{two:.1f} videos/s",
                             f"{two / local:.2f}x (goal >= {goal:.2f}x)"))
                if names == [learned]:
                    here = {row["id"]: row for row in run(chosen, local_models)}
                    gap = max(abs(row[d] - here[row["id"]][d]) for row in two_clients(chosen, remote)
                              for d in remote.dimensions)
                    rows.append(("tiny VideoReward: max |server - local|", f"{gap:.2e}",
                                 "0 with --batch-size 1 on both sides"))
            finally:
                stop(process)

    print(f"clips: {args.clips} x {args.frames} frames x {args.size}x{args.size} (VideoReward: {args.learned_clips}),"
          f" client batches of 8, 1 torch thread, {os.cpu_count()} CPUs")
    width = max(len(row[0]) for row in rows)
    print(f"{'measure'.ljust(width)}  {'value':<16}  vs local / goal")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:<16}  {note}")


if __name__ == "__main__":
    main()
