"""``vpt dpo``: Flow-DPO of a LoRA policy on labelled pairs of clips, read top to bottom: the options, the pairs,
the reference, the loss, the run.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from vpt.algo.dpo import BETA_SCHEDULES, decoupled_dpo_backward, dpo_beta, flow_dpo_loss
from vpt.algo.flow_matching import noised, velocity_errors, velocity_target
from vpt.distributed import is_sharded, unwrapped
from vpt.errors import VptError
from vpt.models.wan import WanVelocity, wan_dtype
from vpt.stages.examples import (Example, Examples, LatentItems, NoiseOptions, lora_record, pair_clips,
                                 precision_record, prepare_with_samples)
from vpt.stages.guard import GuardOptions
from vpt.train.batch import TensorBatch
from vpt.train.run import (StageResult, StageTask, check_output, options_dict, run_directory, stage_record,
                           train_stage)

DIMENSIONS = ("overall", "vq", "mq", "ta")
REFERENCES = ("policy", "base")


@dataclass
class DpoOptions:
    """Flow-DPO: the label column, β and its schedule, the reference and the backward mode."""

    dimension: str = "overall"
    beta: float = 5000.0
    beta_schedule: str = "constant"
    decoupled: bool = False
    reference: str = "policy"

    def __post_init__(self) -> None:
        if self.dimension not in DIMENSIONS:
            raise VptError(f"--dim {self.dimension}: choose one of {', '.join(DIMENSIONS)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise VptError(f"--beta-schedule {self.beta_schedule}: choose one of {', '.join(BETA_SCHEDULES)}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise VptError(f"--beta must be a positive number, got {self.beta}")
        if self.reference not in REFERENCES:
            raise VptError(f"--reference {self.reference}: choose one of {', '.join(REFERENCES)}")


def dpo_examples(prefs: str, dimension: str) -> Examples:
    """The usable pairs of a ``prefs`` table for the label column ``dimension``: the preferred clip is ``chosen``;
    ties and invalid or missing labels are skipped and counted."""
    from vpt.io.tables import read_table

    table = read_table(prefs, "prefs")
    if dimension not in table.column_names:
        labelled = [name for name in DIMENSIONS if name in table.column_names]
        hint = f"choose --dim among {', '.join(labelled)}" if labelled else "label the pairs first (build-prefs)"
        raise VptError(f"{prefs}: has no '{dimension}' label column; {hint}")
    examples, ties, invalid = [], 0, 0
    for number, row in enumerate(table.to_pylist(), start=1):
        label = row[dimension]
        if label == "tie":
            ties += 1
            continue
        if label not in ("a", "b"):
            invalid += 1
            continue
        where = f"{prefs}: row {number}"
        if not row.get("prompt"):
            raise VptError(f"{where}: no prompt; DPO conditions both clips on the prompt they answer, give one")
        files = pair_clips(row, prefs, where)
        chosen, rejected = ("path_a", "path_b") if label == "a" else ("path_b", "path_a")
        examples.append(Example(key=row["pair_id"], clips={"chosen": files[chosen], "rejected": files[rejected]},
                                prompt=row["prompt"], where=where))
    if not examples:
        raise VptError(f"{prefs}: no pair has a preferred side for --dim {dimension} ({ties} ties, {invalid} "
                       "invalid or unlabelled); DPO needs pairs labelled a or b")
    return Examples(examples, {"pairs": float(len(examples)), "skipped_ties": float(ties),
                               "skipped_invalid": float(invalid)})


def branch_errors(model, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor:
    """Per-sample velocity errors ``[B]`` of ``model`` on clean latents ``x0 [B, C, F, h, w]`` noised to ``sigma
    [B]`` with ``noise``: mean over elements of (v_θ(x_σ, σ) − (ε − x0))²."""
    velocity = WanVelocity(model, embeds, None, 1.0, dtype)(noised(x0, noise, sigma), 0, sigma)
    return velocity_errors(velocity, velocity_target(x0, noise))


class Reference:
    """DPO's reference policy without a second copy of the generator: the transformer with the adapter disabled
    (``base``), or — when training continues a parent policy — the adapter at its starting weights, swapped in
    for the reference forward (the adapter is small; the base weights are shared)."""

    def __init__(self, policy: torch.nn.Module, parent_weights: bool):
        self.weights = None if not parent_weights else {
            name: param.detach().clone() for name, param in policy.named_parameters() if param.requires_grad}

    @contextlib.contextmanager
    def active(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The reference (no grad): call only while no graph of the policy is alive (parameters are swapped)."""
        policy = unwrapped(model)
        if self.weights is None:
            with torch.no_grad(), policy.disable_adapter():
                yield policy
            return
        params = dict(policy.named_parameters())
        with torch.no_grad():
            saved = {name: params[name].detach().clone() for name in self.weights}
            for name, weight in self.weights.items():
                params[name].copy_(weight)
            try:
                yield policy
            finally:
                for name, weight in saved.items():
                    params[name].copy_(weight)


