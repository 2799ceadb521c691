"""``vpt train-reward``: train a reward model on ``prefs`` tables (+ their videos) into a run directory: a VideoReward
model (``--kind videoreward``) or the noisy-latent reward model of Flow-NRG guidance (``--kind latent``)."""

from __future__ import annotations

from typing import Optional

import typer

from vpt.commands import _training as shared
from vpt.commands import _outputs, _ui
from vpt.commands._lists import comma_list

KINDS = ("videoreward", "latent")
VIDEOREWARD_ONLY = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "min_pixels", "max_pixels")
LATENT_ONLY = ("dims", "blocks", "head_channels", "clip_latents", "timesteps", "logit_mean", "logit_std", "shift",
               "height", "width", "cache")


def train_reward(
    context: typer.Context,
    prefs: Optional[str] = typer.Argument(None, help="prefs table (Parquet, CSV or JSONL); relative video paths "
                                                     "resolve against its directory. Or give --data.",
                                          show_default=False),
    data: Optional[list[str]] = typer.Option(None, "--data", help="prefs table(s); repeat to train on several "
                                                                   "together (--kind latent)."),
    kind: str = typer.Option("videoreward", "--kind", help="videoreward (a VLM on decoded frames) or latent (the "
                                                           "noisy-latent reward model for `vpt guide`)."),
    model_path: str = typer.Option(..., "--model", "-m", help="videoreward: the VideoReward to start from (a "
                                                              "checkpoint directory, ours or VideoAlign's, or a zoo "
                                                              "directory); latent: the Wan generator (pipeline or "
                                                              "zoo directory) whose first blocks it copies."),
    out: str = typer.Option(..., "--out", "-o", callback=_outputs.run_directory,
                            help="Run directory to create (or one of vpt's to --resume): checkpoints, metrics.jsonl "
                                 "and the trained model (vpt score --model OUT, or vpt guide --reward OUT)."),
    loss: str = typer.Option("btt", "--loss", help="btt (Bradley-Terry with ties), bt (ties dropped) or, for "
                                                   "videoreward, reg (MSE to the *_mos_a/_b columns)."),
    theta: float = typer.Option(5.0, "--theta", help="Tie parameter of btt (> 1)."),
    learning_rate: Optional[float] = shared.option("--lr", None, help="Learning rate (default: videoreward 2e-6 as "
                                                                    "VideoAlign, 1e-3 for tiny models; latent 1e-4)."),
    batch_size: int = shared.option("--batch-size", 8, help="Pairs per micro-batch per process."),
    grad_accum: int = shared.option("--grad-accum"),
    max_steps: Optional[int] = shared.option("--max-steps", help="Optimizer steps (default: 2 epochs)."),
    epochs: Optional[int] = shared.option("--epochs", help="Epochs over the training pairs (with --max-steps: "
                                                         "whichever ends first)."),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", help="Share of pairs held out (seeded split)."),
    eval_every: int = typer.Option(100, "--eval-every", help="Held-out accuracy every N steps (0: at the end)."),
    save_every: int = shared.option("--save-every", 200, help="Checkpoint every N steps (0: at the end)."),
    log_every: int = shared.option("--log-every", help="Training metrics to metrics.jsonl every N steps."),
    lora_rank: Optional[int] = shared.option("--lora-rank", None, help="LoRA rank on the language model (default: "
                                                                       "64); 0 = no adapter."),
    lora_alpha: Optional[float] = shared.option("--lora-alpha", None, help="LoRA alpha (default: 2 x rank)."),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout", help="LoRA dropout."),
    lora_targets: Optional[str] = shared.option("--lora-targets", help="Comma-separated language-model Linears "
                                                                   "(e.g. q_proj,v_proj) (default: all)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="videoreward: decode N uniformly spaced frames per "
                                                                "video instead of the model's ~2 fps rule; latent: "
                                                                "resample every clip to N frames (with --height, "
                                                                "--width) before encoding."),
    min_pixels: Optional[int] = typer.Option(None, "--min-pixels", help="Per-frame minimum pixels of the resize."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Per-frame maximum pixels of the resize."),
    dims: Optional[str] = typer.Option(None, "--dims", help="latent: label columns to learn, one output each "
                                                            "(default: those of vq,mq,ta with labels)."),
    blocks: Optional[int] = typer.Option(None, "--blocks", help="latent: generator blocks the model copies "
                                                                "(default: 4, at most all)."),
    head_channels: int = typer.Option(32, "--head-channels", help="latent: feature channels per latent position "
                                                                  "before the pooled head."),
    clip_latents: str = typer.Option("auto", "--clip-latents", help="latent: auto (a rollouts sample trains on "
                                                                    "the final latent its sampler recorded) or "
                                                                    "encode (always encode the mp4)."),
    timesteps: str = shared.option("--timesteps"),
    logit_mean: float = shared.option("--logit-mean"),
    logit_std: float = shared.option("--logit-std"),
    shift: float = shared.option("--shift"),
    height: Optional[int] = shared.option("--height"),
    width: Optional[int] = shared.option("--width"),
    cache: Optional[str] = shared.option("--cache"),
    max_grad_norm: float = shared.option("--max-grad-norm"),
    mixed_precision: str = shared.option("--mixed-precision"),
    dtype: str = shared.option("--dtype"),
    gradient_checkpointing: bool = shared.option("--gradient-checkpointing"),
    seed: int = shared.option("--seed", help="Seed of the split, the adapter initialisation and the data order."),
    resume: Optional[str] = shared.option("--resume", help="Continue the run of an --out directory (or one of its "
                                                         "checkpoint-N) as if it had not stopped, or train it on."),
    report_to: str = shared.option("--report-to"),
    quiet: bool = shared.option("--quiet"),
) -> None:
    """Train a reward model on preference pairs.

    videoreward (VideoAlign recipe): LoRA on the language model; vision tower, merger, head and the three
    reward-token embeddings train fully. At the end the held-out accuracies are reported and the normalisation
    statistics of the held-out videos are stored with the model.

    latent (Flow-NRG): the generator's first blocks plus a small head score noisy latents, one output per label
    column; both clips of a pair get the same noise and noise level. Latents and prompt embeddings are encoded
    once (cached). Held-out accuracy is reported at noise levels 0.2, 0.5 and 0.8.

    Runs plainly or under `accelerate launch`; --resume OUT continues an interrupted run in OUT.

    Examples:

    \b
      vpt train-reward prefs.parquet --model zoo/ --out runs/reward --max-steps 500
      vpt train-reward --kind latent --model zoo/ --data prefs.parquet --out runs/latent-rm --max-steps 800
    """
    from vpt.distributed import current_processes
    from vpt.errors import VptError
    from vpt.stages.reward import check_run, start_videoreward, train_videoreward
    from vpt.train import finish_distributed

    if kind not in KINDS:
        raise VptError(f"--kind {kind}: choose {' or '.join(KINDS)}")
    tables = ([prefs] if prefs is not None else []) + list(data or [])
    if not tables:
        raise VptError("no prefs table: give it as the argument or with --data")
    wrong = [name for name in (VIDEOREWARD_ONLY if kind == "latent" else LATENT_ONLY)
             if context.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")]
    if wrong:
        raise VptError(f"--{wrong[0].replace('_', '-')} applies to --kind "
                       f"{'videoreward' if kind == 'latent' else 'latent'}; leave it out with --kind {kind}")
    if kind == "videoreward" and len(tables) > 1:
        raise VptError("--kind videoreward trains on one prefs table; merge the tables into one")
    check_run(out, resume)
    if kind == "latent":
        from vpt.stages.examples import NoiseOptions
        from vpt.stages.latent_reward import LEARNING_RATE, LatentRewardOptions, train_latent_reward

        options = LatentRewardOptions(dimensions=None if dims is None else comma_list(dims, "--dims", "vq,mq"),
                                      loss=loss, theta=theta, blocks=blocks, head_channels=head_channels,
                                      eval_fraction=eval_fraction, clip_latents=clip_latents, dtype=dtype,
                                      gradient_checkpointing=gradient_checkpointing)
        noise = NoiseOptions(timesteps=timesteps, logit_mean=logit_mean, logit_std=logit_std, shift=shift, seed=seed)
        config = shared.train_config(locals(), default_epochs=2, output_dir=out,
                                     learning_rate=LEARNING_RATE if learning_rate is None else learning_rate)
        result = train_latent_reward(model_path, tables, config, options, noise,
                                     shared.resample_size(frames, height, width), cache, resume=resume, quiet=quiet)
        if not quiet and current_processes().is_main:
            _ui.latent_reward_summary(result, options.eval_sigmas, out)
    else:
        targets = None if lora_targets is None else comma_list(lora_targets, "--lora-targets", "q_proj,v_proj")
        start = start_videoreward(model_path, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                  lora_targets=targets, loss=loss, theta=theta, eval_fraction=eval_fraction,
                                  frames=frames, min_pixels=min_pixels, max_pixels=max_pixels, dtype=dtype,
                                  gradient_checkpointing=gradient_checkpointing)
        config = shared.train_config(locals(), default_epochs=2, output_dir=out,
                                     learning_rate=start.learning_rate if learning_rate is None else learning_rate)
        result = train_videoreward(start.model, tables[0], config, start.options, resume=resume, quiet=quiet)
        if result.evaluation is not None and not quiet:
            _ui.videoreward_summary(result, out)
    finish_distributed()
