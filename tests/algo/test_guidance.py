"""Flow-NRG reward guidance: the σ/(1−σ) factor, the guided velocity, the weighted reward gradient (analytic in
float64 and by central differences through the real latent reward model), guided Euler steps, and when the reward
is (not) evaluated."""

from __future__ import annotations

import pytest
import torch

from vpt.algo.flow_sde import sample_flow
from vpt.algo.guidance import (
    RewardGuidedVelocity, guidance_factor, guided_velocity, weighted_reward_gradient,
)


def zero_velocity(x, index, sigma):
    return torch.zeros_like(x)


def linear_reward(c: torch.Tensor):
    """``r(x) = ⟨c, x⟩`` per sample, one dimension: ``[B, ...] -> [B, 1]``."""
    def reward(x, sigma):
        return (x * c).flatten(1).sum(dim=1, keepdim=True)

    return reward


def refusing_reward(x, sigma):
    raise AssertionError("the reward must not be evaluated")


def test_guidance_factor_is_sigma_over_one_minus_sigma_and_zero_at_pure_noise():
    """σ/(1−σ) at σ = 0, 0.5, 0.75 is 0, 1, 3 exactly, and σ = 1 gives 0 (no guidance), not infinity."""
    factor = guidance_factor(torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert factor.dtype == torch.float32
    assert factor.tolist() == [0.0, 1.0, 3.0, 0.0]
    assert guidance_factor(torch.tensor(0.75)).item() == 3.0  # a scalar σ stays a scalar
    assert guidance_factor(torch.tensor(1.0)).item() == 0.0


def test_guided_velocity_subtracts_the_scaled_gradient():
    """v − scale·σ/(1−σ)·grad on hand numbers: σ = 0.75, scale 2 -> v − 6·grad; a per-sample σ [B] scales each
    sample by its own factor (σ = 1 leaves its sample unguided)."""
    v = torch.tensor([[1.0, 2.0]])
    grad = torch.tensor([[0.5, -1.0]])
    guided = guided_velocity(v, grad, torch.tensor(0.75), 2.0)
    assert guided.tolist() == [[1.0 - 6 * 0.5, 2.0 + 6 * 1.0]] == [[-2.0, 8.0]]

    v = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]).reshape(3, 1, 2)
    grad = torch.tensor([[0.5, -1.0], [0.5, -1.0], [0.5, -1.0]]).reshape(3, 1, 2)
    guided = guided_velocity(v, grad, torch.tensor([0.5, 0.75, 1.0]), 2.0)
    # factors 1, 3, 0 -> subtract 2·grad, 6·grad, nothing
    assert guided.tolist() == [[[0.0, 4.0]], [[-2.0, 8.0]], [[1.0, 2.0]]]
    assert guided_velocity(v, grad, torch.tensor(0.5), 0.0).tolist() == v.tolist()


def analytic_reward(x, sigma):
    """``r_0 = Σ x²``, ``r_1 = Σ sin x`` per sample (float64)."""
    flat = x.flatten(1)
    return torch.stack([(flat**2).sum(dim=1), torch.sin(flat).sum(dim=1)], dim=1)


@pytest.mark.parametrize("no_grad", [False, True])
def test_weighted_reward_gradient_of_an_analytic_reward_in_float64(no_grad):
    """The gradient of Σ_b (0.25·Σ x² − 2·Σ sin x) is 0.25·2x − 2·cos x to float64 precision, in x's dtype; the
    rewards come back detached and equal to the reward's values; it works under torch.no_grad() too. (Weights
    exact in float32: the function multiplies by float32 weights.)"""
    x = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = torch.tensor([0.25, -2.0], dtype=torch.float64)
    if no_grad:
        with torch.no_grad():
            grad, rewards = weighted_reward_gradient(analytic_reward, x, torch.tensor(0.5), weights)
    else:
        grad, rewards = weighted_reward_gradient(analytic_reward, x, torch.tensor(0.5), weights)
    expected = 0.25 * 2 * x - 2 * torch.cos(x)
    assert grad.dtype == torch.float64 and grad.shape == x.shape and not grad.requires_grad
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert rewards.shape == (3, 2) and rewards.dtype == torch.float64
    assert not rewards.requires_grad and rewards.grad_fn is None
    torch.testing.assert_close(rewards, analytic_reward(x, None), rtol=0, atol=0)
    assert not x.requires_grad  # the caller's tensor is left alone


