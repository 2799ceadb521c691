"""Group sampling for GRPO: G videos per prompt from a Wan generator, with the trajectory and per-step log-probs.

Every random choice is seeded from (run seed, prompt id, sample index), never from the process that happens to
sample the group, so a run gives the same rollouts whatever the number of processes. Two generators per sample keep
the initial noise and the per-step SDE noise apart: with ``same_noise`` the samples of a group share the initial
noise while their step noise stays independent (a shared generator must not drive both).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from vpt.algo.flow_sde import ODE_SOLVERS, SDE_FORMS, VelocityFn, sample_flow, state_indices_of
from vpt.algo.mixgrpo import WINDOW_STRATEGIES, compressed_tail, sliding_window, tail_steps
from vpt.errors import VptError
from vpt.models.wan import (
    MAX_SEQUENCE_LENGTH, WanVelocity, decode_latents, initial_noise, latent_shape, schedule_shift, schedule_sigmas,
    to_uint8,
)


Steer = Callable[[VelocityFn, torch.Tensor], VelocityFn]

# ``--latent-dtype`` values -> the dtype the recorded states and final latents are stored in
LATENT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class RolloutOptions:
    """How groups are sampled (the ``sample-rollouts`` options)."""

    group_size: int = 4
    steps: int = 10
    noise_level: float = 0.7
    sde_form: str = "flow-grpo"  # one of vpt.algo.flow_sde.SDE_FORMS: how the noise level sets each step's std
    guidance: float = 5.0
    frames: int = 81
    height: int = 480
    width: int = 832
    fps: float = 16.0
    seed: int = 0
    same_noise: bool = False
    sde_window: tuple[int, int] | None = None  # [start, end) of the stochastic steps; None = all but the last
    negative_prompt: str = ""
    shift: float | None = None  # None: the pipeline scheduler's
    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    batch_size: int | None = None  # samples per transformer forward; None = the whole group
    latent_dtype: str = "fp32"  # a key of LATENT_DTYPES: how states and final latents are stored (and rounded)
    record_means: bool = False  # store each recorded step's mean (float32), for grpo-step's ratio norm / trust region
    branch: tuple[int, int] | None = None  # TempFlow's (early_k, exploration_k): branch at the first early_k steps
    ode_solver: str = "euler"  # one of vpt.algo.flow_sde.ODE_SOLVERS: the deterministic steps
    tail_ratio: float = 1.0  # MixGRPO-Flash: the steps after the SDE window shrink to this share (at least one)

    def branch_points(self) -> list[int]:
        """TempFlow's branch points: the first ``early_k`` stochastic steps (none without ``branch``)."""
        return self.sde_steps()[: self.branch[0]] if self.branch is not None else []

    def sampler_steps(self) -> int:
        """Steps of the schedule the groups are sampled on: ``steps``, less what ``tail_ratio`` takes off after the
        SDE window."""
        sde_steps = self.sde_steps()
        if not sde_steps:
            return self.steps
        end = sde_steps[-1] + 1
        return end + tail_steps(self.steps - end, self.tail_ratio)

    def schedule(self, scheduler_config: dict) -> torch.Tensor:
        """The sigmas [sampler_steps + 1] of the pipeline scheduler's family (its shift unless ``shift`` is given),
        the steps after the SDE window compressed by ``tail_ratio``."""
        sigmas = schedule_sigmas(scheduler_config, self.steps, self.shift)
        if self.tail_ratio == 1 or not self.sde_steps():
            return sigmas
        return compressed_tail(sigmas, self.sde_steps()[-1] + 1, self.tail_ratio,
                               schedule_shift(scheduler_config, self.shift))

    def transformer_steps(self) -> int:
        """Sampler steps (velocity calls) per prompt, for progress."""
        if self.branch is None:
            return self.sampler_steps() * -(-self.group_size // (self.batch_size or self.group_size))
        points = self.branch_points()
        return self.group_size * (max(points) + sum(self.steps - k for k in points))

    def sde_steps(self) -> list[int]:
        if self.noise_level == 0:
            return []
        start, end = self.sde_window if self.sde_window is not None else (0, self.steps - 1)
        return list(range(start, end))

    def check(self, group_option: str = "--group-size") -> None:
        """Raise :class:`~vpt.errors.VptError` naming the option at fault (``group_option``: how the command calls
        the group size)."""
        def bad(option: str, value, expected: str) -> VptError:
            return VptError(f"{option} {value}: {expected}")

        if self.group_size < 1:
            raise bad(group_option, self.group_size, "give at least 1 sample per prompt")
        if self.steps < 2:
            raise bad("--steps", self.steps, "give at least 2 (the last step is never stochastic)")
        if not (self.noise_level >= 0 and math.isfinite(self.noise_level)):
            raise bad("--noise-level", self.noise_level, "give a finite number >= 0 (0: the ODE sampler)")
        if self.sde_form not in SDE_FORMS:
            raise bad("--sde-form", self.sde_form, f"choose one of {', '.join(SDE_FORMS)}")
        if self.sde_form == "cps" and self.noise_level > 1:
            raise bad("--noise-level", self.noise_level, "give at most 1 with --sde-form cps (std = sigma' * "
                                                         "sin(a * pi / 2))")
        if not math.isfinite(self.guidance):
            raise bad("--guidance", self.guidance, "give a finite scale (<= 1: off)")
        if self.sde_window is not None:
            start, end = self.sde_window
            if not 0 <= start < end <= self.steps - 1:
                raise bad("--sde-window", f"{start}:{end}", f"need 0 <= START < END <= steps - 1 = {self.steps - 1} "
                                                           "(the last step is never stochastic)")
        if self.branch is not None:
            early, draws = self.branch
            where = f"{early}:{draws}"
            if self.noise_level == 0:
                raise bad("--branch", where, "branches are stochastic steps; give a --noise-level > 0")
            if early < 1 or draws < 2:
                raise bad("--branch", where, "give EARLY_K >= 1 and EXPLORATION_K >= 2 (a branch point's draws are "
                                             "one GRPO group)")
            if early > len(self.sde_steps()):
                raise bad("--branch", where, f"EARLY_K is at most the {len(self.sde_steps())} stochastic steps")
            if self.batch_size is not None:
                raise bad("--batch-size", self.batch_size, "does not apply with --branch: a branch point's draws "
                                                           "are sampled together")
        if self.batch_size is not None and self.batch_size < 1:
            raise bad("--batch-size", self.batch_size, "give at least 1 sample per forward")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise bad("--fps", self.fps, "give a positive frame rate")
        if self.shift is not None and not (self.shift > 0 and math.isfinite(self.shift)):
            raise bad("--shift", self.shift, "give a positive timestep shift")
        if self.ode_solver not in ODE_SOLVERS:
            raise bad("--ode-solver", self.ode_solver, f"choose one of {', '.join(ODE_SOLVERS)}")
        if not 0 < self.tail_ratio <= 1:
            raise bad("--tail-ratio", self.tail_ratio, "give a share in (0, 1] of the steps after the SDE window")
        if self.tail_ratio < 1 and (self.noise_level == 0 or self.branch is not None):
            raise bad("--tail-ratio", self.tail_ratio, "compresses the steps after an SDE window; it needs a "
                                                       "--noise-level > 0 and no --branch")
        if self.latent_dtype not in LATENT_DTYPES:
            raise bad("--latent-dtype", self.latent_dtype, f"choose {' or '.join(LATENT_DTYPES)}")


def parse_pair(text: str | None, option: str, expected: str) -> tuple[int, int] | None:
    """``A:B`` of two whole numbers, as ``option`` takes them (None stays None); VptError with what is
    ``expected`` otherwise."""
    if text is None:
        return None
    first, sep, second = (part.strip() for part in text.partition(":"))
    if not (sep and first.isdigit() and second.isdigit()):
        raise VptError(f"{option} {text}: expected {expected}")
    return int(first), int(second)


@dataclass(frozen=True)
class WindowSchedule:
    """MixGRPO's sliding SDE window (``--sde-window progressive|random``; defaults: the release's script): ``size``
    steps, moved ``stride`` steps on every ``every`` iterations (progressive) or drawn anew every iteration
    (random)."""

    size: int = 4
    stride: int = 1
    every: int = 25

    def window(self, strategy: str, iteration: int, steps: int, seed: int) -> tuple[int, int]:
        """The window of the sampling that follows ``iteration`` GRPO iterations (:func:`sliding_window`)."""
        for option, value in (("--window-size", self.size), ("--window-stride", self.stride),
                              ("--window-every", self.every)):
            if value < 1:
                raise VptError(f"{option} {value}: give at least 1")
        if self.size > steps - 1:
            raise VptError(f"--window-size {self.size}: at most steps - 1 = {steps - 1} (the last step is never "
                           "stochastic)")
        return sliding_window(strategy, iteration, steps, self.size, self.stride, self.every, seed)


def sde_window_of(text: str | None, schedule: WindowSchedule, iteration: int, steps: int,
                  seed: int) -> tuple[int, int] | None:
    """The ``(start, end)`` that ``--sde-window`` names: ``START:END`` as given, or ``schedule``'s window for the
    strategy ``progressive`` / ``random`` after ``iteration`` GRPO iterations; None without it."""
    if text in WINDOW_STRATEGIES:
        return schedule.window(text, iteration, steps, seed)
    return parse_pair(text, "--sde-window", f"START:END step indices (e.g. 0:5), or {' or '.join(WINDOW_STRATEGIES)}")


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (stable across runs, machines and Python versions)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def sample_seeds(options: RolloutOptions, prompt_id: str) -> tuple[list[int], list[int]]:
    """(initial-noise seeds, step-noise seeds) of the ``group_size`` samples of ``prompt_id``."""
    count = options.group_size
    if options.same_noise:
        noise = [derived_seed(options.seed, prompt_id, "noise")] * count
    else:
        noise = [derived_seed(options.seed, prompt_id, "noise", k) for k in range(count)]
    return noise, [derived_seed(options.seed, prompt_id, "steps", k) for k in range(count)]


@dataclass
class GroupRollout:
    """The G samples of one prompt."""

    prompt_id: str
    seeds: list[int]
    step_seeds: list[int]
    sigmas: torch.Tensor  # float32 [steps + 1]
    recorded_steps: list[int]  # stochastic step indices i
    state_indices: list[int]  # j of the stored states x_j (every recorded step's start and end)
    states: torch.Tensor  # [G, S, C, F, h, w] in the latent dtype, S = len(state_indices)
    log_probs: torch.Tensor  # float32 [G, K], K = len(recorded_steps)
    videos: np.ndarray  # uint8 [G, T, H, W, 3]
    latents: torch.Tensor  # [G, C, F, h, w] in the latent dtype: the final states the videos were decoded from
    latent_dtype: str = "fp32"  # the key of LATENT_DTYPES the states and latents are stored in
    means: torch.Tensor | None = None  # float32 [G, K, C, F, h, w]: each recorded step's mean (record_means)


def per_sample_noise(generators: list[torch.Generator]) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """The sampler's ``step_noise``: each sample's standard normal draws from its own CPU generator, so a seed gives
    the same rollout on any device and in any batch."""
    def step_noise(index: int, like: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=like.dtype)
                            for g in generators]).to(like.device)

    return step_noise


