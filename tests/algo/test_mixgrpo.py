"""MixGRPO: the sliding SDE window against the release's state machine and hand-worked positions, the compressed
tail, and DPM-Solver++(2M) on the flow against diffusers' scheduler and an independent float64 solver."""

from __future__ import annotations

import math

import pytest
import torch

from vpt.algo.flow_sde import dpm_solver_pp_step, sample_flow
from vpt.algo.mixgrpo import compressed_tail, sliding_window, tail_steps


def release_progressive_starts(iterations: int, last: int, stride: int, every: int) -> list[int]:
    """The MixGRPO release's progressive state machine (prog_overlap, roll_back), written out step by step: the
    window start of each iteration, the first one before any update."""
    start, in_place, starts = 0, 0, []
    for _ in range(iterations):
        starts.append(start)
        in_place += 1
        if in_place >= every:
            in_place = 0
            start += stride
        if start > last:
            start, in_place = 0, 0
    return starts


def test_progressive_window_positions_worked_by_hand():
    # 8 steps, windows of 2: starts 0..5 (steps 0..6 may be stochastic); stride 2, three iterations per position
    starts = [sliding_window("progressive", k, steps=8, size=2, stride=2, every=3)[0] for k in range(12)]
    assert starts == [0, 0, 0, 2, 2, 2, 4, 4, 4, 0, 0, 0]
    assert sliding_window("progressive", 4, steps=8, size=2, stride=2, every=3) == (2, 4)


@pytest.mark.parametrize("steps,size,stride,every", [(8, 2, 1, 1), (25, 4, 1, 25), (10, 3, 2, 2), (16, 5, 3, 4)])
def test_progressive_window_follows_the_release_state_machine(steps, size, stride, every):
    last = steps - 1 - size
    expected = release_progressive_starts(200, last, stride, every)
    ours = [sliding_window("progressive", k, steps, size, stride, every) for k in range(200)]
    assert [start for start, _ in ours] == expected
    assert all(end - start == size and end <= steps - 1 for start, end in ours)


def test_random_window_is_seeded_in_range_and_covers_every_position():
    draws = [sliding_window("random", k, steps=8, size=3, seed=5) for k in range(200)]
    assert draws == [sliding_window("random", k, steps=8, size=3, seed=5) for k in range(200)]
    assert {start for start, _ in draws} == set(range(5))  # starts 0..4: the window ends by step 7
    assert all(end - start == 3 for start, end in draws)
    assert draws != [sliding_window("random", k, steps=8, size=3, seed=6) for k in range(200)]


@pytest.mark.parametrize("args", [("sliding", 0, 8, 2), ("progressive", 0, 8, 8), ("progressive", -1, 8, 2),
                                  ("progressive", 0, 8, 0)])
def test_window_refuses_what_cannot_be_placed(args):
    with pytest.raises(ValueError):
        sliding_window(*args)


def test_tail_steps_rounds_and_keeps_one():
    assert [tail_steps(count, 0.4) for count in (1, 2, 5, 10, 21)] == [1, 1, 2, 4, 8]
    assert tail_steps(7, 1.0) == 7
    for ratio in (0.0, 1.5):
        with pytest.raises(ValueError):
            tail_steps(4, ratio)


def test_compressed_tail_values_worked_out_in_float64():
    shift = 3.0
    times = torch.linspace(1, 0, 9, dtype=torch.float64)
    sigmas = (shift * times / (1 + (shift - 1) * times)).float()
    out = compressed_tail(sigmas, end=3, ratio=0.4, shift=shift)  # 5 steps after sigma_3 -> 2
    assert torch.equal(out[:4], sigmas[:4])
    time_end = 5 / 8  # sigma_3 is the shifted time 5/8
    expected = [shift * t / (1 + (shift - 1) * t) for t in (time_end / 2, 0.0)]
    assert out[4:].tolist() == pytest.approx(expected, rel=1e-6)
    assert len(out) == 6 and out[-1] == 0
    assert torch.equal(compressed_tail(sigmas, end=3, ratio=1.0, shift=shift), sigmas)
    linear = compressed_tail(sigmas, end=2, ratio=0.5, shift=1.0)
    assert linear[3:].tolist() == pytest.approx([2 / 3 * float(sigmas[2]), 1 / 3 * float(sigmas[2]), 0.0], rel=1e-6)


