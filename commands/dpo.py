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
    model: Optional[str] = shared.option("--model"),
    policy: Optional[str] = shared.option("--policy"),
    init_lora: Optional[str] = shared.option("--init-lora"),
    out: str = shared.option("--out"),
    learning_rate: float = shared.option("--lr"),
    batch_size: int = shared.option("--batch-size"),
    grad_accum: int = shared.option("--grad-accum"),
    max_steps: Optional[int] = shared.option("--max-steps"),
    epochs: Optional[int] = shared.option("--epochs"),
    warmup_steps: int = shared.option("--warmup-steps"),
    lr_schedule: str = shared.option("--lr-schedule"),
    weight_decay: float = shared.option("--weight-decay"),
    max_grad_norm: float = shared.option("--max-grad-norm"),
    mixed_precision: str = shared.option("--mixed-precision"),
    save_every: int = shared.option("--save-every"),
    log_every: int = shared.option("--log-every"),
    lora_rank: int = shared.option("--lora-rank"),
    lora_alpha: float = shared.option("--lora-alpha"),
    lora_targets: Optional[str] = shared.option("--lora-targets"),
    timesteps: str = shared.option("--timesteps"),
    logit_mean: float = shared.option("--logit-mean"),
    logit_std: float = shared.option("--logit-std"),
    shift: float = shared.option("--shift"),
    frames: Optional[int] = shared.option("--frames"),
    height: Optional[int] = shared.option("--height"),
    width: Optional[int] = shared.option("--width"),
    cache: Optional[str] = shared.option("--cache"),
    resume: Optional[str] = shared.option("--resume"),
    seed: int = shared.option("--seed"),
    quiet: bool = shared.option("--quiet"),
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
