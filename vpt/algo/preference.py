"""Preference losses for reward models (VideoAlign, arXiv 2501.13918, §3).

Labels per pair and dimension are integers: ``A_WINS`` (1), ``B_WINS`` (-1), ``TIE`` (0), ``INVALID`` (-2, masked).
With ``d = r_a - r_b`` (scores of A and B):

- Bradley–Terry: ``-log σ(d)`` when A wins (``-log σ(-d)`` when B wins); ties and invalid labels are dropped.
- Bradley–Terry with ties (Rao–Kupper, θ > 1): the preferred side's win ``-log σ(d - ln θ)`` (d oriented to the
  winner), and a tie ``-log σ(d - ln θ) - log σ(-d - ln θ) - ln(θ² - 1)``, which is ``-log P(tie)`` of the model
  ``P(tie) = (θ² - 1) σ(d - ln θ) σ(-d - ln θ)``.
- Regression: mean squared error of each video's score to its mean opinion score.

Every dimension weighs the same: the loss is the mean over the valid (pair, dimension) entries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

A_WINS, B_WINS, TIE, INVALID = 1, -1, 0, -2
LABEL_CODES = {"a": A_WINS, "b": B_WINS, "tie": TIE, "invalid": INVALID}  # a prefs table's labels


def _masked_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``losses`` where ``mask``; 0 (with a graph) when nothing is valid."""
    count = mask.sum()
    return torch.where(mask, losses, torch.zeros_like(losses)).sum() / count.clamp(min=1)


def bradley_terry_loss(scores_a: torch.Tensor, scores_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss; ties and invalid labels are left out.

    scores_a, scores_b: float [B, D]; labels: int [B, D] in {A_WINS, B_WINS, TIE, INVALID}. Returns a scalar.
    """
    margin = (scores_a - scores_b) * labels.to(scores_a.dtype)  # oriented towards the winner
    valid = (labels == A_WINS) | (labels == B_WINS)
    return _masked_mean(-F.logsigmoid(margin), valid)


def bradley_terry_ties_loss(
    scores_a: torch.Tensor, scores_b: torch.Tensor, labels: torch.Tensor, theta: float = 5.0
) -> torch.Tensor:
    """Rao–Kupper Bradley–Terry-with-ties loss; invalid labels are left out.

    scores_a, scores_b: float [B, D]; labels: int [B, D]; ``theta`` > 1 widens the tie band. Returns a scalar.
    """
    if theta <= 1:
        raise ValueError(f"theta must be > 1 (got {theta})")
    log_theta = math.log(theta)
    difference = scores_a - scores_b
    decisive = (labels == A_WINS) | (labels == B_WINS)
    oriented = torch.where(decisive, difference * labels.to(difference.dtype), difference)
    win = -F.logsigmoid(oriented - log_theta)
    tie = win - F.logsigmoid(-difference - log_theta) - math.log(theta**2 - 1)
    losses = torch.where(labels == TIE, tie, win)
    return _masked_mean(losses, decisive | (labels == TIE))


def regression_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error to mean opinion scores; NaN targets are left out.

    scores, targets: float [N, D] (one row per video). Returns a scalar.
    """
    valid = ~torch.isnan(targets)
    errors = (scores - torch.nan_to_num(targets)) ** 2
    return _masked_mean(errors, valid)
