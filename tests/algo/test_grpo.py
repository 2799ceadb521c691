"""GRPO pieces against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.algo.grpo import aggregate_rewards, clipped_surrogate, group_advantages, kl_to_reference

REWARDS = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 7.0], dtype=torch.float64)
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2])


def test_group_advantages_by_hand():
    a = 1 / (math.sqrt(2 / 3) + 1e-4)
    assert group_advantages(REWARDS, GROUPS).tolist() == pytest.approx([-a, 0, a, 0, 0, 0], abs=1e-12)
    values = REWARDS.tolist()
    mean_all = sum(values) / 6
    std_all = math.sqrt(sum((v - mean_all) ** 2 for v in values) / 6)
    b = 1 / (std_all + 1e-4)
    assert group_advantages(REWARDS, GROUPS, global_std=True).tolist() == pytest.approx([-b, 0, b, 0, 0, 0],
                                                                                        abs=1e-12)


def test_equal_rewards_and_groups_of_one_give_zero_never_nan():
    out = group_advantages(torch.tensor([0.1, 0.1, 0.1, 3.0]), torch.tensor([4, 4, 4, 9]))
    assert torch.isfinite(out).all() and out.abs().max() < 1e-6


def test_advantages_are_clipped_and_labels_need_not_be_contiguous():
    rewards = torch.tensor([0.0] * 9 + [10.0], dtype=torch.float64)
    out = group_advantages(rewards, torch.full((10,), 17), clip=2.0)
    assert out[-1].item() == 2.0 and out[0].item() == pytest.approx(-1 / 3, rel=1e-3)
    with pytest.raises(ValueError, match="rewards must be finite"):
        group_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4, dtype=torch.float64)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5], dtype=torch.float64))
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    loss, stats = clipped_surrogate(new, old, advantages, clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4, abs=1e-12)
    assert stats.clip_fraction == 1.0 and stats.ratio_min == pytest.approx(0.5) and stats.ratio_max == 1.5


def test_at_ratio_one_the_gradient_is_minus_the_advantage():
    log_prob = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    loss, stats = clipped_surrogate(log_prob, log_prob.detach(), advantages, clip_range=1e-3)
    loss.backward()
    assert stats.ratio_mean == 1.0 and stats.clip_fraction == 0.0
    assert log_prob.grad.tolist() == pytest.approx((-advantages / 3).tolist(), abs=1e-12)


def test_kl_to_reference_by_hand():
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    reference = torch.tensor([[0.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    assert kl_to_reference(mean, reference, 0.5).tolist() == pytest.approx([(1 + 4) / 2 / 0.5, 9 / 2 / 0.5])


def test_multi_reward_aggregation_both_ways():
    first = torch.tensor([1.0, 3.0, 0.0, 2.0], dtype=torch.float64)
    second = torch.tensor([4.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1])
    summed = aggregate_rewards({"a": first, "b": second}, {"a": 1.0, "b": 0.5}, groups, "sum-then-normalise")
    total = [1 + 2, 3 + 0, 0 + 0.5, 2 + 0.5]  # group 0: 3 vs 3 (equal), group 1: 0.5 vs 2.5
    assert total[0] == total[1]
    assert summed.tolist() == pytest.approx([0, 0, -1 / (1 + 1e-4), 1 / (1 + 1e-4)], abs=1e-12)
    normalised = aggregate_rewards({"a": first, "b": second}, {"a": 1.0, "b": 0.5}, groups, "normalise-then-sum")
    unit = 1 / (1 + 1e-4)  # every group's two rewards sit at mean ± 1 (std 1) or ± 0.5 / ± 1.5
    a_first = [-unit, unit, -unit, unit]
    b_second = [2 / (2 + 1e-4), -2 / (2 + 1e-4), 0.0, 0.0]
    assert normalised.tolist() == pytest.approx([x + 0.5 * y for x, y in zip(a_first, b_second)], abs=1e-12)
    with pytest.raises(ValueError, match="no reward named 'c'"):
        aggregate_rewards({"a": first}, {"c": 1.0}, groups)
