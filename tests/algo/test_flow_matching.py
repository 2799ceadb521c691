"""Flow-matching losses and σ sampling against hand-worked numbers and independent float64 computations."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.algo.flow_matching import (FlowMatchingLoss, flow_matching_loss, noised, reward_weights, sample_sigmas,
                                    velocity_errors, velocity_target)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sample_sigmas_is_reproducible_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first = sample_sigmas(64, _generator(7), "logit-normal", shift=3.0)
    assert torch.equal(first, sample_sigmas(64, _generator(7), "logit-normal", shift=3.0))
    assert not torch.equal(first, sample_sigmas(64, _generator(8), "logit-normal", shift=3.0))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.dtype == torch.float32 and first.shape == (64,)


@pytest.mark.parametrize("distribution", ["uniform", "logit-normal"])
def test_sigmas_lie_strictly_inside_the_unit_interval(distribution):
    sigmas = sample_sigmas(20_000, _generator(0), distribution, scale=3.0, shift=5.0)
    assert (sigmas > 0).all() and (sigmas < 1).all()


def test_uniform_sigmas_have_mean_one_half_and_match_the_generator():
    sigmas = sample_sigmas(100_000, _generator(1))
    assert sigmas.double().mean().item() == pytest.approx(0.5, abs=0.01)  # std of the mean is 0.29/316 ≈ 0.001
    uniform = torch.rand(100_000, generator=_generator(1)).double()
    assert sigmas.double().tolist() == pytest.approx(uniform.clamp(1e-5, 1 - 1e-5).tolist(), abs=1e-7)


def test_logit_normal_is_the_sigmoid_of_seeded_normals():
    normals = torch.randn(500, generator=_generator(3)).double()
    expected = [1 / (1 + math.exp(-(0.4 + 1.5 * z))) for z in normals.tolist()]
    sigmas = sample_sigmas(500, _generator(3), "logit-normal", loc=0.4, scale=1.5)
    assert sigmas.double().tolist() == pytest.approx(expected, abs=1e-6)


def test_shift_formula_by_hand():
    # A vanishing logit-normal scale pins σ to sigmoid(loc) before the shift: 3·0.5/(1 + 2·0.5) = 0.75.
    at_half = sample_sigmas(4, _generator(0), "logit-normal", loc=0.0, scale=1e-9, shift=3.0)
    assert at_half.tolist() == pytest.approx([0.75] * 4, abs=1e-6)
    # sigmoid(ln(1/3)) = 0.25 -> 3·0.25/(1 + 2·0.25) = 0.5
    at_quarter = sample_sigmas(4, _generator(0), "logit-normal", loc=math.log(1 / 3), scale=1e-9, shift=3.0)
    assert at_quarter.tolist() == pytest.approx([0.5] * 4, abs=1e-6)
    uniform = torch.rand(1000, generator=_generator(5)).double()
    expected = (3 * uniform / (1 + 2 * uniform)).clamp(1e-5, 1 - 1e-5)
    shifted = sample_sigmas(1000, _generator(5), shift=3.0)
    assert shifted.double().tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert shifted.double().mean() > 0.6  # shift > 1 moves mass toward high noise


def test_sigmas_are_clamped_away_from_zero_and_one():
    low = sample_sigmas(3, _generator(0), "logit-normal", loc=-60.0, scale=1e-9)
    high = sample_sigmas(3, _generator(0), "logit-normal", loc=60.0, scale=1e-9)
    assert low.tolist() == pytest.approx([1e-5] * 3, rel=1e-4)
    assert (high < 1).all() and high.tolist() == pytest.approx([1 - 1e-5] * 3, abs=1e-7)
    assert torch.isfinite((1 - high) ** -1).all() and torch.isfinite(low / (1 - low)).all()


def test_sample_sigmas_rejects_bad_arguments():
    with pytest.raises(ValueError, match="timestep distribution must be one of uniform, logit-normal"):
        sample_sigmas(2, _generator(0), "beta")
    with pytest.raises(ValueError, match="scale must be > 0"):
        sample_sigmas(2, _generator(0), "logit-normal", scale=0.0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        sample_sigmas(2, _generator(0), shift=-1.0)


X0 = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
NOISE = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
SIGMA = torch.tensor([0.25, 0.5])


def test_noised_and_velocity_target_by_hand():
    # row 0: 0.75·[1, 2] + 0.25·[3, 0]; row 1: 0.5·[0, −1] + 0.5·[1, 1]
    assert noised(X0, NOISE, SIGMA).tolist() == [[1.5, 1.5], [0.5, 0.0]]
    assert velocity_target(X0, NOISE).tolist() == [[2.0, -2.0], [1.0, 2.0]]
    video = torch.ones(2, 3, 2, 2)
    assert noised(video, torch.zeros_like(video), SIGMA)[:, 0, 0, 0].tolist() == [0.75, 0.5]


def test_velocity_errors_average_every_non_batch_dim():
    target = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]])
    assert velocity_errors(torch.zeros_like(target), target).tolist() == [(1 + 4 + 9 + 16) / 4, 4 / 4]
    with pytest.raises(ValueError, match="differ in shape"):
        velocity_errors(torch.zeros(2, 3), torch.zeros(2, 4))


def test_flow_matching_loss_by_hand_with_and_without_weights():
    prediction = torch.tensor([[2.0, 0.0], [0.0, 2.0]], requires_grad=True)
    target = velocity_target(X0, NOISE)  # [[2, −2], [1, 2]]: squared errors [0, 4] and [1, 0]
    loss, errors = flow_matching_loss(prediction, target)
    assert errors.tolist() == [2.0, 0.5] and loss.item() == 1.25
    weights = torch.tensor([1.5, 0.5], dtype=torch.float64)
    weighted, _ = flow_matching_loss(prediction, target, weights)
    assert weighted.item() == (1.5 * 2.0 + 0.5 * 0.5) / 2
    weighted.backward()
    # d/dp of w_i·mean_j (p_ij − v_ij)² / B = w_i·2(p − v)/2/2
    assert prediction.grad.tolist() == [[0.0, 1.5], [-0.25, 0.0]]
    module_loss, _ = FlowMatchingLoss()(prediction, target, weights)
    assert module_loss.item() == weighted.item()
    with pytest.raises(ValueError, match="weights"):
        flow_matching_loss(prediction, target, torch.ones(3))


def test_bf16_prediction_is_scored_in_float32():
    prediction = torch.tensor([[1.0078125, 0.0]], dtype=torch.bfloat16)  # 1 + 2⁻⁷ is exact in bf16
    target = torch.tensor([[1.001, 0.0]])  # 1.001 rounds to 1.0 in bf16, which would give (2⁻⁷)²/2
    errors = velocity_errors(prediction, target)
    expected = (1.0078125 - float(target[0, 0])) ** 2 / 2
    assert errors.dtype == torch.float32 and errors.item() == pytest.approx(expected, rel=1e-5)
    loss, _ = flow_matching_loss(prediction, target)
    assert loss.dtype == torch.float32


def test_reward_weights_by_hand():
    assert reward_weights(torch.tensor([0.0, math.log(2)]), 1.0).tolist() == pytest.approx([2 / 3, 4 / 3])
    assert reward_weights(torch.tensor([0.0, 2 * math.log(2)]), 2.0).tolist() == pytest.approx([2 / 3, 4 / 3])
    assert reward_weights(torch.tensor([0.3, 0.3, 0.3]), 0.1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    rewards = torch.randn(17, generator=_generator(2))
    weights = reward_weights(rewards, 0.5)
    assert weights.dtype == torch.float64 and weights.mean().item() == pytest.approx(1.0, abs=1e-12)
    assert (weights.argsort() == rewards.argsort()).all()


def test_reward_weights_do_not_overflow_and_reject_bad_input():
    weights = reward_weights(torch.tensor([1000.0, 0.0, 999.0]), 1e-3)
    assert torch.isfinite(weights).all() and weights.tolist() == pytest.approx([3.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="beta must be > 0"):
        reward_weights(torch.tensor([0.0, 1.0]), 0.0)
    with pytest.raises(ValueError, match="rewards must be finite"):
        reward_weights(torch.tensor([0.0, float("inf")]), 1.0)
