"""TempFlow-GRPO (arXiv 2508.04324): noise-aware step weights.

- Noise-aware weights: each trained step's loss is multiplied by its step std normalised to mean about 1 over the
  schedule, ``w_k = s_k / (mean_k s_k + 1e-8)`` with ``s_k = σ_t(σ_k)·sqrt(σ_k − σ_{k+1})``, so high-noise early steps
  (where exploration happens) outweigh the late refinement steps. The paper's σ_t is the flow-grpo one; with the
  constant σ_t of dancegrpo the weight is only ``Norm(sqrt(Δt))``.
- Trajectory branching (``sample-rollouts --branch``): ODE to step k, SDE draws at k, ODE tail; every final reward
  credits step k alone, so the advantage is a z-score within (prompt group, branch point) — the GRPO group each
  branch point's draws are written as, normalised by :func:`vpt.algo.grpo.group_advantages`.
"""

from __future__ import annotations

import torch

from vpt.algo.flow_sde import sde_step_std

WEIGHT_EPS = 1e-8


def noise_step_weights(sigmas: torch.Tensor, eta: float, form: str = "flow-grpo") -> torch.Tensor:
    """Weights ``w_k = s_k / (mean_k s_k + 1e-8)`` [S] of the transitions of ``sigmas`` [S + 1] (decreasing).

    ``s_k`` is the step std of transition k under ``form`` (:func:`vpt.algo.flow_sde.sde_step_std`, the σ ≥ 1
    denominator of flow-grpo using the first step's ``σ_1``, as the sampler does), for every transition including
    the last, untrained one — the mean runs over all S, as in the release. Computed in float64, returned in
    ``sigmas``' dtype; index it by each trained row's global step k.

    TeleBoost release, teleboost/algorithms/tempflow/noise.py:compute_timestep_weights (the release labels it the
    paper's Eq. 8); TempFlow-GRPO, arXiv 2508.04324.
    """
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of at least two values, got {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing")
    if eta <= 0:
        raise ValueError(f"noise weights need a noise level > 0, got {eta}")
    schedule = sigmas.double()
    std = sde_step_std(schedule[:-1], schedule[1:], eta, schedule[1], form)
    return (std / (std.mean() + WEIGHT_EPS)).to(sigmas.dtype)
