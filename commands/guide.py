"""``vpt guide``: sample videos with Flow-NRG reward guidance from a noisy-latent reward model (mp4s + a videos
table)."""

from __future__ import annotations

from typing import Optional

import typer

from vpt.commands import _sampling as sampling
from vpt.commands import _outputs, _ui


def guide(
    model: str = sampling.MODEL,
    reward: str = typer.Option(..., "--reward", help="Noisy-latent reward model (vpt train-reward --kind latent)."),
    prompts: str = sampling.PROMPTS,
    out: str = typer.Option(..., "--out", "-o", callback=_outputs.new_directory,
                            help="Directory to create (must not exist): videos.parquet and videos/*.mp4."),
    policy: Optional[str] = sampling.POLICY,
    weights: Optional[str] = typer.Option(None, "--weights", help="Dimension weights, e.g. vq=0.1,mq=0.1,ta=0.8 "
                                                                  "(unnamed dimensions weigh 0; default: 1 each)."),
    scale: float = typer.Option(1.0, "--scale", help="Guidance strength w: v <- v - w*sigma/(1-sigma)*grad "
                                                     "(0: unguided)."),
    samples: int = typer.Option(1, "--samples", "-n", help="Videos per prompt."),
    steps: int = sampling.STEPS,
    guidance: float = sampling.GUIDANCE,
    negative_prompt: str = sampling.NEGATIVE_PROMPT,
    noise_level: float = typer.Option(0.0, "--noise-level", help="SDE noise level (0: the ODE sampler)."),
    shift: Optional[float] = sampling.SHIFT,
    frames: int = sampling.FRAMES,
    height: int = sampling.HEIGHT,
    width: int = sampling.WIDTH,
    fps: float = sampling.FPS,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per forward (default: all of a "
                                                                        "prompt's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every noise draw (with the prompt id and sample index), as "
                                               "sample-rollouts."),
    device: str = sampling.DEVICE,
    dtype: str = sampling.DTYPE,
    context_parallel: int = sampling.CONTEXT_PARALLEL,
    quiet: bool = sampling.QUIET,
) -> None:
    """Sample videos steered by a noisy-latent reward model (Flow-NRG; no fine-tuning).

    At every step but the first (pure noise) the velocity becomes v - w*sigma/(1-sigma)*grad_x sum_d weight_d*r_d,
    after classifier-free guidance. The weights trade reward dimensions off at sampling time. Seeds match
    sample-rollouts: at --scale 0 the videos are the unguided ones. Under `accelerate launch` the prompts are shared
    out across processes.

    Example:

    \b
      vpt guide -m zoo/ --reward runs/latent-rm --weights vq=0.1,mq=0.1,ta=0.8 --scale 2 \\
        --prompts prompts.txt --frames 9 --height 32 --width 32 -o guided/
    """
    from pathlib import Path

    from vpt.distributed import current_processes
    from vpt.io.tables import read_prompts
    from vpt.models.latent_reward import load_latent_reward
    from vpt.models.loading import resolve_wan_directory
    from vpt.rewards.expression import parse_reward
    from vpt.rollouts.generator import open_generator, placement
    from vpt.rollouts.guided import GuidanceSettings, check_reward_fits, guide_videos
    from vpt.rollouts.run import prompt_items
    from vpt.rollouts.sampling import RolloutOptions

    processes = current_processes()
    target, weights_dtype = placement(device, dtype, processes)
    items = prompt_items(read_prompts(prompts).to_pylist(), prompts)
    options = RolloutOptions(group_size=samples, steps=steps, noise_level=noise_level, guidance=guidance,
                             frames=frames, height=height, width=width, fps=fps, seed=seed,
                             negative_prompt=negative_prompt, shift=shift, batch_size=batch_size)
    options.check(group_option="--samples")
    reward_model = load_latent_reward(reward, dtype=weights_dtype, device=target)
    chosen = ({name: 1.0 for name in reward_model.dimensions} if weights is None
              else _weights(weights, parse_reward))
    settings = GuidanceSettings(weights=chosen, scale=scale, reward_path=str(Path(reward).resolve()))
    settings.check(reward_model.dimensions)
    check_reward_fits(reward_model, resolve_wan_directory(model))  # before the generator is loaded
    generator = open_generator(model, policy, target, weights_dtype, processes, context_parallel)
    for parameter in reward_model.parameters():
        parameter.requires_grad_(False)  # guidance differentiates the input only
    mine = len(processes.data_groups(context_parallel).shard(range(len(items))))
    total = mine * steps * -(-samples // (batch_size or samples))
    with _ui.progress(total, "guiding", quiet or not processes.is_main) as advance:
        summary = guide_videos(generator.pipe, items, options, reward_model, settings, out, processes,
                               policy_id=generator.policy_id, model_id=generator.model_id, on_step=advance,
                               context_parallel=context_parallel)
    if not quiet and processes.is_main:
        typer.echo(f"guide: {summary.videos} videos of {summary.prompts} prompts (scale {scale:g}, weights "
                   f"{settings.describe(reward_model.dimensions)}) in {out}", err=True)
    processes.leave()


def _weights(text: str, parse) -> dict[str, float]:
    from vpt.errors import VptError

    try:
        return parse(text)
    except VptError:  # its message names grpo-step's --reward
        raise VptError(f"--weights {text}: expected DIM=WEIGHT,... with finite weights and each dimension once "
                       "(e.g. vq=0.1,mq=0.1,ta=0.8)") from None
