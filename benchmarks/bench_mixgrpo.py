"""MixGRPO sampling at equal --steps: what the sliding SDE window and Flash's second-order, compressed tail save, and
what the tail costs in accuracy.

    .venv/bin/python benchmarks/bench_mixgrpo.py [--model ZOO_OR_WAN_DIR] [--steps 16] [--window 4] [--tail-ratio 0.4]
        [--frames 17] [--height 64] [--width 64] [--group-size 4] [--device cpu]

Rows, every one sampling one group of one prompt at the same --steps, size and seeds (best of --repeats):
- Flow-GRPO: every step but the last stochastic and recorded (Euler elsewhere);
- MixGRPO: a window of --window SDE steps from --window-start, Euler for the rest;
- MixGRPO-Flash: the same window, DPM-Solver++(2M) for the deterministic steps and the post-window steps shrunk to
  --tail-ratio.
"group s" is a whole group (denoising, decoding and what sample-rollouts keeps); "denoise s" the denoising loop alone
(what MixGRPO changes; the VAE decode is the same for all). "transformer calls" counts velocity evaluations per
sample; "trained steps" is what grpo-step recomputes per sample
(the training cost, proportional). Accuracy: from the window's last state of one sample, the post-window ODE
segment integrated by each tail against a 256-step Euler reference (RMS over the final latent, relative to the
reference's RMS). Goals: Flash's denoising loop takes <= 0.75x MixGRPO's at equal --steps, and its compressed
DPM-Solver++ tail is no less accurate than an Euler tail of the same (compressed) number of steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Wan pipeline or zoo directory (default: the tiny zoo)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--window-start", type=int, default=0, help="0: a progressive window's first position")
    parser.add_argument("--tail-ratio", type=float, default=0.4)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from vpt.algo.flow_sde import sample_flow
    from vpt.models.loading import load_wan_pipeline
    from vpt.models.wan import WanVelocity, encode_prompts
    from vpt.models.zoo import cached_tiny_zoo
    from vpt.rollouts.sampling import RolloutOptions, sample_group

    torch.set_num_threads(1)
    pipe = load_wan_pipeline(args.model or str(cached_tiny_zoo(0)), device=args.device)
    embeds, negative = encode_prompts(pipe, ["a small red ball rolls across the floor"])
    window = (args.window_start, args.window_start + args.window)
    base = RolloutOptions(group_size=args.group_size, steps=args.steps, noise_level=0.7, guidance=1.0,
                          frames=args.frames, height=args.height, width=args.width, seed=7)
    variants = {
        "Flow-GRPO (all steps SDE)": base,
        f"MixGRPO (window {window[0]}:{window[1]})": dataclasses.replace(base, sde_window=window),
        f"MixGRPO-Flash (+ dpm-solver++, tail x{args.tail_ratio})": dataclasses.replace(
            base, sde_window=window, ode_solver="dpm-solver++", tail_ratio=args.tail_ratio),
    }
    print(f"# {args.steps} steps, {args.group_size} samples, {args.frames}x{args.height}x{args.width}, "
          f"{args.device}", flush=True)
    print(f"{'sampler':<48} {'group s':>8} {'x MixGRPO':>10} {'denoise s':>10} {'x MixGRPO':>10} "
          f"{'transformer calls':>18} {'trained steps':>14}")
    config = dict(pipe.scheduler.config)
    group_seconds, loop_seconds = {}, {}
    for name, options in variants.items():
        velocity = WanVelocity(pipe.transformer, embeds.repeat(options.group_size, 1, 1), None, 1.0)
        noise = _noise(pipe, options).repeat(options.group_size, *(1,) * 4)

        def denoise(options=options, velocity=velocity, noise=noise):
            sample_flow(velocity, noise, options.schedule(config), options.noise_level, options.sde_steps(),
                        lambda index, like: torch.randn(like.shape, generator=torch.Generator().manual_seed(index)),
                        ode_solver=options.ode_solver)

        with torch.no_grad():
            group_seconds[name] = best_of(lambda: sample_group(pipe, embeds, negative, "p", options), args.repeats)
            loop_seconds[name] = best_of(denoise, args.repeats)
    mix = list(variants)[1]
    for name, options in variants.items():
        print(f"{name:<48} {group_seconds[name]:>8.3f} {group_seconds[name] / group_seconds[mix]:>10.2f} "
              f"{loop_seconds[name]:>10.3f} {loop_seconds[name] / loop_seconds[mix]:>10.2f} "
              f"{options.sampler_steps():>18} {len(options.sde_steps()):>14}")

    flash = variants[list(variants)[2]]
    full = base.schedule(dict(pipe.scheduler.config))
    compressed = flash.schedule(dict(pipe.scheduler.config))
    velocity = WanVelocity(pipe.transformer, embeds, negative, 1.0)
    states: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        sample_flow(velocity, _noise(pipe, base), full[: window[1] + 1],
                    callback=lambda info: states.__setitem__(info.index + 1, info.x_next))
        here = states[window[1]]
        tail_from = full[window[1]:]
        fine = torch.cat([torch.linspace(float(s), float(e), 65)[:-1] for s, e in zip(tail_from[:-1], tail_from[1:])]
                         + [torch.zeros(1)])
        reference = sample_flow(velocity, here, fine).latents
        short = compressed[window[1]:]
        tails = {f"Euler, {len(tail_from) - 1} steps (MixGRPO)": (tail_from, "euler"),
                 f"Euler, {len(short) - 1} steps": (short, "euler"),
                 f"DPM-Solver++(2M), {len(short) - 1} steps (Flash)": (short, "dpm-solver++")}
        print(f"\n{'post-window tail':<48} {'relative RMS error':>18}")
        errors = {}
        for name, (sigmas, solver) in tails.items():
            out = sample_flow(velocity, here, sigmas, ode_solver=solver).latents
            errors[name] = float((out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
            print(f"{name:<48} {errors[name]:>18.2e}")
    names = list(errors)
    flash_share = loop_seconds[list(variants)[2]] / loop_seconds[mix]
    print(f"\ngoal: Flash's denoising loop <= 0.75x MixGRPO's: {flash_share:.2f}x "
          f"({'met' if flash_share <= 0.75 else 'NOT met'})")
    print(f"goal: Flash's tail no less accurate than Euler at its steps: {errors[names[2]]:.2e} vs "
          f"{errors[names[1]]:.2e} ({'met' if errors[names[2]] <= errors[names[1]] else 'NOT met'})")


def _noise(pipe, options):
    import torch

    from vpt.models.wan import initial_noise, latent_shape

    shape = latent_shape(pipe, options.frames, options.height, options.width)
    return initial_noise(shape, torch.Generator().manual_seed(11)).to(pipe.transformer.device)


if __name__ == "__main__":
    main()
