"""GRPO-Guard (arXiv 2510.22319): RatioNorm against hand-worked numbers and its mean(Δμ·ε) identity, and the gradient
reweight δ of both forms against hand-worked numbers and a float64 computation."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.algo.flow_sde import gaussian_log_prob
from vpt.algo.grpo_guard import GUARD_EPS, grad_reweight, normalised_log_ratio


def test_ratio_norm_by_hand():
    # Δμ = (1, 2): mean(Δμ²) = 2.5; s = 0.5: bias 2.5 / (2·(0.25 + 1e-6)) = 4.99998000008, (0.1 + bias)·0.5
    f64 = torch.float64
    out = normalised_log_ratio(torch.tensor([0.1], dtype=f64), torch.tensor([[1.0, 3.0]], dtype=f64),
                               torch.tensor([[0.0, 1.0]], dtype=f64), 0.5)
    assert out.item() == pytest.approx((0.1 + 2.5 / (2 * 0.250001)) * 0.5, rel=1e-14)
    assert out.item() == pytest.approx(2.54999000004, rel=1e-12)


def test_ratio_norm_takes_a_std_per_sample():
    log_ratio = torch.tensor([0.2, -0.3], dtype=torch.float64)
    mean_new = torch.tensor([[0.5, 0.5], [1.0, -1.0]], dtype=torch.float64)
    std = torch.tensor([0.1, 0.4], dtype=torch.float64)
    out = normalised_log_ratio(log_ratio, mean_new, torch.zeros_like(mean_new), std)
    for b, (drift, s) in enumerate([(0.25, 0.1), (1.0, 0.4)]):
        assert out[b].item() == pytest.approx((log_ratio[b].item() + drift / (2 * (s**2 + 1e-6))) * s, rel=1e-14)


@pytest.mark.parametrize("s", [0.02, 0.1, 0.5])
def test_ratio_norm_of_mean_reduced_log_probs_is_mean_drift_times_noise(s):
    """x' = μ_old + s·ε. Per element, log N(x'; μ_new, s²) − log N(x'; μ_old, s²) = (s²ε² − (sε − Δμ)²)/(2s²)
    = ε·Δμ/s − Δμ²/(2s²), so the mean-reduced log ratio is mean(Δμ·ε)/s − mean(Δμ²)/(2s²). Adding
    mean(Δμ²)/(2(s² + e)) and multiplying by s leaves mean(Δμ·ε) − s·mean(Δμ²)·(1/(2s²) − 1/(2(s² + e))): the exact
    identity up to a gap of s·mean(Δμ²)·e/(2s²(s² + e)) from the eps e."""
    generator = torch.Generator().manual_seed(0)
    mean_old = torch.randn(4, 3, 8, generator=generator, dtype=torch.float64)
    drift = 0.3 * s * torch.randn(4, 3, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(4, 3, 8, generator=generator, dtype=torch.float64)
    sample, mean_new, std = mean_old + s * eps, mean_old + drift, torch.tensor(s, dtype=torch.float64)
    log_ratio = gaussian_log_prob(sample, mean_new, std) - gaussian_log_prob(sample, mean_old, std)
    out = normalised_log_ratio(log_ratio, mean_new, mean_old, std)
    square = (drift**2).flatten(1).mean(1)
    gap = s * square * GUARD_EPS / (2 * s**2 * (s**2 + GUARD_EPS))
    torch.testing.assert_close(out, (drift * eps).flatten(1).mean(1) - gap, rtol=1e-9, atol=1e-12)


def test_ratio_norm_gradient_in_the_new_mean_is_the_noise():
    """By the identity above, d log ρ̂ / dμ_new = ε/N (N elements per sample) whatever the drift, less the eps gap's
    derivative s·(1/(2s²) − 1/(2(s² + e)))·2Δμ/N."""
    generator = torch.Generator().manual_seed(1)
    s, n = 0.2, 12
    mean_old = torch.randn(2, n, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, n, generator=generator, dtype=torch.float64)
    mean_new = (mean_old + 0.05 * torch.randn(2, n, generator=generator, dtype=torch.float64)).requires_grad_()
    std = torch.tensor(s, dtype=torch.float64)
    sample = mean_old + s * eps
    log_ratio = gaussian_log_prob(sample, mean_new, std) - gaussian_log_prob(sample, mean_old, std)
    normalised_log_ratio(log_ratio, mean_new, mean_old, std).sum().backward()
    gap = s * (1 / (2 * s**2) - 1 / (2 * (s**2 + GUARD_EPS))) * 2 * (mean_new - mean_old).detach() / n
    torch.testing.assert_close(mean_new.grad, eps / n - gap, rtol=1e-9, atol=1e-12)
    assert (mean_new.grad - eps / n).abs().max() < 2e-6


def test_ratio_norm_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="must be"):
        normalised_log_ratio(torch.zeros(2), torch.zeros(2, 3), torch.zeros(3, 3), 0.1)
    with pytest.raises(ValueError, match="must be"):
        normalised_log_ratio(torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, 3), 0.1)


def test_grad_reweight_by_hand():
    assert grad_reweight("flow-grpo", 0.05) == pytest.approx(1 / 0.050001, rel=1e-14)
    # η = 0.3, t = 0.6: β = 1 + 0.09·0.4/1.2 = 1.03
    assert grad_reweight("dancegrpo", 0.05, eta=0.3, t=0.6) == pytest.approx(1.03 / 0.050001, rel=1e-14)
    # t = 0 is floored at 1e-6: β = 1 + 0.09·(1 − 1e-6)/2e-6 = 45000.955
    assert grad_reweight("dancegrpo", 0.05, eta=0.3, t=0.0) == pytest.approx(45000.955 / 0.050001, rel=1e-12)
    assert grad_reweight("dancegrpo", 0.05, eta=0.0, t=0.3) == grad_reweight("flow-grpo", 0.05)


def test_grad_reweight_over_a_schedule_in_float64():
    shift = 5.0
    grid = [1 - k / 16 for k in range(17)]
    sigmas = [shift * g / (1 + (shift - 1) * g) for g in grid]
    t = torch.tensor(sigmas[:-1], dtype=torch.float64)
    dt = t - torch.tensor(sigmas[1:], dtype=torch.float64)
    flow, dance = grad_reweight("flow-grpo", dt), grad_reweight("dancegrpo", dt, eta=0.25, t=t)
    assert isinstance(flow, torch.Tensor) and flow.dtype == torch.float64
    for k in range(16):
        delta = sigmas[k] - sigmas[k + 1]
        assert flow[k].item() == pytest.approx(1 / (delta + 1e-6), rel=1e-12)
        beta = 1 + 0.25**2 * (1 - sigmas[k]) / (2 * sigmas[k])
        assert dance[k].item() == pytest.approx(beta / (delta + 1e-6), rel=1e-12)
    assert math.isclose(dance[0].item(), flow[0].item(), rel_tol=1e-12)  # t = 1: β = 1


@pytest.mark.parametrize("options, message", [
    ({"form": "cps", "dt": 0.1}, "grad reweight form must be one of flow-grpo, dancegrpo"),
    ({"form": "flow_grpo", "dt": 0.1}, "grad reweight form must be one of"),
    ({"form": "flow-grpo", "dt": 0.0}, "must be > 0"),
    ({"form": "flow-grpo", "dt": torch.tensor([0.1, -0.1])}, "must be > 0"),
    ({"form": "dancegrpo", "dt": 0.1, "eta": 0.3}, "needs the step's t"),
])
def test_grad_reweight_refusals(options, message):
    with pytest.raises(ValueError, match=message):
        grad_reweight(**options)


def test_ratio_norm_balances_the_clip_on_both_sides_at_every_noise_level():
    """The paper's observation on a 16-step flow-grpo schedule: a policy update shifts each step's mean by
    Δμ = dt·Δv, so the raw log-ratio of the sampled x' carries the bias −mean(Δμ²)/(2s²), which is larger where
    s is small; past the clip range nearly every sample is clipped below 1 at those steps and none above. After
    RatioNorm each step's ratios centre on 1, and the clip falls on both sides alike."""
    from vpt.algo.flow_sde import sde_step_mean_std
    from vpt.models.wan import schedule_sigmas

    sigmas = schedule_sigmas({"shift": 3.0}, 16).double()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=generator, dtype=torch.float64)
    velocity = torch.randn(4096, 64, generator=generator, dtype=torch.float64)
    change = 0.3 * torch.randn(1, 64, generator=generator, dtype=torch.float64)  # the update's velocity change
    clip = 1e-2
    raw_imbalance, normalised_imbalance = [], []
    for k in range(15):
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        old_mean, std = sde_step_mean_std(x, velocity, sigma, sigma_next, 0.7, sigmas[1])
        new_mean, _ = sde_step_mean_std(x, velocity + change, sigma, sigma_next, 0.7, sigmas[1])
        sample = old_mean + std * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        log_ratio = gaussian_log_prob(sample, new_mean, std) - gaussian_log_prob(sample, old_mean, std)
        for values, imbalance in ((log_ratio, raw_imbalance),
                                  (normalised_log_ratio(log_ratio, new_mean, old_mean, std), normalised_imbalance)):
            below = float((values < math.log(1 - clip)).double().mean())
            above = float((values > math.log(1 + clip)).double().mean())
            if below + above >= 0.02:  # steps that clip at all
                imbalance.append(abs(below - above) / (below + above))
    assert max(raw_imbalance) > 0.9  # the low-noise steps clip on one side only
    assert len(normalised_imbalance) >= 3 and max(normalised_imbalance) < 0.15  # both sides alike at every step
