"""VideoReward scoring throughput: `vpt score`'s engine vs the model alone vs a one-video-at-a-time loop.

    .venv/bin/python benchmarks/bench_videoreward.py [--model DIR] [--clips 48] [--batch-size 8] [--device cpu]

(a) model alone: frames decoded beforehand, then the scorer (patchify + forward) in batches — the ceiling;
(b) naive loop: decode one video, score it alone, next — what a per-video inference script does;
engine: `vpt score`'s path — background decoding overlapped with batched scoring. Targets: >= 0.85x (a), >= 2x (b).
Defaults to the tiny zoo's VideoReward on toy clips.
"""

from __future__ import annotations

import argparse
import tempfile

from timing import best_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="VideoReward checkpoint (default: the tiny zoo's)")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from vpt.io.manifest import collect_videos
    from vpt.io.video import decode
    from vpt.models.zoo import cached_tiny_zoo
    from vpt.rewards.engine import score_videos
    from vpt.rewards.videoreward import load_videoreward_scorer
    from vpt.toyworld import write_toy_videos

    torch.set_num_threads(1)
    model = args.model or str(cached_tiny_zoo(0) / "videoreward")
    scorer = load_videoreward_scorer(model, device=args.device, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        manifest = write_toy_videos(folder, n=args.clips, seed=0)
        items = collect_videos([str(manifest)])
        decoded = [decode(item.file, scorer.sampling) for item in items]
        prompts = [item.prompt for item in items]
        scorer.score(decoded[:2], prompts[:2])  # warm-up

        def model_alone():
            for start in range(0, len(decoded), args.batch_size):
                scorer.score(decoded[start:start + args.batch_size], prompts[start:start + args.batch_size])

        def naive_loop():
            for item in items:
                scorer.score([decode(item.file, scorer.sampling)], [item.prompt])

        def engine():
            for _ in score_videos(items, [scorer], batch_size=args.batch_size, workers=args.workers):
                pass

        rates = {name: len(items) / best_of(function, args.repeats)
                 for name, function in [("model alone (a)", model_alone), ("naive loop (b)", naive_loop),
                                         ("vpt score engine", engine)]}
    print(f"model: {model}; {len(items)} toy clips, {len(decoded[0].frames)} frames each, batch {args.batch_size}, "
          f"decode workers {args.workers}, device {args.device}")
    print(f"{'path':<20} {'videos/s':>9}")
    for name, rate in rates.items():
        print(f"{name:<20} {rate:>9.1f}")
    engine_rate = rates["vpt score engine"]
    print(f"engine / (a) = {engine_rate / rates['model alone (a)']:.2f}  (target >= 0.85)")
    print(f"engine / (b) = {engine_rate / rates['naive loop (b)']:.2f}  (target >= 2)")


if __name__ == "__main__":
    main()
