"""Flow-DPO against hand-worked numbers, an independent float64 computation, and the joint loss's gradients."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import WanTransformer3DModel

from vpt.algo.dpo import (DpoStats, FlowDPOLoss, decoupled_coefficient, decoupled_dpo_backward, dpo_beta, dpo_inside,
                          flow_dpo_loss)
from vpt.algo.flow_matching import noised, velocity_errors, velocity_target


def _f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_beta_by_hand():
    sigma = _f64(0.1, 0.5, 1 - 1e-5)
    assert dpo_beta(2.0, sigma, "constant").tolist() == [2.0, 2.0, 2.0]
    timestep = dpo_beta(2.0, sigma, "timestep").tolist()
    assert timestep[:2] == pytest.approx([2 * 0.81, 2 * 0.25], abs=1e-12)
    assert 0 < timestep[2] < 1e-9  # β_t vanishes at high noise
    with pytest.raises(ValueError, match="beta schedule must be one of constant, timestep"):
        dpo_beta(2.0, sigma, "linear")
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_beta(0.0, sigma, "constant")


# Two pairs, β = 2 (β/2 = 1):
#   pair 0: (e_w − e_w^ref) − (e_l − e_l^ref) = (1 − 1.5) − (2 − 1.5) = −1     -> inside = +1
#   pair 1: (0.5 − 0.5) − (0.25 − 0.5) = +0.25                                 -> inside = −0.25
ERR_W, ERR_L = _f64(1.0, 0.5), _f64(2.0, 0.25)
REF_W, REF_L = _f64(1.5, 0.5), _f64(1.5, 0.5)


def test_flow_dpo_loss_by_hand():
    assert dpo_inside(ERR_W, ERR_L, REF_W, REF_L, 2.0).tolist() == [1.0, -0.25]
    loss, stats = flow_dpo_loss(ERR_W, ERR_L, REF_W, REF_L, 2.0)
    # −log σ(x) = log(1 + e^{−x}): log(1 + e^{−1}) = 0.3132616875, log(1 + e^{0.25}) = 0.8259394199
    assert loss.item() == pytest.approx((0.3132616875182228 + 0.8259394198788436) / 2, abs=1e-12)
    assert isinstance(stats, DpoStats)
    assert stats.accuracy.item() == 0.5 and stats.margin.item() == 0.375
    assert stats.chosen_reward.item() == 0.25  # mean of −(e_w − e_w^ref) = [0.5, 0]
    assert stats.rejected_reward.item() == -0.125  # mean of −(e_l − e_l^ref) = [−0.5, 0.25]
    assert stats.chosen_error.item() == 0.75 and stats.rejected_error.item() == 1.125
    assert all(not value.requires_grad and value.dim() == 0 for value in vars(stats).values())
    module_loss, _ = FlowDPOLoss()(ERR_W, ERR_L, REF_W, REF_L, 2.0)
    assert module_loss.item() == loss.item()


def test_per_pair_beta_by_hand():
    assert dpo_inside(ERR_W, ERR_L, REF_W, REF_L, _f64(2.0, 4.0)).tolist() == [1.0, -0.5]
    loss, _ = flow_dpo_loss(ERR_W, ERR_L, REF_W, REF_L, _f64(2.0, 4.0))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2, abs=1e-12)


def test_flow_dpo_loss_matches_an_independent_float64_computation():
    generator = torch.Generator().manual_seed(4)
    err_w, err_l, ref_w, ref_l = torch.rand(4, 9, generator=generator, dtype=torch.float64)
    beta = 0.5 + 3 * torch.rand(9, generator=generator, dtype=torch.float64)
    expected, correct = 0.0, 0
    for ew, el, rw, rl, b in zip(*(t.tolist() for t in (err_w, err_l, ref_w, ref_l, beta))):
        x = -b / 2 * ((ew - rw) - (el - rl))
        expected += -math.log(1 / (1 + math.exp(-x))) / 9
        correct += x > 0
    loss, stats = flow_dpo_loss(err_w, err_l, ref_w, ref_l, beta)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats.accuracy.item() == pytest.approx(correct / 9, abs=1e-12)


def test_zero_differences_give_ln_two():
    errors = _f64(0.3, 1.2, 0.7)
    loss, stats = flow_dpo_loss(errors, errors + 0.1, errors, errors + 0.1, 5.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert stats.accuracy.item() == 0.0 and stats.margin.item() == 0.0


def test_large_inside_stays_finite():
    loss, _ = flow_dpo_loss(_f64(0.0), _f64(1e4), _f64(0.0), _f64(0.0), 1.0)
    assert loss.item() == 0.0
    loss, _ = flow_dpo_loss(_f64(1e4), _f64(0.0), _f64(0.0), _f64(0.0), 1.0)
    assert loss.item() == pytest.approx(5e3)


@pytest.mark.parametrize("beta", [2.0, _f64(2.0, 0.5, 7.0)])
def test_autograd_gradient_is_the_decoupled_coefficient(beta):
    err_w = _f64(1.0, 0.5, 2.0).requires_grad_()
    err_l = _f64(2.0, 0.25, 1.0).requires_grad_()
    ref_w, ref_l = _f64(1.5, 0.5, 1.0), _f64(1.5, 0.5, 2.5)
    loss, _ = flow_dpo_loss(err_w, err_l, ref_w, ref_l, beta)
    loss.backward()
    eta = decoupled_coefficient(err_w, err_l, ref_w, ref_l, beta)
    assert not eta.requires_grad
    half_beta = torch.as_tensor(beta, dtype=torch.float64) / 2
    inside = -half_beta * ((err_w.detach() - ref_w) - (err_l.detach() - ref_l))
    assert eta.tolist() == pytest.approx((half_beta / (1 + torch.exp(inside))).tolist(), abs=1e-15)
    assert err_w.grad.tolist() == pytest.approx((eta / 3).tolist(), abs=1e-15)
    assert err_l.grad.tolist() == pytest.approx((-eta / 3).tolist(), abs=1e-15)


class SavedBytes:
    """Bytes held by autograd's saved tensors right now (``live``) and at most (``peak``)."""

    def __init__(self):
        self.live = self.peak = 0

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(lambda tensor: _Saved(self, tensor), lambda saved: saved.tensor)


