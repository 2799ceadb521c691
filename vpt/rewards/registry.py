"""Reward models found by name: the weight-free heuristics and VideoReward (the registered release or a checkpoint
directory), each behind the :class:`~vpt.rewards.model.RewardModel` interface."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vpt.errors import VptError
from vpt.io.video import FrameSampling
from vpt.rewards.model import RewardModel


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


VIDEOREWARD_HUB_REPO = "KwaiVGI/VideoReward"
VIDEOREWARD_DIR_VARIABLE = "VPT_VIDEOREWARD_DIR"


def available_models() -> dict[str, str]:
    """Registered model names with a one-line description each."""
    from vpt.rewards.heuristic import HEURISTIC_DESCRIPTIONS
    from vpt.rewards.videoreward import DESCRIPTION, NAME

    return dict(sorted({**HEURISTIC_DESCRIPTIONS, NAME: DESCRIPTION}.items()))


def _videoreward_release() -> tuple[str, str | None]:
    """The public VideoReward release and its base model, from the local Hugging Face cache or the hub."""
    import json

    from huggingface_hub import snapshot_download

    try:
        release = snapshot_download(VIDEOREWARD_HUB_REPO)
        settings = json.loads((Path(release) / "model_config.json").read_text())
        base_name = settings.get("model_config", {}).get("model_name_or_path")
        base = snapshot_download(base_name) if base_name and not Path(base_name).exists() else base_name
    except Exception as error:  # noqa: BLE001 - any hub failure means: no usable copy here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VptError(
            f"videoreward: no local copy and the Hugging Face hub is unreachable ({reason}); download "
            f"{VIDEOREWARD_HUB_REPO} where you have network and pass --model-dir DIR (or set {VIDEOREWARD_DIR_VARIABLE})"
        ) from None
    return release, base


def load_reward_model(
    name: str, model_dir: str | None = None, device: str = "auto", batch_size: int = 4, raw: bool = False,
    dtype: str = "fp32",
) -> RewardModel:
    """The reward model registered as ``name``, or the VideoReward checkpoint at path ``name``.

    ``videoreward`` resolves ``model_dir``, then ``$VPT_VIDEOREWARD_DIR``, then the public release through the
    Hugging Face hub (cache first). ``device="auto"`` is this process's accelerator when there is one. ``raw`` adds
    the raw head outputs of VideoReward as extra columns. ``dtype`` (``bf16`` or ``fp32``): what a learned model's
    weights are loaded in (the heuristics have none).
    """
    from vpt.rewards.heuristic import HEURISTICS

    if name in HEURISTICS:
        return HeuristicReward(name, HEURISTICS[name])
    from vpt.rewards.videoreward import NAME, load_videoreward_scorer

    from vpt.distributed import current_processes

    device = current_processes().resolve_device(device)
    if name == NAME:
        base = None
        path = model_dir or os.environ.get(VIDEOREWARD_DIR_VARIABLE)
        if not path:
            path, base = _videoreward_release()
        return load_videoreward_scorer(path, device=device, batch_size=batch_size, dtype=dtype, base=base,
                                       with_raw=raw)
    if Path(name).is_dir():
        scorer = load_videoreward_scorer(name, device=device, batch_size=batch_size, dtype=dtype, with_raw=raw)
        scorer.name = name  # the scores table records which checkpoint scored
        return scorer
    raise VptError(
        f"unknown reward model '{name}'; available: {', '.join(available_models())}, or a VideoReward checkpoint directory"
    )
