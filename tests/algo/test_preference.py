import math

import pytest
import torch

from vpt.algo.preference import (
    A_WINS, B_WINS, INVALID, TIE, bradley_terry_loss, bradley_terry_ties_loss, regression_loss,
)


def neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def test_bradley_terry_hand_worked():
    scores_a, scores_b = t([[2.0, 0.0], [1.0, 3.0]]), t([[0.0, 0.0], [1.5, 1.0]])
    labels = torch.tensor([[A_WINS, TIE], [B_WINS, INVALID]])
    # valid entries: d = 2 (A wins) and d = -0.5 (B wins); the tie and the invalid label are dropped
    expected = (neg_log_sigmoid(2.0) + neg_log_sigmoid(0.5)) / 2
    assert bradley_terry_loss(scores_a, scores_b, labels).item() == pytest.approx(expected, rel=1e-12)
    assert neg_log_sigmoid(2.0) == pytest.approx(0.1269280110429725)


def test_bradley_terry_ties_hand_worked():
    theta = 5.0
    scores_a, scores_b = t([[1.0, 1.0, 0.0, 5.0]]), t([[0.0, 0.0, 0.5, 0.0]])
    labels = torch.tensor([[A_WINS, TIE, B_WINS, INVALID]])
    win = neg_log_sigmoid(1.0 - math.log(theta))  # = log(1 + 5/e) = 1.04363...
    tie = neg_log_sigmoid(1.0 - math.log(theta)) + neg_log_sigmoid(-1.0 - math.log(theta)) - math.log(theta**2 - 1)
    b_win = neg_log_sigmoid(0.5 - math.log(theta))  # d = -0.5 oriented towards B
    assert win == pytest.approx(math.log(1 + 5 / math.e))
    loss = bradley_terry_ties_loss(scores_a, scores_b, labels, theta=theta)
    assert loss.item() == pytest.approx((win + tie + b_win) / 3, rel=1e-12)


def test_tie_probability_is_a_probability_and_peaks_at_equal_scores():
    differences = torch.linspace(-6, 6, 241, dtype=torch.float64)[:, None]
    ties = torch.full_like(differences, TIE, dtype=torch.long)
    per_pair = torch.stack([bradley_terry_ties_loss(d[None], torch.zeros(1, 1, dtype=torch.float64), l[None])
                            for d, l in zip(differences, ties)])
    p_tie, p_a, p_b = torch.exp(-per_pair), [], []
    for d in differences:
        p_a.append(math.exp(-bradley_terry_ties_loss(d[None], torch.zeros(1, 1, dtype=torch.float64),
                                                       torch.tensor([[A_WINS]])).item()))
        p_b.append(math.exp(-bradley_terry_ties_loss(d[None], torch.zeros(1, 1, dtype=torch.float64),
                                                       torch.tensor([[B_WINS]])).item()))
    total = p_tie.squeeze() + torch.tensor(p_a, dtype=torch.float64) + torch.tensor(p_b, dtype=torch.float64)
    assert torch.allclose(total, torch.ones_like(total))  # Rao-Kupper: win + tie + loss = 1
    assert p_tie.argmax().item() == 120  # d = 0


def test_regression_ignores_missing_targets():
    scores, targets = t([[1.0, 2.0], [3.0, 4.0]]), t([[1.0, float("nan")], [2.0, 6.0]])
    assert regression_loss(scores, targets).item() == pytest.approx((0 + 1 + 4) / 3)


def test_nothing_valid_gives_zero_with_a_gradient():
    scores = torch.zeros(2, 3, requires_grad=True)
    labels = torch.full((2, 3), INVALID)
    for loss in (bradley_terry_loss(scores, scores.detach(), labels),
                 bradley_terry_ties_loss(scores, scores.detach(), labels)):
        assert loss.item() == 0.0
        loss.backward()
    assert torch.equal(scores.grad, torch.zeros(2, 3))


def test_gradients_push_the_winner_up():
    scores_a = torch.zeros(1, 1, requires_grad=True)
    bradley_terry_ties_loss(scores_a, torch.zeros(1, 1), torch.tensor([[A_WINS]])).backward()
    assert scores_a.grad.item() < 0  # descending the loss raises A


def test_theta_must_exceed_one():
    with pytest.raises(ValueError, match="theta must be > 1"):
        bradley_terry_ties_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([[TIE]]), theta=1.0)
