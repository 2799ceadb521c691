"""Preference losses for VideoReward on the toy world: BTT vs BT vs regression (VideoAlign Fig. 2/3 direction).

Trains the tiny zoo's VideoReward three times on the same toy-world pairs (same split, seed, steps and learning
rate), once per loss, and prints the held-out accuracy with and without ties per dimension. VideoAlign reports BTT
ahead of BT on accuracy *with* ties (BT never learns a tie band) and both ahead of regression; here the toy world
decides, and the table shows whatever it shows.

By default the model reads a compact query (``--query compact``) instead of VideoAlign's ~830-token one: on the
tiny random language model the long query makes a step ~17x dearer and dilutes attention so much that within a few
minutes only brightness (vq) is learned, which would leave nothing to compare. ``--query detailed_special`` keeps it.

    python benchmarks/table_reward_losses.py [--out DIR] [--seed 0] [--steps 80]     (or: make table-reward-losses)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

DIMENSIONS = ("vq", "mq", "ta", "overall")




def build_world(root: Path, clips: int, pairs: int, seed: int, size: int, frames: int) -> Path:
    """Toy clips and labelled pairs with MOS columns; no two pairs join the same two clips."""
    from vpt.io.tables import read_table, write_table
    from vpt.toyworld import toy_preferences, write_toy_videos

    manifest = write_toy_videos(root, n=clips, seed=seed, frames=frames, height=size, width=size, fps=8.0)
    rows = read_table(manifest, "videos").to_pylist()
    chosen, seen = [], set()
    for pair in toy_preferences(rows, 3 * pairs, seed=seed, mos=True):
        key = frozenset((pair["id_a"], pair["id_b"]))
        if key not in seen:
            seen.add(key)
            chosen.append(pair)
    prefs = root / "prefs.parquet"
    write_table(chosen[:pairs], prefs, "prefs")
    return prefs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=56, help="frame side in pixels")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--eval-fraction", type=float, default=0.25)
    parser.add_argument("--losses", default="btt,bt,reg")
    parser.add_argument("--query", choices=("compact", "detailed_special"), default="compact")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from vpt.models.videoreward_checkpoint import load_videoreward
    from vpt.models.zoo import cached_tiny_zoo
    from vpt.train import TrainConfig
    from vpt.stages.reward import RewardTrainOptions, evaluate_pairs, read_preferences, split_pairs, \
        train_videoreward

    with tempfile.TemporaryDirectory(prefix="vpt-reward-losses-") as scratch:
        root = Path(args.out) if args.out else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        prefs = build_world(root / "world", args.clips, args.pairs, args.seed, args.size, args.frames)
        zoo = cached_tiny_zoo(seed=0)
        pixels = args.size * args.size
        results = {}

        model = load_videoreward(zoo).with_config(num_frames=args.frames, min_pixels=pixels, max_pixels=pixels,
                                                  prompt_template=args.query)
        data = read_preferences(prefs, model.sampling)
        _, held_out = split_pairs(len(data), args.eval_fraction, args.seed)
        results["untrained"] = (evaluate_pairs(model, data, held_out).metrics, 0.0)

        for loss in [name.strip() for name in args.losses.split(",") if name.strip()]:
            out = root / f"run-{loss}"
            if out.exists():
                shutil.rmtree(out)
            model = load_videoreward(zoo).with_config(prompt_template=args.query)
            options = RewardTrainOptions(loss=loss, eval_fraction=args.eval_fraction, frames=args.frames,
                                         min_pixels=pixels, max_pixels=pixels)
            config = TrainConfig(output_dir=str(out), seed=args.seed, learning_rate=args.lr, lr_schedule="cosine",
                                 warmup_steps=min(40, args.steps // 10), batch_size=args.batch_size,
                                 max_steps=args.steps, log_every=50, save_every=0, keep_last=1)
            began = time.perf_counter()
            result = train_videoreward(model, prefs, config, options, quiet=True)
            results[loss] = (result.accuracies, time.perf_counter() - began)
            print(f"trained {loss} in {results[loss][1]:.0f} s", file=sys.stderr)

    header = ["loss"] + [f"{d} {kind}" for d in DIMENSIONS for kind in ("w/o ties", "w/ ties")] + ["seconds"]
    rows = [header]
    for loss, (metrics, seconds) in results.items():
        cells = [loss]
        for d in DIMENSIONS:
            for key in (f"{d}_accuracy", f"{d}_accuracy_with_ties"):
                cells.append(f"{metrics[key]:.1f}" if key in metrics else "-")
        cells.append(f"{seconds:.0f}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"Held-out accuracy (%) of the tiny VideoReward on the toy world: {args.clips} clips, {args.pairs} pairs "
          f"({args.eval_fraction:.0%} held out), {args.steps} steps of {args.batch_size} pairs, lr {args.lr:g} cosine, "
          f"seed {args.seed}, {args.query} query")
    for row in rows:
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                        enumerate(zip(row, widths))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
