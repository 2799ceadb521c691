"""VideoReward (VideoAlign) behind the :class:`~vpt.rewards.model.RewardModel` interface.

Scores are the normalised dimensions ``vq``, ``mq``, ``ta`` (``(raw - mean) / std`` with the checkpoint's stats) and
``overall = vq + mq + ta``, as VideoAlign's inference reports them; :meth:`VideoRewardScorer.raw_scores` gives the
raw head outputs. Frames are decoded with the model's rule (about 2 fps, an even count, VideoAlign's indices).
torch and transformers are imported when a scorer is loaded, not when this module is.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from vpt.errors import VptError
from vpt.io.video import DecodedVideo, FrameSampling
from vpt.rewards.model import RewardModel

NAME = "videoreward"
RAW_DIMENSIONS = ("vq_raw", "mq_raw", "ta_raw")
DESCRIPTION = "VideoAlign's VideoReward (Qwen2-VL): visual quality, motion quality, text alignment, overall"


class VideoRewardScorer(RewardModel):
    """Scores batches of decoded videos with a :class:`~vpt.models.videoreward.VideoRewardModel`."""

    name = NAME
    dimensions = ("vq", "mq", "ta", "overall")
    primary = "overall"
    needs_prompt = True

    def __init__(self, model, batch_size: int = 4, normalised: bool = True, with_raw: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.normalised = bool(normalised)  # False: the three dims are raw head outputs (overall = their sum)
        self.with_raw = bool(with_raw)
        if self.with_raw:
            self.dimensions = VideoRewardScorer.dimensions + RAW_DIMENSIONS

    @property
    def sampling(self) -> FrameSampling:
        return self.model.sampling

    @staticmethod
    def _frames(videos: Sequence[DecodedVideo | np.ndarray]) -> list[np.ndarray]:
        return [video.frames if isinstance(video, DecodedVideo) else video for video in videos]

    @staticmethod
    def _prompts(prompts: Sequence[str | None], count: int) -> list[str]:
        if len(prompts) != count:
            raise ValueError(f"got {count} videos but {len(prompts)} prompts")
        missing = [i for i, prompt in enumerate(prompts) if not isinstance(prompt, str) or not prompt.strip()]
        if missing:
            raise VptError(f"videoreward needs a text prompt for every video ({len(missing)} of {count} have none); "
                           "give the videos a prompt column")
        return list(prompts)

    def raw_scores(self, videos: Sequence[DecodedVideo | np.ndarray], prompts: Sequence[str | None]) -> np.ndarray:
        """Raw head outputs ``float64 [B, 3]`` (vq, mq, ta)."""
        frames = self._frames(videos)
        texts = self._prompts(prompts, len(frames))
        if not frames:
            return np.zeros((0, 3), dtype=np.float64)
        return self.model.raw_scores(frames, texts, batch_size=self.batch_size).double().numpy()

    def score(self, videos: Sequence[DecodedVideo], prompts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """``{"vq", "mq", "ta", "overall": float64 [B]}``, normalised unless the scorer was made with
        ``normalised=False``."""
        raw = self.raw_scores(videos, prompts)
        if self.normalised:
            values = self.model.normalise(raw)
        else:
            values = np.concatenate([raw, raw.sum(-1, keepdims=True)], axis=-1)
        if self.with_raw:
            values = np.concatenate([values, raw], axis=-1)
        return {name: np.ascontiguousarray(values[:, i], dtype=np.float64) for i, name in enumerate(self.dimensions)}


def load_videoreward_scorer(path: str | os.PathLike, device: str = "cpu", batch_size: int = 4, dtype: str = "fp32",
                            base: str | os.PathLike | None = None, position_ids: str | None = None,
                            normalised: bool = True, with_raw: bool = False) -> VideoRewardScorer:
    """Load a VideoReward checkpoint (our layout, VideoAlign's, or a zoo directory) as a scorer.

    ``dtype``: ``bf16`` or ``fp32`` (``--dtype``, :func:`vpt.models.loading.weights_dtype`), what the weights are
    loaded in; ``position_ids``: override the checkpoint's position mode (``sequential`` reproduces the released
    scores, ``mrope`` is transformers' own); ``base``: the base Qwen2-VL directory when the checkpoint's reference is
    not local.
    """
    from vpt.models.dtypes import weights_dtype
    from vpt.models.videoreward_checkpoint import load_videoreward

    weights = weights_dtype(dtype)
    if position_ids is not None and position_ids not in ("sequential", "mrope"):
        raise VptError(f"unknown position_ids {position_ids!r} for videoreward; use sequential or mrope")
    model = load_videoreward(path, device=device, dtype=weights, base=base)
    if position_ids is not None:
        model.with_config(position_ids=position_ids)
    return VideoRewardScorer(model, batch_size=batch_size, normalised=normalised, with_raw=with_raw)
