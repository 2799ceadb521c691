"""Flow-DPPO's divergence trust region (Flow-DPPO, arXiv 2606.11025): PPO's ratio clip replaced by a mask on the exact
KL between the rollout's and the current policy's Gaussian step.

One SDE step is ``N(μ, s²I)`` under either policy with the same ``s`` (it is fixed by the schedule), so
``KL = mean((μ_new − μ_old)²)/(2s²)`` exactly, from the means alone (mean over elements, like the house's
mean-reduced log-probs). The per-sample surrogate is the unclipped ``−A·ρ``; a sample's gradient is dropped when
``KL > kl_max`` **and** ``A·(ρ − 1) > 0``: the ratio has already moved the way the advantage pushes it (up for
``A > 0``, down for ``A < 0``), so a further step would leave the trust region further. A sample past ``kl_max``
whose ratio moved against its advantage keeps its gradient, which pulls it back — the same one-sided rule by which
PPO's clip only freezes ratios outside ``[1 − ε, 1 + ε]`` on the side the advantage favours, with the divergence in
place of the single-sample ratio as the distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vpt.algo.grpo import kl_to_reference


def step_kl(mean_new: torch.Tensor, mean_old: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """``KL(N(μ_old, s²I) ‖ N(μ_new, s²I)) = mean((μ_new − μ_old)²)/(2s²)`` per sample: [B, ...] -> [B].

    Symmetric in the two means (equal covariances). ``std``: the step std ``s`` (scalar, or [B]). Flow-DPPO,
    arXiv 2606.11025.
    """
    return kl_to_reference(mean_new, mean_old, std)


@dataclass
class TrustRegionStats:
    """Diagnostics of one trust-region loss evaluation (plain floats, for the metrics log)."""

    masked_fraction: float  # share of samples whose gradient was dropped
    kl_mean: float
    kl_max: float  # largest per-sample KL seen
    ratio_mean: float


def kl_trust_region_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                         kl: torch.Tensor, kl_max: float) -> tuple[torch.Tensor, TrustRegionStats]:
    """Flow-DPPO loss ``mean(−A·ρ)`` over samples [B], ``ρ = exp(log_prob − old_log_prob)``, with the gradient of
    each sample with ``kl > kl_max`` and ``A·(ρ − 1) > 0`` dropped (see the module docstring), and its diagnostics.

    ``log_prob`` / ``old_log_prob`` / ``advantages`` / ``kl``: [B] (``kl`` from :func:`step_kl`; it only decides the
    mask, so it is never differentiated). A dropped sample keeps its value ``−A·ρ`` in the loss, detached, as PPO's
    clipped term keeps its constant value: the loss reads the same with or without the mask, only its gradient
    differs. The threshold is strict (``>``), as in the paper's mask; the verl-omni code uses ``>=``.
    Flow-DPPO, arXiv 2606.11025 (the asymmetric divergence mask).
    """
    if not log_prob.shape == old_log_prob.shape == advantages.shape == kl.shape or log_prob.dim() != 1:
        raise ValueError(f"log_prob {tuple(log_prob.shape)}, old_log_prob {tuple(old_log_prob.shape)}, advantages "
                         f"{tuple(advantages.shape)} and kl {tuple(kl.shape)} must be equal [B] shapes")
    if kl_max < 0:
        raise ValueError(f"kl_max must be >= 0, got {kl_max}")
    ratio = torch.exp(log_prob - old_log_prob)
    surrogate = -advantages * ratio
    with torch.no_grad():
        blocked = (kl > kl_max) & (advantages * (ratio - 1) > 0)
    loss = torch.where(blocked, surrogate.detach(), surrogate).mean()
    with torch.no_grad():
        stats = TrustRegionStats(masked_fraction=float(blocked.double().mean()), kl_mean=float(kl.double().mean()),
                                 kl_max=float(kl.max()), ratio_mean=float(ratio.double().mean()))
    return loss, stats
