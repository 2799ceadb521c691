"""Flow-matching sampling with per-step log-probabilities (Flow-GRPO, arXiv 2505.05470, Eq. 9-10).

Wan convention: ``x_σ = (1 − σ)·x0 + σ·ε`` with σ = 1 pure noise, the model predicts the velocity ``v = ε − x0``,
and sampling walks a decreasing schedule ``σ_0 = 1 > σ_1 > … > σ_N = 0``. One step σ → σ' (``dt = σ' − σ < 0``):

- ODE (noise level ``a = 0``): Euler, ``x' = x + v·dt`` — exactly diffusers' ``FlowMatchEulerDiscreteScheduler.step``;
  or DPM-Solver++(2M) (``ode_solver="dpm-solver++"``, :func:`dpm_solver_pp_step`), second order from the previous
  step's data prediction.
- SDE (``a > 0``), one of three forms (``SDE_FORMS``); every one draws ``x' = μ + s·z`` with ``z ~ N(0, I)``:

  - ``flow-grpo`` (default): ``σ_t = a·sqrt(σ / (1 − σ))`` (at σ = 1 the denominator uses the next sigma, ``1 − σ'``),
    ``μ = x + [v + σ_t²/(2σ)·(x + (1 − σ)·v)]·dt``, ``s = σ_t·sqrt(−dt)``.
  - ``dancegrpo``: the same ``μ`` and ``s`` with a constant ``σ_t = a`` (DanceGRPO, arXiv 2505.07818).
  - ``cps`` (coefficient-preserving sampling, arXiv 2509.05952): ``s = σ'·sin(a·π/2)``,
    ``μ = (1 − σ')·x̂0 + σ'·cos(a·π/2)·x̂1`` with ``x̂0 = x − σ·v`` and ``x̂1 = x + (1 − σ)·v``, so the coefficient
    of ``x0`` stays ``1 − σ'`` and the noise keeps total variance ``σ'²`` (``a`` in [0, 1]).

  ``log p(x' | x)`` is the Gaussian log-density of ``x'`` under ``N(μ, s²)``, averaged over the non-batch dimensions,
  for every form.

The sampler is one pure function over a velocity callable, k-diffusion style: no model, file or global state here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

VelocityFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (x [B, ...], step index, σ) -> v [B, ...]
StepCallback = Callable[["StepInfo"], None]

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


SDE_FORMS = ("flow-grpo", "dancegrpo", "cps")
ODE_SOLVERS = ("euler", "dpm-solver++")


def check_sde_form(form: str, noise_level: float) -> None:
    """Raise ValueError unless ``form`` is one of ``SDE_FORMS`` and ``noise_level`` suits it."""
    if form not in SDE_FORMS:
        raise ValueError(f"sde form must be one of {', '.join(SDE_FORMS)}, got {form!r}")
    if noise_level < 0:
        raise ValueError(f"noise level must be >= 0, got {noise_level}")
    # past a = 1, sin(aπ/2) falls again and cos(aπ/2) turns negative: the x̂1 coefficient would flip sign
    if form == "cps" and noise_level > 1:
        raise ValueError(f"the cps noise level must lie in [0, 1], got {noise_level}")


def sde_std_scale(sigma: torch.Tensor, sigma_next: torch.Tensor, noise_level: float,
                  first_next_sigma: torch.Tensor | None = None, form: str = "flow-grpo") -> torch.Tensor:
    """Diffusion coefficient ``σ_t`` of one step σ → σ', the one with step std ``σ_t·sqrt(σ − σ')``.

    - ``flow-grpo``: ``σ_t = a·sqrt(σ / (1 − σ))``; at σ ≥ 1 the denominator is ``1 − first_next_sigma`` (default
      ``σ'``) — flow_grpo, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py:sde_step_with_logprob (``sde_type="sde"``).
    - ``dancegrpo``: ``σ_t = a`` — TeleBoost release, teleboost/algorithms/grpo/sigma_schedule.py:compute_sde_step.
    - ``cps``: no diffusion coefficient of its own; the equivalent ``σ'·sin(aπ/2) / sqrt(σ − σ')`` is returned so
      that ``σ_t·sqrt(σ − σ')`` is the step std for every form.
    """
    check_sde_form(form, noise_level)
    if form == "dancegrpo":
        return torch.full_like(sigma, noise_level)
    if form == "cps":
        return sde_step_std(sigma, sigma_next, noise_level, form=form) / torch.sqrt(sigma - sigma_next)
    below = sigma_next if first_next_sigma is None else first_next_sigma
    denominator = torch.where(sigma >= 1, 1 - below, 1 - sigma)
    return noise_level * torch.sqrt(sigma / denominator)


def sde_step_std(sigma: torch.Tensor, sigma_next: torch.Tensor, noise_level: float,
                 first_next_sigma: torch.Tensor | None = None, form: str = "flow-grpo") -> torch.Tensor:
    """Standard deviation ``s`` of one SDE step σ → σ' (shape of ``sigma``): ``σ_t·sqrt(σ − σ')``, or
    ``σ'·sin(aπ/2)`` for ``cps`` (flow_grpo, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py:sde_step_with_logprob,
    ``sde_type="cps"``)."""
    check_sde_form(form, noise_level)
    if form == "cps":
        return sigma_next * math.sin(noise_level * math.pi / 2)
    return sde_std_scale(sigma, sigma_next, noise_level, first_next_sigma, form) * torch.sqrt(sigma - sigma_next)


def sde_step_mean_std(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                      noise_level: float, first_next_sigma: torch.Tensor | None = None, form: str = "flow-grpo",
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``μ`` [B, ...] and standard deviation ``s`` (scalar tensor) of one step σ → σ' (see the module docstring).

    With ``noise_level = 0`` every form is the Euler step ``x + v·dt``, computed in the same order as diffusers, and
    ``s = 0``. ``cps``: flow_grpo, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py:sde_step_with_logprob
    (``sde_type="cps"``), whose x̂1 coefficient ``sqrt(σ'² − s²)`` is written here as ``σ'·cos(aπ/2)`` (equal, and
    never the square root of a rounded-negative number at ``a = 1``).
    """
    check_sde_form(form, noise_level)
    dt = sigma_next - sigma
    if noise_level == 0:
        return x + dt * velocity, torch.zeros((), dtype=x.dtype, device=x.device)
    if form == "cps":
        angle = noise_level * math.pi / 2
        clean = x - sigma * velocity
        noise = x + (1 - sigma) * velocity
        return (1 - sigma_next) * clean + sigma_next * math.cos(angle) * noise, sigma_next * math.sin(angle)
    std_scale = sde_std_scale(sigma, sigma_next, noise_level, first_next_sigma, form)
    mean = x + (velocity + std_scale**2 / (2 * sigma) * (x + (1 - sigma) * velocity)) * dt
    return mean, std_scale * torch.sqrt(-dt)


