"""Min-norm (MGDA) joint advantages against hand-worked numbers and an independent float64 computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vpt.algo.grpo import (AGGREGATIONS, JointAdvantages, aggregate_rewards, group_advantages, joint_advantages,
                           min_norm_weights)


def _weights(*samples: list[float]) -> list[list[float]]:
    """``min_norm_weights`` on samples given one per list (the function takes ``[K, N]``): one weight list each."""
    columns = torch.tensor(samples, dtype=torch.float64).T
    return min_norm_weights(columns).T.tolist()


def test_min_norm_weights_by_hand():
    assert _weights([-1.0, 2.0])[0] == pytest.approx([2 / 3, 1 / 3], abs=1e-15)  # 2/3·(−1) + 1/3·2 = 0
    assert _weights([0.5, 2.0, 1.0])[0] == [1.0, 0.0, 0.0]  # all positive: the smallest
    assert _weights([-3.0, -0.5, -1.0])[0] == [0.0, 1.0, 0.0]  # all negative: the largest
    assert _weights([-1.0, 0.5, 3.0, -2.0])[0] == pytest.approx([0, 0, 2 / 5, 3 / 5], abs=1e-15)
    # several samples at once, each column on its own
    np.testing.assert_allclose(_weights([-1.0, 2.0], [2.0, 4.0], [-4.0, -2.0]), [[2 / 3, 1 / 3], [1, 0], [0, 1]],
                               rtol=0, atol=1e-15)


def test_min_norm_weights_ties_zeros_and_a_single_reward():
    assert _weights([1.0, 1.0, 1.0])[0] == [1.0, 0.0, 0.0]  # equal values: the lowest index
    assert _weights([-2.0, -2.0])[0] == [1.0, 0.0]
    assert _weights([0.0, 0.0, 0.0])[0] == pytest.approx([1 / 3] * 3)  # all zero: uniform
    assert _weights([-1.0, 2.0, -1.0, 2.0])[0] == pytest.approx([2 / 3, 1 / 3, 0, 0])  # ties: lowest index
    # a zero with the rest of one sign takes all the weight (the first zero if several)
    assert _weights([2.0, 0.0, 0.0, 1.0])[0] == [0.0, 1.0, 0.0, 0.0]
    assert _weights([-1.0, 0.0, -2.0])[0] == [0.0, 1.0, 0.0]
    # with both signs present the weight stays on the extremes and the zero gets none
    assert _weights([-1.0, 0.0, 3.0])[0] == pytest.approx([3 / 4, 0.0, 1 / 4])
    assert _weights([3.0], [-2.0], [0.0]) == [[1.0], [1.0], [1.0]]  # K = 1
    half = min_norm_weights(torch.tensor([[-1.0], [3.0]], dtype=torch.float32))
    assert half.dtype == torch.float32 and half[:, 0].tolist() == [0.75, 0.25]
    assert min_norm_weights(torch.zeros(2, 0)).shape == (2, 0)


def test_min_norm_weights_refuses_bad_input():
    for bad in (torch.zeros(3), torch.zeros(0, 4), torch.zeros(2, 2, 2)):
        with pytest.raises(ValueError, match=r"\[K, N\]"):
            min_norm_weights(bad)
    with pytest.raises(ValueError, match="finite"):
        min_norm_weights(torch.tensor([[1.0], [float("inf")]]))


def _pairwise_min_norm(points: list[float]) -> float:
    """The min-norm point of the hull of 1-D points, as the nearest-to-0 point over every segment [p_i, p_j]
    (Sener & Koltun's two-point line search, minimising (γ·p_i + (1 − γ)·p_j)² over γ in [0, 1]) and every point."""
    best = min(points, key=abs)
    for first, second in itertools.combinations(points, 2):
        if first != second:
            gamma = min(max((second - first) * second / (first - second) ** 2, 0.0), 1.0)
            candidate = gamma * first + (1 - gamma) * second
            best = min(best, candidate, key=abs)
    return best


def _rule_weights(points: list[float]) -> list[float]:
    """The documented rule, written out per case in plain float64 with first-occurrence argmin/argmax."""
    k = len(points)
    low, high = min(points), max(points)
    lo, hi = points.index(low), points.index(high)
    out = [0.0] * k
    if low == high == 0:
        return [1 / k] * k
    if low >= 0:
        out[lo] = 1.0
    elif high <= 0:
        out[hi] = 1.0
    else:
        out[lo], out[hi] = high / (high - low), -low / (high - low)
    return out


def test_min_norm_weights_against_independent_float64_computations():
    generator = np.random.default_rng(11)
    for trial in range(300):
        k = int(generator.integers(1, 6))
        if trial % 3 == 0:  # small integers: ties, zeros and all-equal columns are frequent
            points = generator.integers(-2, 3, size=k).astype(np.float64).tolist()
        else:
            points = (generator.normal(size=k) + generator.normal()).tolist()
        weights = min_norm_weights(torch.tensor(points, dtype=torch.float64)[:, None])[:, 0].tolist()
        assert weights == pytest.approx(_rule_weights(points), abs=1e-14)
        assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0, abs=1e-14)
        combined = sum(c * p for c, p in zip(weights, points))
        assert combined == pytest.approx(_pairwise_min_norm(points), abs=1e-12)
        if k == 3:  # brute force over a simplex grid: nothing in the hull is nearer 0 than the chosen point
            steps = 60
            grid = min(abs(i * points[0] + j * points[1] + (steps - i - j) * points[2]) / steps
                       for i in range(steps + 1) for j in range(steps + 1 - i))
            assert abs(combined) <= grid + 1e-12


