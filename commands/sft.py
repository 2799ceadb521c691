"""``vpt sft``: supervised fine-tuning on clips (flow matching), and Flow-RWR with per-clip reward weights."""

from __future__ import annotations

from typing import List, Optional

import typer

from vpt.commands import _training as shared


def sft(
    context: typer.Context,
    data: List[str] = typer.Option(..., "--data", help="Clips: a videos manifest (with a prompt column), a "
                                                       "directory, a glob or files (repeatable)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Prompts table (id, prompt) for clips without a "
                                                                  "manifest prompt."),
    weight_column: Optional[str] = typer.Option(None, "--weight-column", help="Manifest column of per-clip loss "
                                                                              "weights (>= 0)."),
    rwr_from: Optional[str] = typer.Option(None, "--rwr-from", help="Flow-RWR: scores table of the clips; "
                                                                    "weights exp(r/beta), normalised to mean 1."),
    rwr_reward: str = typer.Option("score", "--rwr-reward", help="Flow-RWR reward: a scores column or weighted "
                                                                 "columns, e.g. vq=1,mq=1,ta=1."),
    rwr_beta: float = typer.Option(1.0, "--rwr-beta", help="Flow-RWR temperature beta (> 0)."),
    model: Optional[str] = shared.MODEL,
    policy: Optional[str] = shared.POLICY,
    init_lora: Optional[str] = shared.INIT_LORA,
    out: str = shared.OUT,
    learning_rate: float = shared.LR,
    batch_size: int = shared.BATCH_SIZE,
    grad_accum: int = shared.GRAD_ACCUM,
    max_steps: Optional[int] = shared.MAX_STEPS,
    epochs: Optional[int] = shared.EPOCHS,
    warmup_steps: int = shared.WARMUP,
    lr_schedule: str = shared.SCHEDULE,
    weight_decay: float = shared.WEIGHT_DECAY,
    max_grad_norm: float = shared.MAX_GRAD_NORM,
    mixed_precision: str = shared.MIXED_PRECISION,
    save_every: int = shared.SAVE_EVERY,
    log_every: int = shared.LOG_EVERY,
    lora_rank: int = shared.LORA_RANK,
    lora_alpha: float = shared.LORA_ALPHA,
    lora_targets: Optional[str] = shared.LORA_TARGETS,
    timesteps: str = shared.TIMESTEPS,
    logit_mean: float = shared.LOGIT_MEAN,
    logit_std: float = shared.LOGIT_STD,
    shift: float = shared.SHIFT,
    frames: Optional[int] = shared.FRAMES,
    height: Optional[int] = shared.HEIGHT,
    width: Optional[int] = shared.WIDTH,
    cache: Optional[str] = shared.CACHE,
    resume: Optional[str] = shared.RESUME,
    seed: int = shared.SEED,
    quiet: bool = shared.QUIET,
) -> None:
    """Fine-tune the generator on clips with the flow-matching loss, as a LoRA policy (SFT, or Flow-RWR).

    Plain SFT weighs every clip 1; --weight-column takes per-clip weights from the manifest; --rwr-from weighs clips
    by exp(reward/beta) (VideoAlign's Flow-RWR), normalised to mean 1 — the same loss either way. Clips are encoded
    to latents once (cached). Runs plainly or under `accelerate launch`.

    Example: vpt sft --model zoo/ --data clips.parquet --rwr-from scores.parquet --rwr-beta 0.1 -o sft/
    """
    from vpt.train import finish_distributed
    from vpt.stages.sft import run_sft

    result = run_sft(data=data, prompts=prompts, weight_column=weight_column, rwr_scores=rwr_from,
                     rwr_reward=rwr_reward, rwr_beta=rwr_beta, **shared.stage_arguments(locals()))
    shared.report("sft", result, quiet)
    finish_distributed()