def _log_snr(sigma: float) -> float:
    """DPM-Solver's ``λ = log(α / σ)`` of the flow ``x_σ = (1 − σ)·x0 + σ·ε`` (``α = 1 − σ``); −inf at σ = 1."""
    return -math.inf if sigma >= 1 else math.log((1 - sigma) / sigma)


def dpm_solver_pp_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor,
                       sigma_next: float | torch.Tensor, previous: tuple[torch.Tensor, float] | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DPM-Solver++(2M) step σ → σ' of the flow (Lu et al., arXiv 2211.01095, Algorithm 2, with
    ``α = 1 − σ`` and the data prediction ``x̂0 = x − σ·v``). Returns ``(x', x̂0)``; pass ``(x̂0, σ)`` of this step
    as ``previous`` to the next one.

    ``x' = (σ'/σ)·x + (α' − σ'·α/σ)·D`` with ``D = x̂0 + (x̂0 − x̂0_prev) / (2r)``, ``r = h_prev / h``,
    ``h = λ(σ') − λ(σ)``, ``λ = log(α/σ)``: the first-order factor ``α'(1 − e^{−h})`` written without ``λ``, so
    σ = 1 (α = 0) needs no logarithm of 0. First order (``D = x̂0``: the Euler step, computed as Euler computes it)
    without ``previous``, when the previous step started at σ = 1 (``h_prev`` infinite), and into σ' = 0 (``h``
    infinite) — as diffusers' ``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``,
    ``solver_order=2``, ``solver_type="midpoint"``, flow sigmas, ``final_sigmas_type="zero"``) steps.
    """
    clean = x - sigma * velocity
    if float(sigma_next) <= 0 or previous is None or previous[1] >= 1:
        return x + (sigma_next - sigma) * velocity, clean
    previous_clean, previous_sigma = previous
    here, there = float(sigma), float(sigma_next)
    ratio = (_log_snr(here) - _log_snr(previous_sigma)) / (_log_snr(there) - _log_snr(here))
    data = clean + (clean - previous_clean) / (2 * ratio)
    return sigma_next / sigma * x + (1 - sigma_next - sigma_next * (1 - sigma) / sigma) * data, clean


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(sample; mean, std²)`` averaged over every dimension but the first: [B, ...] -> [B]."""
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - _HALF_LOG_TWO_PI
    return log_density.flatten(1).mean(dim=1)


