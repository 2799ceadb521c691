"""``vpt sft``: supervised fine-tuning on clips (flow matching), and Flow-RWR with per-clip reward weights."""

from __future__ import annotations

from typing import Any, List, Optional

import typer

from vpt.commands import _training as shared
from vpt.commands import _ui


@shared.flow_stage_options
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
    **training: Any,
) -> None:
    """Fine-tune the generator on clips with the flow-matching loss, as a LoRA policy (SFT, or Flow-RWR).

    Plain SFT weighs every clip 1; --weight-column takes per-clip weights from the manifest; --rwr-from weighs clips
    by exp(reward/beta) (VideoAlign's Flow-RWR), normalised to mean 1 — the same loss either way. Clips are encoded
    to latents once (cached). Runs plainly or under `accelerate launch`.

    Example:

    \b
      vpt sft --model zoo/ --data clips.parquet --rwr-from scores.parquet --rwr-beta 0.1 -o sft/
    """
    from vpt.train import finish_distributed
    from vpt.stages.sft import run_sft

    result = run_sft(data=data, prompts=prompts, weight_column=weight_column, rwr_scores=rwr_from,
                     rwr_reward=rwr_reward, rwr_beta=rwr_beta, **shared.stage_arguments(context, training))
    _ui.report("sft", result, training["quiet"])
    finish_distributed()
