"""``vpt grpo-step``: one GRPO policy iteration (rollouts + scores -> the next LoRA policy checkpoint)."""

from __future__ import annotations

from typing import List, Optional

import typer

from vpt.commands import _guard
from vpt.commands import _grpo as grpo
from vpt.commands import _training as shared
from vpt.commands import _ui


@_guard.grpo_options
@grpo.algorithm_options
def grpo_step(
    context: typer.Context,
    policy: Optional[str] = typer.Option(None, "--policy", help="Policy checkpoint to update (written by grpo-step, "
                                                                "dpo or sft; the one that sampled the rollouts)."),
    init: Optional[str] = typer.Option(None, "--init", help="Start a new policy: a Wan pipeline (or zoo) "
                                                            "directory; the rollouts were sampled without --policy."),
    init_lora: Optional[str] = typer.Option(None, "--init-lora", help="With --init: start as this LoRA (peft or "
                                            "diffusers Wan LoRA, no policy.json); the rollouts were sampled with "
                                            "--policy INIT_LORA."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="With --policy: the base generator (default: "
                                                                    "the one the policy records)."),
    rollouts: str = typer.Option(..., "--rollouts", help="Rollouts directory written by sample-rollouts."),
    scores: List[str] = typer.Option(..., "--scores", help="Scores table of the rollouts' videos (repeatable: "
                                                            "one per reward model)."),
    reward: str = typer.Option("score", "--reward", help="Reward: a scores column or weighted columns, e.g. "
                                                         "vq=1,mq=1,ta=1 (curriculum order with --self-paced)."),
    out: str = shared.option("--out"),
    learning_rate: float = shared.option("--lr", help="Learning rate (constant, after warmup)."),
    warmup_steps: int = shared.option("--warmup-steps", help="Linear warmup over the first optimizer steps of "
                                                             "the run."),
    weight_decay: float = shared.option("--weight-decay"),
    steps_per_iteration: int = typer.Option(1, "--steps-per-iteration", help="Optimizer steps per iteration "
                                                                             "(the items are split evenly)."),
    max_grad_norm: float = shared.option("--max-grad-norm"),
    save_every: int = shared.option("--save-every"),
    resume: Optional[str] = shared.option("--resume"),
    lora_rank: int = shared.option("--lora-rank", help="LoRA rank (with --init)."),
    lora_alpha: float = shared.option("--lora-alpha", help="LoRA alpha (with --init)."),
    lora_targets: Optional[str] = shared.option("--lora-targets", help="Comma-separated module names (with "
                                                "--init; default: attention, FFN and output projection)."),
    mixed_precision: str = shared.option("--mixed-precision"),
    dtype: str = shared.option("--dtype", help="Weights dtype of the frozen transformer: bf16 or fp32 (as the "
                               "rollouts were sampled; LoRA, optimizer, log-probs and loss stay float32)."),
    gradient_checkpointing: bool = shared.option("--gradient-checkpointing"),
    context_parallel: int = shared.option("--context-parallel"),
    seed: int = shared.option("--seed", help="Seed of the data order and the timestep subsets."),
    report_to: str = shared.option("--report-to"),
    quiet: bool = shared.option("--quiet"),
    **algorithm,
) -> None:
    """Update the LoRA policy on scored rollouts: one GRPO iteration (with optional BPGO, ViPO, self-paced).

    Micro-batches are the sampler's batches (sample-rollouts --batch-size) at one recorded step, so the
    recomputed log-probs match the stored ones exactly. A Makefile loop of sample-rollouts -> score -> grpo-step
    is an RL run; each step's checkpoint holds the adapter (peft and diffusers layouts), optimizer, schedule, RNG
    and curriculum state, and metrics.parquet. With --save-every N the iteration checkpoints into OUT.run/, and
    --resume OUT.run continues it after an interruption as if it had not stopped.

    Example:

    \b
      vpt grpo-step --init zoo/ --rollouts r0/ --scores r0.scores.parquet --reward brightness -o p1/
    """
    from pathlib import Path

    from vpt.distributed import current_processes
    from vpt.errors import VptError
    from vpt.models.dtypes import weights_dtype
    from vpt.stages.grpo import grpo_step as run, load_step_inputs
    from vpt.train import finish_distributed
    from vpt.train.policy import check_start
    from vpt.train.run import check_output

    check_start(policy, init_lora, init, "--init")
    frozen_dtype = weights_dtype(dtype)
    if (policy is None) == (init is None):
        raise VptError("give exactly one of --policy CKPT (continue a policy) or --init WAN_DIR (start one)")
    values = grpo.with_preset(context, {**locals(), **algorithm})
    options = grpo.grpo_options(values, reward)
    config = shared.train_config(values, epochs=1)
    targets = shared.policy_lora_targets(lora_targets)
    check_output(Path(out), resume)
    guard = _guard.guard_options(algorithm)
    inputs = load_step_inputs(policy=policy, init=init, model=model, rollouts=rollouts, scores=scores,
                              prior=values["prior"], options=options, vipo_model=values["vipo_model"],
                              lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=targets, init_lora=init_lora,
                              command=_ui.command_line(context),
                              dtype=frozen_dtype, gradient_checkpointing=gradient_checkpointing, judges=guard.judges)
    result = run(inputs, options, out, config, steps_per_iteration=steps_per_iteration, resume=resume, quiet=quiet,
                 drift_probes=guard.drift_probes)
    if not quiet and current_processes().is_main:
        _ui.print_table(f"grpo-step iteration {result.iteration}", ["metric", "value"],
                        [[name, f"{value:.6g}"] for name, value in result.metrics.items()])
        typer.echo(f"grpo-step: iteration {result.iteration} ({result.items} items, step {result.step}) -> {out}",
                   err=True)
    finish_distributed()
