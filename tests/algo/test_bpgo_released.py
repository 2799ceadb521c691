"""The released BPGO forms (TeleBoost d4279ac): CRT "rerange" and the per-group Bayesian RAS scale, against
hand-worked numbers and an independent float64 loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vpt.algo.bpgo import bayes_group_ras_weights, bayesian_ras_weights, rerange_rewards

F64 = torch.float64


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def reference_rerange(reward: float, prior: float, a: float = 50.0, tau: float = 5.0) -> float:
    return (a * (reward - prior) + (1.0 if reward > prior else 0.0)) * sigmoid(reward / tau) * reward


def reference_scales(rewards, groups, priors, prior_var=1.0, w_min=0.5, w_max=1.5, alpha=1.0):
    out = [0.0] * len(rewards)
    for label in set(groups):
        members = [i for i, g in enumerate(groups) if g == label]
        values = [rewards[i] for i in members]
        n = len(values)
        prior = priors[members[0]]
        mean = sum(values) / n
        s2 = sum((x - mean) ** 2 for x in values) / (n - 1) + 1e-8 if n > 1 else 1.0
        v = 1 / (n / s2 + 1 / prior_var)
        m = v * (n * mean / s2 + prior / prior_var)
        w = w_min + (w_max - w_min) * phi((m - prior) / math.sqrt(v))
        for i in members:
            out[i] = min(max(1 + alpha * (w - 1), 0.01), 10.0)
    return out


def test_rerange_by_hand():
    # p = 0, R = -1: [50·(-1) + 0]·σ(-0.2)·(-1) = 50/(1 + e^0.2) = 22.5083...
    # p = 0, R = 0.5: [50·0.5 + 1]·σ(0.1)·0.5 = 13/(1 + e^-0.1) = 6.8247...
    # p = 0.3, R = 0.3: the tie has a·0 + 0 = 0
    # p = 0.65, R = 1: [50·0.35 + 1]·σ(0.2)·1 = 18.5/(1 + e^-0.2)
    rewards = torch.tensor([-1.0, 0.5, 0.3, 1.0], dtype=F64)
    priors = torch.tensor([0.0, 0.0, 0.3, 0.65], dtype=F64)
    out = rerange_rewards(rewards, priors)
    expected = [50 / (1 + math.exp(0.2)), 13 / (1 + math.exp(-0.1)), 0.0, 18.5 / (1 + math.exp(-0.2))]
    assert out.tolist() == pytest.approx(expected, rel=1e-14, abs=1e-15)
    assert out[0].item() == pytest.approx(22.50830013, abs=1e-8)
    assert out[1].item() == pytest.approx(6.82472944, abs=1e-8)
    assert out.dtype == F64 and out.shape == (4,)


def test_rerange_matches_a_loop_and_broadcasts_a_scalar_prior():
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 3.0, size=50)
    priors = rng.normal(0.0, 1.0, size=50)
    out = rerange_rewards(torch.tensor(values, dtype=F64), torch.tensor(priors, dtype=F64), a=7.0, temperature=2.0)
    expected = [reference_rerange(r, p, a=7.0, tau=2.0) for r, p in zip(values.tolist(), priors.tolist())]
    assert out.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    scalar = rerange_rewards(torch.tensor(values, dtype=F64), 0.4)
    assert scalar.tolist() == pytest.approx([reference_rerange(r, 0.4) for r in values.tolist()], rel=1e-12, abs=1e-12)


def test_rerange_is_not_monotone():
    prior = 0.65
    below = rerange_rewards(torch.tensor([-1.0, 0.0, 0.3], dtype=F64), prior)
    assert below[0] > below[1] > below[2]  # R rises, R̃ falls
    above = rerange_rewards(torch.tensor([0.7], dtype=F64), prior)
    assert below[0] > above[0]  # a reward below the prior outranks one above it
    for p, lowest in ((0.65, 0.33), (25.0, 13.48)):
        grid = torch.linspace(-5.0, p, 200_001, dtype=F64)
        values = rerange_rewards(grid, p)
        assert grid[values.argmin()].item() == pytest.approx(lowest, abs=0.01)  # the turn is near p/2
    # p = 0, R < 0: R̃ = 50·R²·σ(R/5), whose log-derivative 2/R + (1 - σ(R/5))/5 vanishes once, near R = -11.09;
    # R̃ rises below that turn (down to -τ·exp_clamp = -150, where the gate is held) and falls above it
    lo, hi = -20.0, -5.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 2 / mid + (1 - sigmoid(mid / 5)) / 5 > 0 else (lo, mid)
    turn = (lo + hi) / 2
    assert turn == pytest.approx(-11.09, abs=0.01)
    falling = torch.linspace(turn + 1e-3, -1e-3, 10_001, dtype=F64)
    assert bool((rerange_rewards(falling, 0.0).diff() < 0).all())
    rising = torch.linspace(-149.0, turn - 1e-3, 10_001, dtype=F64)
    assert bool((rerange_rewards(rising, 0.0).diff() > 0).all())
    clamped = torch.linspace(-400.0, -151.0, 1_001, dtype=F64)
    assert bool((rerange_rewards(clamped, 0.0).diff() < 0).all())


def test_rerange_exp_clamp():
    # R = -1000, p = 0, τ = 5: -R/τ = 200 is clamped to 30, so R̃ = 50·1000·1000/(1 + e^30) ≈ 4.68e-6
    # instead of 5e7/(1 + e^200) ≈ 6.9e-80 with a looser clamp
    low = torch.tensor([-1000.0], dtype=F64)
    assert rerange_rewards(low, 0.0).item() == pytest.approx(5e7 / (1 + math.exp(30)), rel=1e-12)
    assert rerange_rewards(low, 0.0, exp_clamp=300.0).item() == pytest.approx(5e7 / (1 + math.exp(200)), rel=1e-12)
    assert rerange_rewards(low, 0.0, exp_clamp=300.0).item() < 1e-70
    # R = 1000: the gate is 1/(1 + e^-30) rather than 1/(1 + e^-200)
    high = rerange_rewards(torch.tensor([1000.0], dtype=F64), 0.0)
    assert high.item() == pytest.approx(50001 * 1000 / (1 + math.exp(-30)), rel=1e-15)
    assert high.item() != 50001 * 1000.0


def test_rerange_stays_finite_for_large_inputs():
    for dtype in (torch.float32, F64):
        rewards = torch.tensor([-1e12, -1e6, -1e3, -50.0, 0.0, 50.0, 1e3, 1e6, 1e12], dtype=dtype, requires_grad=True)
        out = rerange_rewards(rewards, torch.zeros(9, dtype=dtype))
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        out.sum().backward()
        assert bool(torch.isfinite(rewards.grad).all())


def test_rerange_refuses_a_bad_temperature():
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            rerange_rewards(torch.tensor([1.0]), 0.0, temperature=temperature)


def test_ras_by_hand():
    # group 4 = [1, 2, 3], p = 1: n = 3, mean 2, s² = 1 + 1e-8; v = 1/(3/s² + 1) ≈ 1/4; m = v·(3·2/s² + 1) ≈ 7/4;
    # z = (m - p)/sqrt(v) ≈ 0.75/0.5 = 1.5; w = 0.5 + Φ(1.5) ≈ 1.43319
    # group 9 = [3] (one member), p = 1: s² = 1; v = 1/(1 + 1) = 0.5; m = 0.5·(3 + 1) = 2; z = 1/sqrt(0.5) = sqrt(2);
    # w = 0.5 + Φ(sqrt(2)) = 0.5 + (1 + erf(1))/2 ≈ 1.42135 (with s² = 1e-8 it would be 1.5)
    rewards = torch.tensor([1.0, 3.0, 2.0, 3.0], dtype=F64)
    groups = torch.tensor([4, 9, 4, 4])
    priors = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=F64)
    s2 = 1 + 1e-8
    v = 1 / (3 / s2 + 1)
    w4 = 0.5 + phi((v * (6 / s2 + 1) - 1) / math.sqrt(v))
    w9 = 0.5 + 0.5 * (1 + math.erf(1))
    out = bayes_group_ras_weights(rewards, groups, priors)
    assert out.tolist() == pytest.approx([w4, w9, w4, w4], rel=1e-14)
    assert w4 == pytest.approx(1.43319, abs=1e-5) and w9 == pytest.approx(1.42135, abs=1e-5)
    half = bayes_group_ras_weights(rewards, groups, priors, alpha=0.5)
    assert half.tolist() == pytest.approx([1 + 0.5 * (w - 1) for w in (w4, w9, w4, w4)], rel=1e-14)


@pytest.mark.parametrize(("prior_var", "w_min", "w_max", "alpha"),
                         [(1.0, 0.5, 1.5, 1.0), (0.3, 0.2, 2.0, 0.7), (4.0, 0.5, 1.5, 2.5), (1.0, 0.5, 1.5, 40.0)])
def test_ras_matches_an_independent_loop(prior_var, w_min, w_max, alpha):
    rng = np.random.default_rng(1)
    sizes = {7: 3, 3: 2, 42: 1, 100: 5, -5: 2, 1000: 4}
    labels = [label for label, size in sizes.items() for _ in range(size)]
    rng.shuffle(labels)
    group_prior = {label: float(rng.normal(0.0, 1.0)) for label in sizes}
    for trial in range(5):
        values = rng.normal(0.0, 1.5, size=len(labels)) + rng.normal(0.0, 1.0)
        priors = [group_prior[g] for g in labels]
        out = bayes_group_ras_weights(torch.tensor(values, dtype=F64), torch.tensor(labels),
                                      torch.tensor(priors, dtype=F64), prior_var, w_min, w_max, alpha)
        expected = reference_scales(values.tolist(), labels, priors, prior_var, w_min, w_max, alpha)
        assert out.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-14)
        single = bayes_group_ras_weights(torch.tensor(values, dtype=torch.float32), torch.tensor(labels),
                                         torch.tensor(priors, dtype=torch.float32), prior_var, w_min, w_max, alpha)
        assert single.dtype == torch.float32
        expected32 = reference_scales(torch.tensor(values, dtype=torch.float32).tolist(), labels,
                                      torch.tensor(priors, dtype=torch.float32).tolist(), prior_var, w_min, w_max,
                                      alpha)
        assert single.tolist() == pytest.approx(expected32, rel=1e-6)
    if alpha > 10:
        assert min(expected) == 0.01 or max(expected) == 10.0  # the scale clamp was reached


def test_ras_is_constant_within_a_group():
    labels = torch.tensor([2, 8, 2, 8, 8, 5])
    out = bayes_group_ras_weights(torch.tensor([0.1, 0.9, -0.3, 1.2, 0.4, 2.0], dtype=F64), labels,
                                  torch.tensor([0.0, 0.5, 0.0, 0.5, 0.5, 1.0], dtype=F64))
    for label in (2, 8, 5):
        assert len(set(out[labels == label].tolist())) == 1


def test_ras_weight_range_and_alpha():
    rng = np.random.default_rng(2)
    labels = torch.tensor([0] * 4 + [1] * 3 + [2] + [3] * 6)
    for _ in range(20):
        values = torch.tensor(rng.normal(0.0, 3.0, size=14), dtype=F64)
        priors = torch.tensor([rng.normal()] * 4 + [rng.normal()] * 3 + [rng.normal()] + [rng.normal()] * 6, dtype=F64)
        out = bayes_group_ras_weights(values, labels, priors, weight_min=0.2, weight_max=3.0)
        assert bool((out >= 0.2).all()) and bool((out <= 3.0).all())
        assert bayes_group_ras_weights(values, labels, priors, alpha=0.0).tolist() == [1.0] * 14
    flat = bayes_group_ras_weights(values, labels, priors, weight_min=1.3, weight_max=1.3)
    assert flat.tolist() == pytest.approx([1.3] * 14)


def test_ras_far_above_and_far_below_the_prior():
    rewards = torch.tensor([10.0, 10.1, 9.9, 10.05, -10.0, -10.1, -9.9, -10.05, 0.5, -0.5], dtype=F64)
    groups = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    out = bayes_group_ras_weights(rewards, groups, torch.zeros(10, dtype=F64))
    assert out[:4].tolist() == pytest.approx([1.5] * 4, abs=1e-12)
    assert out[4:8].tolist() == pytest.approx([0.5] * 4, abs=1e-12)
    assert out[8:].tolist() == pytest.approx([1.0, 1.0], abs=1e-12)  # mean equal to the prior: no evidence, w = 1
    narrow = bayes_group_ras_weights(rewards, groups, torch.zeros(10, dtype=F64), weight_min=0.8, weight_max=1.2)
    assert narrow[0].item() == pytest.approx(1.2, abs=1e-12) and narrow[4].item() == pytest.approx(0.8, abs=1e-12)


def test_ras_equals_the_paper_bayesian_form_with_the_group_variance():
    rewards = torch.tensor([0.2, 0.9, 0.4, 1.5, -0.3], dtype=F64)
    out = bayes_group_ras_weights(rewards, torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0.3] * 3 + [0.1] * 2,
                                                                                         dtype=F64), prior_var=0.5)
    first, second = rewards[:3], rewards[3:]
    paper = bayesian_ras_weights(torch.stack([first.mean(), second.mean()]), torch.tensor([3, 2]),
                                 torch.tensor([0.3, 0.1], dtype=F64), math.sqrt(0.5),
                                 torch.stack([first.var() + 1e-8, second.var() + 1e-8]).sqrt())
    assert [out[0].item(), out[3].item()] == pytest.approx(paper.tolist(), rel=1e-12)


def test_ras_refuses_priors_that_differ_within_a_group():
    rewards = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    with pytest.raises(ValueError, match="group 2 has differing priors"):
        bayes_group_ras_weights(rewards, torch.tensor([5, 5, 2, 2]), torch.tensor([0.1, 0.1, 0.3, 0.31], dtype=F64))
    with pytest.raises(ValueError, match="group -1 has differing priors"):
        bayes_group_ras_weights(rewards, torch.tensor([8, -1, 8, -1]), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))


def test_ras_refuses_bad_arguments():
    rewards = torch.tensor([0.1, 0.2], dtype=F64)
    groups = torch.tensor([0, 0])
    priors = torch.tensor([0.0, 0.0], dtype=F64)
    for prior_var in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="prior_var must be > 0"):
            bayes_group_ras_weights(rewards, groups, priors, prior_var=prior_var)
    with pytest.raises(ValueError, match="weight_min must be <= weight_max"):
        bayes_group_ras_weights(rewards, groups, priors, weight_min=1.5, weight_max=0.5)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rewards must be finite"):
            bayes_group_ras_weights(torch.tensor([0.1, bad], dtype=F64), groups, priors)
        with pytest.raises(ValueError, match="priors must be finite"):
            bayes_group_ras_weights(rewards, groups, torch.tensor([bad, bad], dtype=F64))
    with pytest.raises(ValueError, match="must all be \\[N\\]"):
        bayes_group_ras_weights(rewards, torch.tensor([0, 0, 1]), priors)
    with pytest.raises(ValueError, match="must all be \\[N\\]"):
        bayes_group_ras_weights(rewards.reshape(1, 2), groups.reshape(1, 2), priors.reshape(1, 2))
    with pytest.raises(ValueError, match="integer labels"):
        bayes_group_ras_weights(rewards, torch.tensor([0.0, 0.0]), priors)
