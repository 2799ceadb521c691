"""Flow-matching sampling with per-step log-probabilities (Flow-GRPO, arXiv 2505.05470, Eq. 9-10).

Wan convention: ``x_σ = (1 − σ)·x0 + σ·ε`` with σ = 1 pure noise, the model predicts the velocity ``v = ε − x0``,
and sampling walks a decreasing schedule ``σ_0 = 1 > σ_1 > … > σ_N = 0``. One step σ → σ' (``dt = σ' − σ < 0``):

- ODE (Euler, noise level ``a = 0``): ``x' = x + v·dt`` — exactly diffusers' ``FlowMatchEulerDiscreteScheduler.step``.
- SDE (``a > 0``): ``σ_t = a·sqrt(σ / (1 − σ))`` (at σ = 1 the denominator uses the next sigma, ``1 − σ'``),
  ``μ = x + [v + σ_t²/(2σ)·(x + (1 − σ)·v)]·dt``, ``s = σ_t·sqrt(−dt)``, ``x' = μ + s·z`` with ``z ~ N(0, I)``.
  ``log p(x' | x)`` is the Gaussian log-density of ``x'`` under ``N(μ, s²)``, averaged over the non-batch dimensions.

The sampler is one pure function over a velocity callable, k-diffusion style: no model, file or global state here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

VelocityFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (x [B, ...], step index, σ) -> v [B, ...]
StepCallback = Callable[["StepInfo"], None]

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def sde_std_scale(sigma: torch.Tensor, sigma_next: torch.Tensor, noise_level: float,
                  first_next_sigma: torch.Tensor | None = None) -> torch.Tensor:
    """``σ_t = a·sqrt(σ / (1 − σ))``; at σ = 1 the denominator is ``1 − first_next_sigma`` (default ``σ'``)."""
    below = sigma_next if first_next_sigma is None else first_next_sigma
    denominator = torch.where(sigma >= 1, 1 - below, 1 - sigma)
    return noise_level * torch.sqrt(sigma / denominator)


def sde_step_mean_std(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                      noise_level: float, first_next_sigma: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``μ`` [B, ...] and standard deviation ``s`` (scalar tensor) of one step σ → σ' (see the module docstring).

    With ``noise_level = 0`` the mean is the Euler step ``x + v·dt`` computed in the same order as diffusers, and
    ``s = 0``.
    """
    dt = sigma_next - sigma
    if noise_level == 0:
        return x + dt * velocity, torch.zeros((), dtype=x.dtype, device=x.device)
    std_scale = sde_std_scale(sigma, sigma_next, noise_level, first_next_sigma)
    mean = x + (velocity + std_scale**2 / (2 * sigma) * (x + (1 - sigma) * velocity)) * dt
    return mean, std_scale * torch.sqrt(-dt)


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(sample; mean, std²)`` averaged over every dimension but the first: [B, ...] -> [B]."""
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - _HALF_LOG_TWO_PI
    return log_density.flatten(1).mean(dim=1)


@dataclass
class StepInfo:
    """What the sampler tells its callback after each step (tensors are the sampler's own; do not modify)."""

    index: int  # step index i: σ_i -> σ_{i+1}
    sigma: float
    sigma_next: float
    x: torch.Tensor  # [B, ...] state before the step
    x_next: torch.Tensor  # [B, ...] state after the step
    velocity: torch.Tensor  # [B, ...] model velocity at (x, σ_i)
    mean: torch.Tensor  # [B, ...] mean of x_next given x
    std: float  # 0 for a deterministic step
    log_prob: torch.Tensor | None  # [B] for a stochastic step, None otherwise


@dataclass
class FlowSample:
    """Result of :func:`sample_flow`."""

    latents: torch.Tensor  # [B, ...] final state x at σ_N
    stochastic_steps: list[int]  # indices i of the steps that drew noise, in order
    state_indices: list[int] = field(default_factory=list)  # j of every x_j a stochastic step starts or ends at
    states: list[torch.Tensor] = field(default_factory=list)  # [B, ...] x_j per state index
    log_probs: list[torch.Tensor] = field(default_factory=list)  # [B] per stochastic step

    def state(self, index: int) -> torch.Tensor:
        """x at σ_index (a recorded state)."""
        return self.states[self.state_indices.index(index)]


def state_indices_of(stochastic_steps: Iterable[int]) -> list[int]:
    """Indices j of the states x_j that stochastic steps i start (j = i) or end (j = i + 1) at, sorted."""
    steps = set(stochastic_steps)
    return sorted(steps | {i + 1 for i in steps})


def sample_flow(velocity_fn: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, noise_level: float = 0.0,
                sde_steps: Sequence[int] | None = None, step_noise: Callable[[int, torch.Tensor], torch.Tensor] |
                None = None, callback: StepCallback | None = None,
                state_dtype: torch.dtype | None = None) -> FlowSample:
    """Integrate from ``x`` at ``sigmas[0]`` down the schedule ``sigmas`` [N + 1] (float32, last 0).

    ``sde_steps``: indices of the steps that are stochastic (default: all but the last when ``noise_level`` > 0;
    none otherwise). The last step (to σ = 0) is always deterministic: its Gaussian would have variance
    ``σ_t²·σ`` around a clean sample, and GRPO never trains it. ``step_noise(i, like)`` returns the standard normal
    ``z`` [B, ...] of step i (so each sample's noise can come from its own generator); required when a step is
    stochastic. Returns the final latents, the states every stochastic step starts and ends at, and each stochastic
    step's log-prob [B] — what GRPO needs to recompute ratios.

    ``state_dtype`` (e.g. bfloat16, for storage): every recorded state is rounded to it (kept in ``x``'s dtype)
    before the sampler goes on from it, and a step's log-prob is that of the rounded ``x'`` under the mean of the
    rounded ``x``: the trajectory is the stored one, so the log-probs recompute exactly from the stored states.
    """
    steps = len(sigmas) - 1
    if steps < 1:
        raise ValueError("sigmas must hold at least two values (one step)")
    if noise_level < 0:
        raise ValueError(f"noise level must be >= 0, got {noise_level}")
    if sde_steps is None:
        stochastic = set(range(steps - 1)) if noise_level > 0 else set()
    else:
        stochastic = {int(i) for i in sde_steps}
        bad = sorted(i for i in stochastic if not 0 <= i < steps - 1)
        if bad:
            raise ValueError(f"sde steps must lie in 0..{steps - 2} (the last step is deterministic), got {bad}")
        if stochastic and noise_level == 0:
            raise ValueError("sde steps need a noise level > 0")
    if stochastic and step_noise is None:
        raise ValueError("stochastic steps need step_noise")
    result = FlowSample(latents=x, stochastic_steps=sorted(stochastic), state_indices=state_indices_of(stochastic))
    first_next = sigmas[1]

    def recorded(state: torch.Tensor) -> torch.Tensor:
        return state if state_dtype is None else state.to(state_dtype).to(state.dtype)

    for i in range(steps):
        if i in result.state_indices:
            x = recorded(x)
            result.states.append(x)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        velocity = velocity_fn(x, i, sigma)
        if i in stochastic:
            mean, std = sde_step_mean_std(x, velocity, sigma, sigma_next, noise_level, first_next)
            x_next = recorded(mean + std * step_noise(i, x))
            log_prob = gaussian_log_prob(x_next.detach(), mean, std)
            result.log_probs.append(log_prob)
        else:
            mean, std = sde_step_mean_std(x, velocity, sigma, sigma_next, 0.0)
            x_next, log_prob = mean, None
        if callback is not None:
            callback(StepInfo(index=i, sigma=float(sigma), sigma_next=float(sigma_next), x=x, x_next=x_next,
                              velocity=velocity, mean=mean, std=float(std), log_prob=log_prob))
        x = x_next
    result.latents = x
    return result


def step_log_prob(x: torch.Tensor, x_next: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor,
                  sigma_next: torch.Tensor, noise_level: float, first_next_sigma: torch.Tensor | None = None,
                  ) -> torch.Tensor:
    """``log p(x_next | x)`` [B] of one recorded SDE step under a (new) model velocity — the policy ratio's half."""
    mean, std = sde_step_mean_std(x, velocity, sigma, sigma_next, noise_level, first_next_sigma)
    return gaussian_log_prob(x_next, mean, std)
