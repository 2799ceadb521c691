"""ViPO pieces against hand-worked float64 numbers."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.algo.flow_sde import gaussian_log_prob
from vpt.algo.grpo import clipped_surrogate
from vpt.algo.vipo import (advantage_map, advantage_maps, dense_advantages, gaussian_blur, per_position_log_prob,
                           resize_map)

# A 6x6 patch grid: a 2x2 blob in the centre, the 12 other interior patches (a ring), the 20 border patches.
BLOB = torch.zeros(6, 6, dtype=torch.float64)
BLOB[2:4, 2:4] = 1
INTERIOR = torch.zeros(6, 6, dtype=torch.float64)
INTERIOR[1:5, 1:5] = 1
RING = INTERIOR - BLOB
BORDER = 1 - INTERIOR


def rotation(dim: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def two_component_features(frames: int = 1) -> torch.Tensor:
    """[frames, 6, 6, 3]: coordinate 0 = 3·blob, coordinate 1 = −(ring − 0.6·border) (border high, so the sign fix
    must flip it), coordinate 2 = 0; then rotated (PCA does not care).

    Centred, the two columns are orthogonal (the second sums to 0 over the grid and over the blob), so the principal
    components are the two coordinates with variances (sums of squares) 3²·32/9 = 32 and 12 + 20·0.36 = 19.2:
    weights 0.625 and 0.375.
    """
    second = -(RING - 0.6 * BORDER)
    grid = torch.stack([3 * BLOB, second, torch.zeros(6, 6, dtype=torch.float64)], dim=-1)
    return (grid @ rotation(3)).expand(frames, 6, 6, 3).clone()


def expected_two_component_map() -> torch.Tensor:
    # component 1 normalised: blob 1, rest 0; component 2 (flipped: ring 1, blob 0, border −0.6) normalised:
    # ring 1, blob 0.6/1.6 = 0.375, border 0.
    combined = 0.625 * BLOB + 0.375 * (RING + 0.375 * BLOB)
    return combined / combined.max()  # border is 0: blob 1, ring 0.375 / 0.765625


def test_two_components_by_hand():
    features = two_component_features().float()
    out = advantage_map(features, (1, 6, 6), blur_sigma=0)
    assert out.dtype == torch.float32 and out.shape == (1, 6, 6)
    assert torch.allclose(out[0].double(), expected_two_component_map(), atol=1e-6, rtol=0)
    assert out[0, 2, 2].item() == pytest.approx(1.0) and out[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, 1, 1].item() == pytest.approx(0.375 / 0.765625, abs=1e-6)
    # the same video twice over time: the same map on every frame
    twice = advantage_map(two_component_features(frames=2), (2, 6, 6), blur_sigma=0)
    assert twice.dtype == torch.float64
    assert torch.allclose(twice, expected_two_component_map().expand(2, 6, 6), atol=1e-9)


def test_blob_is_high_and_border_low_and_the_shape_is_the_latent_size():
    noise = torch.randn(3, 8, 8, 5, generator=torch.Generator().manual_seed(1)) * 0.05
    blob = torch.zeros(3, 8, 8, 5)
    blob[:, 3:5, 3:6] = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0])
    for sign in (1, -1):  # both signs of the blob direction: the sign fix keeps the blob high
        features = sign * blob + noise
        exact = advantage_map(features, (3, 8, 8), blur_sigma=0)
        assert exact.min().item() == 0.0 and exact.max().item() == pytest.approx(1.0)
        assert exact[:, 3:5, 3:6].min() > 0.8 and exact[:, 0].max() < 0.3 and exact[:, :, -1].max() < 0.3
        out = advantage_map(features, (2, 4, 4))  # blurred, resized to a 2x4x4 latent
        assert out.shape == (2, 4, 4) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        assert out[:, 1:3, 1:3].mean() > out[:, 0].mean() + 0.3


def test_sign_invariance():
    features = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    features[:, 1:4, 2:5] += 2.0
    for size, sigma in (((2, 5, 7), 0.0), ((3, 4, 4), 1.0)):
        reference = advantage_map(features, size, sigma)
        assert torch.allclose(reference, advantage_map(-features, size, sigma), atol=1e-12)
        for seed in range(4):  # PCA is rotation-invariant; the SVD's signs are arbitrary, the fixed signs are not
            rotated = features @ rotation(6, seed)
            assert torch.allclose(reference, advantage_map(rotated, size, sigma), atol=1e-9)
    # no interior (2 rows): the largest-magnitude score is made positive, still invariant
    thin = features[:, :2]
    assert torch.allclose(advantage_map(thin, (2, 2, 7), 0.0), advantage_map(-thin, (2, 2, 7), 0.0), atol=1e-12)
    assert torch.allclose(advantage_map(thin, (2, 2, 7), 0.0), advantage_map(thin + 5.0, (2, 2, 7), 0.0), atol=1e-9)


@pytest.mark.parametrize("features", [
    torch.full((3, 4, 4, 8), 0.7),  # constant
    torch.zeros(2, 4, 4, 8),
    torch.full((1, 1, 1, 8), 2.0),  # one position
    torch.randn(1, 1, 1, 8),
    torch.ones(2, 3, 3, 4).index_put_((torch.tensor([0]),), torch.tensor(float("nan"))),  # NaN
    torch.randn(2, 3, 3, 4).index_put_((torch.tensor([1]),), torch.tensor(float("inf"))),  # inf
])
def test_undefined_or_constant_maps_fall_back_to_ones(features):
    out = advantage_map(features, (3, 4, 5))
    assert out.shape == (3, 4, 5) and out.dtype == torch.float32 and bool((out == 1).all())


def test_blur_of_a_delta_is_the_normalised_gaussian():
    delta = torch.zeros(1, 11, 11, dtype=torch.float64)
    delta[0, 5, 5] = 1
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = [math.exp(-x * x / 2) for x in offsets.tolist()]
    kernel = torch.tensor(kernel, dtype=torch.float64) / sum(kernel)
    expected = torch.zeros(11, 11, dtype=torch.float64)
    expected[2:9, 2:9] = torch.outer(kernel, kernel)
    assert torch.allclose(gaussian_blur(delta, 1.0)[0], expected, atol=1e-15)
    assert torch.equal(gaussian_blur(delta, 0.0), delta)
    # through the whole map: a delta feature blurred then min-max normalised is exp(−r²/2) within the radius
    features = delta[..., None].expand(1, 11, 11, 2) * torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = advantage_map(features, (1, 11, 11), blur_sigma=1.0)
    gaussian = torch.zeros(11, 11, dtype=torch.float64)
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    gaussian[2:9, 2:9] = torch.exp(-(x**2 + y**2) / 2)
    assert torch.allclose(out[0], gaussian, atol=1e-12)
    # a constant frame stays constant under replicate padding
    assert torch.allclose(gaussian_blur(torch.full((2, 3, 4), 0.25, dtype=torch.float64), 2.5),
                          torch.full((2, 3, 4), 0.25, dtype=torch.float64), atol=1e-15)


def test_time_interpolation_gives_midpoints():
    maps = torch.stack([torch.full((2, 3), value, dtype=torch.float64) for value in (0.0, 1.0, 0.5)])
    maps[1, 0, 0] = 0.2
    out = resize_map(maps, (5, 2, 3))
    assert out.shape == (5, 2, 3)
    assert torch.allclose(out[0::2], maps) and torch.allclose(out[1], (maps[0] + maps[1]) / 2)
    assert torch.allclose(out[3], (maps[1] + maps[2]) / 2)
    assert out[1, 0, 0].item() == pytest.approx(0.1) and out[3, 1, 1].item() == pytest.approx(0.75)
    assert torch.allclose(resize_map(maps, (1, 2, 3)), maps.mean(0, keepdim=True))
    assert torch.allclose(resize_map(maps[:1], (4, 2, 3)), maps[:1].expand(4, 2, 3))
    # spatial: a constant frame stays constant; 2x upsampling of two columns keeps the outer values
    assert torch.allclose(resize_map(torch.full((1, 8, 8), 0.3, dtype=torch.float64), (1, 4, 4)),
                          torch.full((1, 4, 4), 0.3, dtype=torch.float64))
    columns = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    assert resize_map(columns, (1, 1, 4))[0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    # through advantage_map: 3 frames -> 5 latent frames, the odd ones are midpoints
    features = torch.randn(3, 5, 5, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    features[:, 1:4, 1:4] += torch.tensor([[[[0.5]]], [[[1.5]]], [[[3.0]]]], dtype=torch.float64)
    three, five = advantage_map(features, (3, 5, 5)), advantage_map(features, (5, 5, 5))
    assert torch.allclose(five[0::2], three, atol=1e-12)
    assert torch.allclose(five[1], (three[0] + three[1]) / 2, atol=1e-12)


def test_batched_maps_and_dense_advantages():
    features = [torch.randn(3, 4, 4, 6, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    features[1] = torch.zeros(3, 4, 4, 6)
    maps = advantage_maps(features, (2, 4, 4))
    assert maps.shape == (3, 2, 4, 4) and bool((maps[1] == 1).all())
    assert torch.equal(maps[2], advantage_map(features[2], (2, 4, 4)))
    dense = dense_advantages(torch.tensor([1.0, -2.0, 0.5]), maps)
    assert torch.allclose(dense, torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1, 1) * maps)


def test_per_position_log_prob_by_hand():
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 2, 2, 3, generator=generator, dtype=torch.float64)
    mean = torch.randn(2, 3, 2, 2, 3, generator=generator, dtype=torch.float64)
    for std, stds in ((torch.tensor(0.7, dtype=torch.float64), (0.7, 0.7)),
                      (torch.tensor([0.5, 1.3], dtype=torch.float64), (0.5, 1.3))):
        out = per_position_log_prob(sample, mean, std)
        assert out.shape == (2, 2, 2, 3)
        for b, t, y, x in [(0, 0, 0, 0), (0, 1, 1, 2), (1, 0, 1, 1), (1, 1, 0, 2)]:
            s = stds[b]
            by_hand = sum(-0.5 * math.log(2 * math.pi) - math.log(s)
                          - (sample[b, c, t, y, x].item() - mean[b, c, t, y, x].item()) ** 2 / (2 * s * s)
                          for c in range(3))
            assert out[b, t, y, x].item() == pytest.approx(by_hand, abs=1e-12)
        # the per-sample mean over positions / C is flow_sde's averaged log-density
        reference = gaussian_log_prob(sample, mean, std.view(-1, 1, 1, 1, 1) if std.dim() else std)
        assert torch.allclose(out.flatten(1).mean(1) / 3, reference, atol=1e-13, rtol=0)
    assert per_position_log_prob(sample, mean, 0.7).tolist() == per_position_log_prob(
        sample, mean, torch.tensor(0.7, dtype=torch.float64)).tolist()


def test_dense_surrogate_with_ones_map_is_plain_grpo():
    per_sample_new = torch.tensor([-1.0, -2.2, 0.3, -0.7], dtype=torch.float64)
    per_sample_old = torch.tensor([-1.1, -2.0, 0.1, -0.7], dtype=torch.float64)
    advantages = torch.tensor([1.5, -0.5, -1.0, 0.8], dtype=torch.float64)
    plain, plain_stats = clipped_surrogate(per_sample_new, per_sample_old, advantages, clip_range=0.1)
    shape = (4, 3, 2, 5)
    new_map = per_sample_new.view(-1, 1, 1, 1).expand(shape).clone().requires_grad_(True)
    old_map = per_sample_old.view(-1, 1, 1, 1).expand(shape)
    maps = torch.ones(shape, dtype=torch.float64)
    dense, dense_stats = clipped_surrogate(new_map, old_map, dense_advantages(advantages, maps), clip_range=0.1)
    assert dense.item() == pytest.approx(plain.item(), abs=1e-15)
    assert dense_stats == plain_stats
    # from latents: a mean shift that is the same at every position gives a per-position log prob constant
    # across positions; its dense loss equals the plain loss on the per-position value
    generator = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 4, 1, 2, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 4, 1, 1, 1, generator=generator, dtype=torch.float64)
    old = per_position_log_prob(sample, sample + noise, 0.5)
    new = per_position_log_prob(sample, sample + 0.9 * noise, 0.5)
    assert torch.allclose(new, new[:, :1, :1, :1].expand_as(new))
    a = torch.tensor([1.0, -1.0], dtype=torch.float64)
    dense, _ = clipped_surrogate(new, old, dense_advantages(a, torch.ones_like(new)), clip_range=0.2)
    plain, _ = clipped_surrogate(new[:, 0, 0, 0], old[:, 0, 0, 0], a, clip_range=0.2)
    assert dense.item() == pytest.approx(plain.item(), abs=1e-14)
