"""``vpt train-reward``: train a reward model on ``prefs`` tables (+ their videos) into a run directory: a VideoReward
model (``--kind videoreward``) or the noisy-latent reward model of Flow-NRG guidance (``--kind latent``)."""

from __future__ import annotations

from typing import Optional

import typer

from vpt.commands import _training as shared
from vpt.commands import _outputs, _ui

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
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: videoreward 2e-6 as VideoAlign, "
                                                          "1e-3 for tiny models; latent 1e-4)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per micro-batch per process."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (default: 2 epochs)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs over the training pairs (with --max-steps: "
                                                                "whichever ends first)."),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", help="Share of pairs held out (seeded split)."),
    eval_every: int = typer.Option(100, "--eval-every", help="Held-out accuracy every N steps (0: at the end)."),
    save_every: int = typer.Option(200, "--save-every", help="Checkpoint every N steps (0: at the end)."),
    log_every: int = typer.Option(10, "--log-every", help="Training metrics to metrics.jsonl every N steps."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="LoRA rank on the language model (default: "
                                                                      "64); 0 = no adapter."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA alpha (default: 2 x rank)."),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout", help="LoRA dropout."),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="Comma-separated language-model "
                                                                            "Linears (e.g. q_proj,v_proj) "
                                                                            "(default: all)."),
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
    timesteps: str = shared.TIMESTEPS,
    logit_mean: float = shared.LOGIT_MEAN,
    logit_std: float = shared.LOGIT_STD,
    shift: float = shared.SHIFT,
    height: Optional[int] = shared.HEIGHT,
    width: Optional[int] = shared.WIDTH,
    cache: Optional[str] = shared.CACHE,
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping (0: off)."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no or bf16."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the adapter initialisation and the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest checkpoint in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
) -> None:
    """Train a reward model on preference pairs.

    videoreward (VideoAlign recipe): LoRA on the language model; vision tower, merger, head and the three
    reward-token embeddings train fully. At the end the held-out accuracies are reported and the normalisation
    statistics of the held-out videos are stored with the model.

    latent (Flow-NRG): the generator's first blocks plus a small head score noisy latents, one output per label
    column; both clips of a pair get the same noise and noise level. Latents and prompt embeddings are encoded
    once (cached). Held-out accuracy is reported at noise levels 0.2, 0.5 and 0.8.

    Runs plainly or under `accelerate launch`; --resume continues the newest checkpoint in --out.

    Examples:
      vpt train-reward prefs.parquet --model zoo/ --out runs/reward --max-steps 500
      vpt train-reward --kind latent --model zoo/ --data prefs.parquet --out runs/latent-rm --max-steps 800
    """
    from vpt.errors import VptError

    if kind not in KINDS:
        raise VptError(f"--kind {kind}: choose {' or '.join(KINDS)}")
    tables = ([prefs] if prefs is not None else []) + list(data or [])
    if not tables:
        raise VptError("no prefs table: give it as the argument or with --data")
    given = locals()
    wrong = [name for name in (VIDEOREWARD_ONLY if kind == "latent" else LATENT_ONLY)
             if context.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")]
    if wrong:
        raise VptError(f"--{wrong[0].replace('_', '-')} applies to --kind "
                       f"{'videoreward' if kind == 'latent' else 'latent'}; leave it out with --kind {kind}")
    if kind == "latent":
        _train_latent(tables, given)
        return
    if len(tables) > 1:
        raise VptError("--kind videoreward trains on one prefs table; merge the tables into one")
    prefs = tables[0]
    from vpt.models.videoreward import load_videoreward
    from vpt.train import TrainConfig, finish_distributed
    from vpt.stages.reward import RewardTrainOptions, suggested_hyperparameters, train_videoreward

    model = load_videoreward(model_path)
    defaults = suggested_hyperparameters(model)
    rank = defaults["lora_rank"] if lora_rank is None else lora_rank
    alpha = (2.0 * rank if lora_rank is not None else defaults["lora_alpha"]) if lora_alpha is None else lora_alpha
    targets = None
    if lora_targets is not None:
        targets = tuple(name.strip() for name in lora_targets.split(",") if name.strip())
    options = RewardTrainOptions(loss=loss, theta=theta, eval_fraction=eval_fraction, frames=frames,
                                 min_pixels=min_pixels, max_pixels=max_pixels, lora_rank=rank,
                                 lora_alpha=alpha if rank else defaults["lora_alpha"], lora_dropout=lora_dropout,
                                 lora_targets=targets)
    config = TrainConfig(output_dir=out, seed=seed, learning_rate=defaults["learning_rate"] if lr is None else lr,
                         batch_size=batch_size, gradient_accumulation_steps=grad_accum, max_steps=max_steps,
                         epochs=2 if max_steps is None and epochs is None else epochs, eval_every=eval_every,
                         save_every=save_every, log_every=log_every, max_grad_norm=max_grad_norm,
                         mixed_precision=mixed_precision)
    result = train_videoreward(model, prefs, config, options, resume=resume, quiet=quiet)
    if result.evaluation is not None and not quiet:
        metrics = result.evaluation.metrics
        rows = []
        for index, dimension in enumerate(("vq", "mq", "ta", "overall")):
            if f"{dimension}_accuracy" not in metrics and f"{dimension}_accuracy_with_ties" not in metrics:
                continue
            stats = ([result.evaluation.norm_mean[index], result.evaluation.norm_std[index]] if index < 3
                     else ["", ""])
            accuracies = [metrics.get(f"{dimension}_accuracy{kind}") for kind in ("", "_with_ties")]
            rows.append([dimension, *("-" if value is None else f"{value:.1f}" for value in accuracies), *stats])
        held = (f"{result.eval_pairs} held-out pairs" if result.eval_pairs
                else "no held-out pairs: training pairs")
        _ui.print_table(f"train-reward: {result.train.step} steps on {result.train_pairs} pairs; accuracy (%) on "
                        f"{held}; model in {out}",
                        ["dim", "acc w/o ties", "acc w/ ties", "norm mean", "norm std"], rows)
    finish_distributed()


def _train_latent(tables: list[str], given: dict) -> None:
    from vpt.train import TrainConfig, finish_distributed
    from vpt.stages.examples import NoiseOptions
    from vpt.stages.latent_reward import LatentRewardOptions, train_latent_reward

    dims = None if given["dims"] is None else tuple(name.strip() for name in given["dims"].split(",") if name.strip())
    options = LatentRewardOptions(dimensions=dims, loss=given["loss"], theta=given["theta"], blocks=given["blocks"],
                                  head_channels=given["head_channels"], eval_fraction=given["eval_fraction"],
                                  clip_latents=given["clip_latents"])
    noise = NoiseOptions(timesteps=given["timesteps"], logit_mean=given["logit_mean"],
                         logit_std=given["logit_std"], shift=given["shift"], seed=given["seed"])
    max_steps, epochs = given["max_steps"], given["epochs"]
    config = TrainConfig(output_dir=given["out"], seed=given["seed"],
                         learning_rate=1e-4 if given["lr"] is None else given["lr"], batch_size=given["batch_size"],
                         gradient_accumulation_steps=given["grad_accum"], max_steps=max_steps,
                         epochs=2 if max_steps is None and epochs is None else epochs,
                         eval_every=given["eval_every"], save_every=given["save_every"],
                         log_every=given["log_every"], max_grad_norm=given["max_grad_norm"],
                         mixed_precision=given["mixed_precision"])
    size = shared.resample_size(given["frames"], given["height"], given["width"])
    result = train_latent_reward(given["model_path"], tables, config, options, noise, size,
                                 given["cache"], resume=given["resume"], quiet=given["quiet"])
    from vpt.distributed import current_processes

    if not given["quiet"] and current_processes().is_main:
        sigmas = options.eval_sigmas
        rows = [[dimension, *(_percent(result.accuracy.get(f"{dimension}_accuracy@{sigma:g}")) for sigma in sigmas),
                 _percent(result.accuracy.get(f"{dimension}_accuracy"))] for dimension in result.dimensions]
        held = (f"{result.eval_pairs} held-out pairs" if result.eval_pairs
                else "no held-out pairs: training pairs")
        recorded = f", {result.recorded_clips} clips from recorded latents" if result.recorded_clips else ""
        _ui.print_table(f"train-reward --kind latent: {result.step} steps on {result.train_pairs} pairs{recorded}; "
                        f"accuracy (%) on {held}; model in {given['out']}",
                        ["dim", *(f"σ={sigma:g}" for sigma in sigmas), "mean"], rows)
    finish_distributed()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
