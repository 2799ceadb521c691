"""BPGO (RAS, Bayesian RAS, CRT) and the self-paced curriculum against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.algo.bpgo import bayesian_ras_weights, contrastive_rewards, normalise_with, ras_weights
from vpt.algo.curriculum import GatedCurriculum, hoyer_sparsity, softmax_curriculum_weights

F64 = torch.float64


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_ras_sigmoid_form():
    weights = ras_weights(torch.tensor([0.8, 0.5, 0.2], dtype=F64), torch.tensor([0.5, 0.5, 0.5], dtype=F64),
                          alpha=0.5, sharpness=4.0)
    expected = [1 + 0.5 * (2 * sigmoid(4 * d) - 1) for d in (0.3, 0.0, -0.3)]
    assert weights.tolist() == pytest.approx(expected, abs=1e-12)
    assert weights[1].item() == 1.0 and 0.5 < weights[2] < 1 < weights[0] < 1.5


def test_bayesian_ras_by_hand():
    mean, n, prior, tau, s = 0.7, 4, 0.5, 0.2, 0.4
    precision = 1 / tau**2 + n / s**2
    posterior_mean = (prior / tau**2 + n * mean / s**2) / precision
    z = (posterior_mean - prior) * math.sqrt(precision)
    expected = 0.5 + 0.5 * (1 + math.erf(z / math.sqrt(2)))
    out = bayesian_ras_weights(torch.tensor([mean], dtype=F64), torch.tensor([n]), torch.tensor([prior], dtype=F64),
                               tau, s)
    assert out.item() == pytest.approx(expected, abs=1e-12)
    equal = bayesian_ras_weights(torch.tensor([0.5], dtype=F64), torch.tensor([8]), torch.tensor([0.5], dtype=F64),
                                 tau, s)
    assert equal.item() == pytest.approx(1.0)  # no evidence either way: weight 1
    many = bayesian_ras_weights(torch.tensor([0.7], dtype=F64), torch.tensor([10_000]),
                                torch.tensor([0.5], dtype=F64), tau, s)
    assert many.item() == pytest.approx(1.5)  # certain to beat the prior
    with pytest.raises(ValueError, match="must be > 0"):
        bayesian_ras_weights(torch.tensor([0.7]), torch.tensor([2]), torch.tensor([0.5]), 0.0, s)


def test_crt_by_hand_and_exponent_clamp():
    rewards = torch.tensor([1.0, -0.5, 9.0], dtype=F64)
    priors = torch.tensor([0.0, 0.0, 0.0], dtype=F64)
    out = contrastive_rewards(rewards, priors, lam=2.0, max_exponent=5.0)
    assert out.tolist() == pytest.approx([(2 * 1 + 1) * math.e, (2 * -0.5) * math.exp(-0.5), (18 + 1) * math.exp(5)])


def test_normalised_scale():
    reference = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    std = math.sqrt(2 / 3)
    assert normalise_with(torch.tensor([2.0, 4.0], dtype=F64), reference).tolist() == pytest.approx([0, 2 / std])
    assert normalise_with(torch.tensor([5.0], dtype=F64), torch.tensor([5.0, 5.0], dtype=F64)).item() == 0


def test_hoyer_sparsity():
    assert hoyer_sparsity(torch.tensor([1.0, 1.0, 1.0, 1.0])).item() == pytest.approx(0.0)
    assert hoyer_sparsity(torch.tensor([0.0, 0.0, 3.0, 0.0])).item() == pytest.approx(1.0)
    x = torch.tensor([1.0, 2.0], dtype=F64)
    assert hoyer_sparsity(x).item() == pytest.approx((math.sqrt(2) - 3 / math.sqrt(5)) / (math.sqrt(2) - 1))


def test_softmax_curriculum_by_hand():
    rewards = torch.tensor([[0.9, 0.2, 0.0], [0.9, 0.4, 1.0]], dtype=F64)
    thresholds = torch.tensor([0.75, 0.75, 0.75], dtype=F64)
    h = [hoyer_sparsity(rewards[:, j]).item() for j in range(3)]
    g = [sigmoid(m - 0.75) + 0.3 * (h[j] - (h[j + 1] if j < 2 else 0.0))
         for j, m in enumerate((0.9, 0.3, 0.5))]
    expected = [math.exp(v) / sum(math.exp(u) for u in g) for v in g]
    assert softmax_curriculum_weights(rewards, thresholds, beta=0.3).tolist() == pytest.approx(expected, abs=1e-12)


def test_gated_curriculum_moves_along_the_order_and_keeps_its_state():
    curriculum = GatedCurriculum(thresholds=(0.5, 0.5, 0.5), sharpness=20.0, decay=0.5)
    first = curriculum.update(torch.tensor([0.1, 0.1, 0.1]))
    assert first[0] > 0.99  # not yet competent visually: all weight on the visual reward
    for _ in range(10):
        middle = curriculum.update(torch.tensor([0.9, 0.1, 0.1]))
    assert middle[1] > 0.99  # visual mastered: motion next
    for _ in range(10):
        last = curriculum.update(torch.tensor([0.9, 0.9, 0.1]))
    assert last[2] > 0.99 and abs(float(last.sum()) - 1) < 1e-12
    restored = GatedCurriculum.from_state_dict(curriculum.state_dict())
    assert torch.equal(restored.weights(), curriculum.weights())
    expected_ema = 0.5 * curriculum.ema[0] + 0.5 * 0.3
    restored.update(torch.tensor([0.3, 0.3, 0.3]))
    assert restored.ema[0] == pytest.approx(expected_ema)
