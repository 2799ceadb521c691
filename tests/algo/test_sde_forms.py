"""The three SDE forms of the flow sampler (flow-grpo, dancegrpo, cps): each form's mean and std against float64
formulas written out here, the default form unchanged bit for bit, the Euler limit, log-prob recomputation, the
cps coefficients, empirical moments and marginals, and refused forms."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.algo.flow_sde import (
    SDE_FORMS, flow_grpo_cps_log_prob, gaussian_log_prob, sample_flow, sde_step_mean_std, sde_step_std, sde_std_scale,
    step_log_prob,
)


def shifted_schedule(steps: int, shift: float = 5.0) -> torch.Tensor:
    sigmas = torch.linspace(1, 0, steps + 1)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def reference_mean_std(x: list[float], v: list[float], sigma: float, sigma_next: float, eta: float, form: str,
                       first_next: float) -> tuple[list[float], float]:
    """One step in Python floats, element by element; cps with flow_grpo's own sqrt(σ'² − s²) coefficient."""
    if form == "cps":
        std = sigma_next * math.sin(eta * math.pi / 2)
        keep = math.sqrt(sigma_next**2 - std**2)
        return [(1 - sigma_next) * (xi - sigma * vi) + keep * (xi + (1 - sigma) * vi) for xi, vi in zip(x, v)], std
    if form == "dancegrpo":
        sigma_t = eta
    else:
        sigma_t = eta * math.sqrt(sigma / ((1 - first_next) if sigma >= 1 else (1 - sigma)))
    dt = sigma_next - sigma
    mean = [xi + (vi + sigma_t**2 / (2 * sigma) * (xi + (1 - sigma) * vi)) * dt for xi, vi in zip(x, v)]
    return mean, sigma_t * math.sqrt(-dt)


def old_mean_std(x, v, sigma, sigma_next, a, first_next=None):
    """The sampler step as it was before forms existed (frozen here, same operations in the same order)."""
    dt = sigma_next - sigma
    if a == 0:
        return x + dt * v, torch.zeros((), dtype=x.dtype)
    below = sigma_next if first_next is None else first_next
    sigma_t = a * torch.sqrt(sigma / torch.where(sigma >= 1, 1 - below, 1 - sigma))
    return x + (v + sigma_t**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt, sigma_t * torch.sqrt(-dt)


@pytest.mark.parametrize("form", SDE_FORMS)
@pytest.mark.parametrize("sigma, sigma_next", [(1.0, 0.93), (0.6, 0.45), (0.2, 0.05)])
def test_each_form_has_its_mean_and_std_in_float64(form, sigma, sigma_next):
    x, v, eta, first_next = [0.3, -1.2, 2.0], [0.5, 2.0, -0.7], 0.6, 0.93
    schedule = [torch.tensor(value, dtype=torch.float64) for value in (sigma, sigma_next)]
    first = torch.tensor(first_next, dtype=torch.float64)
    mean, std = sde_step_mean_std(torch.tensor([x], dtype=torch.float64), torch.tensor([v], dtype=torch.float64),
                                  *schedule, eta, first, form=form)
    expected_mean, expected_std = reference_mean_std(x, v, sigma, sigma_next, eta, form, first_next)
    assert mean[0].tolist() == pytest.approx(expected_mean, rel=1e-12, abs=1e-14)
    assert float(std) == pytest.approx(expected_std, rel=1e-12)
    assert float(sde_step_std(*schedule, eta, first, form)) == pytest.approx(expected_std, rel=1e-12)
    # σ_t is defined for every form as the coefficient with step std σ_t·sqrt(Δt)
    scale = sde_std_scale(*schedule, eta, first, form)
    assert float(scale) * math.sqrt(sigma - sigma_next) == pytest.approx(expected_std, rel=1e-12)


def test_the_default_form_is_the_old_step_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 5, generator=generator), torch.randn(3, 4, 5, generator=generator)
    sigmas = shifted_schedule(8)
    for i in range(len(sigmas) - 2):
        for a in (0.0, 0.3, 0.7, 1.3):
            old_mean, old_std = old_mean_std(x, v, sigmas[i], sigmas[i + 1], a, sigmas[1])
            for new_mean, new_std in (sde_step_mean_std(x, v, sigmas[i], sigmas[i + 1], a, sigmas[1]),
                                      sde_step_mean_std(x, v, sigmas[i], sigmas[i + 1], a, sigmas[1], "flow-grpo")):
                assert torch.equal(new_mean, old_mean) and torch.equal(new_std, old_std)
        old_scale = 0.7 * torch.sqrt(sigmas[i] / torch.where(sigmas[i] >= 1, 1 - sigmas[i + 1], 1 - sigmas[i]))
        assert torch.equal(sde_std_scale(sigmas[i], sigmas[i + 1], 0.7), old_scale)


def test_the_default_form_samples_the_old_trajectory_bit_for_bit():
    sigmas = shifted_schedule(6)
    weight = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))

    def velocity(x, i, sigma):
        return torch.tanh(x @ weight) - sigma * x

    x0 = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    noises = torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(3))
    out = sample_flow(velocity, x0, sigmas, 0.7, step_noise=lambda i, like: noises[i])
    explicit = sample_flow(velocity, x0, sigmas, 0.7, step_noise=lambda i, like: noises[i], form="flow-grpo")
    x, log_probs = x0, []
    for i in range(6):
        mean, std = old_mean_std(x, velocity(x, i, sigmas[i]), sigmas[i], sigmas[i + 1], 0.7 if i < 5 else 0.0,
                                 sigmas[1])
        x_next = mean + std * noises[i] if i < 5 else mean
        if i < 5:
            log_probs.append(gaussian_log_prob(x_next, mean, std))
        x = x_next
    for result in (out, explicit):
        assert torch.equal(result.latents, x)
        assert all(torch.equal(a, b) for a, b in zip(result.log_probs, log_probs, strict=True))


@pytest.mark.parametrize("form", SDE_FORMS)
def test_noise_level_zero_is_euler_and_small_noise_approaches_it(form):
    generator = torch.Generator().manual_seed(4)
    x, v = torch.randn(2, 6, generator=generator, dtype=torch.float64), torch.randn(2, 6, generator=generator,
                                                                                    dtype=torch.float64)
    sigma, sigma_next = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.55, dtype=torch.float64)
    mean, std = sde_step_mean_std(x, v, sigma, sigma_next, 0.0, form=form)
    assert torch.equal(mean, x + (sigma_next - sigma) * v) and float(std) == 0.0
    euler = x + (sigma_next - sigma) * v
    for eta in (1e-2, 1e-3):
        # every form's correction to the Euler mean is O(η²): σ_t² for the SDEs, 1 − cos(ηπ/2) for cps
        mean, std = sde_step_mean_std(x, v, sigma, sigma_next, eta, form=form)
        assert (mean - euler).abs().max().item() < 10 * eta**2
        assert 0 < float(std) < 2 * eta


@pytest.mark.parametrize("form", SDE_FORMS)
def test_recorded_log_probs_and_means_recompute_under_the_same_form(form):
    sigmas = shifted_schedule(6)
    weight = torch.randn(6, 6, generator=torch.Generator().manual_seed(5))

    def velocity(x, i, sigma):
        return torch.sin(x @ weight) - x * sigma

    generator = torch.Generator().manual_seed(6)
    x0 = torch.randn(3, 6, generator=torch.Generator().manual_seed(7))
    seen = []
    out = sample_flow(velocity, x0, sigmas, noise_level=0.7, sde_steps=[0, 2, 4], form=form,
                      step_noise=lambda i, like: torch.randn(like.shape, generator=generator), callback=seen.append)
    means = {info.index: info.mean for info in seen if info.log_prob is not None}
    assert sorted(means) == out.stochastic_steps == [0, 2, 4]
    for step, stored in zip(out.stochastic_steps, out.log_probs):
        x, x_next = out.state(step).double(), out.state(step + 1).double()
        v = velocity(out.state(step), step, sigmas[step]).double()
        args = (sigmas[step].double(), sigmas[step + 1].double(), 0.7, sigmas[1].double())
        again = step_log_prob(x, x_next, v, *args, form=form)
        torch.testing.assert_close(stored.double(), again, rtol=1e-5, atol=1e-5)
        mean, _ = sde_step_mean_std(x, v, *args, form=form)
        torch.testing.assert_close(means[step].double(), mean, rtol=1e-5, atol=1e-6)
        other = next(f for f in SDE_FORMS if f != form)
        assert (step_log_prob(x, x_next, v, *args, form=other) - again).abs().max() > 1e-3


def test_dancegrpo_is_finite_at_sigma_one():
    x, v = torch.tensor([[0.4, -2.0]]), torch.tensor([[1.5, 0.3]])
    mean, std = sde_step_mean_std(x, v, torch.tensor(1.0), torch.tensor(0.9), 0.3, form="dancegrpo")
    assert torch.isfinite(mean).all() and float(std) == pytest.approx(0.3 * math.sqrt(0.1), rel=1e-6)
    out = sample_flow(lambda x, i, sigma: -x, torch.ones(2, 3), torch.linspace(1, 0, 5), 0.3, form="dancegrpo",
                      step_noise=lambda i, like: torch.zeros_like(like))
    assert out.stochastic_steps == [0, 1, 2] and all(torch.isfinite(lp).all() for lp in out.log_probs)


@pytest.mark.parametrize("eta", [0.1, 0.5, 0.7, 1.0])
def test_cps_std_and_coefficients_are_preserved(eta):
    """x = (1 − σ)·x0 + σ·ε with the exact velocity v = ε − x0: the cps mean keeps x0's coefficient 1 − σ' and the
    noise's total variance σ'² (σ'·cos from the mean's ε, σ'·sin from the fresh draw)."""
    generator = torch.Generator().manual_seed(8)
    x0, eps = torch.randn(4, 7, generator=generator, dtype=torch.float64), torch.randn(4, 7, generator=generator,
                                                                                     dtype=torch.float64)
    sigma, sigma_next = 0.8, 0.6
    x = (1 - sigma) * x0 + sigma * eps
    mean, std = sde_step_mean_std(x, eps - x0, torch.tensor(sigma, dtype=torch.float64),
                                  torch.tensor(sigma_next, dtype=torch.float64), eta, form="cps")
    angle = eta * math.pi / 2
    assert float(std) == pytest.approx(sigma_next * math.sin(angle), rel=1e-12)
    torch.testing.assert_close(mean, (1 - sigma_next) * x0 + sigma_next * math.cos(angle) * eps, rtol=1e-12,
                               atol=1e-12)
    assert (sigma_next * math.cos(angle)) ** 2 + float(std) ** 2 == pytest.approx(sigma_next**2, rel=1e-12)


def test_flow_grpo_cps_log_ratio_is_two_s_squared_times_the_true_one():
    generator = torch.Generator().manual_seed(9)
    sample, mean_new, mean_old = (torch.randn(3, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    std = torch.tensor(0.3, dtype=torch.float64)
    assert torch.equal(flow_grpo_cps_log_prob(sample, mean_new), -((sample - mean_new) ** 2).mean(1))
    true = gaussian_log_prob(sample, mean_new, std) - gaussian_log_prob(sample, mean_old, std)
    theirs = flow_grpo_cps_log_prob(sample, mean_new) - flow_grpo_cps_log_prob(sample, mean_old)
    torch.testing.assert_close(theirs, 2 * std**2 * true, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", SDE_FORMS)
def test_many_draws_from_one_state_have_the_formula_moments(form):
    x = torch.tensor([[0.8, -0.4, 1.5]]).expand(200_000, 3)
    v = torch.tensor([[-1.0, 0.3, 0.2]]).expand(200_000, 3)
    sigmas = torch.tensor([0.7, 0.55, 0.0])
    generator = torch.Generator().manual_seed(10)
    out = sample_flow(lambda state, i, sigma: v, x, sigmas, noise_level=0.8, sde_steps=[0], form=form,
                      step_noise=lambda i, like: torch.randn(like.shape, generator=generator))
    mean, std = sde_step_mean_std(x[:1].double(), v[:1].double(), sigmas[0].double(), sigmas[1].double(), 0.8,
                                  form=form)
    after = out.state(1).double()
    torch.testing.assert_close(after.mean(0), mean[0], atol=4 * std.item() / math.sqrt(200_000), rtol=0)
    torch.testing.assert_close(after.std(0), std.expand(3), rtol=0.01, atol=0)


def test_dancegrpo_keeps_the_marginals_of_a_gaussian_world():
    """x0 ~ N(m, s²) with its exact velocity: like flow-grpo (tests/algo/test_flow_sde.py), dancegrpo ends where the
    ODE does. cps is left out on purpose: its fresh noise σ'·sin(aπ/2) does not shrink with the step, and with the
    posterior means x̂0, x̂1 in place of x0, ε each step loses some of x0's spread (std about 0.31 instead of 0.4 at
    16 steps and a = 0.7), a property of that sampler rather than of this code."""
    form = "dancegrpo"
    m, s = 1.5, 0.4

    def velocity(x, i, sigma):
        a = 1 - sigma
        return (sigma - a * s**2) / (a**2 * s**2 + sigma**2) * (x - a * m) - m

    generator = torch.Generator().manual_seed(11)
    out = sample_flow(velocity, torch.randn(20_000, 1, generator=generator), torch.linspace(1, 0, 401), 0.7,
                      form=form, step_noise=lambda i, like: torch.randn(like.shape, generator=generator))
    assert out.latents.mean().item() == pytest.approx(m, abs=0.02)
    assert out.latents.std().item() == pytest.approx(s, rel=0.05)


@pytest.mark.parametrize("call", [
    lambda form: sde_std_scale(torch.tensor(0.5), torch.tensor(0.4), 0.7, form=form),
    lambda form: sde_step_std(torch.tensor(0.5), torch.tensor(0.4), 0.7, form=form),
    lambda form: sde_step_mean_std(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(0.5), torch.tensor(0.4), 0.7,
                                   form=form),
    lambda form: step_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(0.5),
                               torch.tensor(0.4), 0.7, form=form),
    lambda form: sample_flow(lambda x, i, sigma: x, torch.zeros(1, 2), torch.linspace(1, 0, 4), 0.7, form=form,
                             step_noise=lambda i, like: torch.zeros_like(like)),
])
@pytest.mark.parametrize("form", ["flow_grpo", "sde", "CPS", ""])
def test_unknown_forms_are_refused(call, form):
    with pytest.raises(ValueError, match="sde form must be one of flow-grpo, dancegrpo, cps"):
        call(form)


def test_cps_refuses_noise_levels_above_one():
    with pytest.raises(ValueError, match=r"the cps noise level must lie in \[0, 1\]"):
        sde_step_mean_std(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(0.5), torch.tensor(0.4), 1.2, form="cps")
    with pytest.raises(ValueError, match="noise level must be >= 0"):
        sample_flow(lambda x, i, sigma: x, torch.zeros(1, 2), torch.linspace(1, 0, 4), -0.1, form="dancegrpo")
