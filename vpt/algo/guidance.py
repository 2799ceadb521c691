"""Flow-NRG: inference-time reward guidance of a flow-matching sampler (VideoAlign, arXiv 2501.13918, Eq. 11).

The optimum of the KL-regularised reward objective tilts the generator's marginals by ``exp(r/β)``, which adds
``∇_x r / β`` to the score ``s(x_σ) = −E[ε | x_σ] / σ``. With ``x_σ = (1 − σ)·x0 + σ·ε`` and ``v = ε − x0`` the
velocity is ``v = −(σ·s + x_σ) / (1 − σ)``, so the tilted velocity is::

    v_guided = v − w · σ / (1 − σ) · ∇_x Σ_d weight_d · r_d(x_σ, σ)        (w = 1/β, σ = 1 pure noise)

At σ = 1 the factor is infinite and the step is left unguided (the paper's ``if t != 1``). The reward is a noisy-
latent model ``r(x, σ) -> [B, D]``; ``weights [D]`` trade its dimensions off at sampling time. Pure functions over
callables: no model, file or global state here. A scale of 0 never evaluates the reward, so guided sampling at
scale 0 is unguided sampling, bit for bit.
"""

from __future__ import annotations

from typing import Callable

import torch

RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, ...], σ [B]) -> rewards [B, D]
VelocityFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # as vpt.algo.flow_sde


def weighted_reward_gradient(reward_fn: RewardFn, x: torch.Tensor, sigma: torch.Tensor,
                             weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_x Σ_b Σ_d weights_d · r_d(x_b, σ), rewards [B, D])`` at ``x [B, ...]`` and ``sigma`` (scalar or
    ``[B]``). The samples of a batch do not interact, so the gradient of the batch sum is each sample's own
    gradient. Computed with grad enabled whatever the caller's mode; the result is detached."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(x.shape[0])
    with torch.enable_grad():
        point = x.detach().requires_grad_(True)
        rewards = reward_fn(point, sigma)
        total = (rewards.float() * weights.to(rewards.device, torch.float32)).sum()
        (gradient,) = torch.autograd.grad(total, point)
    return gradient.to(x.dtype), rewards.detach()


def guidance_factor(sigma: torch.Tensor) -> torch.Tensor:
    """``σ / (1 − σ)``, and 0 where σ >= 1 (no guidance at pure noise)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    return torch.where(sigma < 1, sigma / (1 - sigma).clamp(min=torch.finfo(torch.float32).tiny),
                       torch.zeros_like(sigma))


def guided_velocity(velocity: torch.Tensor, gradient: torch.Tensor, sigma: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """``v − scale · σ/(1 − σ) · gradient`` (``velocity``, ``gradient`` [B, ...]; ``sigma`` scalar or [B])."""
    factor = guidance_factor(sigma).reshape(-1, *([1] * (velocity.dim() - 1))).to(velocity.device)
    return velocity - (scale * factor).to(velocity.dtype) * gradient


class RewardGuidedVelocity:
    """A sampler velocity (see :func:`vpt.algo.flow_sde.sample_flow`) steered by a noisy-latent reward.

    ``velocity_fn``: the unguided velocity (with classifier-free guidance already applied); ``reward_fn(x, σ)``:
    rewards ``[B, D]``; ``weights`` ``[D]``; ``scale`` the guidance strength w. ``on_reward(index, rewards)`` hears
    the rewards at each guided step (logging)."""

    def __init__(self, velocity_fn: VelocityFn, reward_fn: RewardFn, weights: torch.Tensor, scale: float,
                 on_reward: Callable[[int, torch.Tensor], None] | None = None):
        self.velocity_fn, self.reward_fn = velocity_fn, reward_fn
        self.weights, self.scale, self.on_reward = weights, float(scale), on_reward

    def __call__(self, x: torch.Tensor, index: int, sigma: torch.Tensor) -> torch.Tensor:
        velocity = self.velocity_fn(x, index, sigma)
        if self.scale == 0 or not bool((torch.as_tensor(sigma) < 1).any()):
            return velocity
        gradient, rewards = weighted_reward_gradient(self.reward_fn, x, sigma, self.weights)
        if self.on_reward is not None:
            self.on_reward(index, rewards)
        return guided_velocity(velocity, gradient, sigma, self.scale)
