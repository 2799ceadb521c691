"""TempFlow-GRPO (arXiv 2508.04324): noise-aware step weights against float64 for each form (dancegrpo reduces to
Norm(sqrt Δt)), and per-branch-point advantages: the release's z-score (a float64 loop here) is vpt's group
advantage over (group, branch point) groups with the population std, eps 1e-8 and no clip."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.algo.grpo import group_advantages
from vpt.algo.tempflow import noise_step_weights


def shifted(steps: int, shift: float = 5.0) -> list[float]:
    return [shift * (1 - k / steps) / (1 + (shift - 1) * (1 - k / steps)) for k in range(steps + 1)]


def test_flow_grpo_weights_in_float64():
    sigmas, eta = shifted(16), 0.7
    weights = noise_step_weights(torch.tensor(sigmas, dtype=torch.float64), eta)
    stds = []
    for k in range(16):
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        denominator = 1 - sigmas[1] if sigma >= 1 else 1 - sigma  # the first step uses 1 − σ_1
        stds.append(eta * math.sqrt(sigma / denominator) * math.sqrt(sigma - sigma_next))
    mean = sum(stds) / 16
    assert weights.tolist() == pytest.approx([s / (mean + 1e-8) for s in stds], rel=1e-12)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-7)
    assert weights[0] > weights[-1]  # the early, noisy steps weigh more


def test_dancegrpo_weights_are_normalised_sqrt_dt():
    sigmas = shifted(12)
    roots = [math.sqrt(sigmas[k] - sigmas[k + 1]) for k in range(12)]
    mean = sum(roots) / 12
    for eta in (0.25, 1.0):
        weights = noise_step_weights(torch.tensor(sigmas, dtype=torch.float64), eta, "dancegrpo")
        assert weights.tolist() == pytest.approx([eta * r / (eta * mean + 1e-8) for r in roots], rel=1e-12)
        # η cancels but for the 1e-8, whose share is 1e-8/(η·mean)
        assert weights.tolist() == pytest.approx([r / mean for r in roots], rel=1e-6)


def test_cps_weights_follow_the_next_sigma():
    sigmas = shifted(8)
    weights = noise_step_weights(torch.tensor(sigmas, dtype=torch.float64), 0.5, "cps")
    mean = sum(sigmas[1:]) / 8
    assert weights.tolist() == pytest.approx([s / mean for s in sigmas[1:]], rel=1e-7)
    assert weights[-1].item() == 0.0  # the last step lands on σ = 0 with no noise


def test_weights_keep_the_schedule_dtype():
    weights = noise_step_weights(torch.tensor(shifted(6)), 0.7)
    assert weights.dtype == torch.float32 and weights.shape == (6,)


@pytest.mark.parametrize("sigmas, eta, message", [
    (torch.tensor([[1.0, 0.0]]), 0.7, "1-D schedule"),
    (torch.tensor([1.0]), 0.7, "1-D schedule"),
    (torch.tensor([1.0, 0.5, 0.5, 0.0]), 0.7, "strictly decreasing"),
    (torch.tensor([1.0, 0.5, 0.0]), 0.0, "noise level > 0"),
])
def test_weight_refusals(sigmas, eta, message):
    with pytest.raises(ValueError, match=message):
        noise_step_weights(sigmas, eta)


def reference_advantages(rewards, groups, points):
    out = []
    for r, g, k in zip(rewards, groups, points):
        members = [x for x, gg, kk in zip(rewards, groups, points) if (gg, kk) == (g, k)]
        mean = sum(members) / len(members)
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / len(members))
        out.append(0.0 if std <= 1e-8 else (r - mean) / (std + 1e-8))
    return out


def branch_advantages(rewards: torch.Tensor, groups, points) -> torch.Tensor:
    """What grpo-step computes for branched rollouts under the release's normalisation (--std group
    --advantage-eps 1e-8): one GRPO group per (group, branch point), as sample-rollouts --branch writes them."""
    labels = torch.tensor([1000 * int(g) + int(k) for g, k in zip(groups, points)])
    return group_advantages(rewards, labels, std="group", eps=1e-8, clip=None)


def test_branch_advantages_by_hand_and_in_float64():
    rewards = [1.0, 3.0, 2.0, 2.0, 0.0, 1.0, 5.0, 7.0]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    points = [0, 0, 1, 1, 0, 0, 0, 2]
    out = branch_advantages(torch.tensor(rewards, dtype=torch.float64), groups, points)
    assert out.tolist() == pytest.approx(reference_advantages(rewards, groups, points), rel=1e-14, abs=1e-15)
    # pairs of two are ±1 (less the eps); equal rewards and a lone row get 0
    assert out[:2].tolist() == pytest.approx([-1.0, 1.0], rel=1e-7)
    assert out[2:4].tolist() == [0.0, 0.0] and out[7].item() == 0.0
    # (1, 0): rewards 0, 1, 5 — mean 2, population std sqrt(14/3)
    assert out[4].item() == pytest.approx(-2 / math.sqrt(14 / 3), rel=1e-7)


def test_branch_advantages_do_not_depend_on_row_order():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(30, generator=generator)
    groups, points = torch.randint(0, 3, (30,), generator=generator), torch.randint(0, 4, (30,), generator=generator)
    out = branch_advantages(rewards, groups, points)
    order = torch.randperm(30, generator=generator)
    assert out.dtype == torch.float32
    torch.testing.assert_close(branch_advantages(rewards[order], groups[order], points[order]), out[order])
    torch.testing.assert_close(out.double(), torch.tensor(reference_advantages(rewards.double().tolist(),
                                                                               groups.tolist(), points.tolist()),
                                                          dtype=torch.float64), rtol=1e-6, atol=1e-6)