@dataclass
class PairBatch(TensorBatch):
    """B labelled pairs; both clips of a pair are noised with one draw and one σ."""

    chosen: torch.Tensor  # [B, C, F, h, w] clean latents of the preferred clips
    rejected: torch.Tensor  # [B, C, F, h, w]
    noise: torch.Tensor  # [B, C, F, h, w] shared by both branches
    sigma: torch.Tensor  # [B]
    embeds: torch.Tensor  # [B, L, D] prompt embeddings


class FlowDpoTask:
    """The harness's ``loss_fn`` of Flow-DPO (``own_backward``): reference errors without grad, then the joint loss
    backward once, or the gradient-decoupled step (one backward pass per branch: only one branch's graph alive)."""

    def __init__(self, options: DpoOptions, reference: Reference, dtype: torch.dtype):
        self.options, self.reference, self.dtype = options, reference, dtype

    def __call__(self, model, batch: PairBatch,
                 backward: Callable[[torch.Tensor], None]) -> tuple[torch.Tensor, dict[str, Any]]:
        options = self.options
        chosen, rejected, noise, sigma, embeds = batch.chosen, batch.rejected, batch.noise, batch.sigma, batch.embeds
        branches = {"chosen": chosen, "rejected": rejected}
        beta = dpo_beta(options.beta, sigma, options.beta_schedule)
        # the reference runs in the batch layout of the policy passes it is compared with: an error depends on its
        # batch-mates at float rounding (~1e-7), which beta/2 (thousands) would turn into a non-zero implicit reward
        # of an unchanged policy
        with self.reference.active(model) as reference:
            if options.decoupled:
                reference_chosen, reference_rejected = (
                    branch_errors(reference, branches[branch], noise, sigma, embeds, self.dtype)
                    for branch in ("chosen", "rejected"))
            else:
                reference_chosen, reference_rejected = branch_errors(
                    reference, torch.cat([chosen, rejected]), noise.repeat(2, 1, 1, 1, 1), sigma.repeat(2),
                    embeds.repeat(2, 1, 1), self.dtype).chunk(2)
        if options.decoupled:
            def policy_errors(branch: str) -> torch.Tensor:
                # without grad, skip DDP's forward bookkeeping: no backward follows this call
                runner = model if torch.is_grad_enabled() else unwrapped(model)
                return branch_errors(runner, branches[branch], noise, sigma, embeds, self.dtype)

            def local_errors(branch: str) -> torch.Tensor:
                # with grad but outside DDP: its gradient is taken with autograd.grad and synchronised later
                return branch_errors(unwrapped(model), branches[branch], noise, sigma, embeds, self.dtype)

            trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
            # a sharded model's gradients exist only through its backward hooks (reduce-scattered into the
            # shards), not as autograd.grad results: it takes the path that back-propagates twice
            single = None if is_sharded(model) else local_errors
            loss, stats = decoupled_dpo_backward(policy_errors, reference_chosen, reference_rejected, beta, backward,
                                                 single, trainable)
        else:
            errors = branch_errors(model, torch.cat([chosen, rejected]), noise.repeat(2, 1, 1, 1, 1),
                                   sigma.repeat(2), embeds.repeat(2, 1, 1), self.dtype)
            policy_chosen, policy_rejected = errors.chunk(2)
            loss, stats = flow_dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
            backward(loss)
            loss = loss.detach()
        metrics = {"accuracy": stats.accuracy, "margin": stats.margin, "chosen_reward": stats.chosen_reward,
                   "rejected_reward": stats.rejected_reward, "chosen_error": stats.chosen_error,
                   "rejected_error": stats.rejected_error, "reference_chosen_error": reference_chosen.mean(),
                   "reference_rejected_error": reference_rejected.mean(), "sigma": sigma.mean()}
        return loss, metrics


