"""How fast the example GRPO loop learns rewards it was not tuned on (issue 18, item 8), on the toy world.

For every reward × seed × setting: a run on the reward and a control run on the negated reward (same seeds, same
everything else), a few iterations each; the gain is the mean reward of fresh deterministic (ODE) samples from fixed
noises after the run minus before it. The margin is gain − control gain in units of the base generator's
within-group standard deviation of the reward (over samples of one prompt from different initial noises, averaged
over the prompts): the learning test asks for a margin of at least 1 after 6 iterations.

    OMP_NUM_THREADS=1 python benchmarks/table_grpo_speed.py --iterations 6 --seeds 0,1,2 \\
        --rewards motion,flicker,pixel_smoothness,brightness --settings 'before;after'

A setting is one of the named ones in SETTINGS or NAME=LR,STEPS_PER_ITERATION,CLIP_RANGE; ';' separates settings.
A pair of runs takes about a minute on one CPU core (6 iterations each, ~5 s an iteration).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from vpt.toyworld import TOY_PROMPTS

PROMPTS = list(TOY_PROMPTS)
EVAL_SAMPLES, EVAL_SEED = 2, 1000  # as the learning tests: two ODE samples per prompt from fixed noises
SPREAD_SAMPLES, SPREAD_SEED = 8, 2000  # the base generator's within-group spread: a group's worth of samples


@dataclass(frozen=True)
class Setting:
    learning_rate: float
    steps_per_iteration: int
    clip_range: float


SETTINGS = {
    "before": Setting(1e-2, 1, 1e-2),  # examples/grpo/Makefile and LoopSettings before issue 18 item 8
    "after": Setting(3e-2, 1, 1e-2),  # examples/grpo/Makefile after it
    "steps4": Setting(1e-2, 4, 1e-2),  # the same data, four optimizer steps an iteration
}


def parse_setting(text: str) -> tuple[str, Setting]:
    if text in SETTINGS:
        return text, SETTINGS[text]
    name, values = text.split("=")
    learning_rate, steps, clip = values.split(",")
    return name, Setting(float(learning_rate), int(steps), float(clip))


def heuristic(name: str):
    from vpt.rewards import heuristic as heuristics

    return getattr(heuristics, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo directory (default: the cached tiny zoo, built when missing)")
    parser.add_argument("--out", default="table-grpo-speed")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rewards", default="motion,flicker,pixel_smoothness,brightness")
    parser.add_argument("--settings", default="before;after", help="settings separated by ';'")
    args = parser.parse_args()

    from vpt.models.zoo import cached_tiny_zoo
    from vpt.stages.grpo import GrpoOptions
    from vpt.testing.grpo_loop import LoopSettings, heuristic_reward, run_grpo_loop, within_group_spread

    zoo = args.zoo or cached_tiny_zoo()
    rewards = args.rewards.split(",")
    settings = [parse_setting(text) for text in args.settings.split(";")]
    spread = within_group_spread(zoo, PROMPTS, SPREAD_SAMPLES, SPREAD_SEED, {name: heuristic(name) for name in rewards})
    rows = []
    for setting_name, setting in settings:
        for reward in rewards:
            for seed in (int(s) for s in args.seeds.split(",")):
                gains, seconds = {}, 0.0
                for run, sign in (("reward", 1.0), ("negated", -1.0)):
                    began = time.perf_counter()
                    options = GrpoOptions(reward={reward: 1.0}, clip_range=setting.clip_range, seed=seed)
                    loop = LoopSettings(learning_rate=setting.learning_rate,
                                        steps_per_iteration=setting.steps_per_iteration, seed=seed)
                    result = run_grpo_loop(zoo, PROMPTS, heuristic_reward(reward, sign), options, args.iterations,
                                           Path(args.out) / f"{setting_name}-{reward}-{seed}-{run}", loop,
                                           evaluation=(PROMPTS, EVAL_SAMPLES, EVAL_SEED, heuristic(reward)))
                    gains[run] = result.after - result.before
                    seconds += (time.perf_counter() - began) / args.iterations / 2
                margin = (gains["reward"] - gains["negated"]) / spread[reward]
                rows.append((setting_name, reward, seed, gains["reward"], gains["negated"], spread[reward], margin,
                             seconds))
                print(f"{setting_name} {reward} seed {seed}: gain {gains['reward']:+.5f}, control "
                      f"{gains['negated']:+.5f}, margin {margin:+.2f} std ({seconds:.1f} s/iteration)", flush=True)
    print(f"\n{args.iterations} iterations; settings: " + "; ".join(
        f"{name} = lr {s.learning_rate:g}, {s.steps_per_iteration} steps/iteration, clip {s.clip_range:g}"
        for name, s in settings))
    header = ("setting", "reward", "seed", "gain", "control gain", "within-group std", "margin (std)", "s/iteration")
    print("  ".join(f"{h:>16}" for h in header))
    for row in rows:
        print("  ".join(f"{value:>16}" if isinstance(value, (str, int)) else f"{value:>16.5f}" for value in row))


if __name__ == "__main__":
    main()
