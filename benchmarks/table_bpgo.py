"""TeleBoost's BPGO claim on the toy world: under an unreliable reward, BPGO should keep more of the true gain.

The training reward is the brightness of each rollout plus large Gaussian noise on half of the prompts (seeded per
rollout); the evaluation is the noise-free brightness of deterministic samples from fixed noises, before and
after the run. GRPO and BPGO (sigmoid RAS, running prior) run with the same seeds; the table prints whatever the
runs show.

    python benchmarks/table_bpgo.py --iterations 30 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vpt.toyworld import TOY_PROMPTS

PROMPTS = list(TOY_PROMPTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo directory (default: the cached tiny zoo, built when missing)")
    parser.add_argument("--out", default="table-bpgo")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--noise", type=float, default=0.2, help="std of the noise on the noisy prompts")
    args = parser.parse_args()

    from vpt.models.zoo import cached_tiny_zoo
    from vpt.rewards.heuristic import brightness
    from vpt.stages.grpo import GrpoOptions
    from vpt.testing.grpo_loop import LoopSettings, heuristic_reward, run_grpo_loop

    zoo = args.zoo or cached_tiny_zoo()
    reward = heuristic_reward("brightness", noise=args.noise, noisy_prompts=PROMPTS[: len(PROMPTS) // 2],
                              column="reward")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        gains = {}
        for name, bpgo in (("GRPO", False), ("BPGO", True)):
            began = time.perf_counter()
            options = GrpoOptions(reward={"reward": 1.0}, clip_range=1e-2, bpgo=bpgo, seed=seed)
            result = run_grpo_loop(zoo, PROMPTS, reward, options, args.iterations,
                                   Path(args.out) / f"{name.lower()}-{seed}", LoopSettings(seed=seed),
                                   evaluation=(PROMPTS, 2, 1000, brightness))
            gains[name] = result.after - result.before
            print(f"seed {seed} {name}: true brightness {result.before:.4f} -> {result.after:.4f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
        rows.append((seed, gains["GRPO"], gains["BPGO"]))
    print(f"\nnoisy reward: brightness + N(0, {args.noise}^2) on {len(PROMPTS) // 2} of {len(PROMPTS)} prompts, "
          f"{args.iterations} iterations")
    print(f"{'seed':>4}  {'GRPO true gain':>15}  {'BPGO true gain':>15}")
    for seed, grpo, bpgo in rows:
        print(f"{seed:>4}  {grpo:>15.4f}  {bpgo:>15.4f}")
    mean = np.mean([r[1] for r in rows]), np.mean([r[2] for r in rows])
    print(f"{'mean':>4}  {mean[0]:>15.4f}  {mean[1]:>15.4f}")


if __name__ == "__main__":
    main()