def _velocity(x: torch.Tensor, index: int, sigma: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear velocity field (any field will do: the solvers are compared on it)."""
    return torch.tanh(x) * (1 + sigma) - 0.3 * x + 0.2 * torch.sin(3 * x)


@pytest.mark.parametrize("steps,shift", [(8, 3.0), (5, 1.0), (20, 5.0)])
def test_dpm_solver_pp_matches_diffusers_multistep_scheduler(steps, shift):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
                                            algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                            final_sigmas_type="zero")
    scheduler.set_timesteps(steps)
    start = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(steps))
    x = start.clone()
    for index, timestep in enumerate(scheduler.timesteps):
        x = scheduler.step(_velocity(x, index, scheduler.sigmas[index]), timestep, x).prev_sample
    ours = sample_flow(_velocity, start.clone(), scheduler.sigmas, ode_solver="dpm-solver++").latents
    euler = sample_flow(_velocity, start.clone(), scheduler.sigmas).latents
    assert (ours - x).abs().max() < 2e-6
    assert (euler - x).abs().max() > 1e-3  # the comparison can tell the solvers apart


def _dpm_2m_float64(x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """DPM-Solver++(2M) written from Lu et al. (2022), Algorithm 2, in log-SNR form, float64."""
    lam = [(-math.inf if s >= 1 else math.log((1 - s) / s)) if s > 0 else math.inf for s in sigmas]
    previous = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        clean = x - s * _velocity(x, i, torch.tensor(s, dtype=torch.float64))
        if s_next == 0:
            x = clean
            continue
        h = lam[i + 1] - lam[i]
        data = clean
        if previous is not None and math.isfinite(lam[i - 1]):
            r = (lam[i] - lam[i - 1]) / h
            data = (1 + 1 / (2 * r)) * clean - 1 / (2 * r) * previous
        alpha_next = 1 - s_next
        x = (s_next / s) * x - alpha_next * math.expm1(-h) * data if s < 1 else s_next * x + alpha_next * data
        previous = clean
    return x


def test_dpm_solver_pp_matches_an_independent_float64_solver_from_sigma_one():
    sigmas = [1.0, 0.9, 0.75, 0.55, 0.3, 0.12, 0.0]
    start = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = sample_flow(_velocity, start.clone(), torch.tensor(sigmas, dtype=torch.float64),
                       ode_solver="dpm-solver++").latents
    assert torch.allclose(ours, _dpm_2m_float64(start.clone(), sigmas), rtol=0, atol=1e-12)


def test_dpm_solver_pp_is_second_order_where_euler_is_first():
    start = torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def run(steps: int, solver: str) -> torch.Tensor:
        sigmas = torch.linspace(0.95, 0.05, steps + 1, dtype=torch.float64)
        return sample_flow(_velocity, start.clone(), sigmas, ode_solver=solver).latents

    reference = run(4096, "euler")
    for solver, order in (("euler", 1), ("dpm-solver++", 2)):
        coarse, fine = ((run(n, solver) - reference).abs().max().item() for n in (16, 32))
        assert math.log2(coarse / fine) == pytest.approx(order, abs=0.35)


def test_first_order_step_is_the_euler_step_and_a_stochastic_step_restarts_the_history():
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    velocity = _velocity(x, 0, torch.tensor(0.6))
    first, clean = dpm_solver_pp_step(x, velocity, 0.6, 0.4)
    assert torch.equal(first, x + (0.4 - 0.6) * velocity)
    assert torch.equal(clean, x - 0.6 * velocity)
    assert torch.equal(dpm_solver_pp_step(x, velocity, 0.6, 0.0)[0], x + (0.0 - 0.6) * velocity)

    sigmas = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    seen = {}

    def keep(info) -> None:
        seen[info.index] = (info.x, info.velocity, info.x_next)

    sample_flow(_velocity, x, sigmas, 0.7, [1], lambda i, like: torch.zeros_like(like), callback=keep,
                ode_solver="dpm-solver++")
    after_noise, velocity, out = seen[2]
    assert torch.equal(out, after_noise + (sigmas[3] - sigmas[2]) * velocity)  # first order again after step 1
    before, velocity, out = seen[3]
    # second order, from step 2's data prediction
    assert not torch.allclose(out, before + (sigmas[4] - sigmas[3]) * velocity, atol=1e-4)
