"""ViPO: dense, spatio-temporal advantages from frozen DINOv2 features (TeleBoost, arXiv 2602.07595, Stage II).

A video's scalar GRPO advantage ``A`` is spread over the latent positions ``p = (t, y, x)`` by a saliency map
``M ∈ [0, 1]`` built from frozen DINOv2 patch features of its decoded frames (:func:`advantage_map`):

1. all patches of all ``F`` frames ``[F·h·w, D]`` → centre → PCA top-k (SVD, k = 3), scores ``s_j``;
2. sign fix per component: border patches (first/last row/column of a frame) get the *lower* mean (salient
   foreground high, background low); without interior patches (or on a tie) the largest-magnitude score is made
   positive — both rules are invariant to negating the features;
3. ``m = Σ_j w_j · minmax(s_j)`` with ``w_j = λ_j / Σ λ`` (λ_j the explained variances);
4. Gaussian blur σ = 1 per frame over (h, w) (separable, radius ⌈3σ⌉, replicate padding) → min-max over the video;
5. resize each frame to the latent ``H × W`` (bilinear, antialiased) and interpolate linearly over time from ``F``
   frames to ``T`` latent frames (first and last frames aligned) → clamp to [0, 1].

Constant or non-finite features, fewer than two patches, or a map whose range (after the weighted sum) is below
``1e-6`` give ``M = 1`` everywhere: plain GRPO.

Dense surrogate. The policy ratio is per latent position: :func:`per_position_log_prob` is the Gaussian
log-density of one SDE step summed over the channels only, ``[B, C, T, H, W] -> [B, T, H, W]``. The loss reuses
:func:`vpt.algo.grpo.clipped_surrogate` unchanged (it broadcasts)::

    loss, stats = clipped_surrogate(per_position_log_prob(x_next, mean_θ, s),
                                    per_position_log_prob(x_next, mean_old, s),
                                    dense_advantages(A, M), clip_range)

i.e. ``mean_{b,p} max(−A_b·M_b(p)·ratio_b(p), −A_b·M_b(p)·clip(ratio_b(p), 1 − c, 1 + c))``. With ``M = 1`` and a
log-ratio that is the same at every position this is exactly plain GRPO's loss. Note the per-position log-ratio
sums ``C`` channels, while :func:`vpt.algo.flow_sde.gaussian_log_prob` averages over every dimension: the dense
ratio moves ``C·T·H·W / (T·H·W) = C`` times further from 1 for the same change of the mean, so the clip range is
tighter in effect.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

FALLBACK_RANGE = 1e-6
"""Below this range (after the weighted sum) the map counts as constant and falls back to ones."""

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def _fallback(latent_size: tuple[int, int, int], dtype: torch.dtype, device) -> torch.Tensor:
    return torch.ones(tuple(latent_size), dtype=dtype, device=device)


def _fix_sign(scores: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """``scores`` [N] (N = frames·height·width) with the sign that puts the border patches' mean below the
    interior's; without interior (or on a tie) the largest-magnitude score is made positive."""
    grid = scores.reshape(frames, height, width)
    if height > 2 and width > 2:
        border = torch.ones(height, width, dtype=torch.bool, device=scores.device)
        border[1:-1, 1:-1] = False
        difference = grid[:, ~border].mean() - grid[:, border].mean()
        if difference.abs() > 1e-9 * scores.abs().max():
            return scores if difference > 0 else -scores
    return scores if scores[scores.abs().argmax()] >= 0 else -scores