def test_weighted_reward_gradient_hands_the_reward_a_per_sample_sigma():
    """A scalar σ reaches the reward as float32 [B]; a per-sample σ [B] arrives as given."""
    seen = []

    def reward(x, sigma):
        seen.append(sigma.clone())
        return x.flatten(1).sum(dim=1, keepdim=True)

    x = torch.zeros(3, 2)
    weighted_reward_gradient(reward, x, torch.tensor(0.5), torch.tensor([1.0]))
    weighted_reward_gradient(reward, x, torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0]))
    assert seen[0].dtype == torch.float32 and seen[0].tolist() == [0.5, 0.5, 0.5]
    assert seen[1].tolist() == pytest.approx([0.1, 0.2, 0.3])


@pytest.fixture(scope="module")
def latent_reward(tiny_zoo):
    """The real latent reward model cut from the tiny zoo's 2-block transformer, and a prompt embedding [1, L, D]."""
    from vpt.models.latent_reward import cut_generator
    from vpt.models.loading import load_wan_pipeline
    from vpt.models.wan import encode_prompts

    pipe = load_wan_pipeline(tiny_zoo)
    embeds = encode_prompts(pipe, ["a red ball bouncing on a blue floor"])[0]
    model = cut_generator(pipe.transformer, 2, ["vq", "mq"], seed=0).eval()
    return model, embeds


@pytest.mark.parametrize("sigma", [0.2, 0.6])
def test_guidance_term_matches_central_differences_through_the_latent_reward_model(latent_reward, sigma):
    """The guidance term of RewardGuidedVelocity, divided by −scale·σ/(1−σ), is the gradient of the weighted reward
    sum R(x) = Σ_b Σ_d w_d r_d(x_b, σ) through the real (float32) latent reward model: along the gradient and along
    random unit directions u, (R(x + hu) − R(x − hu)) / 2h = ⟨grad, u⟩ within 1e-3·‖grad‖ (h = 0.05; measured
    errors are ~1e-5·‖grad‖, so a gradient off by 1% would fail)."""
    model, embeds = latent_reward
    batch = 2
    prompt = embeds.expand(batch, -1, -1)
    x = torch.randn(batch, 16, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    weights = model.weight_vector({"vq": 0.7, "mq": -1.3})
    scale, sigma_t = 1.5, torch.tensor(sigma)

    def reward(latents, s):
        return model(latents, s, prompt)

    with torch.no_grad():
        velocity = RewardGuidedVelocity(zero_velocity, reward, weights, scale)(x, 1, sigma_t)
    grad = (velocity / (-scale * guidance_factor(sigma_t))).double()
    norm = grad.norm().item()
    assert norm > 1e-3 and torch.isfinite(grad).all()

    def total(latents):
        with torch.no_grad():
            return (model(latents, sigma_t.expand(batch), prompt).double() * weights.double()).sum().item()

    h, generator = 0.05, torch.Generator().manual_seed(4)
    directions = [grad] + [torch.randn(x.shape, generator=generator, dtype=torch.float64) for _ in range(4)]
    for u in directions:
        u = u / u.norm()
        difference = (total(x + h * u.float()) - total(x - h * u.float())) / (2 * h)
        assert difference == pytest.approx((grad * u).sum().item(), abs=1e-3 * norm)


def test_one_guided_euler_step_of_a_linear_reward_moves_x_by_the_hand_computed_amount():
    """Zero model velocity, r(x) = ⟨c, x⟩ with weight 0.5, scale 2, σ 0.5 -> 0.25: v = −2·(0.5/0.5)·0.5·c = −c and
    x' = x + (0.25 − 0.5)·v = x + 0.25·c, exactly (dyadic numbers)."""
    c = torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.0, -0.25]])
    x = torch.tensor([[0.5, 0.25, -1.0], [2.0, -3.0, 0.125]])
    guided = RewardGuidedVelocity(zero_velocity, linear_reward(c), torch.tensor([0.5]), 2.0)
    out = sample_flow(guided, x, torch.tensor([0.5, 0.25]))
    assert torch.equal(out.latents, x + 0.25 * c)
    assert torch.equal(guided(x, 0, torch.tensor(0.5)), -c)


