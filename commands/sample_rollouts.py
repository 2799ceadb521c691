"""``vpt sample-rollouts``: G videos per prompt from a Wan generator, with trajectories and log-probs, into a
rollouts directory (table + mp4s + safetensors shards)."""

from __future__ import annotations

from typing import Optional

import typer

from vpt.commands import _sampling as sampling
from vpt.commands import _options, _outputs, _ui


# the TeleBoost release's sampling (recipes/wan_grpo_fsdp/run.sh): DanceGRPO's constant sigma_t, every step SDE
PRESETS = {"teleboost": {"sde_form": "dancegrpo", "noise_level": 0.25, "steps": 16, "shift": 5.0,
                         "same_noise": True}}
PRESETS["teleboost-guard"] = {**PRESETS["teleboost"], "record_means": True}  # RatioNorm reads the step means
# recipes/wan_tempflow_fsdp/run.sh: the flow-grpo form, branches at the first 2 steps, 2 draws each
PRESETS["teleboost-tempflow"] = {**PRESETS["teleboost"], "sde_form": "flow-grpo", "branch": "2:2"}


def sample_rollouts(
    context: typer.Context,
    model: str = sampling.MODEL,
    prompts: str = sampling.PROMPTS,
    out: str = typer.Option(..., "--out", "-o", callback=_outputs.new_directory,
                            help="Rollouts directory to create (must not exist)."),
    policy: Optional[str] = sampling.POLICY,
    group_size: int = typer.Option(4, "--group-size", "-g", help="Samples per prompt (one GRPO group)."),
    steps: int = sampling.STEPS,
    noise_level: float = typer.Option(0.7, "--noise-level", help="SDE noise level a (0 = the deterministic ODE "
                                                                 "sampler, nothing recorded)."),
    sde_form: str = typer.Option("flow-grpo", "--sde-form", help="Step std from the noise level a: flow-grpo "
                                 "(sigma_t = a*sqrt(sigma/(1-sigma))), dancegrpo (sigma_t = a, as TeleBoost) or cps "
                                 "(std = sigma'*sin(a*pi/2)); recorded, so grpo-step recomputes with the same form."),
    branch: Optional[str] = typer.Option(None, "--branch", help="EARLY_K:EXPLORATION_K: TempFlow's branched rollouts; "
                                         "at each of the first EARLY_K stochastic steps, EXPLORATION_K draws from one "
                                         "deterministic trajectory per sample, deterministic after (one group each)."),
    sde_window: Optional[str] = typer.Option(None, "--sde-window", help="START:END: only steps START..END-1 are "
                                             "stochastic and recorded (default: all but the last); or MixGRPO's "
                                             "window, progressive or random, placed by the policy's iteration."),
    window_size: int = typer.Option(4, "--window-size", help="Steps in a progressive or random SDE window."),
    window_stride: int = typer.Option(1, "--window-stride", help="Steps a progressive window moves at a time."),
    window_every: int = typer.Option(25, "--window-every", help="Iterations a progressive window stays in place."),
    ode_solver: str = typer.Option("euler", "--ode-solver", help="Deterministic steps: euler, or dpm-solver++ "
                                   "(second order, DPM-Solver++(2M))."),
    tail_ratio: float = typer.Option(1.0, "--tail-ratio", help="MixGRPO-Flash: the steps after the SDE window "
                                     "shrink to this share (0..1], at least one."),
    guidance: float = sampling.GUIDANCE,
    negative_prompt: str = sampling.NEGATIVE_PROMPT,
    shift: Optional[float] = sampling.SHIFT,
    frames: int = sampling.FRAMES,
    height: int = sampling.HEIGHT,
    width: int = sampling.WIDTH,
    fps: float = sampling.FPS,
    same_noise: bool = typer.Option(False, "--same-noise", help="One initial noise per group (per-step noise "
                                                                "stays independent)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per transformer forward "
                                                                        "(default: the whole group)."),
    latent_dtype: str = typer.Option("fp32", "--latent-dtype", help="Storage of the recorded states and final "
                                                                    "latents: fp32, or bf16 (half the bytes; the "
                                                                    "sampler goes on from the rounded states)."),
    record_means: bool = typer.Option(False, "--record-means", help="Store each recorded step's mean (float32; "
                                      "as many bytes again as fp32 states), for grpo-step --ratio-norm and "
                                      "--trust-region kl."),
    seed: int = sampling.SEED,
    preset: str = typer.Option("none", "--preset", help="none; teleboost: --sde-form dancegrpo, --noise-level "
                               "0.25, --steps 16, --shift 5 and --same-noise where not given (the TeleBoost "
                               "release's sampling); teleboost-guard adds --record-means, teleboost-tempflow "
                               "--sde-form flow-grpo --branch 2:2."),
    device: str = sampling.DEVICE,
    dtype: str = sampling.DTYPE,
    context_parallel: int = sampling.CONTEXT_PARALLEL,
    quiet: bool = sampling.QUIET,
) -> None:
    """Sample groups of videos per prompt with per-step log-probs (the input of grpo-step).

    Under `accelerate launch` the prompts are shared out across processes; the result is the same for a seed
    whatever the number of processes.

    Example:

    \b
      vpt sample-rollouts -m zoo/ --prompts prompts.txt -g 8 --steps 10 \\
        --frames 9 --height 32 --width 32 -o rollouts/
    """
    from vpt.distributed import current_processes
    from vpt.io.tables import read_prompts
    from vpt.rollouts.generator import open_generator, placement
    from vpt.rollouts.run import prompt_items, sample_rollouts as run
    from vpt.rollouts.sampling import RolloutOptions, WindowSchedule, parse_pair, sde_window_of
    from vpt.train.policy import grpo_iterations

    chosen = _options.with_preset(context, locals(), preset, PRESETS)
    noise_level, sde_form, steps, shift, same_noise, record_means, branch = (
        chosen[name] for name in ("noise_level", "sde_form", "steps", "shift", "same_noise", "record_means", "branch"))
    processes = current_processes()
    target, weights_dtype = placement(device, dtype, processes)
    items = prompt_items(read_prompts(prompts).to_pylist(), prompts)
    window = sde_window_of(sde_window, WindowSchedule(window_size, window_stride, window_every),
                           grpo_iterations(policy), steps, seed)
    options = RolloutOptions(group_size=group_size, steps=steps, noise_level=noise_level, sde_form=sde_form,
                             guidance=guidance, frames=frames, height=height, width=width, fps=fps, seed=seed,
                             same_noise=same_noise, sde_window=window, negative_prompt=negative_prompt, shift=shift,
                             batch_size=batch_size, latent_dtype=latent_dtype, record_means=record_means,
                             branch=parse_pair(branch, "--branch", "EARLY_K:EXPLORATION_K, e.g. 2:2"),
                             ode_solver=ode_solver, tail_ratio=tail_ratio)
    options.check()
    generator = open_generator(model, policy, target, weights_dtype, processes, context_parallel)
    mine = len(processes.data_groups(context_parallel).shard(range(len(items))))
    total = mine * options.transformer_steps()
    with _ui.progress(total, "sampling", quiet or not processes.is_main) as advance:
        summary = run(generator.pipe, items, options, out, processes, policy_id=generator.policy_id,
                      model_id=generator.model_id, on_step=advance, context_parallel=context_parallel)
    if not quiet and processes.is_main:
        typer.echo(f"sample-rollouts: {summary.videos} videos of {summary.prompts} prompts "
                   f"({group_size} per prompt, {len(options.sde_steps())} recorded steps each"
                   f"{'' if window is None else f', SDE window {window[0]}:{window[1]}'}) in {out}", err=True)
    processes.leave()
