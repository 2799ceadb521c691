"""The interface every reward model implements.

A reward model says how it wants frames decoded (:class:`~vpt.io.video.FrameSampling`), which output columns
(dimensions) it produces and which one is primary, and scores a batch of decoded videos at once. A model with
``sampling = None`` reads the video files itself and is given their paths instead of decoded frames.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vpt.io.video import DecodedVideo, FrameSampling

ERROR_KEY = "error"  # optional key of a score dict: one reason (or None) per video the model could not score


class RewardModel:
    """Interface of every reward model the scoring engine runs."""

    name: str
    dimensions: tuple[str, ...]  # output column names
    primary: str  # the dimension reported as ``score``
    sampling: FrameSampling | None
    needs_prompt: bool = False

    def score(self, videos: Sequence[DecodedVideo], prompts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """Scores of a batch: ``{dimension: float64 [B]}``, and optionally ``{"error": [reason or None] * B}`` for
        videos this model could not score (their dimension values are ignored)."""
        raise NotImplementedError
