"""Reward models behind one interface, found by name.

A reward model says how it wants frames decoded (:class:`~vpt.io.video.FrameSampling`), which output columns
(dimensions) it produces and which one is primary, and scores a batch of decoded videos at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from vpt.errors import VptError
from vpt.io.video import DecodedVideo, FrameSampling


class RewardModel:
    """Interface of every reward model the scoring engine runs."""

    name: str
    dimensions: tuple[str, ...]  # output column names
    primary: str  # the dimension reported as ``score``
    sampling: FrameSampling
    needs_prompt: bool = False

    def score(self, videos: Sequence[DecodedVideo], prompts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """Scores of a batch: ``{dimension: float64 [B]}``."""
        raise NotImplementedError


@dataclass
class HeuristicReward(RewardModel):
    """A weight-free metric computed per video on all of its frames."""

    name: str
    metric: Callable[[np.ndarray], float]

    def __post_init__(self):
        self.dimensions = (self.name.replace("-", "_"),)
        self.primary = self.dimensions[0]
        self.sampling = FrameSampling(mode="all")

    def score(self, videos, prompts):
        return {self.primary: np.array([self.metric(video.frames) for video in videos], dtype=np.float64)}


def available_models() -> dict[str, str]:
    """Registered model names with a one-line description each."""
    from vpt.rewards.heuristic import HEURISTIC_DESCRIPTIONS

    return dict(sorted(HEURISTIC_DESCRIPTIONS.items()))


def load_reward_model(name: str) -> RewardModel:
    """The reward model registered as ``name``."""
    from vpt.rewards.heuristic import HEURISTICS

    if name in HEURISTICS:
        return HeuristicReward(name, HEURISTICS[name])
    raise VptError(f"unknown reward model '{name}'; available: {', '.join(available_models())}")