def flow_grpo_cps_log_prob(sample: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """flow_grpo's cps "log-prob" ``−mean((sample − mean)²)``: [B, ...] -> [B] (flow_grpo,
    flow_grpo/diffusers_patch/sd3_sde_with_logprob.py:sde_step_with_logprob, ``sde_type="cps"``).

    Not a log-density: besides the constants it drops the ``1/(2s²)`` factor, so a log-ratio built from it is
    ``2s²`` times the true one (:func:`gaussian_log_prob`'s) and a clip range tuned for flow_grpo's cps runs means a
    different trust region. Only for reproducing those ratios; the sampler records the true log-density.
    """
    return -((sample - mean) ** 2).flatten(1).mean(dim=1)


@dataclass
class StepInfo:
    """What the sampler tells its callback after each step (tensors are the sampler's own; do not modify)."""

    index: int  # step index i: σ_i -> σ_{i+1}
    sigma: float
    sigma_next: float
    x: torch.Tensor  # [B, ...] state before the step
    x_next: torch.Tensor  # [B, ...] state after the step
    velocity: torch.Tensor  # [B, ...] model velocity at (x, σ_i)
    mean: torch.Tensor  # [B, ...] mean of x_next given x
    std: float  # 0 for a deterministic step
    log_prob: torch.Tensor | None  # [B] for a stochastic step, None otherwise


@dataclass
class FlowSample:
    """Result of :func:`sample_flow`."""

    latents: torch.Tensor  # [B, ...] final state x at σ_N
    stochastic_steps: list[int]  # indices i of the steps that drew noise, in order
    state_indices: list[int] = field(default_factory=list)  # j of every x_j a stochastic step starts or ends at
    states: list[torch.Tensor] = field(default_factory=list)  # [B, ...] x_j per state index
    log_probs: list[torch.Tensor] = field(default_factory=list)  # [B] per stochastic step

    def state(self, index: int) -> torch.Tensor:
        """x at σ_index (a recorded state)."""
        return self.states[self.state_indices.index(index)]


def state_indices_of(stochastic_steps: Iterable[int]) -> list[int]:
    """Indices j of the states x_j that stochastic steps i start (j = i) or end (j = i + 1) at, sorted."""
    steps = set(stochastic_steps)
    return sorted(steps | {i + 1 for i in steps})


def sample_flow(velocity_fn: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, noise_level: float = 0.0,
                sde_steps: Sequence[int] | None = None, step_noise: Callable[[int, torch.Tensor], torch.Tensor] |
                None = None, callback: StepCallback | None = None,
                state_dtype: torch.dtype | None = None, form: str = "flow-grpo",
                ode_solver: str = "euler") -> FlowSample:
    """Integrate from ``x`` at ``sigmas[0]`` down the schedule ``sigmas`` [N + 1] (float32, last 0).

    ``sde_steps``: indices of the steps that are stochastic (default: all but the last when ``noise_level`` > 0;
    none otherwise). The last step (to σ = 0) is always deterministic: its Gaussian would have variance
    ``σ_t²·σ`` around a clean sample, and GRPO never trains it. ``step_noise(i, like)`` returns the standard normal
    ``z`` [B, ...] of step i (so each sample's noise can come from its own generator); required when a step is
    stochastic. Returns the final latents, the states every stochastic step starts and ends at, and each stochastic
    step's log-prob [B] — what GRPO needs to recompute ratios.

    ``state_dtype`` (e.g. bfloat16, for storage): every recorded state is rounded to it (kept in ``x``'s dtype)
    before the sampler goes on from it, and a step's log-prob is that of the rounded ``x'`` under the mean of the
    rounded ``x``: the trajectory is the stored one, so the log-probs recompute exactly from the stored states.

    ``form``: the SDE form of the stochastic steps (one of ``SDE_FORMS``; it does not touch the deterministic steps).
    ``ode_solver``: how the deterministic steps integrate (one of ``ODE_SOLVERS``); DPM-Solver++(2M) carries
    its history only across consecutive deterministic steps — a stochastic step starts it again at first order,
    since the noise it draws leaves the previous step's trajectory. A caller that needs each stochastic step's mean
    ``μ`` (GRPO-Guard, the trust region) records ``StepInfo.mean`` from ``callback`` for the steps whose
    ``log_prob`` is not None.
    """
    steps = len(sigmas) - 1
    if steps < 1:
        raise ValueError("sigmas must hold at least two values (one step)")
    if noise_level < 0:
        raise ValueError(f"noise level must be >= 0, got {noise_level}")
    check_sde_form(form, noise_level)
    if ode_solver not in ODE_SOLVERS:
        raise ValueError(f"ode solver must be one of {', '.join(ODE_SOLVERS)}, got {ode_solver!r}")
    if sde_steps is None:
        stochastic = set(range(steps - 1)) if noise_level > 0 else set()
    else:
        stochastic = {int(i) for i in sde_steps}
        bad = sorted(i for i in stochastic if not 0 <= i < steps - 1)
        if bad:
            raise ValueError(f"sde steps must lie in 0..{steps - 2} (the last step is deterministic), got {bad}")
        if stochastic and noise_level == 0:
            raise ValueError("sde steps need a noise level > 0")
    if stochastic and step_noise is None:
        raise ValueError("stochastic steps need step_noise")
    result = FlowSample(latents=x, stochastic_steps=sorted(stochastic), state_indices=state_indices_of(stochastic))
    first_next = sigmas[1]
    history: tuple[torch.Tensor, float] | None = None  # DPM-Solver++(2M): the previous deterministic step's x̂0, σ

    def recorded(state: torch.Tensor) -> torch.Tensor:
        return state if state_dtype is None else state.to(state_dtype).to(state.dtype)

    for i in range(steps):
        if i in result.state_indices:
            x = recorded(x)
            result.states.append(x)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        velocity = velocity_fn(x, i, sigma)
        if i in stochastic:
            mean, std = sde_step_mean_std(x, velocity, sigma, sigma_next, noise_level, first_next, form)
            x_next = recorded(mean + std * step_noise(i, x))
            log_prob = gaussian_log_prob(x_next.detach(), mean, std)
            result.log_probs.append(log_prob)
            history = None
        elif ode_solver == "euler":
            mean, std = sde_step_mean_std(x, velocity, sigma, sigma_next, 0.0)
            x_next, log_prob = mean, None
        else:
            mean, clean = dpm_solver_pp_step(x, velocity, sigma, sigma_next, history)
            x_next, std, log_prob, history = mean, torch.zeros(()), None, (clean, float(sigma))
        if callback is not None:
            callback(StepInfo(index=i, sigma=float(sigma), sigma_next=float(sigma_next), x=x, x_next=x_next,
                              velocity=velocity, mean=mean, std=float(std), log_prob=log_prob))
        x = x_next
    result.latents = x
    return result


def step_log_prob(x: torch.Tensor, x_next: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor,
                  sigma_next: torch.Tensor, noise_level: float, first_next_sigma: torch.Tensor | None = None,
                  form: str = "flow-grpo") -> torch.Tensor:
    """``log p(x_next | x)`` [B] of one recorded SDE step under a (new) model velocity — the policy ratio's half.
    ``form`` must be the one the step was sampled with."""
    mean, std = sde_step_mean_std(x, velocity, sigma, sigma_next, noise_level, first_next_sigma, form)
    return gaussian_log_prob(x_next, mean, std)