def _min_max(values: torch.Tensor) -> torch.Tensor:
    """``(v − min) / (max − min)``; a constant tensor gives zeros."""
    low, high = values.min(), values.max()
    span = high - low
    return (values - low) / span if span > 0 else torch.zeros_like(values)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur ``[F, h, w] -> [F, h, w]`` of each frame over (h, w): separable normalised kernel
    ``exp(−x²/(2σ²))`` on ``x = −r..r``, ``r = ⌈3σ⌉``, replicate padding. ``sigma = 0`` returns ``maps``."""
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return maps
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = torch.nn.functional.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def resize_map(maps: torch.Tensor, latent_size: tuple[int, int, int]) -> torch.Tensor:
    """``[F, h, w] -> [T, H, W]``: each frame resized to (H, W) bilinearly (antialiased when shrinking), then linear
    interpolation over the frame axis with the first and last frames aligned (latent frame ``t`` sits at frame
    ``t·(F − 1)/(T − 1)``); ``T = 1`` takes the mean over the frames."""
    frames, height, width = maps.shape
    t_out, h_out, w_out = (int(n) for n in latent_size)
    if min(t_out, h_out, w_out) < 1:
        raise ValueError(f"latent size must be positive, got {tuple(latent_size)}")
    if (height, width) != (h_out, w_out):
        maps = torch.nn.functional.interpolate(maps[:, None], size=(h_out, w_out), mode="bilinear",
                                               align_corners=False, antialias=True)[:, 0]
    if t_out == frames:
        return maps
    if t_out == 1:
        return maps.mean(dim=0, keepdim=True)
    if frames == 1:
        return maps.expand(t_out, h_out, w_out).clone()
    position = torch.arange(t_out, dtype=torch.float64) * (frames - 1) / (t_out - 1)
    below = position.floor().long().clamp(max=frames - 2)
    fraction = (position - below).to(maps.dtype).view(-1, 1, 1).to(maps.device)
    return maps[below] * (1 - fraction) + maps[below + 1] * fraction


def advantage_map(features: torch.Tensor, latent_size: tuple[int, int, int], blur_sigma: float = 1.0,
                  components: int = 3) -> torch.Tensor:
    """ViPO map ``M`` ``[T, H, W]`` in [0, 1] for ONE video (module docstring), in ``features``' float dtype.

    ``features``: ``[F, h, w, D]`` patch features of the video's F decoded frames; ``latent_size``: ``(T, H, W)``
    of its latent. Computed in float64; ones (plain GRPO) when the map is undefined or constant.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [F, h, w, D], got {tuple(features.shape)}")
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if len(latent_size) != 3:
        raise ValueError(f"latent size must be (T, H, W), got {tuple(latent_size)}")
    dtype = features.dtype if features.dtype.is_floating_point else torch.float32
    frames, height, width, dim = features.shape
    x = features.detach().to(torch.float64).reshape(-1, dim)
    if x.shape[0] < 2 or dim < 1 or not bool(torch.isfinite(x).all()):
        return _fallback(latent_size, dtype, features.device)
    scale = torch.linalg.vector_norm(x)
    centred = x - x.mean(dim=0, keepdim=True)
    u, singular, _ = torch.linalg.svd(centred, full_matrices=False)
    if not bool(singular[0] > FALLBACK_RANGE * scale):  # constant features (up to rounding)
        return _fallback(latent_size, dtype, features.device)
    k = min(components, singular.numel())
    variances = singular[:k] ** 2
    weights = variances / variances.sum()
    combined = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for j in range(k):
        scores = _fix_sign(u[:, j] * singular[j], frames, height, width)
        combined = combined + weights[j] * _min_max(scores)
    if not bool(torch.isfinite(combined).all()) or float(combined.max() - combined.min()) < FALLBACK_RANGE:
        return _fallback(latent_size, dtype, features.device)
    blurred = gaussian_blur(combined.reshape(frames, height, width), blur_sigma)
    if float(blurred.max() - blurred.min()) <= 0:
        return _fallback(latent_size, dtype, features.device)
    resized = resize_map(_min_max(blurred), latent_size)
    return resized.clamp(0, 1).to(dtype)


def advantage_maps(features_list: Sequence[torch.Tensor], latent_size: tuple[int, int, int], blur_sigma: float = 1.0,
                   components: int = 3) -> torch.Tensor:
    """:func:`advantage_map` of each video's features ``[F_b, h, w, D]``, stacked: ``[B, T, H, W]``."""
    if len(features_list) == 0:
        return torch.ones((0, *latent_size))
    return torch.stack([advantage_map(f, latent_size, blur_sigma, components) for f in features_list])


def dense_advantages(advantages: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Per-position advantages ``A_b·M_b(p)``: ``[B]`` and ``[B, T, H, W]`` -> ``[B, T, H, W]``."""
    if advantages.dim() != 1 or maps.dim() != 4 or maps.shape[0] != advantages.shape[0]:
        raise ValueError(f"advantages [B] and maps [B, T, H, W] expected, got {tuple(advantages.shape)} and "
                         f"{tuple(maps.shape)}")
    return advantages[:, None, None, None] * maps.to(advantages.dtype)


def per_position_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """``log N(sample; mean, std²)`` summed over the channel dimension only: ``[B, C, T, H, W] -> [B, T, H, W]``.

    ``std``: a float, a scalar tensor, ``[B]`` (one std per sample) or anything broadcastable to ``sample``; > 0.
    Its mean over positions divided by ``C`` equals :func:`vpt.algo.flow_sde.gaussian_log_prob`.
    """
    if sample.dim() != 5 or sample.shape != mean.shape:
        raise ValueError(f"sample and mean must be equal [B, C, T, H, W] shapes, got {tuple(sample.shape)} and "
                         f"{tuple(mean.shape)}")
    std = torch.as_tensor(std, dtype=sample.dtype, device=sample.device)
    if std.dim() == 1 and std.shape[0] == sample.shape[0]:
        std = std.view(-1, 1, 1, 1, 1)
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - _HALF_LOG_TWO_PI
    return log_density.sum(dim=1)
