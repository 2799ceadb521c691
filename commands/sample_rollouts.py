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


def _pair(text: str | None, option: str, expected: str) -> tuple[int, int] | None:
    """``A:B`` of two whole numbers, as ``option`` takes them; otherwise refused with what is ``expected``."""
    from vpt.errors import VptError

    if text is None:
        return None
    first, sep, second = (part.strip() for part in text.partition(":"))
    if not (sep and first.isdigit() and second.isdigit()):
        raise VptError(f"{option} {text}: expected {expected}")
    return int(first), int(second)


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
                                                                       "stochastic and recorded (default: all but "
                                                                       "the last)."),
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
    preset: str = typer.Option("none", "--preset", help="none, or teleboost: --sde-form dancegrpo, --noise-level "
                               "0.25, --steps 16, --shift 5 and --same-noise where not given (the TeleBoost "
                               "release's sampling)."),
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
    from vpt.rollouts.sampling import RolloutOptions

    chosen = _options.with_preset(context, locals(), preset, PRESETS)
    noise_level, sde_form, steps, shift, same_noise = (chosen[name] for name in
                                                       ("noise_level", "sde_form", "steps", "shift", "same_noise"))
    processes = current_processes()
    target, weights_dtype = placement(device, dtype, processes)
    items = prompt_items(read_prompts(prompts).to_pylist(), prompts)
    options = RolloutOptions(group_size=group_size, steps=steps, noise_level=noise_level, sde_form=sde_form,
                             guidance=guidance, frames=frames, height=height, width=width, fps=fps, seed=seed,
                             same_noise=same_noise,
                             sde_window=_pair(sde_window, "--sde-window", "START:END step indices, e.g. 0:5"), negative_prompt=negative_prompt, shift=shift,
                             batch_size=batch_size, latent_dtype=latent_dtype, record_means=record_means,
                             branch=_pair(branch, "--branch", "EARLY_K:EXPLORATION_K, e.g. 2:2"))
    options.check()
    generator = open_generator(model, policy, target, weights_dtype, processes, context_parallel)
    mine = len(processes.data_groups(context_parallel).shard(range(len(items))))
    total = mine * options.transformer_steps()
    with _ui.progress(total, "sampling", quiet or not processes.is_main) as advance:
        summary = run(generator.pipe, items, options, out, processes, policy_id=generator.policy_id,
                      model_id=generator.model_id, on_step=advance, context_parallel=context_parallel)
    if not quiet and processes.is_main:
        typer.echo(f"sample-rollouts: {summary.videos} videos of {summary.prompts} prompts "
                   f"({group_size} per prompt, {len(options.sde_steps())} recorded steps each) in {out}", err=True)
    processes.leave()
