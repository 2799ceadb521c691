"""GRPO for flow models (Flow-GRPO, arXiv 2505.05470, Eq. 4-8; DanceGRPO, arXiv 2505.07818): group-relative
advantages, the clipped surrogate over per-step policy ratios, the KL to the reference policy, and multi-reward
aggregation.

- Advantage of sample i in group g: ``A_i = clip((r_i − mean_g) / (std + ε), −c_A, c_A)`` with ``std`` the group's
  (population) standard deviation, or one global std over every sample. A group whose rewards are all equal (or a
  group of one) gets ``A = 0``, never NaN.
- Per trained step: ``ratio = exp(log p_θ − log p_old)``;
  ``loss = mean(max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)))``.
- KL to the reference (the same transformer with the LoRA adapter disabled), between the Gaussians of one SDE step
  with equal std ``s``: ``KL = mean((μ_θ − μ_ref)²) / (2 s²)``, averaged over the non-batch dimensions.
- Several rewards: sum (with weights) then normalise per group, or normalise each per group then sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

ADVANTAGE_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, global_std: bool = False, clip: float = 5.0,
                     eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """Group-relative advantages ``[N]`` from rewards ``[N]`` and integer group labels ``[N]`` (float64 inside).

    ``global_std``: divide by the std of all rewards instead of each group's. Rewards must be finite.
    """
    if rewards.shape != groups.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} must be equal 1-D shapes")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite")
    values = rewards.double()
    _, index = torch.unique(groups, return_inverse=True)
    count = torch.zeros(int(index.max()) + 1 if len(index) else 0, dtype=torch.float64).index_add_(
        0, index, torch.ones_like(values))
    mean = torch.zeros_like(count).index_add_(0, index, values) / count
    centred = values - mean[index]
    if global_std:
        std = values.std(unbiased=False).expand_as(values) if len(values) > 1 else torch.zeros_like(values)
    else:
        variance = torch.zeros_like(count).index_add_(0, index, centred**2) / count
        std = variance.sqrt()[index]
    advantages = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    return advantages.clamp(-clip, clip).to(rewards.dtype)


@dataclass
class SurrogateStats:
    """Diagnostics of one surrogate evaluation (plain floats, for the metrics log)."""

    clip_fraction: float  # share of entries whose ratio left [1 − c, 1 + c]
    ratio_mean: float
    ratio_min: float
    ratio_max: float


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float) -> tuple[torch.Tensor, SurrogateStats]:
    """PPO-clip loss ``mean(max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)))`` over matching shapes ``[B, ...]``
    (``advantages`` broadcast), and its diagnostics."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        outside = ((ratio - 1.0).abs() > clip_range).double().mean()
        stats = SurrogateStats(clip_fraction=float(outside), ratio_mean=float(ratio.double().mean()),
                               ratio_min=float(ratio.min()), ratio_max=float(ratio.max()))
    return loss, stats


def kl_to_reference(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """``KL(N(μ_θ, s²) ‖ N(μ_ref, s²)) = mean((μ_θ − μ_ref)²) / (2 s²)`` per sample: ``[B, ...]`` -> ``[B]``."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    return ((mean - reference_mean) ** 2).flatten(1).mean(dim=1) / (2 * std**2)


AGGREGATIONS = ("sum-then-normalise", "normalise-then-sum")


def aggregate_rewards(rewards: Mapping[str, torch.Tensor], weights: Mapping[str, float], groups: torch.Tensor,
                      mode: str = "sum-then-normalise", global_std: bool = False, clip: float = 5.0,
                      ) -> torch.Tensor:
    """Advantages ``[N]`` from several rewards ``name -> [N]``: either the weighted sum normalised per group, or
    each reward normalised per group (unclipped) then weighted and summed (and clipped)."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {mode!r}")
    missing = [name for name in weights if name not in rewards]
    if missing:
        raise ValueError(f"no reward named {missing[0]!r}; rewards: {', '.join(rewards)}")
    if mode == "sum-then-normalise":
        total = sum(weight * rewards[name].double() for name, weight in weights.items())
        return group_advantages(total, groups, global_std, clip)
    total = sum(weight * group_advantages(rewards[name].double(), groups, global_std, float("inf"))
                for name, weight in weights.items())
    return total.clamp(-clip, clip)
