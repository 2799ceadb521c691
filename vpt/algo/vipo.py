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

The released map (options). TeleBoost's released code (Tele-AI/TeleBoost at d4279ac) builds the map differently;
each of its choices is a keyword option of :func:`advantage_map` whose default is vpt's (above), and
:data:`RELEASED_VIPO` holds all of them (see :class:`VipoMapOptions` for the list, the citations and which one vpt
recommends). In short: ``pca="per-frame"`` (one PCA per frame, scores combined by the "weighted reverse"),
``orient="svd"`` (no sign fix: the sign LAPACK returns, negated — arbitrary), ``blur_mode="reflect"`` with
``blur_truncate=4`` (scipy's ``gaussian_filter``), ``normalise="per-frame+global"``, ``time_align="half-pixel"``
and a floored patch grid (:func:`patch_grid`, :func:`crop_to_grid`).

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

import dataclasses
import math
from typing import Any, Sequence

import torch

FALLBACK_RANGE = 1e-6
"""Below this range (after the weighted sum) the map counts as constant and falls back to ones."""

RELEASE_EPS = 1e-8
"""The release's epsilon: added to the explained-variance sum, and the range at or below which its min-maxes
give ones."""

PCA_MODES = ("video", "per-frame")
ORIENTATIONS = ("border", "svd")
COMBINATIONS = ("variance", "weighted-reverse")
BLUR_MODES = ("replicate", "reflect")
BLUR_ROUNDINGS = ("ceil", "round")
NORMALISATIONS = ("global", "per-frame+global")
TIME_ALIGNMENTS = ("ends", "half-pixel")
GRID_ROUNDINGS = ("round", "floor")

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class VipoMapOptions:
    """How the ViPO map is built: the keyword options of :func:`advantage_map` plus the patch grid's rounding.
    The defaults are vpt's; :data:`RELEASED_VIPO` holds the TeleBoost release's choices (Tele-AI/TeleBoost at
    d4279ac, ``pixel_weight.pca_method = weighted``, σ = 1 and k = 3 as vpt's defaults). Field by field, the
    release's value, where it is in the release, and how it differs from vpt's:

    - ``pca="per-frame"`` (TeleBoost release, teleboost/algorithms/vipo.py:compute_dinov2_feature_map_reverse and
      :_compute_top3_pca): a PCA of each frame's h·w patches. vpt's ``"video"`` runs one PCA over all F·h·w
      patches, so every frame is scored on the same components and scale.
    - ``combine="weighted-reverse"`` (vipo.py:_compute_top3_pca and :_reverse_semantic_weights):
      ``S = clip(Σ_j λ_j·minmax(o_j), 0, 1)`` with ``λ_j = s_j²/(Σ_top-k s² + 1e-8)``; a constant component counts
      0.5. vpt's ``"variance"``: ``Σ_j (λ_j/Σλ)·minmax(o_j)``, where a constant component counts 0, and
      near-constant features or sums fall back to ones. ``None`` (the default) picks ``"variance"`` for
      ``pca="video"`` and ``"weighted-reverse"`` for ``pca="per-frame"``.
    - ``orient="svd"`` (vipo.py:_reverse_semantic_weights, the "reverse" ``(max z − z)/(max z − min z)``): the
      oriented score is ``o_j = −z_j`` with ``z_j`` as the SVD returns it. That sign is LAPACK's and is ARBITRARY:
      permuting the patch rows, rotating the features or another LAPACK build can flip a component and so turn
      its contribution upside down (its foreground low). vpt's ``"border"`` fixes each component's sign so the
      border patches score below the interior (invariant to the features' sign and rotation, and to permutations
      of the patches that keep the border set).
      **vpt recommends ``orient="border"`` in every case**, also with the release's other choices
      (``dataclasses.replace(RELEASED_VIPO, orient="border")``); use ``"svd"`` only to reproduce the release.
    - ``blur_mode="reflect"``, ``blur_truncate=4.0``, ``blur_rounding="round"`` (vipo.py:_smooth_weight_map, which
      calls ``scipy.ndimage.gaussian_filter(map, sigma)`` with its defaults: mode "reflect", half-sample symmetric
      ``d c b a | a b c d``, and radius ``int(4σ + 0.5)``). vpt: replicate padding, radius ``⌈3σ⌉``. Without scipy
      the release falls back to a box filter (avg_pool); that fallback is not reproduced.
    - ``normalise="per-frame+global"`` (vipo.py:_smooth_weight_map, :_normalize_unit_interval,
      :_normalize_tensor_or_ones, :compute_dinov2_feature_map_reverse): a min-max per frame after the blur (0.5
      when constant), another per frame after the resize to the latent grid (ones when its range ≤ 1e-8) and a
      global one after the time resampling (ones when its range ≤ 1e-8); a frame whose map is undefined is ones
      on its own. vpt's ``"global"``: one min-max over the video after the blur, a clamp at the end, and the
      whole video falls back to ones.
    - ``time_align="half-pixel"`` (vipo.py:compute_dinov2_feature_map_reverse: trilinear resize of time only,
      ``align_corners=False``, skipped when ``F = T``). vpt's ``"ends"`` aligns the first and last frames.
    - ``grid_rounding="floor"`` (vipo.py:_best_patch_grid, ``H // 14``; the patch convolution ignores the bottom
      and right remainder): for :func:`patch_grid` and :func:`crop_to_grid`, not :func:`advantage_map`. vpt's
      ``"round"`` is :func:`vpt.models.dinov2.patch_grid`, which resizes the frame to the grid.

    Other differences that have no option: the release computes in float32 (vpt in float64); its
    ``pca_method="first_pc"`` / ``"average"`` ablations are not implemented.
    """

    pca: str = "video"
    orient: str = "border"
    combine: str | None = None
    blur_mode: str = "replicate"
    blur_truncate: float = 3.0
    blur_rounding: str = "ceil"
    normalise: str = "global"
    time_align: str = "ends"
    grid_rounding: str = "round"

    def __post_init__(self):
        _choice("pca", self.pca, PCA_MODES)
        _choice("orient", self.orient, ORIENTATIONS)
        if self.combine is not None:
            _choice("combine", self.combine, COMBINATIONS)
        _choice("blur_mode", self.blur_mode, BLUR_MODES)
        if not self.blur_truncate >= 0:
            raise ValueError(f"blur_truncate must be >= 0, got {self.blur_truncate}")
        _choice("blur_rounding", self.blur_rounding, BLUR_ROUNDINGS)
        _choice("normalise", self.normalise, NORMALISATIONS)
        _choice("time_align", self.time_align, TIME_ALIGNMENTS)
        _choice("grid_rounding", self.grid_rounding, GRID_ROUNDINGS)

    def map_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`advantage_map` / :func:`advantage_maps` (every field but
        ``grid_rounding``)."""
        kwargs = dataclasses.asdict(self)
        del kwargs["grid_rounding"]
        return kwargs


RELEASED_VIPO = VipoMapOptions(pca="per-frame", orient="svd", combine="weighted-reverse", blur_mode="reflect",
                               blur_truncate=4.0, blur_rounding="round", normalise="per-frame+global",
                               time_align="half-pixel", grid_rounding="floor")
"""The TeleBoost release's map construction (see :class:`VipoMapOptions`); its sign is arbitrary, so vpt
recommends ``dataclasses.replace(RELEASED_VIPO, orient="border")`` when following the release."""


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


def _orient(scores: torch.Tensor, geometry: tuple[int, int, int], orient: str) -> torch.Tensor:
    if orient == "border":
        return _fix_sign(scores, *geometry)
    # the release's "reverse" (max z − z)/(max z − min z) is minmax(−z): the negation is all it does to the sign
    return -scores


def _min_max(values: torch.Tensor) -> torch.Tensor:
    """``(v − min) / (max − min)``; a constant tensor gives zeros."""
    low, high = values.min(), values.max()
    span = high - low
    return (values - low) / span if span > 0 else torch.zeros_like(values)


def _min_max_or_half(values: torch.Tensor) -> torch.Tensor:
    """The release's min-max: 0.5 everywhere when constant."""
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else torch.full_like(values, 0.5)


def _min_max_or_ones(values: torch.Tensor) -> torch.Tensor:
    """The release's min-max that keeps the GRPO fallback: ones when the range is ≤ 1e-8 or not finite."""
    low = values.min()
    span = values.max() - low
    if not bool(torch.isfinite(span)) or float(span) <= RELEASE_EPS:
        return torch.ones_like(values)
    return (values - low) / span


def _group_scores(x: torch.Tensor, geometry: tuple[int, int, int], components: int, orient: str,
                  combine: str) -> torch.Tensor:
    """Combined saliency ``[N]`` of one PCA group ``x`` [N, D] laid out as ``geometry`` (frames, h, w); NaN when
    undefined."""
    undefined = torch.full((x.shape[0],), math.nan, dtype=torch.float64, device=x.device)
    if x.shape[0] < 2 or x.shape[1] < 1 or not bool(torch.isfinite(x).all()):
        return undefined
    combined = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if combine == "variance":
        scale = torch.linalg.vector_norm(x)
        centred = x - x.mean(dim=0, keepdim=True)
        u, singular, _ = torch.linalg.svd(centred, full_matrices=False)
        if not bool(singular[0] > FALLBACK_RANGE * scale):  # constant features (up to rounding)
            return undefined
        k = min(components, singular.numel())
        variances = singular[:k] ** 2
        weights = variances / variances.sum()
        for j in range(k):
            combined = combined + weights[j] * _min_max(_orient(u[:, j] * singular[j], geometry, orient))
        if not bool(torch.isfinite(combined).all()) or float(combined.max() - combined.min()) < FALLBACK_RANGE:
            return undefined
        return combined
    # The release has no tolerance here, so a rounding-level mean of identical rows would be blown up into a
    # noise map; identical rows are centred to exact zeros (every λ_j = 0, so S = 0), as in exact arithmetic.
    centred = torch.zeros_like(x) if bool((x == x[0]).all()) else x - x.mean(dim=0, keepdim=True)
    u, singular, _ = torch.linalg.svd(centred, full_matrices=False)
    k = min(components, singular.numel())  # the release pads missing components with zeros: λ = 0, no effect
    variances = singular[:k] ** 2
    weights = variances / (variances.sum() + RELEASE_EPS)
    for j in range(k):
        combined = combined + weights[j] * _min_max_or_half(_orient(u[:, j] * singular[j], geometry, orient))
    return combined.clamp(0, 1)


def saliency_scores(features: torch.Tensor, components: int = 3, *, pca: str = "video", orient: str = "border",
                    combine: str | None = None) -> torch.Tensor:
    """Per-patch saliency ``[F, h, w]`` (float64, before the blur) of patch features ``[F, h, w, D]``: steps 1–3
    of the module docstring, or the release's per-frame "weighted reverse" (:class:`VipoMapOptions`).

    Each PCA group (``pca="video"``: all F·h·w patches; ``"per-frame"``: each frame's h·w) is centred and
    decomposed by SVD, ``z_j = u_j·s_j`` (j < k = ``components``, fewer when the group has fewer singular values).
    ``orient``: ``"border"`` fixes each ``z_j``'s sign by the border rule, ``"svd"`` takes ``o_j = −z_j`` (arbitrary
    sign, see :class:`VipoMapOptions`). ``combine`` (None: ``"variance"`` for ``"video"``, ``"weighted-reverse"``
    for ``"per-frame"``) folds the ``minmax(o_j)`` into one score per patch.

    NaN marks an undefined group (the whole video, or one frame): non-finite features or fewer than two patches;
    with ``"variance"`` also constant features (``s_1 ≤ 1e-6·‖x‖``) or a combined range below ``FALLBACK_RANGE``.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [F, h, w, D], got {tuple(features.shape)}")
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    _choice("pca", pca, PCA_MODES)
    _choice("orient", orient, ORIENTATIONS)
    if combine is None:
        combine = "variance" if pca == "video" else "weighted-reverse"
    _choice("combine", combine, COMBINATIONS)
    frames, height, width, dim = features.shape
    x = features.detach().to(torch.float64)
    if pca == "video":
        scores = _group_scores(x.reshape(frames * height * width, dim), (frames, height, width), components, orient,
                               combine)
        return scores.reshape(frames, height, width)
    per_frame = [_group_scores(frame.reshape(height * width, dim), (1, height, width), components, orient, combine)
                 for frame in x]
    if not per_frame:
        return x.new_empty((0, height, width))
    return torch.stack(per_frame).reshape(frames, height, width)


def _blur_radius(sigma: float, truncate: float, rounding: str) -> int:
    # scipy.ndimage.gaussian_filter rounds half up: radius = int(truncate·σ + 0.5)
    return math.ceil(truncate * sigma) if rounding == "ceil" else int(truncate * sigma + 0.5)


def _reflect_index(size: int, radius: int, device) -> torch.Tensor:
    """Indices ``−radius .. size − 1 + radius`` folded half-sample symmetrically (``d c b a | a b c d | d c b a``,
    scipy's "reflect"; torch's own "reflect" repeats no edge sample and needs ``radius < size``)."""
    index = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def gaussian_blur(maps: torch.Tensor, sigma: float, mode: str = "replicate", truncate: float = 3.0,
                  rounding: str = "ceil") -> torch.Tensor:
    """Gaussian blur ``[F, h, w] -> [F, h, w]`` of each frame over (h, w): separable normalised kernel
    ``exp(−x²/(2σ²))`` on ``x = −r..r``. ``sigma = 0`` returns ``maps``.

    vpt's defaults: ``r = ⌈3σ⌉`` and replicate padding. The release (scipy ``gaussian_filter`` defaults):
    ``mode="reflect"`` (half-sample symmetric, any radius), ``truncate=4.0``, ``rounding="round"``
    (``r = int(4σ + 0.5)``).
    """
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    _choice("blur mode", mode, BLUR_MODES)
    _choice("blur rounding", rounding, BLUR_ROUNDINGS)
    if not truncate >= 0:
        raise ValueError(f"blur truncate must be >= 0, got {truncate}")
    if sigma == 0:
        return maps
    radius = _blur_radius(sigma, truncate, rounding)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    if mode == "replicate":
        x = torch.nn.functional.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    else:
        rows = _reflect_index(maps.shape[1], radius, maps.device)
        columns = _reflect_index(maps.shape[2], radius, maps.device)
        x = maps[:, None][:, :, rows][:, :, :, columns]
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def _resize_space(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return torch.nn.functional.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False,
                                           antialias=True)[:, 0]


def resample_time(maps: torch.Tensor, frames_out: int, align: str = "ends") -> torch.Tensor:
    """Linear interpolation over the first axis, ``[F, ...] -> [frames_out, ...]``; unchanged when the counts
    agree, and a single frame is repeated.

    ``align="ends"`` (vpt): output ``t`` sits at frame ``t·(F − 1)/(frames_out − 1)`` (first and last frames
    aligned); ``frames_out = 1`` takes the mean over the frames. ``"half-pixel"`` (the release; torch's
    ``align_corners=False``): output ``t`` sits at ``max(0, (t + 0.5)·F/frames_out − 0.5)``, the last frame
    repeating beyond ``F − 1``.
    """
    _choice("time_align", align, TIME_ALIGNMENTS)
    frames = maps.shape[0]
    if frames_out < 1 or frames < 1:
        raise ValueError(f"frame counts must be positive, got {frames} -> {frames_out}")
    if frames_out == frames:
        return maps
    if align == "ends" and frames_out == 1:
        return maps.mean(dim=0, keepdim=True)
    if frames == 1:
        return maps.expand(frames_out, *maps.shape[1:]).clone()
    steps = torch.arange(frames_out, dtype=torch.float64)
    if align == "ends":
        position = steps * (frames - 1) / (frames_out - 1)
        below = position.floor().long().clamp(max=frames - 2)
        above = below + 1
    else:
        position = ((steps + 0.5) * (frames / frames_out) - 0.5).clamp(min=0)
        below = position.floor().long().clamp(max=frames - 1)
        above = (below + 1).clamp(max=frames - 1)
    fraction = (position - below).to(maps.dtype).view(-1, *(1,) * (maps.dim() - 1)).to(maps.device)
    return maps[below] * (1 - fraction) + maps[above] * fraction


def resize_map(maps: torch.Tensor, latent_size: tuple[int, int, int], time_align: str = "ends") -> torch.Tensor:
    """``[F, h, w] -> [T, H, W]``: each frame resized to (H, W) bilinearly (antialiased when shrinking), then
    :func:`resample_time` to ``T`` frames (``time_align``: ``"ends"``, vpt, latent frame ``t`` at frame
    ``t·(F − 1)/(T − 1)`` and ``T = 1`` the mean over the frames; or ``"half-pixel"``, the release)."""
    _choice("time_align", time_align, TIME_ALIGNMENTS)
    t_out, h_out, w_out = (int(n) for n in latent_size)
    if min(t_out, h_out, w_out) < 1:
        raise ValueError(f"latent size must be positive, got {tuple(latent_size)}")
    return resample_time(_resize_space(maps, (h_out, w_out)), t_out, time_align)


def _normalise_per_frame(scores: torch.Tensor, latent_size: tuple[int, int, int], blur_sigma: float,
                         blur: dict[str, Any], time_align: str) -> torch.Tensor:
    """The release's normalisations (:class:`VipoMapOptions`): ``scores`` [F, h, w] (NaN frames undefined) ->
    ``[T, H, W]`` float64."""
    t_out, h_out, w_out = (int(n) for n in latent_size)
    if min(t_out, h_out, w_out) < 1:
        raise ValueError(f"latent size must be positive, got {tuple(latent_size)}")
    if scores.numel() == 0:
        return torch.ones((t_out, h_out, w_out), dtype=torch.float64, device=scores.device)
    defined = torch.isfinite(scores).flatten(1).all(dim=1)
    blurred = gaussian_blur(torch.where(defined[:, None, None], scores, 0.0), blur_sigma, **blur)
    ones = torch.ones((h_out, w_out), dtype=torch.float64, device=scores.device)
    frames = [_min_max_or_ones(_resize_space(_min_max_or_half(frame)[None], (h_out, w_out))[0]) if ok else ones
              for frame, ok in zip(blurred, defined.tolist())]
    return _min_max_or_ones(resample_time(torch.stack(frames), t_out, time_align))


def advantage_map(features: torch.Tensor, latent_size: tuple[int, int, int], blur_sigma: float = 1.0,
                  components: int = 3, *, pca: str = "video", orient: str = "border", combine: str | None = None,
                  blur_mode: str = "replicate", blur_truncate: float = 3.0, blur_rounding: str = "ceil",
                  normalise: str = "global", time_align: str = "ends") -> torch.Tensor:
    """ViPO map ``M`` ``[T, H, W]`` in [0, 1] for ONE video (module docstring), in ``features``' float dtype.

    ``features``: ``[F, h, w, D]`` patch features of the video's F decoded frames; ``latent_size``: ``(T, H, W)``
    of its latent. Computed in float64; ones (plain GRPO) when the map is undefined or constant.

    The keyword options choose between vpt's construction (the defaults) and the TeleBoost release's, each on its
    own: ``pca``, ``orient``, ``combine`` (:func:`saliency_scores`), ``blur_mode``, ``blur_truncate``,
    ``blur_rounding`` (:func:`gaussian_blur`), ``normalise`` and ``time_align`` (:func:`resample_time`). See
    :class:`VipoMapOptions`; ``**RELEASED_VIPO.map_kwargs()`` selects the whole release.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [F, h, w, D], got {tuple(features.shape)}")
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if len(latent_size) != 3:
        raise ValueError(f"latent size must be (T, H, W), got {tuple(latent_size)}")
    _choice("normalise", normalise, NORMALISATIONS)
    _choice("time_align", time_align, TIME_ALIGNMENTS)
    _choice("blur_mode", blur_mode, BLUR_MODES)
    _choice("blur_rounding", blur_rounding, BLUR_ROUNDINGS)
    dtype = features.dtype if features.dtype.is_floating_point else torch.float32
    scores = saliency_scores(features, components, pca=pca, orient=orient, combine=combine)
    blur = dict(mode=blur_mode, truncate=blur_truncate, rounding=blur_rounding)
    if normalise == "per-frame+global":
        return _normalise_per_frame(scores, latent_size, blur_sigma, blur, time_align).to(dtype)
    if scores.numel() == 0 or not bool(torch.isfinite(scores).all()):
        return _fallback(latent_size, dtype, features.device)
    blurred = gaussian_blur(scores, blur_sigma, **blur)
    if float(blurred.max() - blurred.min()) <= 0:
        return _fallback(latent_size, dtype, features.device)
    resized = resize_map(_min_max(blurred), latent_size, time_align=time_align)
    return resized.clamp(0, 1).to(dtype)


def advantage_maps(features_list: Sequence[torch.Tensor], latent_size: tuple[int, int, int], blur_sigma: float = 1.0,
                   components: int = 3, **options: Any) -> torch.Tensor:
    """:func:`advantage_map` of each video's features ``[F_b, h, w, D]``, stacked: ``[B, T, H, W]``. ``options``:
    :func:`advantage_map`'s keyword options (e.g. ``**RELEASED_VIPO.map_kwargs()``)."""
    if len(features_list) == 0:
        return torch.ones((0, *latent_size))
    return torch.stack([advantage_map(f, latent_size, blur_sigma, components, **options) for f in features_list])


def patch_grid(height: int, width: int, patch_size: int = 14, rounding: str = "round") -> tuple[int, int]:
    """DINOv2 patch grid ``(h, w)`` of a ``height × width`` frame, at least 1×1. ``"round"``: the nearest whole
    number of patches, as :func:`vpt.models.dinov2.patch_grid` (the frame is then resized to the grid);
    ``"floor"``: the release's ``H // p`` (TeleBoost release, teleboost/algorithms/vipo.py:_best_patch_grid). With
    ``p = 14``, 480×832 gives 34×59 either way, but 512×512 gives 37×37 rounded and 36×36 floored."""
    if patch_size < 1:
        raise ValueError(f"patch size must be >= 1, got {patch_size}")
    _choice("grid rounding", rounding, GRID_ROUNDINGS)
    if rounding == "round":
        return max(1, round(height / patch_size)), max(1, round(width / patch_size))
    return max(1, height // patch_size), max(1, width // patch_size)


def crop_to_grid(frames, grid: tuple[int, int], patch_size: int = 14):
    """``frames`` ``[F, H, W, C]`` (numpy or torch) cropped to their top-left ``(h·p) × (w·p)`` pixels.

    The release feeds DINOv2 the frame at its own size; the stride-``p`` patch convolution then never sees the
    bottom ``H − h·p`` rows and right ``W − w·p`` columns. Cropping to the floored grid
    (``patch_grid(H, W, p, "floor")``) gives the same pixels without the resize that
    :func:`vpt.models.dinov2.dinov2_patch_features` would otherwise apply (pass it the same ``grid``).
    """
    h, w = (int(n) for n in grid)
    if h < 1 or w < 1 or h * patch_size > frames.shape[1] or w * patch_size > frames.shape[2]:
        raise ValueError(f"a {h}x{w} grid of {patch_size}-pixel patches does not fit {tuple(frames.shape[1:3])} "
                         "frames")
    return frames[:, : h * patch_size, : w * patch_size]


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
