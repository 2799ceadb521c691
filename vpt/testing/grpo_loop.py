"""An in-process GRPO run: sample -> reward -> grpo_step, iteration after iteration, in one Python process.

The command line does the same with a Makefile loop of ``sample-rollouts``, ``score`` and ``grpo-step`` (see
``examples/grpo/Makefile``); this keeps the generator loaded between iterations, which is what the learning tests
and ``make table-bpgo`` need on a CPU. Every iteration still goes through the real files: the rollouts directory
(mp4s and tensor shards), the rewards computed from the decoded mp4s, and a policy checkpoint that the next
iteration warm-starts from.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
import torch

from vpt.rollouts.sampling import RolloutOptions, WindowSchedule
from vpt.stages.grpo import GrpoState, StepInputs, grpo_step
from vpt.train.policy import DEFAULT_LORA_TARGETS, new_policy

RewardFn = Callable[[Sequence[dict], Sequence[np.ndarray]], "dict[str, np.ndarray]"]
"""(rollout rows, their decoded videos uint8 [T, H, W, 3]) -> reward column -> values [N]."""


def _tiny_sampling() -> RolloutOptions:
    return RolloutOptions(group_size=8, steps=8, guidance=1.0, frames=9, height=32, width=32)


def heuristic_reward(name: str, sign: float = 1.0, noise: float = 0.0, noisy_prompts: Collection[str] = (),
                     column: str | None = None) -> RewardFn:
    """A :data:`RewardFn` of one column (``column``, default ``name``): ``sign`` × the heuristic ``name`` of
    :mod:`vpt.rewards.heuristic` of each rollout's video, plus ``noise`` × N(0, 1) on the rollouts of
    ``noisy_prompts`` (seeded by the rollout's id and seed: an unreliable reward, the same on every rerun)."""
    from vpt.rewards import heuristic
    from vpt.rollouts.sampling import derived_seed

    score = getattr(heuristic, name)

    def reward(rows, videos):
        values = []
        for row, video in zip(rows, videos):
            value = sign * score(video)
            if noise and row["prompt"] in noisy_prompts:
                value += noise * np.random.default_rng(derived_seed(row["id"], row["seed"])).standard_normal()
            values.append(value)
        return {column or name: np.asarray(values, dtype=np.float64)}

    return reward


@dataclass
class LoopSettings:
    """Sampling and optimisation settings of a run (the tiny-zoo defaults learn within ~30 iterations).
    ``sampling.seed`` is replaced: each iteration's seed derives from ``seed``."""

    sampling: RolloutOptions = field(default_factory=_tiny_sampling)
    learning_rate: float = 1e-2
    steps_per_iteration: int = 1
    max_grad_norm: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    window: tuple[str, WindowSchedule] | None = None  # MixGRPO: (progressive | random, schedule), by iteration
    seed: int = 0


@dataclass
class LoopResult:
    """Per-iteration metrics of the run and the evaluation before / after."""

    metrics: list[dict] = field(default_factory=list)
    before: float = float("nan")
    after: float = float("nan")
    checkpoint: Path | None = None


def evaluate(pipe, prompts: Sequence[str], samples: int, seed: int, score: Callable[[np.ndarray], float],
             settings: LoopSettings) -> float:
    """Mean ``score`` of ``samples`` deterministic (ODE) samples of every prompt from fixed initial noises
    (:func:`vpt.testing.flow_eval.sample_scores` with ``seed``)."""
    from vpt.testing.flow_eval import sample_scores

    return float(np.mean(sample_scores(pipe, prompts, samples, seed, score, settings.sampling)))


def within_group_spread(zoo: str | Path, prompts: Sequence[str], samples: int, seed: int,
                        scores: dict[str, Callable[[np.ndarray], float]], settings: LoopSettings = LoopSettings(),
                        ) -> dict[str, float]:
    """Spread of the base generator ``zoo`` under every ``scores`` function: the standard deviation (ddof 1) over
    ``samples`` deterministic (ODE) samples of one prompt from different initial noises, averaged over ``prompts``.
    A gain measured in these units says how far a run moved its samples compared with how far they scatter."""
    from vpt.models.loading import load_wan_pipeline
    from vpt.testing.flow_eval import sample_videos

    videos = sample_videos(load_wan_pipeline(zoo), prompts, samples, seed, settings.sampling)
    spread = {}
    for name, score in scores.items():
        values = np.array([float(score(video)) for video in videos]).reshape(len(prompts), samples)
        spread[name] = float(values.std(axis=1, ddof=1).mean())
    return spread


def run_grpo_loop(zoo: str | Path, prompts: Sequence[str], reward_fn: RewardFn, options, iterations: int,
                  work_dir: str | Path, settings: LoopSettings = LoopSettings(),
                  evaluation: tuple[Sequence[str], int, int, Callable[[np.ndarray], float]] | None = None,
                  ) -> LoopResult:
    """``iterations`` GRPO iterations of a fresh LoRA policy on the generator ``zoo`` (a Wan or zoo directory).

    ``options``: :class:`~vpt.stages.grpo.GrpoOptions`. ``evaluation``: (prompts, samples, seed, score) measured
    before the first and after the last iteration (:func:`evaluate`). Seeded: the same arguments give the same run.
    """
    from vpt.distributed import Processes
    from vpt.io.video import read_frames
    from vpt.models.loading import load_dinov2, load_wan_pipeline, resolve_wan_directory
    from vpt.rollouts.run import prompt_items, sample_rollouts
    from vpt.rollouts.sampling import derived_seed
    from vpt.rollouts.store import load_rollouts
    from vpt.train import TrainConfig

    work_dir = Path(work_dir)
    pipe = load_wan_pipeline(zoo)
    model_id = str(resolve_wan_directory(zoo).resolve())
    policy = new_policy(pipe.transformer, settings.lora_targets, settings.lora_rank, settings.lora_alpha,
                        settings.seed)
    pipe.transformer = policy
    items = prompt_items([{"prompt": prompt} for prompt in prompts], "prompts")
    config = TrainConfig(learning_rate=settings.learning_rate, epochs=1,
                         max_grad_norm=settings.max_grad_norm, seed=settings.seed)
    result = LoopResult()
    if evaluation is not None:
        policy.eval()
        result.before = evaluate(pipe, *evaluation, settings)
    state, previous = GrpoState(), None
    dinov2 = load_dinov2(zoo) if options.vipo else None
    for iteration in range(1, iterations + 1):
        began = time.perf_counter()
        policy.eval()
        rollouts_dir = work_dir / f"rollouts-{iteration:04d}"
        sample_options = dataclasses.replace(settings.sampling, seed=derived_seed(settings.seed, "loop", iteration))
        if settings.window is not None:  # as sample-rollouts places it after the policy's iteration - 1 iterations
            strategy, schedule = settings.window
            sample_options = dataclasses.replace(sample_options, sde_window=schedule.window(
                strategy, iteration - 1, sample_options.steps, sample_options.seed))
        sample_rollouts(pipe, items, sample_options, rollouts_dir, Processes(), policy_id="loop", model_id=model_id)
        rollouts = load_rollouts(rollouts_dir, verify=False)
        videos = [read_frames(rollouts_dir / row["path"]) for row in rollouts.rows]
        rewards = {name: torch.as_tensor(np.asarray(values, dtype=np.float64))
                   for name, values in reward_fn(rollouts.rows, videos).items()}
        inputs = StepInputs(policy=policy, rollouts=rollouts, rewards=rewards, state=state,
                            policy_info={"model": model_id, "parent": "loop"}, warm_start=previous,
                            dinov2=dinov2)
        step = grpo_step(inputs, options, work_dir / f"policy-{iteration:04d}", config,
                         steps_per_iteration=settings.steps_per_iteration, quiet=True)
        result.metrics.append({"iteration": iteration, **step.metrics, "seconds": time.perf_counter() - began})
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)  # the run keeps only its newest checkpoint
        shutil.rmtree(rollouts_dir, ignore_errors=True)
        previous = step.checkpoint
    result.checkpoint = previous
    if evaluation is not None:
        policy.eval()
        result.after = evaluate(pipe, *evaluation, settings)
    return result
