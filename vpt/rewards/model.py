"""The interface every reward model implements.

A reward model says how it wants frames decoded (:class:`~vpt.io.video.FrameSampling`), which output columns
(dimensions) it produces and which one is primary, and scores a batch of decoded videos at once. A model with
``sampling = None`` reads the video files itself and is given their paths instead of decoded frames.

Work a model does on each video alone (no batch, CPU) can go in :meth:`RewardModel.prepare`: the scoring engine and
the reward server run it on the decode thread right after the video is decoded, while its frames are in cache and in
parallel across videos, and hand the prepared values to :meth:`RewardModel.score_prepared`.
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
        videos this model could not score (their dimension values are ignored).

        Equals ``score_prepared([prepare(v) for v in videos], prompts)``."""
        raise NotImplementedError

    def prepare(self, video):
        """What :meth:`score_prepared` needs of one video, computed on its own (default: the video itself)."""
        return video

    def score_prepared(self, prepared: Sequence, prompts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """:meth:`score` of videos already passed through :meth:`prepare` (default: :meth:`score` itself)."""
        return self.score(prepared, prompts)