def run_dpo(*, model: str | None, policy: str | None, prefs: str, out: str | os.PathLike, options: DpoOptions,
            noise: NoiseOptions, config, lora_targets: Sequence[str], lora_rank: int = 8, lora_alpha: float = 16.0,
            size: tuple[int, int, int] | None = None, cache: str | None = None, resume: str | None = None,
            quiet: bool = False, init_lora: str | None = None, command: Sequence[str] | None = None,
            dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False,
            guard: GuardOptions | None = None) -> StageResult:
    """``vpt dpo``: Flow-DPO of the policy (``policy`` continued, a new LoRA on ``model``, or the LoRA
    ``init_lora`` on ``model``) on the pairs of ``prefs`` labelled in ``options.dimension``; writes the policy
    checkpoint ``out``. ``command``: the command line, for the record and the model card. ``dtype``: of the frozen
    generator (the LoRA, optimizer, errors and their differences stay float32); ``gradient_checkpointing``:
    recompute the transformer's activations in the backward pass.

    ``guard`` (:mod:`vpt.stages.guard`): with judges, the starting policy's ODE samples of the evaluation prompts
    are drawn before training and the trained policy's from the same noises after it, written to
    ``OUT.run/eval-samples/`` and scored (``judge/<column>/start_mean`` ... ``/mean``); the drift from the reference
    is measured on the first chosen clips (``drift/<σ>``)."""
    from vpt.models.dtypes import dtype_name
    from vpt.stages.guard import EVAL_DIRECTORY, EvalSampler, eval_prompts, judge_metrics, judge_scores, load_judges

    guard = guard or GuardOptions()
    check_output(Path(out), resume)  # before encoding, which can take long at full scale
    examples = dpo_examples(prefs, options.dimension)
    prompts = eval_prompts(guard.eval_prompts, [example.prompt for example in examples.examples]) \
        if guard.judges else []
    judges = load_judges(guard.judges, dtype_name(dtype)) if guard.judges else []
    lora = {"targets": tuple(lora_targets), "rank": lora_rank, "alpha": lora_alpha}
    source, trainable, encoded, evaluation = prepare_with_samples(examples, model, policy, size, cache, lora,
                                                                  noise.seed, quiet, init_lora, dtype,
                                                                  gradient_checkpointing, prompts)
    # the starting policy is the reference: a parent's or an init LoRA's adapter as it starts, swapped in
    reference = Reference(trainable, parent_weights=options.reference == "policy" and source.adapter)
    task = FlowDpoTask(options, reference, wan_dtype(trainable))
    record = stage_record("dpo", source, prefs, {**options_dict(options, noise, guard),
                                                 "lora": lora_record(lora, source), "size": size}, command)
    record.update(precision_record(dtype, gradient_checkpointing))
    sampler = start = None
    if evaluation is not None:
        pipe, embeddings = evaluation
        sampler = EvalSampler(pipe, prompts, embeddings, guard.eval_samples, guard.eval_steps,
                              size or _clip_size(examples.examples[0].clips["chosen"]), noise.seed)
        start = sampler.sample(trainable)
    probes = [(example.latents["chosen"], example.prompt) for example in encoded[:guard.drift_probes]]
    tracked: list[tuple[str, Path]] = []

    def summary() -> dict[str, float]:
        from vpt.distributed import current_processes
        from vpt.encoding.cache import load_latent, load_prompt_embedding
        from vpt.stages.guard import TRACKED_SAMPLES, drift_metrics

        loaded = [(load_latent(latent), load_prompt_embedding(prompt)[None]) for latent, prompt in probes]
        measured = {**examples.counts, **drift_metrics(trainable, lambda: reference.active(trainable), loaded,
                                                       wan_dtype(trainable))}
        if sampler is None:
            return measured
        end = sampler.sample(trainable)  # every process: a sharded policy's forward needs them all
        if not current_processes().is_main:
            return measured
        directory = run_directory(Path(out)) / EVAL_DIRECTORY
        written = {tag: sampler.write(videos, directory, tag) for tag, videos in (("start", start), ("end", end))}
        for tag, prefix in (("start", "start_"), ("end", "")):
            files = [path for _, path in written[tag]]
            sampled = [sampler.prompts[n // guard.eval_samples] for n in range(len(files))]
            measured.update(judge_metrics(judge_scores(judges, files, sampled), prefix))
        pairs = list(zip(written["start"], written["end"]))[:TRACKED_SAMPLES // 2]
        tracked.extend(video for pair in pairs for video in pair)
        return measured

    return train_stage(trainable, StageTask(LatentItems(encoded, noise), task, PairBatch.collate, own_backward=True,
                                            samples=lambda: tracked),
                       config, Path(out), record, summary, resume=resume, quiet=quiet)


def _clip_size(file: Path) -> tuple[int, int, int]:
    """(frames, height, width) of a clip."""
    from vpt.io.video import probe

    info = probe(file)
    return info.frames, info.height, info.width