def step_recorder(options: RolloutOptions, means: list[torch.Tensor], on_step: Callable[[int], None] | None):
    """The sampler's callback: appends each stochastic step's mean (float32, CPU) to ``means`` when
    ``options.record_means``, and tells ``on_step`` of every step."""
    def record(info) -> None:
        if options.record_means and info.log_prob is not None:
            means.append(info.mean.float().cpu())
        if on_step is not None:
            on_step(1)

    return record


def sample_group(pipe, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None, prompt_id: str,
                 options: RolloutOptions, on_step: Callable[[int], None] | None = None,
                 steer: Steer | None = None) -> GroupRollout:
    """Sample the group of one prompt: ``prompt_embeds`` / ``negative_embeds`` [1, L, D] (see
    :func:`vpt.models.wan.encode_prompts`). ``on_step(n)`` is told of finished sampler steps (progress).
    ``steer(velocity, prompt_embeds [B, L, D])`` returns the velocity to sample with instead of the model's (reward
    guidance). With ``options.latent_dtype`` bf16 the sampler goes on from the rounded recorded states and decodes
    the rounded final latent (see :func:`vpt.algo.flow_sde.sample_flow`'s ``state_dtype``), so what is stored is
    exactly what was sampled: log-probs recompute from the stored states and the videos decode from the stored
    latents."""
    shape = latent_shape(pipe, options.frames, options.height, options.width)
    seeds, step_seeds = sample_seeds(options, prompt_id)
    sigmas = options.schedule(dict(pipe.scheduler.config))
    sde_steps = options.sde_steps()
    batch = options.batch_size or options.group_size
    device = pipe.transformer.device
    storage = LATENT_DTYPES[options.latent_dtype]
    states, log_probs, videos, finals, means = [], [], [], [], []
    for start in range(0, options.group_size, batch):
        members = range(start, min(start + batch, options.group_size))
        # Noise is drawn on CPU generators, so a seed gives the same rollout on any device.
        noise = torch.cat([initial_noise(shape, torch.Generator().manual_seed(seeds[k])) for k in members]).to(device)
        step_noise = per_sample_noise([torch.Generator().manual_seed(step_seeds[k]) for k in members])

        size = len(members)
        # repeated, not expanded: in bf16 a stride-0 batch takes another matmul path (velocities ~1e-2 apart), and
        # grpo-step recomputes the log-probs from a contiguous batch of the same embeddings
        velocity = WanVelocity(pipe.transformer, prompt_embeds.repeat(size, 1, 1),
                               None if negative_embeds is None else negative_embeds.repeat(size, 1, 1),
                               options.guidance)
        if steer is not None:
            velocity = steer(velocity, prompt_embeds.expand(size, -1, -1))
        step_means: list[torch.Tensor] = []
        with torch.no_grad():
            out = sample_flow(velocity, noise, sigmas, options.noise_level, sde_steps, step_noise,
                              form=options.sde_form, callback=step_recorder(options, step_means, on_step),
                              state_dtype=storage, ode_solver=options.ode_solver)
            if out.states:
                states.append(torch.stack(out.states, dim=1).to(storage).cpu())
                log_probs.append(torch.stack(out.log_probs, dim=1).cpu())
            if step_means:
                means.append(torch.stack(step_means, dim=1))
            final = out.latents.to(storage)
            videos.extend(to_uint8(decode_latents(pipe, final)))  # one decode per batch, as WanPipeline
            finals.append(final.cpu())
    empty = torch.zeros((options.group_size, 0, *shape), dtype=storage)
    return GroupRollout(prompt_id=prompt_id, seeds=seeds, step_seeds=step_seeds, sigmas=sigmas,
                        recorded_steps=sde_steps, state_indices=state_indices_of(sde_steps),
                        states=torch.cat(states) if states else empty,
                        log_probs=torch.cat(log_probs) if log_probs else torch.zeros((options.group_size, 0)),
                        videos=np.stack(videos), latents=torch.cat(finals), latent_dtype=options.latent_dtype,
                        means=torch.cat(means) if means else None)