def test_the_final_reward_grows_with_the_guidance_scale():
    """Through sample_flow on a toy nonlinear velocity (1 -> 0 in 6 steps), a linear reward of the final sample
    increases with the scale 0 < 0.5 < 2 for every sample; scale 0 is unguided sampling bit for bit."""
    generator = torch.Generator().manual_seed(0)
    matrix = 0.3 * torch.randn(4, 4, generator=generator)
    c = torch.randn(4, generator=generator)
    x = torch.randn(5, 4, generator=generator)
    sigmas = torch.linspace(1, 0, 7)

    def velocity(latents, index, sigma):
        return torch.tanh(latents @ matrix) + latents

    def final_reward(scale):
        guided = RewardGuidedVelocity(velocity, linear_reward(c), torch.tensor([1.0]), scale)
        return linear_reward(c)(sample_flow(guided, x, sigmas).latents, None)[:, 0]

    rewards = [final_reward(scale) for scale in (0.0, 0.5, 2.0)]
    assert (rewards[0] < rewards[1]).all() and (rewards[1] < rewards[2]).all()
    assert torch.equal(rewards[0], linear_reward(c)(sample_flow(velocity, x, sigmas).latents, None)[:, 0])


def test_scale_zero_and_pure_noise_never_evaluate_the_reward():
    """Scale 0 returns the model's very velocity tensor without calling the reward, at any σ; at σ = 1 (the first
    step) a positive scale does not call it either."""
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    made = []

    def velocity(latents, index, sigma):
        made.append(torch.full_like(latents, 0.5))
        return made[-1]

    weights = torch.tensor([1.0])
    for sigma in (0.3, 1.0):
        assert RewardGuidedVelocity(velocity, refusing_reward, weights, 0.0)(x, 2, torch.tensor(sigma)) is made[-1]
    assert RewardGuidedVelocity(velocity, refusing_reward, weights, 2.0)(x, 0, torch.tensor(1.0)) is made[-1]
    out = sample_flow(RewardGuidedVelocity(velocity, refusing_reward, weights, 0.0), x, torch.linspace(1, 0, 4))
    assert torch.equal(out.latents, sample_flow(velocity, x, torch.linspace(1, 0, 4)).latents)


def test_on_reward_hears_the_rewards_of_guided_steps_only():
    """Over the schedule 1, 0.75, 0.5, 0 the reward runs at steps 1 and 2 only (σ < 1), never at σ = 1, and
    on_reward hears (index, rewards [B, D]) of the state each guided step starts from."""
    c = torch.tensor([1.0, -1.0, 2.0])
    evaluated, heard, states = [], [], {}

    def scores(x):
        return torch.stack([(x * c).sum(dim=1), (x**2).sum(dim=1)], dim=1)

    def reward(x, sigma):
        evaluated.append(sigma.tolist())
        return scores(x)

    def callback(info):
        states[info.index] = info.x

    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    guided = RewardGuidedVelocity(zero_velocity, reward, torch.tensor([1.0, 0.0]), 1.0,
                                  on_reward=lambda index, rewards: heard.append((index, rewards)))
    sample_flow(guided, x, torch.tensor([1.0, 0.75, 0.5, 0.0]), callback=callback)
    assert evaluated == [[0.75, 0.75], [0.5, 0.5]]
    assert [index for index, _ in heard] == [1, 2]
    for index, rewards in heard:
        assert rewards.shape == (2, 2) and not rewards.requires_grad
        assert torch.equal(rewards, scores(states[index]))
