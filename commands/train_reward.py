"""``vpt train-reward``: train a VideoReward model on a ``prefs`` table (+ its videos) into a checkpoint directory."""

from __future__ import annotations

from typing import Optional

import typer

from vpt.commands import _ui


def train_reward(
    prefs: str = typer.Argument(..., help="prefs table (Parquet, CSV or JSONL); relative video paths resolve "
                                          "against its directory.", show_default=False),
    model_path: str = typer.Option(..., "--model", "-m", help="VideoReward to start from: a checkpoint directory "
                                                              "(ours or VideoAlign's) or a zoo directory."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, metrics.jsonl and the trained "
                                                     "model (load_videoreward / vpt score --model OUT)."),
    loss: str = typer.Option("btt", "--loss", help="btt (Bradley-Terry with ties), bt (ties dropped) or reg (MSE "
                                                   "to the *_mos_a/_b columns)."),
    theta: float = typer.Option(5.0, "--theta", help="Tie parameter of btt (> 1)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: 2e-6 as VideoAlign; 1e-3 for "
                                                          "tiny models)."),
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
    frames: Optional[int] = typer.Option(None, "--frames", help="Decode N uniformly spaced frames per video "
                                                                "instead of the model's ~2 fps rule."),
    min_pixels: Optional[int] = typer.Option(None, "--min-pixels", help="Per-frame minimum pixels of the resize."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Per-frame maximum pixels of the resize."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping (0: off)."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no or bf16."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the adapter initialisation and the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest checkpoint in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
) -> None:
    """Train a VideoReward model (VideoAlign recipe) on preference pairs.

    LoRA on the language model; vision tower, merger, head and the three reward-token embeddings train fully. At
    the end the held-out accuracies are reported and the normalisation statistics of the held-out videos are stored
    with the model. Runs plainly or under `accelerate launch`.

    Example: vpt train-reward prefs.parquet --model zoo/ --out runs/reward --max-steps 500
    """
    from vpt.models.videoreward import load_videoreward
    from vpt.train import TrainConfig, finish_distributed
    from vpt.train.videoreward import RewardTrainOptions, suggested_hyperparameters, train_videoreward

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
