"""VideoAlign Table 5 on the toy world: Flow-NRG dimension weights -> win rate per dimension against unguided videos.

Per seed, every step is a ``vpt`` command (run in this process): ``sample-rollouts`` of the tiny generator (16
prompts x 8 samples, ODE), ``score`` by brightness and motion, ``build-prefs`` (best 3 vs worst 3 of each group:
brightness pairs labelled ``vq``, motion pairs labelled ``mq``), ``train-reward --kind latent`` on both tables, then
``guide`` at one scale with each row's weights on 4 other prompts x 8 noises, and once at scale 0 (unguided). A
video wins a dimension when it scores higher than the unguided video of the same noise: VQ by the brightness
heuristic, MQ by the motion heuristic. The toy world has no text-alignment judge, so the reward model has no TA
dimension and the TA column stays empty. The table prints whatever the runs show.

    python benchmarks/table_nrg_weights.py --seeds 0,1,2 --scale 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = ["--frames", "9", "--height", "32", "--width", "32"]
SAMPLER = ["--steps", "8", "--guidance", "1", *SIZE]
TRAIN_PROMPTS = 16
GROUP = 8
EVAL_PROMPTS = ["a red square moving slowly to the left on a dark background",
                "a blue circle standing still on a dim background",
                "a green triangle moving quickly upward on a bright background",
                "a yellow square moving steadily downward on a very bright background"]
WEIGHTS = [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]  # (VQ, MQ); TA has no toy judge


def vpt(*args) -> None:
    """Run one ``vpt`` command in this process; stop the table on failure."""
    from vpt.commands.main import main

    try:
        main([str(arg) for arg in args] + ["--quiet"])
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise SystemExit(f"vpt {' '.join(map(str, args))} failed ({exit_.code})") from None


def heuristic_scores(directory: Path) -> dict[str, np.ndarray]:
    """Brightness and motion of every video of a ``guide`` output, in table order."""
    from vpt.io.tables import read_table
    from vpt.io.video import read_frames
    from vpt.rewards.heuristic import brightness, motion

    rows = read_table(directory / "videos.parquet", "videos").to_pylist()
    frames = [read_frames(directory / row["path"]) for row in rows]
    return {"vq": np.array([brightness(clip) for clip in frames]), "mq": np.array([motion(clip) for clip in frames])}


def latent_reward_model(zoo: Path, root: Path, seed: int, steps: int) -> Path:
    """The seed's noisy-latent reward model, trained on best-vs-worst pairs of the generator's own samples."""
    from vpt.toyworld import describe, toy_clips

    prompts = root / "train.txt"
    prompts.write_text("\n".join(describe(attrs) for attrs, _ in toy_clips(TRAIN_PROMPTS, seed=50 + seed, frames=9,
                                                                          height=32, width=32)) + "\n")
    rollouts = root / "rollouts"
    vpt("sample-rollouts", "-m", zoo, "--prompts", prompts, "-g", GROUP, "--noise-level", "0", *SAMPLER, "--seed",
        seed, "-o", rollouts)
    tables = []
    for metric, label in (("brightness", "vq"), ("motion", "mq")):
        scores = root / f"{metric}.parquet"
        vpt("score", rollouts / "rollouts.parquet", "--model", metric, "-o", scores)
        tables += ["--data", root / f"prefs-{label}.parquet"]
        vpt("build-prefs", "--from-scores", scores, "--videos", rollouts / "rollouts.parquet", "--reward", metric,
            "--label", label, "--top-k", "3", "--seed", seed, "-o", tables[-1])
    reward = root / "latent-rm"
    vpt("train-reward", "--kind", "latent", "--model", zoo, *tables, "--blocks", "2", "--lr", "3e-4", "--batch-size",
        "16", "--max-steps", steps, "--eval-every", "0", "--save-every", "0", "--seed", seed, "--cache",
        root / "cache", "--out", reward)
    return reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo directory (default: the cached tiny zoo, built when missing)")
    parser.add_argument("--out", help="work directory (default: a temporary one, removed at the end)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scale", type=float, default=1.0, help="guidance strength w of every guided row")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the reward model")
    parser.add_argument("--samples", type=int, default=8, help="videos per evaluation prompt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="table-nrg-weights-") as temporary:
        run(args, Path(args.out) if args.out else Path(temporary))


def run(args, work: Path) -> None:
    from vpt.models.zoo import cached_tiny_zoo

    zoo = Path(args.zoo) if args.zoo else cached_tiny_zoo()
    seeds = [int(s) for s in args.seeds.split(",")]
    wins = {weights: {"vq": [], "mq": []} for weights in WEIGHTS}
    gains = {weights: {"vq": [], "mq": []} for weights in WEIGHTS}
    for seed in seeds:
        began = time.perf_counter()
        root = work / f"seed-{seed}"
        root.mkdir(parents=True, exist_ok=True)
        reward = latent_reward_model(zoo, root, seed, args.steps)
        (root / "eval.txt").write_text("\n".join(EVAL_PROMPTS) + "\n")
        runs = [("unguided", "vq=1", 0.0)] + [(f"{vq:g}-{mq:g}", f"vq={vq:g},mq={mq:g}", args.scale)
                                               for vq, mq in WEIGHTS]
        scores = {}
        for name, weights, scale in runs:
            out = root / f"guided-{name}"
            vpt("guide", "-m", zoo, "--reward", reward, "--weights", weights, "--scale", scale, "--prompts",
                root / "eval.txt", "-n", args.samples, *SAMPLER, "--seed", 1000 + seed, "-o", out)
            scores[name] = heuristic_scores(out)
        for vq, mq in WEIGHTS:
            guided = scores[f"{vq:g}-{mq:g}"]
            for dimension in ("vq", "mq"):
                difference = guided[dimension] - scores["unguided"][dimension]
                wins[(vq, mq)][dimension].append(float(np.mean(difference > 0)))
                gains[(vq, mq)][dimension].append(float(np.mean(difference)))
        print(f"seed {seed}: done in {time.perf_counter() - began:.0f} s", flush=True)

    videos = len(EVAL_PROMPTS) * args.samples
    print(f"\nFlow-NRG on the toy world (VideoAlign Table 5 layout): scale {args.scale:g}, reward model "
          f"{args.steps} steps; win rate (%) vs unguided videos of the same noises, {videos} per seed, mean over "
          f"seeds {args.seeds}; VQ = brightness, MQ = motion, TA: no toy judge")
    print(f"{'VQ:MQ:TA':<14}  {'VQ win':>7}  {'MQ win':>7}  {'TA win':>7}  {'VQ gain':>9}  {'MQ gain':>9}")
    for vq, mq in WEIGHTS:
        win, gain = wins[(vq, mq)], gains[(vq, mq)]
        print(f"{f'{vq:g}:{mq:g}:0':<14}  {100 * np.mean(win['vq']):>7.2f}  {100 * np.mean(win['mq']):>7.2f}  "
              f"{'-':>7}  {np.mean(gain['vq']):>+9.4f}  {np.mean(gain['mq']):>+9.5f}")


if __name__ == "__main__":
    main()
