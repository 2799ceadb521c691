"""Velocity drift by noise level (vpt.algo.drift) against an independent float64 computation, on toy velocity fields
and on the tiny zoo's transformer under a LoRA policy; exactly 0 for an unchanged policy."""

from __future__ import annotations

import pytest
import torch

from vpt.algo.drift import DRIFT_SIGMAS, band_drift, drift_by_noise_level


def linear_field(weight: torch.Tensor, bias: float):
    """v(x, σ) = weight·x (over channels) + bias·σ: a velocity field whose drift is easy to write down."""
    def velocity(x, index, sigma):
        return torch.einsum("oc,bc...->bo...", weight, x) + bias * sigma.reshape(-1, 1, 1, 1, 1)
    return velocity


def test_drift_by_noise_level_matches_a_float64_computation():
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 4, 3, 2, 2, generator=generator)
    a, b = torch.randn(4, 4, generator=generator), torch.randn(4, 4, generator=generator)
    policy, reference = linear_field(a, 0.5), linear_field(b, -0.25)
    drift = drift_by_noise_level([policy] * 2, [reference] * 2, x0, seed=11)
    assert list(drift) == list(DRIFT_SIGMAS)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(11)).double()
    for sigma, value in drift.items():
        x = (1 - sigma) * x0.double() + sigma * noise
        difference = torch.einsum("oc,bc...->bo...", a.double() - b.double(), x) + 0.75 * sigma
        assert value == pytest.approx(float((difference ** 2).mean()), rel=1e-6)
    assert drift_by_noise_level([policy] * 2, [policy] * 2, x0, seed=11) == dict.fromkeys(DRIFT_SIGMAS, 0.0)
    # the band form draws its own σ: the same seed measures at the same points, an unchanged policy at 0
    assert band_drift(policy, reference, x0, (0.7, 1.0), 2, 5) == band_drift(policy, reference, x0, (0.7, 1.0), 2, 5)
    assert band_drift(policy, policy, x0, (0.0, 0.3), 2, 5) == 0.0


def test_drift_of_a_lora_policy_from_its_generator(tiny_zoo):
    from vpt.models.loading import load_wan_transformer
    from vpt.stages.guard import DRIFT_SEED, adapter_disabled, drift_metrics
    from vpt.train.policy import new_policy

    policy = new_policy(load_wan_transformer(tiny_zoo), ["to_q", "to_v"], 4, 4.0, seed=0)
    generator = torch.Generator().manual_seed(0)
    probes = [(torch.randn(16, 3, 4, 4, generator=generator), torch.randn(1, 8, 32, generator=generator))
              for _ in range(2)]
    # a fresh LoRA adds exactly 0: its drift from the generator is exactly 0 at every noise level
    unchanged = drift_metrics(policy, lambda: adapter_disabled(policy), probes, torch.float32)
    assert unchanged == {f"drift/{sigma:.2f}": 0.0 for sigma in DRIFT_SIGMAS}
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    moved = drift_metrics(policy, lambda: adapter_disabled(policy), probes, torch.float32)
    x0 = torch.stack([latent for latent, _ in probes])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(DRIFT_SEED))
    for sigma in DRIFT_SIGMAS:
        values = []
        for i, (_, embeds) in enumerate(probes):
            x = ((1 - sigma) * x0[i:i + 1].double() + sigma * noise[i:i + 1].double()).float()
            inputs = dict(hidden_states=x, timestep=torch.tensor([sigma * 1000.0]), encoder_hidden_states=embeds,
                          return_dict=False)
            with torch.no_grad():
                trained = policy(**inputs)[0].double()
                with policy.disable_adapter():
                    base = policy(**inputs)[0].double()
            values.append(float(((trained - base) ** 2).mean()))
        assert moved[f"drift/{sigma:.2f}"] == pytest.approx(sum(values) / 2, rel=1e-5)
        assert moved[f"drift/{sigma:.2f}"] > 0
