"""Flow-DPPO's divergence trust region (arXiv 2606.11025): the exact step KL against float64 and torch.distributions,
and the one-sided mask: nothing masked on the first iteration, a sample past kl_max moving away loses its gradient,
one moving back keeps it."""

from __future__ import annotations

import pytest
import torch

from vpt.algo.trust_region import kl_trust_region_loss, step_kl


def test_step_kl_against_float64_and_torch_distributions():
    mean_new = [[0.3, -1.0, 2.0], [0.0, 0.5, 0.5]]
    mean_old = [[0.1, -1.2, 2.5], [0.0, 0.5, -0.5]]
    s = 0.2
    kl = step_kl(torch.tensor(mean_new), torch.tensor(mean_old), s)
    for b in range(2):
        expected = sum((n - o) ** 2 for n, o in zip(mean_new[b], mean_old[b])) / 3 / (2 * s**2)
        assert kl[b].item() == pytest.approx(expected, rel=1e-6)
    generator = torch.Generator().manual_seed(0)
    new, old = (torch.randn(4, 2, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    std = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(old, std[:, None, None]),
                                              torch.distributions.Normal(new, std[:, None, None])).flatten(1).mean(1)
    torch.testing.assert_close(step_kl(new, old, std), exact, rtol=1e-12, atol=0)


def plain_gradient(log_prob, old_log_prob, advantages):
    leaf = log_prob.detach().clone().requires_grad_()
    (-advantages * torch.exp(leaf - old_log_prob)).mean().backward()
    return leaf.grad


def test_first_iteration_masks_nothing_and_is_the_plain_gradient():
    old = torch.tensor([-1.2, 0.4, 2.0, -0.3], dtype=torch.float64)
    advantages = torch.tensor([1.5, -0.7, 0.0, 2.0], dtype=torch.float64)
    log_prob = old.clone().requires_grad_()
    # even a KL far past kl_max masks nothing: with ρ = 1 no update has moved anywhere yet
    loss, stats = kl_trust_region_loss(log_prob, old, advantages, torch.full((4,), 10.0, dtype=torch.float64), 0.01)
    loss.backward()
    assert stats.masked_fraction == 0.0 and stats.ratio_mean == 1.0
    assert loss.item() == pytest.approx(-advantages.mean().item(), rel=1e-14)
    torch.testing.assert_close(log_prob.grad, plain_gradient(old, old, advantages), rtol=1e-14, atol=0)
    torch.testing.assert_close(log_prob.grad, -advantages / 4, rtol=1e-14, atol=0)


def test_only_samples_past_kl_max_moving_away_lose_their_gradient():
    old = torch.zeros(6, dtype=torch.float64)
    # (A, log ρ, KL): away+far, back+far, away+far, back+far, away+near, at kl_max exactly (not past it)
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    log_prob = torch.tensor([0.2, -0.2, -0.2, 0.2, 0.2, 0.2], dtype=torch.float64, requires_grad=True)
    kl = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.05, 0.1], dtype=torch.float64)
    loss, stats = kl_trust_region_loss(log_prob, old, advantages, kl, kl_max=0.1)
    loss.backward()
    plain = plain_gradient(log_prob, old, advantages)
    kept = torch.tensor([False, True, False, True, True, True])
    assert torch.equal(log_prob.grad[~kept], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(log_prob.grad[kept], plain[kept], rtol=1e-14, atol=0)
    # moving back: A > 0 with ρ < 1 is pushed up again, A < 0 with ρ > 1 down again
    assert log_prob.grad[1] < 0 and log_prob.grad[3] > 0
    ratio = torch.exp(log_prob.detach())
    assert loss.item() == pytest.approx((-advantages * ratio).mean().item(), rel=1e-14)
    assert stats.masked_fraction == pytest.approx(2 / 6)
    assert stats.kl_mean == pytest.approx(2.15 / 6) and stats.kl_max == 0.5


def test_trust_region_refusals():
    with pytest.raises(ValueError, match="must be equal"):
        kl_trust_region_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="must be equal"):
        kl_trust_region_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), 0.1)
    with pytest.raises(ValueError, match="kl_max must be >= 0"):
        kl_trust_region_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), -1.0)
