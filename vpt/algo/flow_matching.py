"""Flow-matching training losses (Lipman et al. 2023; SD3; Flow-RWR and SFT as VideoAlign, arXiv 2501.13918,
compares them).

Wan convention: ``x_σ = (1 − σ)·x0 + σ·ε`` with σ = 1 pure noise, and the model predicts the velocity
``v = ε − x0`` at timestep ``σ·1000``. The training loss is

    ``L = E_{σ, ε}[ w · ‖v_θ(x_σ, σ) − (ε − x0)‖² ]``

with ``‖·‖²`` the mean squared error over the non-batch dimensions. Supervised fine-tuning uses ``w = 1``;
Flow-RWR (reward-weighted regression) uses ``w_i = N·softmax(r/β)_i``, i.e. ``exp(r_i/β)`` normalised to mean 1.

Noise levels σ are drawn uniformly or logit-normally (SD3: ``σ = sigmoid(u)``, ``u ~ N(loc, scale²)``), then moved
by the flow shift ``σ ← shift·σ / (1 + (shift − 1)·σ)`` of diffusers' ``FlowMatchEulerDiscreteScheduler``.
"""

from __future__ import annotations

import torch

TIMESTEP_DISTRIBUTIONS = ("uniform", "logit-normal")

# Keeps σ off exactly 0 and 1: β_t = β·(1 − σ)² and guidance weights t/(1 − t) must stay finite and non-zero.
SIGMA_EPS = 1e-5


def sample_sigmas(count: int, generator: torch.Generator, distribution: str = "uniform", loc: float = 0.0,
                  scale: float = 1.0, shift: float = 1.0) -> torch.Tensor:
    """Noise levels σ ``[count]`` (float32) in ``[SIGMA_EPS, 1 − SIGMA_EPS]``, drawn only from ``generator`` (CPU).

    ``uniform``: ``σ ~ U(0, 1)``; ``logit-normal``: ``σ = sigmoid(u)``, ``u ~ N(loc, scale²)``. Then the flow shift
    ``σ ← shift·σ / (1 + (shift − 1)·σ)`` (``shift = 1`` is the identity; ``shift > 1`` moves mass to high noise).
    """
    if distribution not in TIMESTEP_DISTRIBUTIONS:
        raise ValueError(f"timestep distribution must be one of {', '.join(TIMESTEP_DISTRIBUTIONS)}, "
                         f"got {distribution!r}")
    if scale <= 0:
        raise ValueError(f"logit-normal scale must be > 0, got {scale}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if distribution == "uniform":
        sigmas = torch.rand(count, generator=generator, dtype=torch.float32)
    else:
        sigmas = torch.sigmoid(torch.randn(count, generator=generator, dtype=torch.float32) * scale + loc)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas.clamp(SIGMA_EPS, 1 - SIGMA_EPS)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_σ = (1 − σ)·x0 + σ·ε``: clean ``x0`` and ``noise`` ``[B, ...]``, ``sigma`` ``[B]`` -> ``[B, ...]``."""
    sigma = sigma.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching velocity ``v = ε − x0`` (``d x_σ / dσ``): ``[B, ...]`` -> ``[B, ...]``."""
    return noise - x0


def velocity_errors(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``‖v_θ − v‖²`` as the mean over the non-batch dimensions: ``[B, ...]`` -> ``[B]``.

    Computed in at least float32: a bf16 prediction is cast up, because the DPO loss subtracts errors of nearly
    equal size and bf16's 8-bit mantissa would swamp the differences.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    dtype = torch.promote_types(torch.promote_types(prediction.dtype, target.dtype), torch.float32)
    return ((prediction.to(dtype) - target.to(dtype)) ** 2).flatten(1).mean(dim=1)


def flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``L = mean_i(w_i · e_i)`` with ``e_i = ‖v_θ − v‖²`` (:func:`velocity_errors`): the loss (scalar) and ``e``
    ``[B]``. ``weights`` ``[B]`` (default 1: SFT; :func:`reward_weights` for Flow-RWR) carry no gradient."""
    errors = velocity_errors(prediction, target)
    if weights is None:
        return errors.mean(), errors
    if weights.shape != errors.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must have shape {tuple(errors.shape)}")
    return (weights.detach().to(errors.dtype) * errors).mean(), errors


def reward_weights(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """Flow-RWR weights ``w_i = N·softmax(r/β)_i`` (float64 ``[N]`` from rewards ``[N]``): ``exp(r_i/β)`` normalised
    to mean 1, so the loss scale matches SFT. The softmax subtracts the maximum, so large ``r/β`` cannot overflow."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite")
    return len(rewards) * torch.softmax(rewards.double() / beta, dim=0)


class FlowMatchingLoss(torch.nn.Module):
    """``L = E_{t,ε}[w · ‖v_θ(x_t, t) − (ε − x0)‖²]`` as a module; ``forward`` returns ``(loss, errors [B])``.

    See :func:`flow_matching_loss`: ``w = 1`` is SFT, ``w = reward_weights(r, β)`` is Flow-RWR.
    """

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_matching_loss(prediction, target, weights)
