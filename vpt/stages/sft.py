"""``vpt sft``: supervised flow matching of a LoRA policy on clips — weights 1 (SFT), a manifest column, or
Flow-RWR's normalised exp(r/β) of a reward — read top to bottom: the examples, the loss, the run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from vpt.algo.flow_matching import flow_matching_loss, noised, reward_weights, velocity_target
from vpt.errors import VptError
from vpt.models.wan import WanVelocity, wan_dtype
from vpt.stages.examples import (Example, Examples, LatentItems, NoiseOptions, lora_record, precision_record,
                                 prepare)
from vpt.train.batch import TensorBatch
from vpt.train.run import StageResult, StageTask, check_output, options_dict, stage_record, train_stage


def sft_examples(data: Sequence[str], prompts: str | None = None, weight_column: str | None = None,
                 rwr_scores: str | None = None, rwr_reward: str = "score", rwr_beta: float = 1.0) -> Examples:
    """The clips of ``data`` (a videos manifest, directory, glob or files; prompts from the manifest or
    ``prompts``), weighted by a manifest column (``weight_column``), by Flow-RWR weights N·softmax(r/β) of the
    reward ``rwr_reward`` in the scores table ``rwr_scores`` (joined on the video id), or not at all (SFT)."""
    from vpt.io.manifest import collect_videos, is_table

    if weight_column is not None and rwr_scores is not None:
        raise VptError("give --weight-column or --rwr-from, not both")
    if rwr_scores is not None and not (rwr_beta > 0 and math.isfinite(rwr_beta)):
        raise VptError(f"--rwr-beta must be a positive number, got {rwr_beta}")
    if weight_column is not None and not (len(data) == 1 and is_table(data[0])):
        raise VptError("--weight-column names a column of a videos manifest; pass --data MANIFEST")
    items = collect_videos(list(data), prompts)
    source = data[0] if len(data) == 1 else "the videos"
    for number, item in enumerate(items, start=1):
        if not item.prompt:
            raise VptError(f"{source}: row {number}: video {item.id} has no prompt; add a prompt column to the "
                           "manifest or pass --prompts")
        if not item.file.is_file():
            raise VptError(f"{source}: row {number}: {item.path} does not exist; fix the path or drop the row")
    weights: list[float] | None = None
    counts: dict[str, float] = {"videos": float(len(items))}
    if weight_column is not None:
        weights = _manifest_weights(data[0], weight_column)
    elif rwr_scores is not None:
        rewards = _rwr_rewards(items, rwr_scores, rwr_reward, source)
        weights = reward_weights(torch.tensor(rewards, dtype=torch.float64), rwr_beta).tolist()
        counts.update({"rwr/reward_mean": sum(rewards) / len(rewards), "rwr/weight_max": max(weights),
                       "rwr/effective_size": sum(weights) ** 2 / sum(w * w for w in weights)})
    examples = [Example(key=item.id, clips={"latent": item.file}, prompt=item.prompt,
                        weight=None if weights is None else float(weights[i]), where=f"{source}: row {i + 1}")
                for i, item in enumerate(items)]
    return Examples(examples, counts)


def _manifest_weights(manifest: str, column: str) -> list[float]:
    from vpt.io.manifest import read_video_table

    table = read_video_table(manifest)
    if column not in table.column_names:
        raise VptError(f"{manifest}: has no column '{column}' for --weight-column; add it or name another")
    weights = []
    for number, value in enumerate(table.column(column).to_pylist(), start=1):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise VptError(f"{manifest}: row {number}: column '{column}' is {value!r}; weights must be finite "
                           "numbers >= 0")
        weights.append(float(value))
    if not any(weights):
        raise VptError(f"{manifest}: column '{column}' is all zeros; at least one clip needs a positive weight")
    return weights


def _rwr_rewards(items, scores: str, reward: str, source: str) -> list[float]:
    from vpt.io.tables import read_table
    from vpt.rewards.expression import parse_reward

    try:
        weights = parse_reward(reward)
    except VptError:  # its message names grpo-step's --reward
        raise VptError(f"--rwr-reward {reward}: expected COLUMN or COLUMN=WEIGHT,... with finite weights and each "
                       "column once (e.g. score or vq=1,ta=2)") from None
    rows = read_table(scores, "scores").to_pylist()
    missing_columns = [column for column in weights if rows and column not in rows[0]]
    if missing_columns:
        raise VptError(f"{scores}: has no column '{missing_columns[0]}' for --rwr-reward; name a scores column")
    by_id = {row["id"]: (number, row) for number, row in enumerate(rows, start=1)}
    rewards = []
    for item in items:
        if item.id not in by_id:
            raise VptError(f"{scores}: no score for video {item.id!r} of {source}; score the same videos "
                           f"(vpt score {source} > {scores})")
        number, row = by_id[item.id]
        total = 0.0
        for column, weight in weights.items():
            value = row[column]
            if value is None or not math.isfinite(value):
                why = row.get("error") or ("missing" if value is None else repr(value))
                raise VptError(f"{scores}: row {number}: column '{column}' of video {item.id!r} is not a finite "
                               f"number ({why}); score it again or drop the video")
            total += weight * value
        rewards.append(total)
    return rewards


# ------------------------------------------------------------------------------------------------ the loss
@dataclass
class ClipBatch(TensorBatch):
    """B clips, each noised with its own draw and σ."""

    latent: torch.Tensor  # [B, C, F, h, w] clean latents
    noise: torch.Tensor  # [B, C, F, h, w]
    sigma: torch.Tensor  # [B]
    embeds: torch.Tensor  # [B, L, D] prompt embeddings
    weight: torch.Tensor | None = None  # [B] manifest or Flow-RWR weights; None: SFT's weights 1


class FlowMatchingTask:
    """The harness's ``loss_fn`` of SFT and Flow-RWR: the (weighted) flow-matching loss of one micro-batch
    (rectified flow, Liu et al. 2022 Eq. 1, with Flow-RWR's per-example weights)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, model, batch: ClipBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        x0, noise, sigma = batch.latent, batch.noise, batch.sigma
        velocity = WanVelocity(model, batch.embeds, None, 1.0, self.dtype)(noised(x0, noise, sigma), 0, sigma)
        loss, errors = flow_matching_loss(velocity, velocity_target(x0, noise), batch.weight)
        return loss, {"error": errors.mean().detach(), "sigma": sigma.mean()}


def run_sft(*, model: str | None, policy: str | None, data: Sequence[str], out: str | os.PathLike,
            noise: NoiseOptions, config, lora_targets: Sequence[str], prompts: str | None = None,
            weight_column: str | None = None, rwr_scores: str | None = None, rwr_reward: str = "score",
            rwr_beta: float = 1.0, lora_rank: int = 8, lora_alpha: float = 16.0,
            size: tuple[int, int, int] | None = None, cache: str | None = None, resume: str | None = None,
            quiet: bool = False, init_lora: str | None = None, command: Sequence[str] | None = None,
            dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False,
            drift_probes: int = 2) -> StageResult:
    """``vpt sft``: flow-matching fine-tuning of the policy (``policy`` continued, a new LoRA on ``model``, or the
    LoRA ``init_lora`` on ``model``) on the clips of ``data`` — weights 1 (SFT), a manifest column, or Flow-RWR's
    normalised exp(r/β) of ``rwr_reward`` from ``rwr_scores``; writes ``out``. ``command``: the command line, for the
    record and the model card. ``dtype``: of the frozen generator (the LoRA, optimizer and loss stay float32);
    ``gradient_checkpointing``: recompute the transformer's activations in the backward pass. ``drift_probes``: the
    first clips whose latents the drift from the generator (the adapter disabled) is measured on after training,
    ``drift/<σ>`` (:mod:`vpt.stages.guard`; 0: off)."""
    from vpt.stages.guard import GuardOptions, adapter_disabled, drift_metrics

    GuardOptions(drift_probes=drift_probes)  # checks it
    check_output(Path(out), resume)  # before encoding, which can take long at full scale
    examples = sft_examples(data, prompts, weight_column, rwr_scores, rwr_reward, rwr_beta)
    lora = {"targets": tuple(lora_targets), "rank": lora_rank, "alpha": lora_alpha}
    source, trainable, encoded = prepare(examples, model, policy, size, cache, lora, noise.seed, quiet, init_lora,
                                         dtype, gradient_checkpointing)
    weighting = ("rwr" if rwr_scores is not None else "column" if weight_column is not None else "none")
    options = {**options_dict(noise), "weighting": weighting, "weight_column": weight_column,
               "rwr_scores": rwr_scores, "rwr_reward": rwr_reward, "rwr_beta": rwr_beta,
               "lora": lora_record(lora, source), "size": size}
    task = StageTask(LatentItems(encoded, noise), FlowMatchingTask(wan_dtype(trainable)),
                     collate_fn=ClipBatch.collate)
    record = {**stage_record("sft", source, data[0], options, command),
              **precision_record(dtype, gradient_checkpointing)}
    probes = [(example.latents["latent"], example.prompt) for example in encoded[:drift_probes]]

    def summary() -> dict[str, float]:
        from vpt.encoding.cache import load_latent, load_prompt_embedding

        loaded = [(load_latent(latent), load_prompt_embedding(prompt)[None]) for latent, prompt in probes]
        return {**examples.counts, **drift_metrics(trainable, lambda: adapter_disabled(trainable), loaded,
                                                   wan_dtype(trainable))}

    return train_stage(trainable, task, config, Path(out), record, summary, resume=resume, quiet=quiet)


