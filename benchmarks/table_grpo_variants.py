"""The GRPO family side by side on the toy world: the true-reward gain of each variant, with a clean reward and with
a noisy one (TeleBoost's BPGO claim), on several seeds, and the wall time per iteration.

    .venv/bin/python benchmarks/table_grpo_variants.py [--iterations 6] [--seeds 0,1,2] [--reward brightness]
        [--noise 0.2] [--variants GRPO,MixGRPO,...] [--lr 3e-2] [--steps-per-iteration 2] [--out DIR]

Every run starts a fresh LoRA on the tiny zoo and runs the in-process loop (vpt.testing.grpo_loop: real rollouts
directories, mp4s, checkpoints) with the same sampling, learning rate (the example loop's 3e-2), clip range 1e-2,
two optimizer steps an iteration (with one, every ratio is 1 and the clip, RatioNorm and DPPO never act) and seeds;
a variant changes only what it is about (grpo-step options, or the sampling where the method is a sampling
choice). "s/iteration" is the loop's wall time per iteration (sampling, decoding, rewards, the step), without the
evaluations. "true gain" is the noise-free reward of deterministic samples from fixed noises after the run minus
before. The noisy case adds N(0, noise^2) to the training reward of half the prompts. Variants:

- GRPO: vpt's defaults (group z-score, PPO clip);
- BPGO (paper): sigmoid RAS with the running prior, CRT replace;
- BPGO (release): the TeleBoost release's forms (bayes-group RAS, rerange CRT, Bessel std, clip after transforms);
- ViPO (vpt map) and ViPO (release map): dense advantages with vpt's map and with the release's;
- TempFlow: branched rollouts (2 noises x 2 branch points x 2 draws per prompt) and noise-aware step weights;
- GRPO-Guard: ratio normalisation and the flow-grpo gradient reweight, at a tenth of the learning rate (the
  reweight multiplies the effective rate by 10-60x; README);
- MixGRPO: a progressive window of 3 SDE steps moving every iteration, DPM-Solver++ and the Flash tail (x0.5);
- DPPO: Flow-DPPO's KL trust region in place of the ratio clip.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from vpt.toyworld import TOY_PROMPTS

PROMPTS = list(TOY_PROMPTS)
RELEASED_VIPO_MAP = {"vipo_pca": "per-frame", "vipo_orient": "svd", "vipo_blur_mode": "reflect",
                     "vipo_normalise": "per-frame+global", "vipo_time": "half-pixel", "vipo_grid": "floor"}
# variant -> (GrpoOptions changes, RolloutOptions changes, LoopSettings changes)
VARIANTS: dict[str, tuple[dict, dict, dict]] = {
    "GRPO": ({}, {}, {}),
    "BPGO (paper)": ({"bpgo": True, "crt": "replace"}, {}, {}),
    "BPGO (release)": ({"bpgo": True, "crt": "rerange", "ras": "bayes-group", "ras_alpha": 1.0,
                        "std": "group-unbiased", "clip_after_transforms": True}, {}, {}),
    "ViPO (vpt map)": ({"vipo": True}, {}, {}),
    "ViPO (release map)": ({"vipo": True, **RELEASED_VIPO_MAP}, {}, {}),
    "TempFlow": ({"timestep_weight": "tempflow"}, {"group_size": 2, "branch": (2, 2)}, {}),
    "GRPO-Guard": ({"ratio_norm": True, "grad_reweight": "flow-grpo"}, {"record_means": True},
                   {"learning_rate_scale": 0.1}),
    "MixGRPO": ({}, {"ode_solver": "dpm-solver++", "tail_ratio": 0.5},
                {"window": ("progressive", {"size": 3, "stride": 1, "every": 1})}),
    "DPPO": ({"trust_region": "kl"}, {"record_means": True}, {}),
}


def run_variant(zoo: str, name: str, seed: int, reward, args, out: Path) -> tuple[float, float]:
    """(true gain, seconds per iteration) of one run."""
    from vpt.rewards import heuristic
    from vpt.rollouts.sampling import WindowSchedule
    from vpt.stages.grpo import GrpoOptions
    from vpt.testing.grpo_loop import LoopSettings, run_grpo_loop

    step_changes, sampling_changes, loop_changes = VARIANTS[name]
    base = LoopSettings(seed=seed, learning_rate=args.lr, steps_per_iteration=args.steps_per_iteration)
    loop_changes = dict(loop_changes)
    scale = loop_changes.pop("learning_rate_scale", 1.0)
    window = loop_changes.pop("window", None)
    settings = dataclasses.replace(
        base, sampling=dataclasses.replace(base.sampling, **sampling_changes),
        learning_rate=base.learning_rate * scale,
        window=None if window is None else (window[0], WindowSchedule(**window[1])))
    options = GrpoOptions(**{"reward": {"reward": 1.0}, "clip_range": 1e-2, "seed": seed, **step_changes})

    result = run_grpo_loop(zoo, PROMPTS, reward, options, args.iterations, out, settings,
                           evaluation=(PROMPTS, 2, 1000, getattr(heuristic, args.reward)))
    return result.after - result.before, float(np.mean([row["seconds"] for row in result.metrics]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo directory (default: the cached tiny zoo, built when missing)")
    parser.add_argument("--out", default="table-grpo-variants")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reward", default="brightness", help="a heuristic: brightness, motion, flicker, ...")
    parser.add_argument("--noise", type=float, default=0.2, help="std of the noise on the noisy prompts")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--lr", type=float, default=3e-2, help="the example loop's (examples/grpo/Makefile)")
    parser.add_argument("--steps-per-iteration", type=int, default=2,
                        help="optimizer steps an iteration; 2, so that ratios leave 1 and the trust regions act")
    args = parser.parse_args()

    import torch

    from vpt.models.zoo import cached_tiny_zoo
    from vpt.testing.grpo_loop import heuristic_reward

    torch.set_num_threads(1)
    zoo = args.zoo or str(cached_tiny_zoo())
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [name.strip() for name in args.variants.split(",")]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    cases = {"clean": heuristic_reward(args.reward, column="reward"),
             "noisy": heuristic_reward(args.reward, noise=args.noise, noisy_prompts=PROMPTS[: len(PROMPTS) // 2],
                                       column="reward")}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name in names:
        for case, reward in cases.items():
            for seed in seeds:
                slug = f"{name}-{case}-{seed}".lower().replace(" ", "-").replace("(", "").replace(")", "")
                gain, seconds = run_variant(zoo, name, seed, reward, args, Path(args.out) / slug)
                results.setdefault((name, case), []).append((gain, seconds))
                print(f"{name} / {case} / seed {seed}: true gain {gain:+.4f} ({seconds:.1f} s per iteration)",
                      flush=True)

    print(f"\n{args.reward}: true gain after {args.iterations} iterations, mean ± std over seeds {args.seeds} "
          f"(noisy: + N(0, {args.noise}^2) on {len(PROMPTS) // 2} of {len(PROMPTS)} prompts)")
    print(f"{'variant':<20} {'clean gain':>18} {'noisy gain':>18} {'noisy/clean':>11} {'s/iteration':>11}")
    for name in names:
        clean = np.array([gain for gain, _ in results[(name, "clean")]])
        noisy = np.array([gain for gain, _ in results[(name, "noisy")]])
        seconds = np.mean([s for case in cases for _, s in results[(name, case)]])
        share = noisy.mean() / clean.mean() if clean.mean() != 0 else float("nan")
        print(f"{name:<20} {clean.mean():>+9.4f} ± {clean.std():.4f} {noisy.mean():>+9.4f} ± {noisy.std():.4f} "
              f"{share:>11.2f} {seconds:>11.1f}")


if __name__ == "__main__":
    main()
