"""``vpt dpo``: Flow-DPO on a prefs table (constant β or Diffusion-DPO's β_t; joint or gradient-decoupled)."""

from __future__ import annotations

from typing import Optional

import typer

from vpt.commands import _training as shared


def dpo(
    context: typer.Context,
    prefs: str = typer.Option(..., "--prefs", help="prefs table; relative clip paths resolve against its "
                                                   "directory."),
    dimension: str = typer.Option("overall", "--dim", help="Label column that picks the preferred clip: overall, "
                                                           "vq, mq or ta (ties and invalid labels are skipped)."),
    beta: float = typer.Option(5000.0, "--beta", help="DPO beta (velocity errors are means over latent "
                                                      "elements, as in Diffusion-DPO)."),
    beta_schedule: str = typer.Option("constant", "--beta-schedule", help="constant (VideoAlign) or timestep: "
                                                                          "beta*(1-sigma)^2 (Diffusion-DPO)."),
    decoupled: bool = typer.Option(False, "--decoupled", help="Gradient-decoupled step: one backward pass per "
                                                              "branch (same gradient, lower peak memory)."),
    reference: str = typer.Option("policy", "--reference", help="policy (the starting policy: --policy, or the "
                                                                "generator) or base (the generator)."),
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
    """Align the generator to preference pairs with Flow-DPO (VideoAlign), as a LoRA policy.

    Both clips of a pair get the same noise and noise level; the reference is the starting policy without a second
    copy of the generator. Clips are encoded to latents once (cached). Metrics include the implicit reward accuracy
    and margin. Runs plainly or under `accelerate launch`.

    Example: vpt dpo --model zoo/ --prefs prefs.parquet --dim overall --beta 5000 --max-steps 200 -o dpo/
    """
    from vpt.train import finish_distributed
    from vpt.stages.dpo import DpoOptions, run_dpo

    options = DpoOptions(dimension=dimension, beta=beta, beta_schedule=beta_schedule, decoupled=decoupled,
                         reference=reference)
    result = run_dpo(prefs=prefs, options=options, **shared.stage_arguments(locals()))
    shared.report("dpo", result, quiet)
    finish_distributed()