class _Saved:
    # Autograd drops the packed object when it frees the graph, so its finaliser marks the bytes released.
    def __init__(self, meter: SavedBytes, tensor: torch.Tensor):
        self.meter, self.tensor, self.size = meter, tensor, tensor.numel() * tensor.element_size()
        meter.live += self.size
        meter.peak = max(meter.peak, meter.live)

    def __del__(self):
        self.meter.live -= self.size


def _sequential_policy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6)).eval()
    return model, lambda x, sigma, _: model(torch.cat([x.flatten(1), sigma[:, None]], dim=1)).view_as(x), (3, 6), None


def _wan_policy():
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads").eval()

    def forward(x, sigma, emb):
        return model(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=emb, return_dict=False)[0]

    return model, forward, (3, 4, 2, 8, 8), (3, 5, 16)


@pytest.mark.parametrize("schedule", ["constant", "timestep"])
@pytest.mark.parametrize("build", [_sequential_policy, _wan_policy], ids=["sequential", "wan"])
def test_decoupled_step_matches_the_joint_gradient_with_one_graph_alive(build, schedule):
    model, forward, shape, emb_shape = build()
    generator = torch.Generator().manual_seed(1)
    x0 = {"chosen": torch.randn(shape, generator=generator), "rejected": torch.randn(shape, generator=generator)}
    noise = torch.randn(shape, generator=generator)
    emb = torch.randn(emb_shape, generator=generator) if emb_shape else None
    sigma = torch.tensor([0.2, 0.5, 0.8])
    meter = SavedBytes()
    live_at_grad_forward = []

    def policy_errors(branch):
        if torch.is_grad_enabled():
            live_at_grad_forward.append(meter.live)
        prediction = forward(noised(x0[branch], noise, sigma), sigma, emb)
        return velocity_errors(prediction, velocity_target(x0[branch], noise))

    with torch.no_grad():  # a reference near the policy keeps every σ(−inside) away from 0 and 1
        ref_w = policy_errors("chosen") * torch.tensor([1.05, 0.9, 1.1])
        ref_l = policy_errors("rejected") * torch.tensor([0.95, 1.1, 1.0])
    beta = dpo_beta(20.0, sigma, schedule)

    with meter.hooks():
        joint_loss, joint_stats = flow_dpo_loss(policy_errors("chosen"), policy_errors("rejected"), ref_w, ref_l,
                                                beta)
        joint_loss.backward()
    joint_peak, joint_live = meter.peak, live_at_grad_forward
    joint = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    meter, live_at_grad_forward = SavedBytes(), []

    with meter.hooks():
        loss, stats = decoupled_dpo_backward(policy_errors, ref_w, ref_l, beta, lambda tensor: tensor.backward())

    assert 0 < stats.accuracy.item() < 1  # the pairs disagree, so both signs of inside are exercised
    assert loss.item() == pytest.approx(joint_loss.item(), rel=1e-6) and not loss.requires_grad
    for field, value in vars(stats).items():
        assert value.item() == pytest.approx(getattr(joint_stats, field).item(), rel=1e-6), field
    for name, parameter in model.named_parameters():
        difference = (parameter.grad - joint[name]).norm().item()
        assert joint[name].norm() > 0, name
        assert difference <= 1e-5 * joint[name].norm().item(), name
    # The joint loss builds the rejected graph while the chosen one is alive; the decoupled step freed it first.
    assert joint_live[0] == 0 and joint_live[1] > 0
    assert live_at_grad_forward == [0, 0]
    assert meter.live == 0 and 0 < meter.peak <= 0.6 * joint_peak


