"""VideoAlign's β claim on the toy world: Flow-DPO with a constant β vs Diffusion-DPO's β_t = β(1 − σ)².

Per seed: 16 toy clips, 64 pairs labelled by true brightness (the brighter clip wins), a policy fine-tuned on all
clips (SFT, the reference), then two DPO runs from it that differ only in the β schedule (same β value, pairs,
steps and seeds). Measured against the reference:

- reward: ODE samples from the same prompts and initial noises, scored by brightness — the win rate (share of
  pairs where the policy's sample is brighter) and the mean gain;
- drift: ``‖v_θ − v_ref‖²`` (mean over elements) on held-out clips' latents noised to high σ ∈ [0.7, 1) and
  low σ ∈ (0, 0.3]. VideoAlign's argument: β_t → 0 at high noise, so β_t lets the policy drift most there.

The table prints whatever the runs show.

    python benchmarks/table_dpo_beta.py --seeds 0,1,2 --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

CLIPS = 16
PAIRS = 64
HELD_OUT = 8
EVAL_PROMPTS = ["a red square moving slowly to the left on a dark background",
                "a blue circle standing still on a dim background",
                "a green triangle moving quickly upward on a bright background",
                "a yellow square moving steadily downward on a very bright background"]
SCHEDULES = ("constant", "timestep")


def toy_world(root: Path, seed: int) -> tuple[Path, Path]:
    """(videos manifest, prefs table labelled in ``vq``) of the seed's toy clips."""
    from vpt.io.tables import read_table, write_table
    from vpt.toyworld import toy_preferences, write_toy_videos

    manifest = write_toy_videos(root, n=CLIPS, seed=seed, frames=9, height=32, width=32)
    prefs = root / "prefs.parquet"
    write_table(toy_preferences(read_table(manifest, "videos").to_pylist(), PAIRS, seed=seed), prefs, "prefs")
    return manifest, prefs


def held_out_latents(zoo, seed: int):
    """Latents and prompt embeddings of toy clips the runs never saw (another seed's stream)."""
    from vpt.toyworld import describe, toy_clips
    from vpt.testing.flow_eval import encode_clips

    clips = toy_clips(HELD_OUT, seed=10_000 + seed, frames=9, height=32, width=32)
    return encode_clips(zoo, np.stack([video for _, video in clips]), [describe(attrs) for attrs, _ in clips])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo directory (default: the cached tiny zoo, built when missing)")
    parser.add_argument("--out", help="work directory (default: a temporary one, removed at the end)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=100, help="DPO steps of each run")
    parser.add_argument("--beta", type=float, default=5000.0)
    parser.add_argument("--lr", type=float, default=2e-3, help="DPO learning rate")
    parser.add_argument("--sft-steps", type=int, default=1000, help="steps of the reference's SFT")
    parser.add_argument("--samples", type=int, default=8, help="paired samples per prompt")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="table-dpo-beta-") as temporary:
        run(args, Path(args.out) if args.out else Path(temporary))


def run(args, work: Path) -> None:
    from vpt.models.zoo import cached_tiny_zoo
    from vpt.rewards.heuristic import brightness
    from vpt.train import TrainConfig
    from vpt.stages.dpo import DpoOptions, run_dpo
    from vpt.stages.examples import NoiseOptions
    from vpt.stages.sft import run_sft
    from vpt.testing.flow_eval import HIGH_NOISE, LOW_NOISE, compare_samples, load_transformer, module_drift
    from vpt.train.policy import DEFAULT_LORA_TARGETS

    zoo = args.zoo or cached_tiny_zoo()
    cache = str(work / "encoded")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        began = time.perf_counter()
        root = work / f"seed-{seed}"
        manifest, prefs = toy_world(root / "world", seed)
        # the tests' recipe: long enough for the LoRA to model the clips, so that DPO has a sensible reference
        sft = TrainConfig(learning_rate=2e-2, lr_schedule="cosine", batch_size=8, max_steps=args.sft_steps,
                          keep_last=2, seed=seed)
        reference = run_sft(model=str(zoo), policy=None, data=[str(manifest)], out=root / "sft",
                            noise=NoiseOptions(seed=seed), config=sft, lora_targets=DEFAULT_LORA_TARGETS,
                            cache=cache, quiet=True).checkpoint
        latents, embeds = held_out_latents(zoo, seed)
        reference_model = load_transformer(zoo, reference)
        for schedule in SCHEDULES:
            config = TrainConfig(learning_rate=args.lr, batch_size=8, max_steps=args.steps, keep_last=2, seed=seed)
            policy = run_dpo(model=None, policy=str(reference), prefs=str(prefs), out=root / f"dpo-{schedule}",
                             options=DpoOptions(dimension="vq", beta=args.beta, beta_schedule=schedule),
                             noise=NoiseOptions(seed=seed), config=config, lora_targets=DEFAULT_LORA_TARGETS,
                             cache=cache, quiet=True).checkpoint
            scores = compare_samples(zoo, policy, reference, EVAL_PROMPTS, args.samples, 1000 + seed, brightness)
            policy_model = load_transformer(zoo, policy)
            drift = [module_drift(policy_model, reference_model, latents, embeds, band, 4, seed)
                     for band in (HIGH_NOISE, LOW_NOISE)]
            rows.append((seed, schedule, scores.win_rate, scores.gain, *drift))
        print(f"seed {seed}: done in {time.perf_counter() - began:.0f} s", flush=True)

    print(f"\nFlow-DPO on the toy world: beta {args.beta:g}, {args.steps} steps at lr {args.lr:g} from an SFT "
          f"reference ({args.sft_steps} steps); {len(EVAL_PROMPTS) * args.samples} paired samples per run; drift "
          f"on {HELD_OUT} held-out clips x 4 noise draws")
    header = (f"{'seed':>4}  {'beta':<8}  {'win rate':>8}  {'brightness gain':>15}  "
              f"{'drift σ∈[0.7,1)':>15}  {'drift σ∈(0,0.3]':>15}  {'high/low':>8}")
    print(header)
    for seed, schedule, win, gain, high, low in rows:
        print(f"{seed:>4}  {schedule:<8}  {win:>8.3f}  {gain:>+15.4f}  {high:>15.5f}  {low:>15.5f}  "
              f"{high / low:>8.2f}")
    for schedule in SCHEDULES:
        mine = np.array([row[2:] for row in rows if row[1] == schedule])
        win, gain, high, low = mine.mean(axis=0)
        print(f"{'mean':>4}  {schedule:<8}  {win:>8.3f}  {gain:>+15.4f}  {high:>15.5f}  {low:>15.5f}  "
              f"{high / low:>8.2f}")


if __name__ == "__main__":
    main()
