"""GRPO-Guard (arXiv 2510.22319): RatioNorm and the per-step gradient reweight, for the clipped GRPO surrogate.

- RatioNorm. With one SDE step ``x' = μ_old + s·ε`` (``s`` the step std, ``ε ~ N(0, I)``) and mean-reduced
  log-densities, ``log ρ = mean(Δμ·ε)/s − mean(Δμ²)/(2s²)`` where ``Δμ = μ_new − μ_old``: the second term pulls every
  ratio below 1 and the first scales as 1/s, so one clip range means different things at different steps. RatioNorm
  adds the bias back and multiplies by ``s``: ``log ρ̂ = (log ρ + mean(Δμ²)/(2(s² + e)))·s ≈ mean(Δμ·ε)``.
- Gradient reweight: the loss of a step is multiplied by ``δ = β/Δt`` (``Δt = σ − σ'``). After RatioNorm the
  ratio's gradient is ``mean(ε·∂μ/∂θ)`` and ``∂μ/∂v = −β·Δt`` with ``β = 1 + σ_t²(1 − σ)/(2σ)``, so late (small
  Δt) steps would barely train. For flow-grpo ``β = 1 + η²/2`` is a constant and ``δ = 1/Δt``; for dancegrpo the
  release multiplies by ``β = 1 + η²(1 − t)/(2t)`` where equalising ``β·Δt`` would divide by it — kept as released
  (not checked against the paper's text).

TeleBoost release, teleboost/algorithms/grpo_guard.py:compute_ratio_norm_bias, compute_grad_reweight_delta (whose
docstring labels these the paper's Eq. 8 and Eq. 12). ``normalised_log_ratio`` takes the step std ``s`` directly;
the release rebuilds it as ``sqrt(Δt)·(s/(sqrt(Δt) + e))``, a hair below ``s``.
"""

from __future__ import annotations

import torch

GUARD_EPS = 1e-6
GRAD_REWEIGHT_FORMS = ("flow-grpo", "dancegrpo")


def normalised_log_ratio(log_ratio: torch.Tensor, mean_new: torch.Tensor, mean_old: torch.Tensor,
                         std: torch.Tensor | float, eps: float = GUARD_EPS) -> torch.Tensor:
    """RatioNorm ``log ρ̂ = (log ρ + mean(Δμ²)/(2(s² + eps)))·s`` per sample: [B] -> [B].

    ``log_ratio`` [B]: ``log p_new − log p_old`` of the step, both mean-reduced over the non-batch dimensions (as
    :func:`vpt.algo.flow_sde.gaussian_log_prob` reduces). ``mean_new`` / ``mean_old`` [B, ...]: the step's mean under
    the current policy and the one recorded at rollout (a constant: gradients flow through ``log_ratio`` and
    ``mean_new``). ``std``: the step std ``s = σ_t·sqrt(Δt)``, a scalar or [B]. The clipped surrogate then takes
    ``exp(log ρ̂)`` as its ratio (e.g. :func:`vpt.algo.grpo.clipped_surrogate` with ``log ρ̂`` and zeros).

    TeleBoost release, teleboost/algorithms/grpo_guard.py:compute_ratio_norm_bias; GRPO-Guard, arXiv 2510.22319.
    """
    if mean_new.shape != mean_old.shape or mean_new.shape[:1] != log_ratio.shape or log_ratio.dim() != 1:
        raise ValueError(f"log ratio {tuple(log_ratio.shape)} must be [B] and the means {tuple(mean_new.shape)}, "
                         f"{tuple(mean_old.shape)} equal [B, ...] shapes")
    std = torch.as_tensor(std, dtype=log_ratio.dtype, device=log_ratio.device)
    drift = (mean_new - mean_old).pow(2).flatten(1).mean(dim=1)
    return (log_ratio + drift / (2 * (std**2 + eps))) * std


def grad_reweight(form: str, dt: torch.Tensor | float, eta: float = 0.0, t: torch.Tensor | float | None = None,
                  eps: float = GUARD_EPS) -> torch.Tensor | float:
    """Loss weight ``δ`` of one step with ``Δt = σ − σ' > 0`` (float in, float out; tensor in, tensor out).

    - ``flow-grpo``: ``δ = 1/(Δt + eps)``.
    - ``dancegrpo``: ``δ = (1 + η²(1 − t)/(2t))/(Δt + eps)``, ``t`` the step's σ in [0, 1] floored at ``eps`` (the
      release passes the mean model timestep / 1000).

    There is no ``cps`` weight: the release (and the paper's derivation) covers only the two σ_t forms.
    TeleBoost release, teleboost/algorithms/grpo_guard.py:compute_grad_reweight_delta; GRPO-Guard, arXiv 2510.22319.
    """
    if form not in GRAD_REWEIGHT_FORMS:
        raise ValueError(f"grad reweight form must be one of {', '.join(GRAD_REWEIGHT_FORMS)}, got {form!r}")
    if bool(torch.any(torch.as_tensor(dt) <= 0)):
        raise ValueError(f"dt = σ − σ' must be > 0, got {dt}")
    if form == "flow-grpo":
        return 1.0 / (dt + eps)
    if t is None:
        raise ValueError("the dancegrpo reweight needs the step's t (its σ)")
    # the η²(1 − t)/(2t) term has a pole at t = 0 (the clean end); the floor keeps δ finite there
    t = torch.clamp(t, min=eps) if isinstance(t, torch.Tensor) else max(float(t), eps)
    return (1 + eta**2 * (1 - t) / (2 * t)) / (dt + eps)
