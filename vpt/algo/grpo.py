"""GRPO for flow models (Flow-GRPO, arXiv 2505.05470, Eq. 4-8; DanceGRPO, arXiv 2505.07818): group-relative
advantages, the clipped surrogate over per-step policy ratios, the KL to the reference policy, and multi-reward
aggregation.

- Advantage of sample i in group g: ``A_i = clip((r_i − mean_g) / (std + ε), −c_A, c_A)`` with ``std`` one of
  :data:`STD_MODES`: the group's population std (Flow-GRPO), the group's Bessel (n − 1) std (TeleBoost release,
  teleboost/algorithms/grpo/advantage.py:per_prompt_zscore_advantage), or one population std over every sample.
  A group whose rewards are all equal (or a group of one) gets ``A = 0``, never NaN. The clip may be deferred
  (``clip=None``) and applied later with :func:`clip_advantages`.
- Per trained step: ``ratio = exp(log p_θ − log p_old)``;
  ``loss = mean(max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)))``.
- KL to the reference (the same transformer with the LoRA adapter disabled), between the Gaussians of one SDE step
  with equal std ``s``: ``KL = mean((μ_θ − μ_ref)²) / (2 s²)``, averaged over the non-batch dimensions.
- Several rewards (:data:`AGGREGATIONS`): sum (with weights) then normalise per group; normalise each per group then
  sum; or normalise each per group then take, per sample, the minimum-norm point of their convex hull
  (:func:`min_norm_weights`, :func:`joint_advantages`; TeleBoost release's joint reward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

ADVANTAGE_EPS = 1e-4
STD_MODES = ("group", "group-unbiased", "global")


def _resolve_std(std: str | None, global_std: bool) -> str:
    if std is not None and std not in STD_MODES:
        raise ValueError(f"std must be one of {', '.join(STD_MODES)}, got {std!r}")
    if global_std and std not in (None, "global"):
        raise ValueError(f"global_std=True contradicts std={std!r}; pass std='global' alone")
    if global_std:
        return "global"
    return std or "group"


def _check_clip(clip: float | None) -> float:
    if clip is None:
        return math.inf
    if not clip > 0:  # also refuses NaN
        raise ValueError(f"clip must be > 0 (or None / math.inf for no clip), got {clip}")
    return float(clip)


def clip_advantages(advantages: torch.Tensor, clip: float | None) -> torch.Tensor:
    """``clamp(A, −clip, clip)`` elementwise on any shape; ``clip=None`` or ``math.inf`` returns ``A`` unchanged.

    Exists so the clip can come last. The TeleBoost release's order of operations (teleboost/training/core/
    trainer.py:_reward_and_advantage_phase, then teleboost/training/families/wan/actor.py:update_policy):
    reward → BPGO CRT (``_transform_rewards``) → per-group z-score (``group_advantages(..., clip=None)``) →
    BPGO RAS scale → ViPO broadcast to the dense map → clip ±5 in the actor → loss.
    """
    clip = _check_clip(clip)
    return advantages if math.isinf(clip) else advantages.clamp(-clip, clip)


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, global_std: bool = False,
                     clip: float | None = 5.0, eps: float = ADVANTAGE_EPS, std: str | None = None,
                     min_group_std: float = 0.0) -> torch.Tensor:
    """Group-relative advantages ``[N]`` from rewards ``[N]`` and integer group labels ``[N]`` (any values, in any
    order; float64 inside, returned in the rewards' dtype).

    ``A_i = clip((r_i − mean_g) / (s + eps), −clip, clip)`` where ``s`` depends on ``std`` (one of
    :data:`STD_MODES`; ``None`` means ``"group"``):

    - ``"group"``: the group's population std ``sqrt(Σ (r − mean_g)² / n_g)`` (Flow-GRPO, arXiv 2505.05470; its
      code's ``np.std``).
    - ``"group-unbiased"``: the group's Bessel std ``sqrt(Σ (r − mean_g)² / (n_g − 1))`` (TeleBoost release,
      teleboost/algorithms/grpo/advantage.py:per_prompt_zscore_advantage); a group of one has ``s = 0``.
    - ``"global"``: one population std over all N rewards (the mean stays per group).

    ``global_std=True`` is the older spelling of ``std="global"``; combining it with another ``std`` raises
    ValueError. Wherever ``s = 0`` (all rewards equal, a group of one) ``A = 0``. ``min_group_std``: a group whose
    own std (population for ``"group"`` and ``"global"``, Bessel for ``"group-unbiased"``) is strictly below it gets
    ``A = 0`` (the release's ``algorithm.min_group_std``: groups differing by noise only would otherwise be blown up
    to unit-scale advantages of random sign). ``clip=None`` or ``math.inf``: no clip (see :func:`clip_advantages`).
    Rewards must be finite.
    """
    mode = _resolve_std(std, global_std)
    clip = _check_clip(clip)
    if not min_group_std >= 0:
        raise ValueError(f"min_group_std must be >= 0, got {min_group_std}")
    if rewards.shape != groups.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} must be equal 1-D shapes")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite")
    values = rewards.double()
    _, index = torch.unique(groups, return_inverse=True)
    count = torch.zeros(int(index.max()) + 1 if len(index) else 0, dtype=torch.float64,
                        device=values.device).index_add_(0, index, torch.ones_like(values))
    mean = torch.zeros_like(count).index_add_(0, index, values) / count
    centred = values - mean[index]
    squares = torch.zeros_like(count).index_add_(0, index, centred**2)
    if mode == "group-unbiased":
        # a group of one has no squares to sum, so dividing by max(n − 1, 1) leaves its std at 0 instead of NaN
        own_std = (squares / (count - 1).clamp(min=1)).sqrt()[index]
    else:
        own_std = (squares / count).sqrt()[index]
    if mode == "global":
        scale = values.std(unbiased=False).expand_as(values) if len(values) > 1 else torch.zeros_like(values)
    else:
        scale = own_std
    keep = (scale > 0) & (own_std >= min_group_std)
    advantages = torch.where(keep, centred / (scale + eps), torch.zeros_like(centred))
    return clip_advantages(advantages, clip).to(rewards.dtype)


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


AGGREGATIONS = ("sum-then-normalise", "normalise-then-sum", "min-norm")


def min_norm_weights(advantages: torch.Tensor) -> torch.Tensor:
    """Convex weights ``[K, N]`` of the minimum-norm point of each sample's K advantages ``[K, N]`` (float64 inside,
    returned in the input's dtype; each column is ≥ 0 and sums to 1).

    The 1-D form of multiple-gradient descent's min-norm point (Désidéri 2012, MGDA; Sener & Koltun 2018, arXiv
    1810.04650, Eq. 3, and Eq. 4 / Algorithm 1 for the hull of two points), as the TeleBoost release uses it
    (teleboost/training/rewarding/joint_advantage_weights.py:compute_joint_advantage_weights). The hull of
    ``{a_k}`` is the segment ``[lo, hi]``; its point nearest 0 is ``lo + t·(hi − lo)`` with
    ``t = clamp(−lo / (hi − lo), 0, 1)``, so weight ``1 − t`` goes to the smallest advantage and ``t`` to the
    largest:

    - mixed signs (``lo < 0 < hi``): ``c_lo = hi / (hi − lo)``, ``c_hi = −lo / (hi − lo)``, and ``Σ c_k a_k = 0``;
    - all positive: all weight on the smallest; all negative: all weight on the largest.

    Zeros and ties (decided here; they match the release except where noted):

    - A zero among the ``a_k`` makes the min-norm point 0. If the rest are positive, ``lo = 0`` and all weight goes
      to that zero; if the rest are negative, ``hi = 0`` and likewise; with both signs present the weights sit on
      ``lo`` and ``hi`` as above (the zero gets none).
    - All ``a_k = 0`` (every point is the min-norm point): uniform weights ``1/K``. The release takes this branch
      whenever ``np.isclose(hi, lo)`` in float32, i.e. also for all ``|a_k|`` ≲ 1e-8; here only for exact zeros. The
      combined value is 0 either way.
    - Several entries equal to ``lo`` (or ``hi``): the lowest index takes the weight (``argmin``/``argmax``), so all
      equal nonzero advantages put all weight on ``k = 0``. The combined value does not depend on this rule.
    - ``K = 1``: the weight is 1.
    """
    if advantages.dim() != 2 or advantages.shape[0] == 0:
        raise ValueError(f"advantages must be [K, N] with K >= 1, got {tuple(advantages.shape)}")
    if not torch.isfinite(advantages).all():
        raise ValueError("advantages must be finite")
    values = advantages.double()
    low_index, high_index = values.argmin(dim=0, keepdim=True), values.argmax(dim=0, keepdim=True)
    low, high = values.gather(0, low_index)[0], values.gather(0, high_index)[0]
    span = high - low
    share = (-low / torch.where(span > 0, span, torch.ones_like(span))).clamp(0.0, 1.0)  # t, the weight on hi
    weights = torch.zeros_like(values)
    weights.scatter_add_(0, low_index, (1.0 - share)[None])
    weights.scatter_add_(0, high_index, share[None])
    all_zero = (low == 0) & (high == 0)
    weights = torch.where(all_zero, torch.full_like(values, 1.0 / values.shape[0]), weights)
    return weights.to(advantages.dtype)


@dataclass
class JointAdvantages:
    """What :func:`joint_advantages` computes (all float64)."""

    combined: torch.Tensor  # [N]: the min-norm point Σ_k c_k·w_k·a_k, clipped
    per_reward: dict[str, torch.Tensor]  # name -> [N]: each reward's own group advantages a_k, unweighted, unclipped
    weights: torch.Tensor  # [K, N]: the convex weights c_k, rows in per_reward's order (zero rows for w_k = 0)


def joint_advantages(rewards: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None, groups: torch.Tensor,
                     global_std: bool = False, clip: float | None = 5.0, eps: float = ADVANTAGE_EPS,
                     std: str | None = None, min_group_std: float = 0.0) -> JointAdvantages:
    """Min-norm joint advantages from several rewards ``name -> [N]`` (TeleBoost release,
    teleboost/training/rewarding/joint_reward_trainer.py:_precompute_joint_advantages, with
    joint_advantage_weights.py:compute_joint_advantage_weights).

    1. Each reward k gets its own group advantages ``a_k = group_advantages(r_k, groups, ..., clip=None)`` with the
       same ``std`` mode, ``eps`` and ``min_group_std`` (the release: Bessel std, eps 1e-4).
    2. Per sample, the points ``p_k = w_k·a_k`` over the rewards with ``w_k ≠ 0`` (``weights`` None: every reward,
       ``w_k = 1``, which is the release's rule; a negative weight marks a lower-is-better reward, as in the other
       aggregations) get the convex weights ``c = min_norm_weights(p)``.
    3. ``A = clip(Σ_k c_k·p_k)``, the min-norm point itself (computed exactly as ``max(lo, 0) + min(hi, 0)``, so a
       zero is exactly 0). No re-normalisation follows, as in the release.

    Any sample on which the (weighted) advantages disagree in sign, or one of them is 0, gets ``A = 0``; where they
    agree, ``A`` is the one nearest 0. The release logs the joint reward as ``Σ_k c_k·r_k``.
    """
    weights = {name: 1.0 for name in rewards} if weights is None else dict(weights)
    missing = [name for name in weights if name not in rewards]
    if missing:
        raise ValueError(f"no reward named {missing[0]!r}; rewards: {', '.join(rewards)}")
    if not all(math.isfinite(w) for w in weights.values()) or not any(w != 0 for w in weights.values()):
        raise ValueError(f"min-norm needs finite weights, at least one nonzero; got {weights}")
    per_reward = {name: group_advantages(rewards[name].double(), groups, global_std, None, eps, std, min_group_std)
                  for name in weights}
    active = [k for k, w in enumerate(weights.values()) if w != 0]
    points = torch.stack([weight * per_reward[name] for name, weight in weights.items() if weight != 0])
    coefficients = torch.zeros(len(weights), points.shape[1], dtype=torch.float64, device=points.device)
    coefficients[active] = min_norm_weights(points)
    nearest = points.min(dim=0).values.clamp(min=0) + points.max(dim=0).values.clamp(max=0)
    return JointAdvantages(combined=clip_advantages(nearest, clip), per_reward=per_reward, weights=coefficients)


def aggregate_rewards(rewards: Mapping[str, torch.Tensor], weights: Mapping[str, float], groups: torch.Tensor,
                      mode: str = "sum-then-normalise", global_std: bool = False, clip: float | None = 5.0,
                      eps: float = ADVANTAGE_EPS, std: str | None = None, min_group_std: float = 0.0,
                      ) -> torch.Tensor:
    """Advantages ``[N]`` (float64) from several rewards ``name -> [N]`` and weights ``name -> w``, by ``mode``:

    - ``"sum-then-normalise"``: ``group_advantages(Σ_k w_k·r_k)``;
    - ``"normalise-then-sum"``: ``clip(Σ_k w_k·a_k)`` with ``a_k`` each reward's unclipped group advantages;
    - ``"min-norm"``: per sample the minimum-norm point of ``{w_k·a_k}`` (:func:`joint_advantages`, whose
      ``per_reward``/``weights`` are there for logging): any sample on which the rewards disagree in sign gets 0.

    ``global_std``/``std``/``eps``/``min_group_std``: as in :func:`group_advantages`, for every normalisation.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {mode!r}")
    missing = [name for name in weights if name not in rewards]
    if missing:
        raise ValueError(f"no reward named {missing[0]!r}; rewards: {', '.join(rewards)}")
    if mode == "min-norm":
        return joint_advantages(rewards, weights, groups, global_std, clip, eps, std, min_group_std).combined
    if mode == "sum-then-normalise":
        total = sum(weight * rewards[name].double() for name, weight in weights.items())
        return group_advantages(total, groups, global_std, clip, eps, std, min_group_std)
    total = sum(weight * group_advantages(rewards[name].double(), groups, global_std, None, eps, std, min_group_std)
                for name, weight in weights.items())
    return clip_advantages(total, clip)
