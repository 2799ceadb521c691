"""Velocity drift of a flow policy from its reference, by noise level.

Wan convention (:mod:`vpt.algo.flow_matching`): ``x_σ = (1 − σ)·x0 + σ·ε`` with σ = 1 pure noise. The drift at
σ is

    ``D(σ) = mean over probes and elements of (v_θ(x_σ, σ) − v_ref(x_σ, σ))²``

the squared distance of the two velocity fields the sampler integrates at that noise level. The SDE step of either
policy at σ is ``N(μ, s²I)`` with the same ``s``, and its mean ``μ`` is affine in the velocity with a coefficient
``c`` the schedule fixes, so the KL between the two policies' steps is ``c²·D(σ)/(2s²)`` (the closed-form step KL
of Flow-GRPO, arXiv 2505.05470): D is the part of it the weights decide. By σ it says where along the trajectory a
policy has left the reference — VideoAlign (arXiv 2501.13918) argues Diffusion-DPO's β_t = β(1 − σ)² leaves the
high-noise steps barely constrained.

Probes are noised with noises drawn from a seed, the same for every σ (each probe is measured along one straight
path from its clean latent to its noise), so two checkpoints measured with one seed are compared at the same points.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vpt.algo.flow_matching import SIGMA_EPS, noised
from vpt.algo.flow_sde import VelocityFn

DRIFT_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""The noise levels stages measure their drift at (metric names ``drift/<σ:.2f>``)."""


def velocity_drift(policy: VelocityFn, reference: VelocityFn, x0: torch.Tensor, noise: torch.Tensor,
                   sigma: torch.Tensor) -> float:
    """Mean over elements of ``(v_policy(x_σ, σ) − v_reference(x_σ, σ))²`` (float64): clean ``x0`` and ``noise``
    ``[B, C, F, h, w]`` noised to ``sigma [B]``. Both velocities see the same batch, so an unchanged policy gives
    exactly 0 (a velocity depends on its batch-mates at float rounding)."""
    x = noised(x0, noise, sigma)
    with torch.no_grad():
        moved, kept = policy(x, 0, sigma), reference(x, 0, sigma)
    return float(((moved.double() - kept.double()) ** 2).mean())


def probe_noise(x0: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noises like ``x0``, drawn on a CPU generator seeded with ``seed`` (any device: same draws)."""
    return torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(x0)


def drift_by_noise_level(policy: Sequence[VelocityFn], reference: Sequence[VelocityFn], x0: torch.Tensor,
                         seed: int, sigmas: Sequence[float] = DRIFT_SIGMAS) -> dict[float, float]:
    """``σ -> D(σ)`` over the probes ``x0 [N, C, F, h, w]``; ``policy[i]`` / ``reference[i]``: the velocity
    functions of probe ``i`` (its prompt bound). Each probe runs alone (batch 1: a full-size video's forward is
    large) with the noise of :func:`probe_noise`; D is the mean of the probes' means (all have the same size)."""
    noise = probe_noise(x0, seed)
    drift = {}
    for level in sigmas:
        sigma = torch.full((1,), float(level), dtype=torch.float32, device=x0.device)
        values = [velocity_drift(policy[i], reference[i], x0[i:i + 1], noise[i:i + 1], sigma)
                  for i in range(x0.shape[0])]
        drift[float(level)] = sum(values) / len(values)
    return drift


def band_drift(policy: VelocityFn, reference: VelocityFn, x0: torch.Tensor, band: tuple[float, float],
               draws: int, seed: int) -> float:
    """D over a band of noise levels: ``x0 [N, ...]`` noised ``draws`` times each, σ uniform in ``band`` (clamped
    into (0, 1)), the noises and σ from ``seed`` alone. The velocity functions take the ``N·draws`` batch
    (``x0`` repeated ``draws`` times: bind the prompts repeated alike)."""
    low, high = band
    generator = torch.Generator().manual_seed(seed)
    x0 = x0.repeat(draws, 1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = (low + (high - low) * torch.rand(x0.shape[0], generator=generator)).clamp(SIGMA_EPS, 1 - SIGMA_EPS)
    return velocity_drift(policy, reference, x0, noise.to(x0), sigma.to(x0.device))
