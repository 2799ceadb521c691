"""Flow-DPO (VideoAlign, arXiv 2501.13918, Eq. 6; Diffusion-DPO, Wallace et al. 2023; VideoAlign's Flow-DPO; TeleBoost's
gradient-decoupled DPO).

A preference pair shares the noise level σ and the noise ε; the chosen clip (w) and the rejected clip (l) give
velocity errors ``e = ‖v_θ(x_σ) − (ε − x0)‖²`` under the policy and ``e^ref`` under the frozen reference (the same
transformer with LoRA disabled, no grad). With

    ``inside = −(β/2)·[(e_w − e_w^ref) − (e_l − e_l^ref)]``

the loss is ``L = −log σ(inside)``, averaged over the pairs. β is either constant (VideoAlign's choice) or
Diffusion-DPO's timestep weighting carried to velocity prediction, ``β_t = β·(1 − σ)²`` (VideoAlign's lemma: the
ε-prediction error equals ``(1 − t)²`` times the velocity error). ``β_t → 0`` at high noise, where the loss stops
regularising toward the reference; VideoAlign found the constant β better (less reward hacking).

Gradient-decoupled DPO (TeleBoost): ``∂L_i/∂e_w = +η_i`` and ``∂L_i/∂e_l = −η_i`` with
``η_i = (β_i/2)·σ(−inside_i)``. Computing η once without grad lets the two branches be back-propagated one at a
time (``η·e_w``, then ``−η·e_l``) with the same total gradient; with one pair per micro-batch the chosen branch's
gradient is kept aside instead, so no forward is repeated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

BETA_SCHEDULES = ("constant", "timestep")

Beta = torch.Tensor | float


def dpo_beta(beta: float, sigma: torch.Tensor, schedule: str) -> torch.Tensor:
    """Per-pair β ``[B]`` from noise levels σ ``[B]`` (σ's dtype): ``constant`` → β; ``timestep`` →
    ``β_t = β·(1 − σ)²`` (Diffusion-DPO's weighting in velocity form; vanishes as σ → 1)."""
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta schedule must be one of {', '.join(BETA_SCHEDULES)}, got {schedule!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if schedule == "constant":
        return torch.full_like(sigma, beta)
    return beta * (1 - sigma) ** 2


def _half_beta(beta: Beta, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(beta, dtype=like.dtype, device=like.device).detach() / 2


def dpo_inside(err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor,
               beta: Beta) -> torch.Tensor:
    """``inside = −(β/2)·[(e_w − e_w^ref) − (e_l − e_l^ref)]`` ``[B]`` from errors ``[B]``; β a float or ``[B]``.

    Positive when the policy improved on the chosen clip more than on the rejected one (relative to the reference).
    """
    return -_half_beta(beta, err_w) * ((err_w - ref_err_w) - (err_l - ref_err_l))


@dataclass
class DpoStats:
    """Diagnostics of one DPO batch (detached scalar tensors, means over the pairs)."""

    accuracy: torch.Tensor  # share of pairs with inside > 0: the implicit reward prefers the chosen clip
    margin: torch.Tensor  # mean inside
    chosen_reward: torch.Tensor  # mean −(β/2)(e_w − e_w^ref)
    rejected_reward: torch.Tensor  # mean −(β/2)(e_l − e_l^ref)
    chosen_error: torch.Tensor  # mean e_w
    rejected_error: torch.Tensor  # mean e_l


def flow_dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor,
                  beta: Beta) -> tuple[torch.Tensor, DpoStats]:
    """``L = mean_i −log σ(inside_i)`` (scalar, via logsigmoid) and its :class:`DpoStats`; errors ``[B]``, β a float
    or ``[B]`` (:func:`dpo_beta`). Both branches' graphs stay alive until ``L.backward()``; see
    :func:`decoupled_dpo_backward` for the lower-memory equivalent."""
    half_beta = _half_beta(beta, err_w)
    chosen_reward = -half_beta * (err_w - ref_err_w)
    rejected_reward = -half_beta * (err_l - ref_err_l)
    inside = chosen_reward - rejected_reward
    loss = -F.logsigmoid(inside).mean()
    with torch.no_grad():
        stats = DpoStats(accuracy=(inside > 0).to(inside.dtype).mean(), margin=inside.detach().mean(),
                         chosen_reward=chosen_reward.detach().mean(), rejected_reward=rejected_reward.detach().mean(),
                         chosen_error=err_w.detach().mean(), rejected_error=err_l.detach().mean())
    return loss, stats


def decoupled_coefficient(err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor,
                          ref_err_l: torch.Tensor, beta: Beta) -> torch.Tensor:
    """``η_i = (β_i/2)·σ(−inside_i)`` ``[B]``, without grad: ``∂(−log σ(inside_i))/∂e_w,i = +η_i`` and
    ``∂(−log σ(inside_i))/∂e_l,i = −η_i``."""
    with torch.no_grad():
        err_w, err_l = err_w.detach(), err_l.detach()
        inside = dpo_inside(err_w, err_l, ref_err_w.detach(), ref_err_l.detach(), beta)
        return _half_beta(beta, err_w) * torch.sigmoid(-inside)


class _GradientTerm(torch.autograd.Function):
    """A zero-valued scalar whose gradient with respect to ``parameters`` is ``gradients`` (kept aside earlier):
    back-propagated together with another loss, it adds them in the same (synchronised) backward pass, without
    saving anything for backward beyond the gradients themselves."""

    @staticmethod
    def forward(ctx, gradients, *parameters):
        ctx.gradients = gradients
        return parameters[0].new_zeros(())

    @staticmethod
    def backward(ctx, grad_output):
        return (None, *(None if gradient is None else gradient * grad_output for gradient in ctx.gradients))


def decoupled_dpo_backward(policy_errors: Callable[[str], torch.Tensor], ref_err_w: torch.Tensor,
                           ref_err_l: torch.Tensor, beta: Beta, backward: Callable[[torch.Tensor], None],
                           local_errors: Callable[[str], torch.Tensor] | None = None,
                           parameters: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, DpoStats]:
    """One gradient-decoupled Flow-DPO step (TeleBoost): accumulates into the parameters' ``.grad`` exactly the
    gradient of ``flow_dpo_loss(...)`` (mean over the B pairs) and returns that loss (detached) and its stats, with
    only one branch's graph alive at a time.

    ``policy_errors(branch)``, branch in ``("chosen", "rejected")``, runs the policy on that branch and returns its
    errors ``[B]`` (with grad when grad is enabled); it must be deterministic (same σ, ε, no dropout).
    ``backward(scalar)`` back-propagates (e.g. accelerate's ``backward``, which also synchronises processes).

    With one pair (B = 1), ``local_errors`` (the same policy, run outside any gradient synchronisation) and the
    trainable ``parameters``: ``g_w = ∂e_w/∂θ`` is taken with ``torch.autograd.grad`` (which frees the chosen
    graph), the rejected branch runs with grad, η follows from both errors, and one ``backward(T − η·e_l)`` — T a
    zero-valued term whose gradient is η·g_w — adds both branches: no forward is repeated, and the gradient is
    synchronised once. The stash is one gradient of the trainable parameters (a LoRA adapter: small).

    Otherwise: ``e_l`` without grad (first, so its transient activations never meet a live graph); ``e_w`` with
    grad; η; ``backward(Σ η·e_w / B)``, which frees the chosen graph; ``e_l`` again with grad; ``backward(−Σ η·e_l
    / B)``: one extra no-grad forward of the rejected branch. By the chain rule either way sums to ``∂L/∂θ =
    Σ_i (η_i ∂e_w,i/∂θ − η_i ∂e_l,i/∂θ) / B``.
    """
    count = ref_err_w.shape[0]
    if count == 1 and local_errors is not None and parameters is not None:
        parameters = list(parameters)
        err_w = local_errors("chosen")
        gradients = torch.autograd.grad(err_w.sum(), parameters, allow_unused=True)
        err_l = policy_errors("rejected")
        eta = decoupled_coefficient(err_w, err_l, ref_err_w, ref_err_l, beta)
        chosen_term = _GradientTerm.apply(tuple(None if g is None else eta[0] * g for g in gradients), *parameters)
        backward(chosen_term - eta[0] * err_l[0])
    else:
        with torch.no_grad():
            first_err_l = policy_errors("rejected")
        err_w = policy_errors("chosen")
        eta = decoupled_coefficient(err_w, first_err_l, ref_err_w, ref_err_l, beta)
        backward((eta * err_w).sum() / count)
        err_l = policy_errors("rejected")
        backward(-(eta * err_l).sum() / count)
    loss, stats = flow_dpo_loss(err_w.detach(), err_l.detach(), ref_err_w, ref_err_l, beta)
    return loss.detach(), stats


class FlowDPOLoss(torch.nn.Module):
    """``L = −log σ(−(β/2)·[(e_w − e_w^ref) − (e_l − e_l^ref)])`` averaged over pairs, as a module; ``forward``
    returns ``(loss, DpoStats)`` (see :func:`flow_dpo_loss`)."""

    def forward(self, err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor,
                beta: Beta) -> tuple[torch.Tensor, DpoStats]:
        return flow_dpo_loss(err_w, err_l, ref_err_w, ref_err_l, beta)
