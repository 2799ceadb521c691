"""``subject-consistency`` and ``background-consistency``: VBench's temporal consistency of frame features.

Definition (VBench, Huang et al. CVPR 2024, arXiv 2311.17982, Sec. 3.1; code ``vbench/subject_consistency.py`` and
``vbench/background_consistency.py``)::

    f_t = feature(frame_t) / ||.||_2                       every frame t = 0 .. T-1
    consistency = 1/(T-1) * sum_{t>=1} (max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2

and 1.0 for a single frame (VBench's ``background_consistency`` convention). Frames: all of them
(``FrameSampling(mode="all")``), as VBench's ``load_video`` reads them.

* ``subject_consistency``: ``feature`` is a DINO ViT's final-layer-normed CLS token (VBench: DINO ViT-B/16 from
  ``torch.hub``; here any transformers DINO: ``facebook/dinov2-base`` by default, ``facebook/dino-vitb16`` for
  VBench's exact model). Preprocessing = VBench's ``dino_transform(224)``: the shorter side resized to 224 (bilinear,
  not antialiased, on uint8 frames: rounded back to 0..255 as torchvision does), 1/255, ImageNet mean/std; a
  checkpoint made for smaller images (the tiny zoo's, 32) uses its own ``image_size`` instead of 224.
  Weights: ``subject-consistency:SOURCE``, else ``$VPT_DINO_DIR``, else ``facebook/dinov2-base``.
* ``background_consistency``: ``feature`` is CLIP's projected image embedding (``get_image_features``; VBench:
  ``clip.load("ViT-B/32").encode_image``). Preprocessing = VBench's ``clip_transform(224)``: the shorter side
  resized to the vision tower's ``image_size`` (bicubic, not antialiased, on uint8 frames, rounded and clamped), a
  centre crop of that size, 1/255, the checkpoint's ``image_mean`` / ``image_std`` (OpenAI CLIP's for the
  ``openai/*`` checkpoints, as VBench hard-codes). Weights: ``background-consistency:SOURCE``, else
  ``$VPT_BACKGROUND_CLIP_DIR``, else ``openai/clip-vit-base-patch32``.

A tiny zoo directory serves both: its ``dinov2`` and its ``clip``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from vpt.io.video import DecodedVideo, FrameSampling
from vpt.rewards.model import RewardModel

SUBJECT = "subject-consistency"
BACKGROUND = "background-consistency"
DINO_VARIABLE = "VPT_DINO_DIR"
DINO_DEFAULT = "facebook/dinov2-base"
BACKGROUND_VARIABLE = "VPT_BACKGROUND_CLIP_DIR"
BACKGROUND_DEFAULT = "openai/clip-vit-base-patch32"
VBENCH_SIDE = 224
FRAME_BATCH = 16  # frames per forward pass


def consistency(features) -> float:
    """VBench's consistency of per-frame features ``[T, D]`` (module notes): 1.0 for one frame."""
    import torch

    features = torch.as_tensor(features, dtype=torch.float64)
    if len(features) < 2:
        return 1.0
    unit = features / features.norm(dim=-1, keepdim=True)
    previous = (unit[1:] * unit[:-1]).sum(-1).clamp_min(0.0)
    first = (unit[1:] * unit[:1]).sum(-1).clamp_min(0.0)
    return float(((previous + first) / 2).mean())


class ConsistencyScore(RewardModel):
    """One VBench consistency dimension: ``features(frames) -> [T, D]`` scored by :func:`consistency`."""

    sampling = FrameSampling(mode="all")
    needs_prompt = False

    def __init__(self, name: str, dimension: str, features: Callable[[np.ndarray], object]):
        self.name = name
        self.dimensions = (dimension,)
        self.primary = dimension
        self.features = features

    def score(self, videos: Sequence[DecodedVideo], prompts: Sequence[str | None]) -> dict[str, np.ndarray]:
        return {self.primary: np.array([consistency(self.features(video.frames)) for video in videos], np.float64)}


class DinoFeatures:
    """VBench's ``dino_transform`` + a DINO model's CLS token (module notes)."""

    def __init__(self, model):
        from vpt.models.clip_features import image_size

        self.model = model
        self.side = min(VBENCH_SIDE, image_size(model))

    def pixels(self, frames: np.ndarray):
        from vpt.models.clip_features import IMAGENET_MEAN, IMAGENET_STD, frames_tensor, normalise, resize, \
            shortest_side

        pixels = frames_tensor(frames)
        size = shortest_side(*pixels.shape[-2:], self.side)
        return normalise(resize(pixels, size, mode="bilinear", antialias=False, as_uint8=True), IMAGENET_MEAN,
                         IMAGENET_STD)

    def __call__(self, frames: np.ndarray):
        from vpt.models.clip_features import dino_cls_features

        return dino_cls_features(self.model, self.pixels(frames), batch_size=FRAME_BATCH)


class ClipFeatures:
    """VBench's ``clip_transform`` + CLIP's projected image embedding (module notes)."""

    def __init__(self, model, image_mean: Sequence[float], image_std: Sequence[float]):
        from vpt.models.clip_features import image_size

        self.model = model
        self.side = image_size(model)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    def pixels(self, frames: np.ndarray):
        from vpt.models.clip_features import center_crop, frames_tensor, normalise, resize, shortest_side

        pixels = frames_tensor(frames)
        size = shortest_side(*pixels.shape[-2:], self.side)
        pixels = center_crop(resize(pixels, size, mode="bicubic", antialias=False, as_uint8=True), self.side,
                             self.side)
        return normalise(pixels, self.image_mean, self.image_std)

    def __call__(self, frames: np.ndarray):
        from vpt.models.clip_features import image_embeddings

        return image_embeddings(self.model, self.pixels(frames), batch_size=FRAME_BATCH)


def load_subject_consistency(source: str | None, *, device: str = "cpu", batch_size: int = 4,
                             dtype: str = "fp32") -> ConsistencyScore:
    """VBench subject consistency with the DINO checkpoint ``source`` names (module notes). Frames of one video
    go through the model in chunks of :data:`FRAME_BATCH`; ``batch_size`` (videos per call) does not change that."""
    from vpt.models.clip_features import DINO_MODEL_TYPES, load_model, resolve_source

    weights = resolve_source(SUBJECT, source, DINO_VARIABLE, DINO_DEFAULT)
    model, _ = load_model(weights, "DINO model", "dinov2", DINO_MODEL_TYPES, device, dtype)
    return ConsistencyScore(SUBJECT, "subject_consistency", DinoFeatures(model))


def load_background_consistency(source: str | None, *, device: str = "cpu", batch_size: int = 4,
                                dtype: str = "fp32") -> ConsistencyScore:
    """VBench background consistency with the CLIP checkpoint ``source`` names (module notes)."""
    from vpt.models.clip_features import CLIP_MODEL_TYPES, load_model, read_image_processor, resolve_source

    weights = resolve_source(BACKGROUND, source, BACKGROUND_VARIABLE, BACKGROUND_DEFAULT)
    model, where = load_model(weights, "CLIP checkpoint", "clip", CLIP_MODEL_TYPES, device, dtype)
    processor = read_image_processor(where)
    return ConsistencyScore(BACKGROUND, "background_consistency",
                            ClipFeatures(model, processor["image_mean"], processor["image_std"]))
