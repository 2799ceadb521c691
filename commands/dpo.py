"""``vpt dpo``: Flow-DPO on a prefs table (constant β or Diffusion-DPO's β_t; joint or gradient-decoupled)."""

from __future__ import annotations

from typing import Any

import typer

from vpt.commands import _guard
from vpt.commands import _training as shared
from vpt.commands import _ui


@_guard.dpo_options
@shared.flow_stage_options
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
    **training: Any,
) -> None:
    """Align the generator to preference pairs with Flow-DPO (VideoAlign), as a LoRA policy.

    Both clips of a pair get the same noise and noise level; the reference is the starting policy without a second
    copy of the generator. Clips are encoded to latents once (cached). Metrics include the implicit reward accuracy
    and margin, the drift from the reference by noise level (drift/0.10 ... drift/0.90) and, with --judge, held-out
    judges' scores of the starting and the trained policy's samples (judge/COLUMN/start_mean, judge/COLUMN/mean).
    Runs plainly or under `accelerate launch`.

    Example:

    \b
      vpt dpo --model zoo/ --prefs prefs.parquet --dim overall --beta 5000 --max-steps 200 -o dpo/
    """
    from vpt.train import finish_distributed
    from vpt.stages.dpo import DpoOptions, run_dpo

    options = DpoOptions(dimension=dimension, beta=beta, beta_schedule=beta_schedule, decoupled=decoupled,
                         reference=reference)
    result = run_dpo(prefs=prefs, options=options, guard=_guard.guard_options(training),
                     **shared.stage_arguments(context, training))
    _ui.report("dpo", result, training["quiet"])
    finish_distributed()
