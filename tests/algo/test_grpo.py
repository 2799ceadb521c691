"""GRPO pieces against hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vpt.algo.grpo import (STD_MODES, aggregate_rewards, clip_advantages, clipped_surrogate, group_advantages,
                           kl_to_reference)

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


def test_bessel_group_std_by_hand():
    # group 5: [1, 2, 4], mean 7/3, deviations (−4/3, −1/3, 5/3), Σ d² = 14/3, Bessel std sqrt(14/3 / 2) = sqrt(7/3)
    # (population: sqrt(14/9)); group 8 is a group of one and group 2 has zero spread: both 0
    rewards = torch.tensor([1.0, 2.0, 6.0, 4.0, 3.0, 3.0], dtype=torch.float64)
    groups = torch.tensor([5, 5, 8, 5, 2, 2])
    deviations = [-4 / 3, -1 / 3, 0.0, 5 / 3, 0.0, 0.0]
    bessel = math.sqrt(7 / 3)
    out = group_advantages(rewards, groups, std="group-unbiased")
    assert out.tolist() == pytest.approx([d / (bessel + 1e-4) for d in deviations], abs=1e-12)
    population = math.sqrt(14 / 9)
    assert group_advantages(rewards, groups, std="group").tolist() == pytest.approx(
        [d / (population + 1e-4) for d in deviations], abs=1e-12)
    assert group_advantages(rewards, groups).tolist() == group_advantages(rewards, groups, std="group").tolist()


def _reference_advantages(rewards: np.ndarray, labels: np.ndarray, std: str, eps: float, floor: float) -> np.ndarray:
    """Plain float64 loops over the groups, written independently of the vectorised code."""
    out = np.zeros(len(rewards))
    all_mean = sum(rewards) / len(rewards)
    global_spread = math.sqrt(sum((x - all_mean) ** 2 for x in rewards) / len(rewards))
    for label in set(labels.tolist()):
        members = [i for i in range(len(rewards)) if labels[i] == label]
        values = [float(rewards[i]) for i in members]
        n = len(values)
        mean = sum(values) / n
        squares = sum((x - mean) ** 2 for x in values)
        if std == "group-unbiased":
            own = math.sqrt(squares / (n - 1)) if n > 1 else 0.0
        else:
            own = math.sqrt(squares / n)
        scale = global_spread if std == "global" else own
        for i, x in zip(members, values):
            out[i] = 0.0 if scale == 0 or own < floor else (x - mean) / (scale + eps)
    return out


@pytest.mark.parametrize("std", STD_MODES)
def test_every_std_mode_matches_independent_float64_loops(std):
    generator = np.random.default_rng(7)
    for trial in range(20):
        sizes = generator.integers(1, 6, size=generator.integers(1, 8))
        pool = generator.choice(np.arange(-50, 200), size=len(sizes), replace=False)  # non-contiguous labels
        labels = np.repeat(pool, sizes)
        generator.shuffle(labels)  # members of a group need not be adjacent
        rewards = generator.normal(size=len(labels)) * generator.uniform(0.01, 3.0)
        if trial % 4 == 0:
            rewards[labels == labels[0]] = 0.25  # a zero-spread group
        eps = [1e-4, 1e-3, 1e-8][trial % 3]
        floor = [0.0, 0.3][trial % 2]
        expected = _reference_advantages(rewards, labels, std, eps, floor)
        out = group_advantages(torch.from_numpy(rewards), torch.from_numpy(labels), clip=None, eps=eps, std=std,
                               min_group_std=floor)
        assert out.dtype == torch.float64
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
        clipped = group_advantages(torch.from_numpy(rewards), torch.from_numpy(labels), clip=1.5, eps=eps, std=std,
                                   min_group_std=floor)
        np.testing.assert_allclose(clipped.numpy(), np.clip(expected, -1.5, 1.5), rtol=1e-12, atol=1e-12)


def test_global_std_keyword_is_std_global_and_contradictions_are_refused():
    assert group_advantages(REWARDS, GROUPS, global_std=True).tolist() == group_advantages(
        REWARDS, GROUPS, std="global").tolist()
    assert group_advantages(REWARDS, GROUPS, True, std="global").tolist() == group_advantages(
        REWARDS, GROUPS, std="global").tolist()
    for std in ("group", "group-unbiased"):
        with pytest.raises(ValueError, match="contradicts"):
            group_advantages(REWARDS, GROUPS, global_std=True, std=std)
        with pytest.raises(ValueError, match="contradicts"):
            aggregate_rewards({"a": REWARDS}, {"a": 1.0}, GROUPS, "normalise-then-sum", True, std=std)
    with pytest.raises(ValueError, match="std must be one of"):
        group_advantages(REWARDS, GROUPS, std="bessel")
    for clip in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clip must be > 0"):
            group_advantages(REWARDS, GROUPS, clip=clip)
    for floor in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="min_group_std"):
            group_advantages(REWARDS, GROUPS, min_group_std=floor)


def test_min_group_std_zeroes_groups_strictly_below_the_floor():
    # group 0: [0, 2] (population std 1, Bessel sqrt 2); group 1: [0, 0.2] (std 0.1, Bessel 0.1·sqrt 2)
    rewards = torch.tensor([0.0, 2.0, 0.0, 0.2], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1])
    unit = 1 / (1 + 1e-4)
    small = 0.1 / (0.1 + 1e-4)
    assert group_advantages(rewards, groups, min_group_std=1.0).tolist() == pytest.approx([-unit, unit, 0, 0])
    assert group_advantages(rewards, groups, min_group_std=1.0 + 1e-9).tolist() == [0.0] * 4
    assert group_advantages(rewards, groups, min_group_std=0.1 - 1e-9).tolist() == pytest.approx(
        [-unit, unit, -small, small])
    # the floor compares the mode's own std: 0.12 lies between 0.1 and 0.1·sqrt 2
    assert group_advantages(rewards, groups, min_group_std=0.12)[2:].tolist() == [0.0, 0.0]
    assert group_advantages(rewards, groups, min_group_std=0.12, std="group-unbiased")[2].item() < -0.5
    # global mode divides by the batch std but still floors each group on its own (population) spread
    spread = float(rewards.std(unbiased=False))
    out = group_advantages(rewards, groups, min_group_std=0.12, std="global")
    assert out.tolist() == pytest.approx([-1 / (spread + 1e-4), 1 / (spread + 1e-4), 0, 0], abs=1e-12)


def test_clip_none_or_inf_leaves_advantages_unclipped_and_clip_advantages_clips_later():
    rewards = torch.tensor([0.0] * 9 + [10.0], dtype=torch.float64)
    groups = torch.zeros(10, dtype=torch.long)
    # mean 1, deviations −1 (×9) and 9: population std 3, Bessel std sqrt(90 / 9) = sqrt 10
    for clip in (None, math.inf):
        assert group_advantages(rewards, groups, clip=clip)[-1].item() == pytest.approx(9 / (3 + 1e-4), abs=1e-12)
        assert group_advantages(rewards, groups, clip=clip, std="group-unbiased")[-1].item() == pytest.approx(
            9 / (math.sqrt(10) + 1e-4), abs=1e-12)
    raw = group_advantages(rewards, groups, clip=None)
    assert clip_advantages(raw, 2.0).tolist() == group_advantages(rewards, groups, clip=2.0).tolist()
    assert clip_advantages(raw, None) is raw and clip_advantages(raw, math.inf) is raw
    dense = torch.tensor([[-7.0, 0.5], [6.0, -4.0]])
    assert clip_advantages(dense, 5.0).tolist() == [[-5.0, 0.5], [5.0, -4.0]]
    with pytest.raises(ValueError, match="clip must be > 0"):
        clip_advantages(dense, 0.0)


def test_aggregations_pass_the_std_mode_and_floor_through():
    first = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.1], dtype=torch.float64)
    second = torch.tensor([0.0, 3.0, 1.0, 5.0, 5.0], dtype=torch.float64)
    groups = torch.tensor([3, 3, 3, 9, 9])
    for mode in ("sum-then-normalise", "normalise-then-sum"):
        for kwargs in ({"std": "group-unbiased"}, {"min_group_std": 0.06}, {"eps": 1e-2, "std": "global"}):
            out = aggregate_rewards({"a": first, "b": second}, {"a": 1.0, "b": 2.0}, groups, mode, clip=None,
                                    **kwargs)
            if mode == "sum-then-normalise":
                expected = group_advantages(first + 2 * second, groups, clip=None, **kwargs)
            else:
                expected = (group_advantages(first, groups, clip=None, **kwargs)
                            + 2 * group_advantages(second, groups, clip=None, **kwargs))
            assert out.tolist() == pytest.approx(expected.tolist(), abs=1e-12)
