"""The TeleBoost release's ViPO map construction (teleboost/algorithms/vipo.py at d4279ac) as options of
vpt.algo.vipo, against float64 numpy references written from the formulas, not from vpt's internals."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from vpt.algo.vipo import (RELEASED_VIPO, VipoMapOptions, advantage_map, advantage_maps, crop_to_grid, gaussian_blur,
                           patch_grid, resample_time, resize_map, saliency_scores)

OLD_DEFAULTS = dict(pca="video", orient="border", combine="variance", blur_mode="replicate", blur_truncate=3.0,
                    blur_rounding="ceil", normalise="global", time_align="ends")
RELEASED_BORDER = dataclasses.replace(RELEASED_VIPO, orient="border").map_kwargs()


# ------------------------------------------------------------------------------------------ numpy references
def np_top_scores(x: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Centred PCA of ``x`` [N, D]: scores ``z`` [N, k] (numpy's own SVD signs) and λ_j = s_j²/(Σ s² + 1e-8)."""
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(k, s.size)
    return u[:, :k] * s[:k], s[:k] ** 2 / ((s[:k] ** 2).sum() + 1e-8)


def np_weighted_reverse(z: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """clip(Σ_j λ_j·(max z_j − z_j)/(max z_j − min z_j), 0, 1); a constant column counts 0.5."""
    total = np.zeros(z.shape[0])
    for j in range(z.shape[1]):
        column = z[:, j]
        high, low = column.max(), column.min()
        total += lam[j] * ((high - column) / (high - low) if high > low else 0.5)
    return np.clip(total, 0.0, 1.0)


def np_border_orient(column: np.ndarray, height: int, width: int) -> np.ndarray:
    """``column`` [F·h·w] with the sign that puts the interior's mean (over all frames) above the border's
    (random data: no ties)."""
    grid = column.reshape(-1, height, width)
    interior = grid[:, 1:-1, 1:-1]
    border_mean = (grid.sum() - interior.sum()) / (grid.size - interior.size)
    return column if interior.mean() > border_mean else -column


def np_unit(values: np.ndarray, constant) -> np.ndarray:
    low, high = values.min(), values.max()
    if constant == "ones":
        return np.ones_like(values) if high - low <= 1e-8 else (values - low) / (high - low)
    return (values - low) / (high - low) if high > low else np.full_like(values, constant)


def np_reflect_blur(grid: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's defaults by hand: radius int(4σ + 0.5), half-sample symmetric borders
    (numpy's pad "symmetric"), a direct 2-D sum of the product kernel."""
    radius = int(4 * sigma + 0.5)
    kernel = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(grid, radius, mode="symmetric")
    out = np.zeros_like(grid)
    for a in range(2 * radius + 1):
        for b in range(2 * radius + 1):
            out += kernel[a] * kernel[b] * padded[a : a + grid.shape[0], b : b + grid.shape[1]]
    return out


def np_half_pixel(maps: np.ndarray, frames_out: int) -> np.ndarray:
    """Linear interpolation over axis 0 at positions max(0, (t + 0.5)·F/T − 0.5), clamped at the last frame."""
    frames = maps.shape[0]
    if frames == frames_out:
        return maps
    positions = np.maximum(0.0, (np.arange(frames_out) + 0.5) * frames / frames_out - 0.5)
    flat = maps.reshape(frames, -1)
    out = np.stack([np.interp(positions, np.arange(frames), flat[:, i]) for i in range(flat.shape[1])], axis=1)
    return out.reshape(frames_out, *maps.shape[1:])


def np_released_map(features: np.ndarray, latent: tuple[int, int, int], sigma: float) -> np.ndarray:
    """The release's pipeline with the border sign: per-frame PCA → weighted reverse → reflect blur → min-max
    (0.5) → bilinear antialiased resize (torch's, as the release calls it) → min-max (ones) → half-pixel time →
    global min-max (ones)."""
    frames, height, width, dim = features.shape
    per_frame = []
    for frame in features:
        z, lam = np_top_scores(frame.reshape(-1, dim))
        oriented = np.stack([np_border_orient(z[:, j], height, width) for j in range(z.shape[1])], axis=1)
        saliency = np_weighted_reverse(-oriented, lam).reshape(height, width)  # reverse of −o is minmax(o)
        smooth = np_unit(np_reflect_blur(saliency, sigma), 0.5)
        resized = torch.nn.functional.interpolate(torch.from_numpy(smooth)[None, None], size=latent[1:],
                                                  mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
        per_frame.append(np_unit(resized, "ones"))
    return np_unit(np_half_pixel(np.stack(per_frame), latent[0]), "ones")


def blob_features(frames: int, height: int, width: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(frames, height, width, dim))
    features[:, 1 : height - 1, 1 : width - 2] += 2.0 * rng.normal(size=dim)
    return features


# ------------------------------------------------------------------------------------------------ the scores
def test_per_frame_weighted_reverse_scores_by_hand():
    features = blob_features(3, 4, 5, 6, seed=0)
    x = torch.from_numpy(features)
    svd = saliency_scores(x, pca="per-frame", orient="svd").numpy()
    border = saliency_scores(x, pca="per-frame", orient="border").numpy()
    variance = saliency_scores(x, pca="per-frame", orient="border", combine="variance").numpy()
    # per-frame mode combines by the release's weighted reverse unless told otherwise
    assert np.array_equal(svd, saliency_scores(x, pca="per-frame", orient="svd", combine="weighted-reverse").numpy())
    for f in range(3):
        z, lam = np_top_scores(features[f].reshape(20, 6))
        assert lam.sum() == pytest.approx(1.0, abs=1e-9)
        # svd: the sign is LAPACK's, so torch's may differ from numpy's per component: one of the 8 sign choices
        candidates = [np_weighted_reverse(z * np.array(signs), lam) for signs in itertools.product((1, -1), repeat=3)]
        gaps = sorted(np.abs(svd[f].ravel() - c).max() for c in candidates)
        assert gaps[0] < 1e-10 and gaps[1] > 1e-3  # a match, and the sign choices are distinguishable
        # border: the sign is fixed, so the map is unique
        oriented = np.stack([np_border_orient(z[:, j], 4, 5) for j in range(3)], axis=1)
        np.testing.assert_allclose(border[f].ravel(), np_weighted_reverse(-oriented, lam), atol=1e-12, rtol=0)
        # vpt's combination on the same per-frame PCA: weights λ/Σλ (no 1e-8), no clip
        weights = lam / lam.sum()
        by_hand = sum(weights[j] * np_unit(oriented[:, j], 0.0) for j in range(3))
        np.testing.assert_allclose(variance[f].ravel(), by_hand, atol=1e-12, rtol=0)
    # one PCA over the video, combined by the weighted reverse (the options are independent)
    z, lam = np_top_scores(features.reshape(60, 6))
    oriented = np.stack([np_border_orient(z[:, j], 4, 5) for j in range(3)], axis=1)
    video = saliency_scores(x, orient="border", combine="weighted-reverse").numpy()
    np.testing.assert_allclose(video.ravel(), np_weighted_reverse(-oriented, lam), atol=1e-12, rtol=0)


def test_constant_and_undefined_frames():
    features = torch.from_numpy(blob_features(3, 4, 4, 5, seed=1))
    features[1] = 0.7  # identical rows: every λ is 0, so S = 0 (and vpt's variance rule calls it undefined)
    features[2, 0, 0, 0] = float("nan")
    released = saliency_scores(features, pca="per-frame", orient="border")
    assert bool((released[1] == 0).all()) and bool(released[2].isnan().all()) and bool(released[0].isfinite().all())
    assert bool(saliency_scores(features, pca="per-frame", combine="variance")[1].isnan().all())
    # the release: each undefined or constant frame is ones on its own; vpt's global rule: the whole video is ones
    out = advantage_map(features, (3, 4, 4), 0.0, **RELEASED_BORDER)
    assert bool((out[1:] == 1).all()) and out[0].min().item() == 0.0 and out[0].max().item() == 1.0
    assert bool((advantage_map(features, (3, 4, 4), 0.0, pca="per-frame") == 1).all())
    # an all-constant video: ones either way
    assert bool((advantage_map(torch.full((2, 3, 3, 4), 0.7), (2, 3, 3), **RELEASED_VIPO.map_kwargs()) == 1).all())


# -------------------------------------------------------------------------------------------------- the blur
def test_reflect_blur_is_half_sample_symmetric_by_hand():
    kernel = [math.exp(-k * k / 2) for k in range(-4, 5)]  # σ = 1, radius int(4 + 0.5) = 4
    kernel = [value / sum(kernel) for value in kernel]
    row = torch.tensor([[[1.0, 2.0, 4.0, 8.0]]], dtype=torch.float64)
    padded = [8, 4, 2, 1, 1, 2, 4, 8, 8, 4, 2, 1]  # d c b a | a b c d | d c b a
    expected = [sum(kernel[k] * padded[i + k] for k in range(9)) for i in range(4)]
    out = gaussian_blur(row, 1.0, mode="reflect", truncate=4.0, rounding="round")
    assert out[0, 0].tolist() == pytest.approx(expected, abs=1e-14)
    # replicate (vpt) with the same radius pads a a a a | a b c d | d d d d instead
    padded = [1, 1, 1, 1, 1, 2, 4, 8, 8, 8, 8, 8]
    expected = [sum(kernel[k] * padded[i + k] for k in range(9)) for i in range(4)]
    out = gaussian_blur(row, 1.0, mode="replicate", truncate=4.0, rounding="round")
    assert out[0, 0].tolist() == pytest.approx(expected, abs=1e-14)
    # radius beyond the size: the reflections repeat, a b b a | a b | b a a b
    pair = torch.tensor([[[1.0], [3.0]]], dtype=torch.float64)  # a column [1, 2, 1]
    padded = [1, 3, 3, 1, 1, 3, 3, 1, 1, 3]
    expected = [sum(kernel[k] * padded[i + k] for k in range(9)) for i in range(2)]
    out = gaussian_blur(pair, 1.0, mode="reflect", truncate=4.0, rounding="round")
    assert out[0, :, 0].tolist() == pytest.approx(expected, abs=1e-14)
    # 2-D, a direct double sum over numpy's symmetric padding, radius 2·σ=1.7 → int(6.8 + 0.5) = 7 > the 5 rows
    grid = np.random.default_rng(3).random((2, 5, 7))
    out = gaussian_blur(torch.from_numpy(grid), 1.7, mode="reflect", truncate=4.0, rounding="round").numpy()
    for f in range(2):
        np.testing.assert_allclose(out[f], np_reflect_blur(grid[f], 1.7), atol=1e-13, rtol=0)


def test_reflect_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is not installed in .venv; the hand-worked "
                                  "half-sample reflection tests stand in for it")
    grid = np.random.default_rng(4).random((3, 5, 7))
    for sigma in (0.5, 1.0, 1.7, 3.0):
        out = gaussian_blur(torch.from_numpy(grid), sigma, mode="reflect", truncate=4.0, rounding="round").numpy()
        expected = np.stack([ndimage.gaussian_filter(frame, sigma) for frame in grid])
        np.testing.assert_allclose(out, expected, atol=1e-12, rtol=0)


def test_blur_radius_rounding():
    delta = torch.zeros(1, 15, 15, dtype=torch.float64)
    delta[0, 7, 7] = 1

    def support(**options) -> int:
        return int((gaussian_blur(delta, 0.6, **options)[0, :, 7] > 0).sum())

    assert support() == 5  # vpt: ⌈3·0.6⌉ = 2
    assert support(truncate=4.0, rounding="round") == 5  # scipy: int(2.4 + 0.5) = 2
    assert support(truncate=4.0, rounding="ceil") == 7  # ⌈2.4⌉ = 3
    assert support(truncate=4.0, rounding="round", mode="reflect") == 5


# -------------------------------------------------------------------------------------------------- the time
def test_half_pixel_time_resampling_by_hand():
    spatial = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    frames = torch.tensor([0.0, 1.0, 4.0, 9.0], dtype=torch.float64).view(4, 1, 1) + spatial
    # 4 → 2: latent frame t sits at (t + 0.5)·4/2 − 0.5 = 0.5, 2.5: the midpoints of frames 0|1 and 2|3
    out = resample_time(frames, 2, "half-pixel")
    assert torch.allclose(out, torch.stack([0.5 + spatial, 6.5 + spatial]), atol=1e-15)
    # vpt's ends alignment keeps frames 0 and 3
    assert torch.equal(resample_time(frames, 2, "ends"), frames[[0, 3]])
    # 2 → 4: positions −0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last frame: the last frame)
    two = frames[:2]
    out = resample_time(two, 4, "half-pixel")
    expected = torch.stack([two[0], 0.75 * two[0] + 0.25 * two[1], 0.25 * two[0] + 0.75 * two[1], two[1]])
    assert torch.allclose(out, expected, atol=1e-15)
    # 3 → 1: position 1, the middle frame (ends: the mean)
    assert torch.allclose(resample_time(frames[1:], 1, "half-pixel"), frames[2:3], atol=1e-15)
    assert torch.allclose(resample_time(frames[1:], 1, "ends"), frames[1:].mean(0, keepdim=True))
    # 49 → 13 (Wan's latent count) against numpy and torch's own align_corners=False interpolation
    video = torch.from_numpy(np.random.default_rng(5).random((49, 2, 3)))
    out = resample_time(video, 13, "half-pixel")
    np.testing.assert_allclose(out.numpy(), np_half_pixel(video.numpy(), 13), atol=1e-14, rtol=0)
    by_torch = torch.nn.functional.interpolate(video.reshape(49, 6).T[None], size=13, mode="linear",
                                               align_corners=False)[0].T.reshape(13, 2, 3)
    assert torch.allclose(out, by_torch, atol=1e-14)
    assert out[0, 0, 0].item() == pytest.approx(video[1, 0, 0].item() * (1 - 0.5 * 49 / 13 + 1.5)
                                                + video[2, 0, 0].item() * (0.5 * 49 / 13 - 1.5), abs=1e-14)
    assert torch.allclose(resize_map(video, (13, 2, 3), time_align="half-pixel"), out, atol=0)


# ------------------------------------------------------------------------------------------ normalisation
def rank_one(pattern: list[list[float]], direction: np.ndarray) -> np.ndarray:
    """[h, w, D] features whose centred PCA has one component, ±(pattern − mean)·|direction|."""
    return np.asarray(pattern, dtype=np.float64)[..., None] * direction


def test_per_frame_and_global_normalisation_by_hand():
    direction = np.array([0.3, -1.2, 0.5, 2.0])
    a = [[0, 1, 0, 2], [1, 5, 3, 0], [0, 4, 6, 1], [2, 0, 1, 0]]  # interior high: min-max is a/6
    b = [[1, 0, 0, 0], [0, 2, 8, 0], [0, 8, 3, 1], [0, 0, 0, 1]]  # b/8
    features = np.stack([rank_one(a, direction), 3.0 * rank_one(b, direction), np.full((4, 4, 4), 0.7)])
    x = torch.from_numpy(features)
    a_unit, b_unit = np.asarray(a) / 6, np.asarray(b) / 8
    # T = F: no time resampling; the constant frame (S = 0 → 0.5 after the blur's min-max) becomes ones
    out = advantage_map(x, (3, 4, 4), 0.0, **RELEASED_BORDER).numpy()
    np.testing.assert_allclose(out, np.stack([a_unit, b_unit, np.ones((4, 4))]), atol=1e-12, rtol=0)
    # vpt's one global min-max: the constant frame's S = 0 stays 0
    out = advantage_map(x, (3, 4, 4), 0.0, pca="per-frame", orient="border").numpy()
    np.testing.assert_allclose(out, np.stack([a_unit, b_unit, np.zeros((4, 4))]), atol=1e-9, rtol=0)
    # 3 → 2 half-pixel (positions 0.25 and 1.75), then the global min-max
    mixed = np.stack([0.75 * a_unit + 0.25 * b_unit, 0.25 * b_unit + 0.75])
    expected = (mixed - mixed.min()) / (mixed.max() - mixed.min())
    out = advantage_map(x, (2, 4, 4), 0.0, **RELEASED_BORDER).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-12, rtol=0)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0, abs=1e-15)


def test_released_pipeline_against_numpy():
    features = blob_features(5, 6, 8, 7, seed=6)
    x = torch.from_numpy(features)
    for latent, sigma in (((2, 6, 8), 1.0), ((3, 3, 4), 1.0), ((5, 6, 8), 0.6), ((7, 12, 16), 1.5)):
        out = advantage_map(x, latent, sigma, **RELEASED_BORDER)
        assert out.shape == latent and out.dtype == torch.float64
        np.testing.assert_allclose(out.numpy(), np_released_map(features, latent, sigma), atol=1e-12, rtol=0)
    out32 = advantage_map(x.float(), (2, 6, 8), **RELEASED_VIPO.map_kwargs())
    assert out32.dtype == torch.float32 and out32.min().item() == 0.0 and out32.max().item() == 1.0


# ---------------------------------------------------------------------------------------------- orientation
def test_svd_orientation_flips_under_row_permutation_but_border_does_not():
    """Permuting the patch rows (interior among interior, border among border, so the border rule sees the same
    sets) permutes an honest map. The SVD's sign is LAPACK's: the svd-oriented map is then either the permuted
    map or its reverse, depending on the permutation; the border-oriented map is always the permuted one."""
    rng = np.random.default_rng(7)
    h, w, dim = 6, 6, 8
    pattern = rng.random((h, w))
    pattern[2:4, 2:4] += 2.0
    x = torch.from_numpy(rank_one(pattern.tolist(), rng.normal(size=dim)) + 1e-3 * rng.normal(size=(h, w, dim)))
    x = x[None]  # one frame
    # σ = 0 (no blur) and one dominant component (λ_1 ≈ 1 − 2e-6): a flip of it is 1 − map, up to the others' λ
    svd_options, border_options = RELEASED_VIPO.map_kwargs(), RELEASED_BORDER
    reference = advantage_map(x, (1, h, w), 0.0, **svd_options).flatten()
    reference_border = advantage_map(x, (1, h, w), 0.0, **border_options).flatten()
    interior = np.zeros((h, w), dtype=bool)
    interior[1:-1, 1:-1] = True
    inside, outside = np.flatnonzero(interior.ravel()), np.flatnonzero(~interior.ravel())
    kept = flipped = 0
    for trial in range(20):
        order = np.arange(h * w)
        order[inside], order[outside] = rng.permutation(inside), rng.permutation(outside)
        permuted = x.reshape(h * w, dim)[torch.from_numpy(order)].reshape(1, h, w, dim)
        out = advantage_map(permuted, (1, h, w), 0.0, **svd_options).flatten()
        if torch.allclose(out, reference[order], atol=1e-4):
            kept += 1
        else:
            assert torch.allclose(out, 1 - reference[order], atol=1e-4)  # the whole map turned upside down
            flipped += 1
        out = advantage_map(permuted, (1, h, w), 0.0, **border_options).flatten()
        assert torch.allclose(out, reference_border[order], atol=1e-12)
    assert kept + flipped == 20 and flipped >= 1, f"no sign flip in 20 permutations ({kept} kept)"
    # the border sign also survives negating or rotating the features; the blob is high
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    for variant in (-x, x @ torch.from_numpy(q)):
        assert torch.allclose(advantage_map(variant, (1, h, w), 0.0, **border_options).flatten(), reference_border,
                              atol=1e-9)
    assert reference_border.reshape(h, w)[2:4, 2:4].min() > 0.8


# ------------------------------------------------------------------------------------------ the old defaults
def test_default_options_reproduce_the_old_outputs_exactly():
    generator = torch.Generator().manual_seed(8)
    cases = [(torch.randn(3, 5, 6, 4, generator=generator), (2, 4, 4), 1.0, 3),
             (torch.randn(2, 4, 4, 6, generator=generator, dtype=torch.float64), (5, 4, 4), 0.7, 2),
             (torch.randn(1, 3, 7, 3, generator=generator), (1, 6, 9), 0.0, 1),
             (torch.zeros(2, 4, 4, 3), (2, 4, 4), 1.0, 3)]
    for features, latent, sigma, components in cases:
        base = advantage_map(features, latent, sigma, components)
        assert torch.equal(base, advantage_map(features, latent, sigma, components, **OLD_DEFAULTS))
        assert torch.equal(base, advantage_map(features, latent, sigma, components, **VipoMapOptions().map_kwargs()))
        assert torch.equal(saliency_scores(features, components).nan_to_num(-1),
                           saliency_scores(features, components, combine="variance").nan_to_num(-1))
    features = [case[0].float() for case in cases[:2]]
    assert torch.equal(advantage_maps(features, (2, 4, 4)), advantage_maps(features, (2, 4, 4), **OLD_DEFAULTS))
    maps = torch.rand(3, 5, 6, generator=generator, dtype=torch.float64)
    assert torch.equal(gaussian_blur(maps, 1.3), gaussian_blur(maps, 1.3, "replicate", 3.0, "ceil"))
    assert torch.equal(resize_map(maps, (4, 3, 3)), resize_map(maps, (4, 3, 3), time_align="ends"))
    # and the options change the map
    released = advantage_maps(features, (2, 4, 4), **RELEASED_BORDER)
    assert released.shape == (2, 2, 4, 4) and not torch.allclose(released, advantage_maps(features, (2, 4, 4)))


# ------------------------------------------------------------------------------------ options and the grid
def test_options_object():
    assert VipoMapOptions().map_kwargs() == dict(OLD_DEFAULTS, combine=None)
    released = RELEASED_VIPO.map_kwargs()
    assert released == dict(pca="per-frame", orient="svd", combine="weighted-reverse", blur_mode="reflect",
                            blur_truncate=4.0, blur_rounding="round", normalise="per-frame+global",
                            time_align="half-pixel")
    assert RELEASED_VIPO.grid_rounding == "floor" and "grid_rounding" not in released
    with pytest.raises(dataclasses.FrozenInstanceError):
        RELEASED_VIPO.orient = "border"
    for bad in (dict(pca="frame"), dict(orient="sign"), dict(combine="sum"), dict(blur_mode="wrap"),
                dict(blur_truncate=-1.0), dict(normalise="local"), dict(time_align="corners"),
                dict(grid_rounding="ceil")):
        with pytest.raises(ValueError):
            VipoMapOptions(**bad)
        if "grid_rounding" not in bad:
            with pytest.raises(ValueError):
                advantage_map(torch.randn(2, 3, 3, 4), (2, 3, 3), **bad)


def test_patch_grid_and_crop():
    from vpt.models.dinov2 import patch_grid as vpt_patch_grid

    assert patch_grid(480, 832, 14, "floor") == (34, 59) == patch_grid(480, 832, 14, "round")
    assert patch_grid(512, 512, 14, "round") == (37, 37) and patch_grid(512, 512, 14, "floor") == (36, 36)
    assert patch_grid(10, 5, 14, "floor") == (1, 1)
    for size in ((480, 832), (512, 512), (720, 1280), (7, 30)):
        assert patch_grid(*size) == vpt_patch_grid(*size, 14)
    frames = np.arange(2 * 480 * 832 * 3, dtype=np.int64).reshape(2, 480, 832, 3).astype(np.uint8)
    cropped = crop_to_grid(frames, patch_grid(480, 832, 14, "floor"))
    assert cropped.shape == (2, 476, 826, 3) and np.array_equal(cropped, frames[:, :476, :826])
    assert crop_to_grid(torch.zeros(1, 30, 30, 3), (2, 2)).shape == (1, 28, 28, 3)
    with pytest.raises(ValueError):
        crop_to_grid(frames, (35, 59))