@pytest.mark.parametrize("schedule", ["constant", "timestep"])
@pytest.mark.parametrize("build", [_sequential_policy, _wan_policy], ids=["sequential", "wan"])
def test_with_one_pair_the_decoupled_step_keeps_the_chosen_gradient_and_repeats_no_forward(build, schedule):
    model, forward, shape, emb_shape = build()
    shape = (1, *shape[1:])
    generator = torch.Generator().manual_seed(2)
    x0 = {"chosen": torch.randn(shape, generator=generator), "rejected": torch.randn(shape, generator=generator)}
    noise = torch.randn(shape, generator=generator)
    emb = torch.randn((1, *emb_shape[1:]), generator=generator) if emb_shape else None
    sigma = torch.tensor([0.6])
    meter = SavedBytes()
    calls: list[tuple[str, str, int]] = []

    def errors(kind):
        def run(branch):
            calls.append((kind, branch, meter.live))
            prediction = forward(noised(x0[branch], noise, sigma), sigma, emb)
            return velocity_errors(prediction, velocity_target(x0[branch], noise))
        return run

    policy_errors, local_errors = errors("synchronised"), errors("local")
    with torch.no_grad():
        ref_w, ref_l = policy_errors("chosen") * 1.05, policy_errors("rejected") * 0.97
    beta = dpo_beta(20.0, sigma, schedule)
    calls.clear()

    with meter.hooks():
        joint_loss, _ = flow_dpo_loss(policy_errors("chosen"), policy_errors("rejected"), ref_w, ref_l, beta)
        joint_loss.backward()
    joint_peak = meter.peak
    joint = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    meter, calls = SavedBytes(), []
    backward_calls = []

    def backward(tensor):
        backward_calls.append(tensor.item())
        tensor.backward()

    with meter.hooks():
        loss, _ = decoupled_dpo_backward(policy_errors, ref_w, ref_l, beta, backward, local_errors,
                                         list(model.parameters()))

    # two forwards, each with no other graph alive, and one synchronised backward
    assert [(kind, branch, live) for kind, branch, live in calls] == [("local", "chosen", 0),
                                                                      ("synchronised", "rejected", 0)]
    assert len(backward_calls) == 1
    assert loss.item() == pytest.approx(joint_loss.item(), rel=1e-6)
    for name, parameter in model.named_parameters():
        assert joint[name].norm() > 0, name
        assert (parameter.grad - joint[name]).norm().item() <= 1e-5 * joint[name].norm().item(), name
    assert meter.live == 0 and 0 < meter.peak <= 0.6 * joint_peak
