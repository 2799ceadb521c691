"""The flow SDE/ODE step and sampler: diffusers' Euler step exactly, the Flow-GRPO formulas (arXiv 2505.05470,
Eq. 9-10) in float64, empirical moments, log-probs, and marginal preservation on a Gaussian world with a known
velocity."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vpt.algo.flow_sde import (
    gaussian_log_prob, sample_flow, sde_step_mean_std, sde_std_scale, step_log_prob,
)


def schedule(steps: int, shift: float = 3.0) -> torch.Tensor:
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas


def test_noise_level_zero_is_diffusers_euler_bit_for_bit():
    sigmas = schedule(6)
    weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))

    def velocity(x, i, sigma):
        return torch.tanh(x @ weight) * (1 + sigma)

    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    ours = sample_flow(velocity, x0, sigmas)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(6)
    x = x0
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(velocity(x, i, scheduler.sigmas[i]), t, x, return_dict=False)[0]
    assert torch.equal(ours.latents, x)
    assert ours.stochastic_steps == [] and ours.states == [] and ours.log_probs == []


def test_step_mean_and_std_match_the_formula_in_float64():
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    v = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    sigma, sigma_next, a = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.45, dtype=torch.float64), 0.7
    mean, std = sde_step_mean_std(x, v, sigma, sigma_next, a)
    s, dt = 0.6, 0.45 - 0.6
    st = a * math.sqrt(s / (1 - s))
    for k in range(2):
        xk, vk = x[0, k].item(), v[0, k].item()
        assert mean[0, k].item() == pytest.approx(xk + (vk + st**2 / (2 * s) * (xk + (1 - s) * vk)) * dt, rel=1e-12)
    assert std.item() == pytest.approx(st * math.sqrt(-dt), rel=1e-12)


def test_at_sigma_one_the_next_sigma_is_the_denominator():
    one, next_sigma = torch.tensor(1.0), torch.tensor(0.9)
    assert sde_std_scale(one, next_sigma, 0.5).item() == pytest.approx(0.5 * math.sqrt(1 / 0.1), rel=1e-6)
    assert sde_std_scale(torch.tensor(0.8), torch.tensor(0.7), 0.5, torch.tensor(0.9)).item() == pytest.approx(
        0.5 * math.sqrt(0.8 / 0.2), rel=1e-6)


def test_log_prob_is_the_mean_gaussian_log_density():
    generator = torch.Generator().manual_seed(2)
    sample, mean = torch.randn(3, 2, 5, generator=generator, dtype=torch.float64), torch.randn(3, 2, 5,
                                                                                                 generator=generator,
                                                                                                 dtype=torch.float64)
    std = torch.tensor(0.37, dtype=torch.float64)
    expected = torch.distributions.Normal(mean, std).log_prob(sample).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_log_prob(sample, mean, std), expected, rtol=1e-12, atol=1e-12)


def test_many_sde_steps_from_one_state_have_the_formula_moments():
    x = torch.tensor([[0.8, -0.4, 1.5]]).expand(200_000, 3)
    v = torch.tensor([[-1.0, 0.3, 0.2]]).expand(200_000, 3)
    sigmas = torch.tensor([0.7, 0.55, 0.0])
    generator = torch.Generator().manual_seed(3)
    out = sample_flow(lambda state, i, sigma: v, x, sigmas, noise_level=0.8, sde_steps=[0],
                      step_noise=lambda i, like: torch.randn(like.shape, generator=generator))
    after = out.state(1)
    mean, std = sde_step_mean_std(x[:1].double(), v[:1].double(), sigmas[0].double(), sigmas[1].double(), 0.8)
    torch.testing.assert_close(after.double().mean(0), mean[0], atol=4 * std.item() / math.sqrt(200_000), rtol=0)
    torch.testing.assert_close(after.double().std(0), std.expand(3), rtol=0.01, atol=0)


def test_recorded_states_and_log_probs_recompute():
    sigmas = schedule(5)
    weight = torch.randn(6, 6, generator=torch.Generator().manual_seed(4))

    def velocity(x, i, sigma):
        return torch.sin(x @ weight) - x * sigma

    generator = torch.Generator().manual_seed(5)
    x0 = torch.randn(2, 6, generator=torch.Generator().manual_seed(6))
    seen = []
    out = sample_flow(velocity, x0, sigmas, noise_level=0.7, sde_steps=[1, 3],
                      step_noise=lambda i, like: torch.randn(like.shape, generator=generator), callback=seen.append)
    assert out.stochastic_steps == [1, 3] and out.state_indices == [1, 2, 3, 4]
    assert [info.index for info in seen] == [0, 1, 2, 3, 4]
    assert [info.log_prob is not None for info in seen] == [False, True, False, True, False]
    assert torch.equal(out.state(4), seen[3].x_next) and torch.equal(out.latents, seen[4].x_next)
    for step, stored in zip(out.stochastic_steps, out.log_probs):
        again = step_log_prob(out.state(step).double(), out.state(step + 1).double(),
                              velocity(out.state(step), step, sigmas[step]).double(), sigmas[step].double(),
                              sigmas[step + 1].double(), 0.7, sigmas[1].double())
        torch.testing.assert_close(stored.double(), again, rtol=1e-5, atol=1e-5)


def test_the_sde_keeps_the_marginals_of_a_gaussian_world():
    """x0 ~ N(m, s²): the exact velocity is known, and the SDE must end at the same distribution as the ODE."""
    m, s = 1.5, 0.4

    def velocity(x, i, sigma):
        a = 1 - sigma
        variance = a**2 * s**2 + sigma**2
        return (sigma - a * s**2) / variance * (x - a * m) - m

    sigmas = torch.linspace(1, 0, 401)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(20_000, 1, generator=generator)
    for noise_level in (0.0, 0.7):
        out = sample_flow(velocity, x, sigmas, noise_level=noise_level,
                          step_noise=lambda i, like: torch.randn(like.shape, generator=generator))
        assert out.latents.mean().item() == pytest.approx(m, abs=0.02)
        assert out.latents.std().item() == pytest.approx(s, rel=0.05)


@pytest.mark.parametrize("options, message", [
    ({"noise_level": -0.1}, "noise level must be >= 0"),
    ({"noise_level": 0.5, "sde_steps": [3]}, r"sde steps must lie in 0..2 \(the last step is deterministic\)"),
    ({"noise_level": 0.0, "sde_steps": [0]}, "sde steps need a noise level > 0"),
    ({"noise_level": 0.5}, "stochastic steps need step_noise"),
])
def test_bad_sampler_options(options, message):
    with pytest.raises(ValueError, match=message):
        sample_flow(lambda x, i, sigma: x, torch.zeros(1, 2), schedule(4), **options)