@dataclass
class Branch:
    """The draws of one TempFlow branch point: ODE to step ``point`` from the root sample's noise, one SDE step per
    draw, ODE to the end."""

    root: int  # which of the prompt's group_size initial noises
    point: int  # the step k that is stochastic
    group: GroupRollout  # exploration_k samples, each recording step k only


def sample_branches(pipe, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None, prompt_id: str,
                    options: RolloutOptions, on_step: Callable[[int], None] | None = None) -> list[Branch]:
    """TempFlow-GRPO's branched rollouts of one prompt (arXiv 2508.04324; TeleBoost release,
    rollout.generate_branched_sequences): for each of ``group_size`` initial noises and each branch point k, the
    deterministic sampler to step k, ``exploration_k`` draws of step k, and the deterministic sampler to the end.
    The draws of one (noise, k) go through the transformer as one batch, which grpo-step repeats, so their log-probs
    recompute exactly."""
    shape = latent_shape(pipe, options.frames, options.height, options.width)
    seeds, _ = sample_seeds(options, prompt_id)
    sigmas = options.schedule(dict(pipe.scheduler.config))
    points, draws = options.branch_points(), options.branch[1]
    device = pipe.transformer.device
    storage = LATENT_DTYPES[options.latent_dtype]
    single = WanVelocity(pipe.transformer, prompt_embeds, negative_embeds, options.guidance)
    together = WanVelocity(pipe.transformer, prompt_embeds.repeat(draws, 1, 1),
                           None if negative_embeds is None else negative_embeds.repeat(draws, 1, 1), options.guidance)

    branches = []
    for root in range(options.group_size):
        noise = initial_noise(shape, torch.Generator().manual_seed(seeds[root])).to(device)
        starts = {0: noise}
        if max(points) > 0:
            def keep(info) -> None:
                starts[info.index + 1] = info.x_next
                if on_step is not None:
                    on_step(1)

            with torch.no_grad():
                sample_flow(single, noise, sigmas[: max(points) + 1], callback=keep, ode_solver=options.ode_solver)
        for point in points:
            step_seeds = [derived_seed(options.seed, prompt_id, "branch", root, point, draw) for draw in range(draws)]
            means: list[torch.Tensor] = []
            with torch.no_grad():
                tail = sample_flow(together, starts[point].repeat(draws, *(1,) * (noise.dim() - 1)), sigmas[point:],
                                   options.noise_level, [0],
                                   per_sample_noise([torch.Generator().manual_seed(seed) for seed in step_seeds]),
                                   form=options.sde_form, callback=step_recorder(options, means, on_step),
                                   state_dtype=storage, ode_solver=options.ode_solver)
                final = tail.latents.to(storage)
                videos = to_uint8(decode_latents(pipe, final))
            group = GroupRollout(prompt_id=prompt_id, seeds=[seeds[root]] * draws, step_seeds=step_seeds,
                                 sigmas=sigmas, recorded_steps=[point], state_indices=[point, point + 1],
                                 states=torch.stack(tail.states, dim=1).to(storage).cpu(),
                                 log_probs=torch.stack(tail.log_probs, dim=1).cpu(), videos=np.stack(videos),
                                 latents=final.cpu(), latent_dtype=options.latent_dtype,
                                 means=torch.stack(means, dim=1) if means else None)
            branches.append(Branch(root=root, point=point, group=group))
    return branches
