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

The released code (TeleBoost d4279ac, ``teleboost/algorithms/bgpo.py`` and ``teleboost/programs/wan/bgpo.py``) uses
other forms; vpt keeps them beside the paper forms above, which stay its defaults:

- CRT, released "rerange" (:func:`rerange_rewards`): ``R̃ = [a·(R − p) + 1{R > p}]·σ(R/τ)·R`` with a = 50, τ = 5.
  The paper's gate ``exp(min(r, e_max))`` becomes ``σ(R/τ)·R``, so R̃ is not monotone in R: with the defaults it
  falls from about R = −11 (−7.5 at p = 25) up to about p/2, and again below −τ·exp_clamp = −150, and rises
  elsewhere; a reward below the prior can outrank one above it (p = 0: R = −1 gives 22.5, R = 0.5 gives 6.8). The
  release overwrites the rewards with R̃ before the z-score; it has no auxiliary term and no ς, and no batch z-scale
  of its own.
- RAS, released Bayesian form (:func:`bayes_group_ras_weights`): the Normal–Normal posterior above with the noise
  variance taken per group as the Bessel variance of its rewards (``s² = var_{n−1} + 1e-8``, 1 for a group of one)
  rather than given; ``w = w_min + (w_max − w_min)·Φ((m − p)/sqrt(v))`` and the advantage scale
  ``clamp(1 + α·(w − 1), 0.01, 10)`` with α = 1, i.e. ``w ∈ [0.5, 1.5]`` by default. The release multiplies the
  advantage by this scale after the z-score (and before its ±5 clip), computed from the post-CRT rewards against the
  raw prior. The paper's sigmoid RAS is not in the release.
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


def rerange_rewards(rewards: torch.Tensor, priors: torch.Tensor | float, a: float = 50.0, temperature: float = 5.0,
                    exp_clamp: float = 30.0) -> torch.Tensor:
    """Released CRT "rerange" (binary) form, elementwise: ``R̃ = [a·(R − p) + 1{R > p}]·σ(R/τ)·R`` with
    ``σ(R/τ) = 1/(1 + exp(clamp(−R/τ, −exp_clamp, exp_clamp)))``.

    ``rewards``: ``[N]``; ``priors``: ``[N]`` or anything that broadcasts to it (a scalar); returns ``[N]`` in
    ``rewards.dtype``. ``temperature`` must be > 0.

    R̃ is not monotone in R (with the defaults it decreases from about R = −11 up to about p/2, and below
    −τ·exp_clamp, so a reward below the prior can outrank one above it), so the paper form
    (:func:`contrastive_rewards`) stays vpt's default.

    Source: TeleBoost release, teleboost/algorithms/bgpo.py:binary_rerange_group_rewards.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    priors = torch.as_tensor(priors, dtype=rewards.dtype, device=rewards.device)
    gate = 1 / (1 + torch.exp(torch.clamp(-rewards / temperature, -exp_clamp, exp_clamp)))
    return (a * (rewards - priors) + (rewards > priors).to(rewards.dtype)) * gate * rewards


def bayes_group_ras_weights(rewards: torch.Tensor, groups: torch.Tensor, priors: torch.Tensor,
                            prior_var: float = 1.0, weight_min: float = 0.5, weight_max: float = 1.5,
                            alpha: float = 1.0) -> torch.Tensor:
    """Released Bayesian RAS: the per-sample advantage scale ``[N]``, constant within a group.

    For a group g of n samples with prior p: ``s² = var_{n−1}(R_g) + 1e-8`` (``s² = 1`` when n ≤ 1),
    ``v = 1/(n/s² + 1/prior_var)``, ``m = v·(n·mean(R_g)/s² + p/prior_var)``, ``P = Φ((m − p)/sqrt(v))``,
    ``w = w_min + (w_max − w_min)·P`` and the scale is ``clamp(1 + α·(w − 1), 0.01, 10)``.

    ``rewards``: ``[N]``, finite; ``groups``: integer labels ``[N]`` (any values, not necessarily contiguous);
    ``priors``: ``[N]``, one value per group repeated on its samples (otherwise a ValueError names the lowest
    such group label).
    Computed in float64; returns ``rewards.dtype``.

    Source: TeleBoost release, teleboost/algorithms/bgpo.py:bayes_reliability_weight and
    teleboost/programs/wan/bgpo.py:_calculate_adaptive_weight.
    """
    if not prior_var > 0:
        raise ValueError(f"prior_var must be > 0, got {prior_var}")
    if not weight_min <= weight_max:
        raise ValueError(f"weight_min must be <= weight_max, got {weight_min} > {weight_max}")
    if rewards.ndim != 1 or groups.shape != rewards.shape or priors.shape != rewards.shape:
        raise ValueError(f"rewards, groups and priors must all be [N]; got {tuple(rewards.shape)}, "
                         f"{tuple(groups.shape)}, {tuple(priors.shape)}")
    if groups.dtype.is_floating_point or groups.dtype.is_complex:
        raise ValueError(f"groups must hold integer labels, got {groups.dtype}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite")
    if not bool(torch.isfinite(priors).all()):
        raise ValueError("priors must be finite")
    r = rewards.detach().to(torch.float64)
    p = priors.detach().to(device=r.device, dtype=torch.float64)
    labels, inverse, counts = torch.unique(groups.to(r.device), return_inverse=True, return_counts=True)
    num_groups = labels.numel()
    first = torch.full((num_groups,), r.numel(), dtype=torch.long, device=r.device).scatter_reduce_(
        0, inverse, torch.arange(r.numel(), device=r.device), reduce="amin")
    group_prior = p[first]
    differs = p != group_prior[inverse]
    if bool(differs.any()):
        label = groups[differs.to(groups.device)].min().item()
        raise ValueError(f"priors must be constant within a group; group {label} has differing priors")
    n = counts.to(torch.float64)
    mean = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, r) / n
    squares = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(
        0, inverse, (r - mean[inverse]) ** 2)
    sample_var = torch.where(counts > 1, squares / (n - 1).clamp(min=1) + 1e-8, torch.ones_like(n))
    posterior_var = 1 / (n / sample_var + 1 / prior_var)
    posterior_mean = posterior_var * (n * mean / sample_var + group_prior / prior_var)
    prob_better = torch.special.ndtr((posterior_mean - group_prior) / posterior_var.sqrt())
    weight = weight_min + (weight_max - weight_min) * prob_better
    scale = torch.clamp(1 + alpha * (weight - 1), 0.01, 10.0)
    return scale[inverse].to(rewards.dtype)