def _zscore(values: np.ndarray, labels: np.ndarray, eps: float) -> np.ndarray:
    """Bessel group z-scores in plain float64 loops (a group of one or of equal values: 0)."""
    out = np.zeros(len(values))
    for label in set(labels.tolist()):
        members = [i for i in range(len(values)) if labels[i] == label]
        group = [float(values[i]) for i in members]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (len(group) - 1)) if len(group) > 1 else 0.0
        for i, x in zip(members, group):
            out[i] = (x - mean) / (std + eps) if std > 0 else 0.0
    return out


def test_joint_advantages_by_hand():
    # groups of two: first has group std 1 in both groups, second std 2
    first = torch.tensor([1.0, 3.0, 0.0, 2.0], dtype=torch.float64)
    second = torch.tensor([0.0, 4.0, 5.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([6, 6, 2, 2])
    u, v = 1 / (1 + 1e-4), 2 / (2 + 1e-4)
    joint = joint_advantages({"a": first, "b": second}, None, groups)
    assert isinstance(joint, JointAdvantages) and list(joint.per_reward) == ["a", "b"]
    assert joint.per_reward["a"].tolist() == pytest.approx([-u, u, -u, u], abs=1e-12)
    assert joint.per_reward["b"].tolist() == pytest.approx([-v, v, v, -v], abs=1e-12)
    # agreeing samples take the advantage nearer 0 (u < v); disagreeing ones get exactly 0
    assert joint.combined.tolist()[:2] == pytest.approx([-u, u], abs=1e-12)
    assert joint.combined.tolist()[2:] == [0.0, 0.0]
    np.testing.assert_allclose(joint.weights.T.numpy(), [[1, 0], [1, 0], [v / (u + v), u / (u + v)],
                                                         [v / (u + v), u / (u + v)]], rtol=0, atol=1e-12)
    # head weights scale the points: b at a quarter is now the nearer one
    scaled = joint_advantages({"a": first, "b": second}, {"a": 1.0, "b": 0.25}, groups)
    assert scaled.combined.tolist()[:2] == pytest.approx([-v / 4, v / 4], abs=1e-12)
    assert scaled.per_reward["b"].tolist() == joint.per_reward["b"].tolist()  # logged unweighted
    # a negative weight flips a lower-is-better reward: b reversed agrees with a on samples 2 and 3
    flipped = joint_advantages({"a": first, "b": second}, {"a": 1.0, "b": -1.0}, groups)
    assert flipped.combined.tolist() == pytest.approx([0, 0, -u, u], abs=1e-12)
    # a zero weight drops the reward from the hull (instead of pinning every sample at 0) and gets no weight
    dropped = joint_advantages({"a": first, "b": second}, {"a": 1.0, "b": 0.0}, groups)
    assert dropped.combined.tolist() == pytest.approx([-u, u, -u, u], abs=1e-12)
    assert dropped.weights.tolist() == [[1.0] * 4, [0.0] * 4] and set(dropped.per_reward) == {"a", "b"}
    assert aggregate_rewards({"a": first, "b": second}, {"a": 1.0, "b": 1.0}, groups, "min-norm").tolist() == (
        joint.combined.tolist())


def test_joint_advantages_clip_and_refusals():
    rewards = {"a": torch.tensor([0.0] * 9 + [10.0], dtype=torch.float64),
               "b": torch.tensor([0.0] * 9 + [20.0], dtype=torch.float64)}
    groups = torch.zeros(10, dtype=torch.long)
    # both heads z-score to the same values (mean + 9 deviations of the std 3): the last sample is 9 / 3.0001
    assert joint_advantages(rewards, None, groups, clip=None).combined[-1].item() == pytest.approx(
        9 / (3 + 1e-4), abs=1e-12)
    assert aggregate_rewards(rewards, {"a": 1.0, "b": 1.0}, groups, "min-norm", clip=2.0)[-1].item() == 2.0
    assert "min-norm" in AGGREGATIONS
    with pytest.raises(ValueError, match="no reward named 'c'"):
        joint_advantages(rewards, {"c": 1.0}, groups)
    with pytest.raises(ValueError, match="at least one nonzero"):
        joint_advantages(rewards, {"a": 0.0, "b": 0.0}, groups)
    with pytest.raises(ValueError, match="finite weights"):
        aggregate_rewards(rewards, {"a": float("nan")}, groups, "min-norm")
    with pytest.raises(ValueError, match="contradicts"):
        aggregate_rewards(rewards, {"a": 1.0}, groups, "min-norm", global_std=True, std="group-unbiased")


def test_min_norm_aggregation_end_to_end_against_float64():
    generator = np.random.default_rng(3)
    for trial in range(10):
        sizes = generator.integers(1, 6, size=generator.integers(2, 7))
        labels = np.repeat(generator.choice(np.arange(100, 400, 7), size=len(sizes), replace=False), sizes)
        generator.shuffle(labels)
        k = int(generator.integers(2, 5))
        rewards = {f"r{j}": generator.normal(size=len(labels)) * (j + 1) for j in range(k)}
        scales = {name: float(generator.choice([1.0, 0.5, 2.0, -1.0])) for name in rewards}
        clip = [None, 0.8][trial % 2]
        torch_rewards = {name: torch.from_numpy(values) for name, values in rewards.items()}
        joint = joint_advantages(torch_rewards, scales, torch.from_numpy(labels), clip=clip, std="group-unbiased")
        combined = aggregate_rewards(torch_rewards, scales, torch.from_numpy(labels), "min-norm", clip=clip,
                                     std="group-unbiased")
        assert combined.tolist() == joint.combined.tolist()
        heads = {name: _zscore(values, labels, 1e-4) for name, values in rewards.items()}
        for name, expected in heads.items():
            np.testing.assert_allclose(joint.per_reward[name].numpy(), expected, rtol=1e-12, atol=1e-12)
        expected = np.array([_pairwise_min_norm([scales[name] * heads[name][i] for name in rewards])
                             for i in range(len(labels))])
        if clip is not None:
            expected = np.clip(expected, -clip, clip)
        np.testing.assert_allclose(combined.numpy(), expected, rtol=1e-12, atol=1e-12)
        points = torch.stack([scales[name] * joint.per_reward[name] for name in rewards])
        rebuilt = (joint.weights * points).sum(dim=0)
        if clip is None:
            np.testing.assert_allclose(rebuilt.numpy(), combined.numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(joint.weights.sum(dim=0).numpy(), 1.0, rtol=0, atol=1e-14)
        # at most two rewards carry weight, except where every point is 0 (e.g. a group of one): uniform there
        all_zero = (points == 0).all(dim=0)
        assert (joint.weights >= 0).all() and ((joint.weights > 0).sum(dim=0)[~all_zero] <= 2).all()
        np.testing.assert_allclose(joint.weights[:, all_zero].numpy(), 1 / k, rtol=0, atol=1e-15)
        assert all_zero.any() == bool((np.bincount(np.unique(labels, return_inverse=True)[1]) == 1).any())


def test_min_norm_with_one_reward_is_its_group_advantage():
    rewards = torch.tensor([1.0, 2.0, 4.0, 0.5, -3.0], dtype=torch.float64)
    groups = torch.tensor([1, 1, 1, 0, 0])
    joint = joint_advantages({"only": rewards}, None, groups, std="group-unbiased")
    assert joint.combined.tolist() == pytest.approx(
        group_advantages(rewards, groups, std="group-unbiased").tolist(), abs=1e-15)
    assert joint.weights.tolist() == [[1.0] * 5]
