"""Self-paced GRPO (TeleBoost, arXiv 2602.07595, Stage II "when to learn"): weights over reward dimensions
ordered visual -> motion -> semantic that move along that order as the policy becomes competent.

- Published (v4) softmax form: ``g_j = σ(mean_j − τ_j) + β·(H(r_j) − H(r_{j+1}))`` (``H(r_{J+1}) = 0``),
  ``w = softmax(g)``, where ``H`` is the Hoyer sparsity of a reward vector,
  ``H(x) = (sqrt(n) − ‖x‖₁/‖x‖₂) / (sqrt(n) − 1)`` (0 for a constant vector, 1 for a one-hot one).
- Gated form: ``u_j = σ(κ·(EMA(mean_j) − τ_j))``, ``w_1 = 1 − u_1``, ``w_2 = u_1·(1 − u_2)``, ``w_3 = u_1·u_2``
  (three dimensions), with the EMA carried between iterations as curriculum state.

The combined reward ``r̃ = Σ_j w_j·r_j`` then goes through the usual group z-score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def hoyer_sparsity(values: torch.Tensor) -> torch.Tensor:
    """Hoyer sparsity of a vector ``[n]`` (n >= 2) in [0, 1]; 0 for an all-zero vector."""
    n = values.numel()
    if n < 2:
        raise ValueError("Hoyer sparsity needs at least two values")
    l2 = values.norm(p=2)
    if l2 == 0:
        return torch.zeros((), dtype=values.dtype)
    return (math.sqrt(n) - values.abs().sum() / l2) / (math.sqrt(n) - 1)


def softmax_curriculum_weights(rewards: torch.Tensor, thresholds: torch.Tensor, beta: float = 0.3) -> torch.Tensor:
    """Published softmax form: rewards ``[N, J]`` (dimension order visual -> motion -> semantic, on [0, 1]),
    thresholds ``[J]`` -> weights ``[J]`` summing to 1."""
    means = rewards.mean(dim=0)
    sparsity = torch.stack([hoyer_sparsity(rewards[:, j]) for j in range(rewards.shape[1])])
    following = torch.cat([sparsity[1:], sparsity.new_zeros(1)])
    return torch.softmax(torch.sigmoid(means - thresholds) + beta * (sparsity - following), dim=0)


@dataclass
class GatedCurriculum:
    """Gated form over three dimensions, with its state (the EMA of each dimension's mean reward)."""

    thresholds: tuple[float, float, float] = (0.75, 0.75, 0.75)
    sharpness: float = 10.0  # κ
    decay: float = 0.9  # EMA keeps this share of the old value
    ema: tuple[float, float, float] | None = None  # None until the first update

    def update(self, means: torch.Tensor) -> torch.Tensor:
        """Fold this iteration's mean rewards ``[3]`` into the EMA and return the weights ``[3]`` (sum 1)."""
        values = [float(v) for v in means]
        if self.ema is None:
            self.ema = tuple(values)
        else:
            self.ema = tuple(self.decay * old + (1 - self.decay) * new for old, new in zip(self.ema, values))
        return self.weights()

    def weights(self) -> torch.Tensor:
        ema = torch.tensor(self.ema if self.ema is not None else (0.0, 0.0, 0.0), dtype=torch.float64)
        u = torch.sigmoid(self.sharpness * (ema - torch.tensor(self.thresholds, dtype=torch.float64)))
        return torch.stack([1 - u[0], u[0] * (1 - u[1]), u[0] * u[1]])

    def state_dict(self) -> dict:
        return {"thresholds": list(self.thresholds), "sharpness": self.sharpness, "decay": self.decay,
                "ema": None if self.ema is None else list(self.ema)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "GatedCurriculum":
        return cls(thresholds=tuple(state["thresholds"]), sharpness=state["sharpness"], decay=state["decay"],
                   ema=None if state["ema"] is None else tuple(state["ema"]))
