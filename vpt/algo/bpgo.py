"""BPGO: Bayesian prior-guided GRPO (TeleBoost, arXiv 2602.07595, Stage II "what to trust"; BPGO, arXiv 2511.18919).

A per-prompt prior reward ``p`` (e.g. the SFT policy's mean reward on that prompt) says what the group should beat.

- RAS (reliability-adaptive scaling), sigmoid form: with the group deviation ``Δ = mean(r) − p``, the group's loss
  weight is ``w = 1 + α·(2σ(kΔ) − 1)`` in ``[1 − α, 1 + α]`` (α = 0.5).
- RAS, Bayesian form: a Normal prior ``N(p, τ²)`` on the group's true mean and Normal rewards ``r_i ~ N(μ, s²)``
  give the posterior ``N(m, v)`` with ``1/v = 1/τ² + n/s²`` and ``m = v·(p/τ² + n·mean(r)/s²)``; the weight is
  ``0.5 + P(μ > p) = 0.5 + Φ((m − p)/sqrt(v))`` in ``[0.5, 1.5]``.
- CRT (contrastive reward transformation): on a normalised reward scale,
  ``r̃ = [λ·(r − p) + 1{r > p}]·exp(min(r, e_max))``, which stretches confident winners and squeezes the rest; used
  in place of ``r`` or as an auxiliary GRPO term with weight ς.
"""

from __future__ import annotations

import math

import torch

RAS_ALPHA = 0.5


def ras_weights(group_means: torch.Tensor, priors: torch.Tensor, alpha: float = RAS_ALPHA,
                sharpness: float = 1.0) -> torch.Tensor:
    """Sigmoid RAS weight per group ``[G]``: ``1 + α·(2σ(k·(mean − p)) − 1)``."""
    return 1 + alpha * (2 * torch.sigmoid(sharpness * (group_means - priors)) - 1)


def bayesian_ras_weights(group_means: torch.Tensor, group_sizes: torch.Tensor, priors: torch.Tensor,
                         prior_std: float, reward_std: torch.Tensor | float) -> torch.Tensor:
    """Bayesian RAS weight per group ``[G]``: ``0.5 + Φ((m − p)/sqrt(v))`` under the Normal–Normal posterior
    (module docstring). ``reward_std``: the per-reward noise ``s`` (scalar or ``[G]``), > 0."""
    reward_std = torch.as_tensor(reward_std, dtype=group_means.dtype)
    if prior_std <= 0 or bool((reward_std <= 0).any()):
        raise ValueError("prior_std and reward_std must be > 0")
    precision = 1 / prior_std**2 + group_sizes.to(group_means.dtype) / reward_std**2
    variance = 1 / precision
    posterior_mean = variance * (priors / prior_std**2 + group_sizes * group_means / reward_std**2)
    z = (posterior_mean - priors) / variance.sqrt()
    return 0.5 + 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def contrastive_rewards(rewards: torch.Tensor, priors: torch.Tensor, lam: float = 1.0,
                        max_exponent: float = 5.0) -> torch.Tensor:
    """CRT ``[λ·(r − p) + 1{r > p}]·exp(min(r, e_max))`` elementwise (rewards and priors on a normalised scale)."""
    return (lam * (rewards - priors) + (rewards > priors).to(rewards.dtype)) * torch.exp(
        torch.clamp(rewards, max=max_exponent))


def normalise_with(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``values`` on the z-scale of ``reference`` (its mean and population std; std 0 counts as 1): CRT's scale,
    applied to rewards and priors alike."""
    std = reference.std(unbiased=False) if reference.numel() > 1 else torch.ones((), dtype=reference.dtype)
    return (values - reference.mean()) / torch.where(std > 0, std, torch.ones_like(std))
