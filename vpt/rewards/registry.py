"""Reward models found by name, each behind the :class:`~vpt.rewards.model.RewardModel` interface.

A ``--model`` value is one of:

* a weight-free heuristic (``brightness``, ...) or optical-flow metric (``dynamic-degree``, ``motion-smoothness``);
* ``videoreward`` (the registered release) or a VideoReward checkpoint directory;
* a learned kind, bare (its weights from an environment variable, then the Hugging Face hub) or as ``KIND:SOURCE``
  with a local directory or hub id, e.g. ``clip:/models/clip-vit-large-patch14``;
* ``http://HOST:PORT/`` (or ``https://``): the models a ``vpt serve`` reward server serves, scored over HTTP.

Each kind lives in its own module and is imported only when it is asked for, so ``vpt --help`` stays light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vpt.errors import VptError
from vpt.rewards.model import RewardModel


VIDEOREWARD_HUB_REPO = "KwaiVGI/VideoReward"
VIDEOREWARD_DIR_VARIABLE = "VPT_VIDEOREWARD_DIR"


@dataclass(frozen=True)
class RewardKind:
    """A reward model kind other than the heuristics and VideoReward: where its loader lives and what it measures.

    ``loader`` is ``"module:function"``; the function is called as ``function(source, device=, batch_size=,
    dtype=)`` with ``source`` the part after ``KIND:`` (``None`` for a bare name) and returns a RewardModel.
    """

    loader: str
    description: str

    def load(self, source: str | None, device: str, batch_size: int, dtype: str) -> RewardModel:
        import importlib

        module, function = self.loader.split(":")
        return getattr(importlib.import_module(module), function)(source, device=device, batch_size=batch_size,
                                                                  dtype=dtype)


KINDS: dict[str, RewardKind] = {
    "clip": RewardKind("vpt.rewards.clip:load_clip", "text-video similarity: 100 x cosine of the mean frame "
                       "embedding with the text embedding (any CLIP/SigLIP checkpoint; VideoCLIP-XL-style frames)"),
    "aesthetic": RewardKind("vpt.rewards.aesthetic:load_aesthetic", "LAION improved aesthetic predictor (CLIP "
                            "ViT-L/14 embedding into its MLP head), per frame and averaged; about 1..10"),
    "subject-consistency": RewardKind("vpt.rewards.consistency:load_subject_consistency", "VBench subject "
                                      "consistency: DINO feature similarity of each frame to the first and previous"),
    "background-consistency": RewardKind("vpt.rewards.consistency:load_background_consistency", "VBench background "
                                         "consistency: CLIP feature similarity of each frame to the first and "
                                         "previous"),
    "dynamic-degree": RewardKind("vpt.rewards.flow:load_dynamic_degree", "VBench dynamic degree from dense optical "
                                 "flow (OpenCV DIS): the largest motions' magnitude, and VBench's moving/static verdict"),
    "motion-smoothness": RewardKind("vpt.rewards.flow:load_motion_smoothness", "1 - error of each frame predicted "
                                    "from its neighbours by optical-flow interpolation; higher = smoother"),
}
REMOTE_SCHEMES = ("http://", "https://")


def available_models() -> dict[str, str]:
    """Registered model names with a one-line description each."""
    from vpt.rewards.heuristic import HEURISTIC_DESCRIPTIONS
    from vpt.rewards.videoreward import DESCRIPTION, NAME

    kinds = {name: kind.description for name, kind in KINDS.items()}
    return dict(sorted({**HEURISTIC_DESCRIPTIONS, **kinds, NAME: DESCRIPTION}.items()))


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
    """The reward model ``name`` names (see the module notes for the forms it takes).

    ``videoreward`` resolves ``model_dir``, then ``$VPT_VIDEOREWARD_DIR``, then the public release through the
    Hugging Face hub (cache first). ``device="auto"`` is this process's accelerator when there is one. ``raw`` adds
    the raw head outputs of VideoReward as extra columns. ``dtype`` (``bf16`` or ``fp32``): what a learned model's
    weights are loaded in (the heuristics have none).
    """
    from vpt.rewards.heuristic import HEURISTICS, HeuristicReward

    if name in HEURISTICS:
        return HeuristicReward([name])
    if name.startswith(REMOTE_SCHEMES):
        from vpt.rewards.remote import load_remote

        return load_remote(name, device=device, batch_size=batch_size, dtype=dtype)
    kind, _, source = name.partition(":")
    if kind in KINDS:
        return KINDS[kind].load(source or None, device=_device(device), batch_size=batch_size, dtype=dtype)
    from vpt.rewards.videoreward import NAME, load_videoreward_scorer

    device = _device(device)
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
        f"unknown reward model '{name}'; available: {', '.join(available_models())}, KIND:DIR (e.g. clip:DIR), a "
        "VideoReward checkpoint directory, or a reward server http://HOST:PORT/"
    )


def load_reward_models(names: Sequence[str], model_dir: str | None = None, device: str = "auto",
                       batch_size: int = 4, raw: bool = False, dtype: str = "fp32") -> list[RewardModel]:
    """The models ``names`` name, in order, except that all the heuristics among them become one model (at the
    place of the first), so one luma pass per video serves them all. Arguments as :func:`load_reward_model`."""
    from vpt.rewards.heuristic import HEURISTICS, HeuristicReward

    heuristics = [name for name in names if name in HEURISTICS]
    models: list[RewardModel] = []
    for name in names:
        if name not in HEURISTICS:
            models.append(load_reward_model(name, model_dir, device, batch_size, raw, dtype))
        elif name == heuristics[0]:
            models.append(HeuristicReward(heuristics))
    return models


def _device(device: str) -> str:
    from vpt.distributed import current_processes

    return current_processes().resolve_device(device)
