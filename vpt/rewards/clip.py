"""``clip``: text-video similarity with any transformers CLIP or SigLIP checkpoint.

Definition (VideoCLIP-XL's video-text score, Wang et al. 2024, arXiv 2410.00741, its ``demo.py``
``video_preprocessing`` + ``_frame_from_video``; the frame-averaged CLIPScore of Hessel et al. 2021, Eq. 1 without
its clipping at 0)::

    e_t   = get_image_features(frame_t) / ||.||          for 8 uniformly spaced frames t
    v     = mean_t e_t
    s     = get_text_features(prompt)
    clip_score = 100 * cos(v, s)

Frames: ``FrameSampling(mode="count", count=8)`` (:func:`~vpt.io.video.uniform_indices`). Each decoded frame is
resized to the vision tower's square ``image_size`` (224 for ``openai/clip-vit-large-patch14``) without keeping its
aspect ratio, as VideoCLIP-XL does; the resize is an antialiased bicubic ``interpolate`` on float pixels (no
rounding back to uint8), then pixels are scaled by 1/255 and normalised with the checkpoint's
``preprocessor_config.json`` ``image_mean`` / ``image_std``. 100 is CLIP's trained ``logit_scale.exp()`` (and
PickScore's), fixed here so scores of different checkpoints share one scale.

Text: CLIP pads to the longest prompt with an attention mask and truncates at ``max_position_embeddings`` (77);
SigLIP pads to ``max_position_embeddings`` without a mask, as it was trained.

Weights (``clip:SOURCE``): a CLIP / SigLIP checkpoint directory or hub id with its tokenizer and
``preprocessor_config.json``; bare ``clip``: ``$VPT_CLIP_DIR``, else ``openai/clip-vit-large-patch14`` from the
Hugging Face cache or hub. PickScore (``yuvalkirstain/PickScore_v1``) is a CLIP ViT-H/14 checkpoint that loads the
same way once the tokenizer files and ``preprocessor_config.json`` of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` are
copied into its directory.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vpt.errors import VptError
from vpt.io.video import DecodedVideo, FrameSampling
from vpt.rewards.model import RewardModel

NAME = "clip"
DIMENSION = "clip_score"
FRAMES = 8
SCALE = 100.0
VARIABLE = "VPT_CLIP_DIR"
DEFAULT_HUB_ID = "openai/clip-vit-large-patch14"


class ClipScore(RewardModel):
    """100 x cosine of the mean L2-normalised frame embedding with the prompt's embedding (module notes)."""

    name = NAME
    dimensions = (DIMENSION,)
    primary = DIMENSION
    sampling = FrameSampling(mode="count", count=FRAMES)
    needs_prompt = True

    def __init__(self, model, tokenizer, image_mean: Sequence[float], image_std: Sequence[float],
                 batch_size: int = 4):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.batch_size = int(batch_size)

    def pixels(self, frames: np.ndarray):
        """Normalised pixel values ``float32 [T, 3, S, S]`` of uint8 frames ``[T, H, W, 3]`` (module notes)."""
        from vpt.models.clip_features import frames_tensor, image_size, normalise, resize

        side = image_size(self.model)
        return normalise(resize(frames_tensor(frames), (side, side)), self.image_mean, self.image_std)

    def video_embeddings(self, videos: Sequence[DecodedVideo]):
        """The mean of each video's L2-normalised frame embeddings: float64 ``[B, D]`` (not renormalised)."""
        import torch

        from vpt.models.clip_features import image_embeddings

        pixels = torch.cat([self.pixels(video.frames) for video in videos])
        frames = image_embeddings(self.model, pixels, batch_size=self.batch_size * FRAMES)
        frames = frames / frames.norm(dim=-1, keepdim=True)
        counts = [len(video.frames) for video in videos]
        return torch.stack([chunk.mean(0) for chunk in frames.split(counts)])

    def score(self, videos: Sequence[DecodedVideo], prompts: Sequence[str | None]) -> dict[str, np.ndarray]:
        from vpt.models.clip_features import text_embeddings

        if len(prompts) != len(videos):
            raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts")
        if any(not isinstance(prompt, str) or not prompt.strip() for prompt in prompts):
            raise VptError("clip needs a text prompt for every video; give the videos a prompt column")
        video = self.video_embeddings(videos)
        text = text_embeddings(self.model, self.tokenizer, prompts)
        cosine = (video * text).sum(-1) / (video.norm(dim=-1) * text.norm(dim=-1))
        return {DIMENSION: (SCALE * cosine).numpy().astype(np.float64)}


def load_clip(source: str | None, *, device: str = "cpu", batch_size: int = 4, dtype: str = "fp32") -> ClipScore:
    """The ``clip`` reward with the checkpoint ``source`` names (module notes); ``dtype`` ``fp32`` or ``bf16``."""
    from vpt.models.clip_features import (
        CLIP_MODEL_TYPES,
        load_model,
        load_tokenizer,
        read_image_processor,
        resolve_source,
    )

    weights = resolve_source(NAME, source, VARIABLE, DEFAULT_HUB_ID)
    model, where = load_model(weights, "CLIP/SigLIP checkpoint", "clip", CLIP_MODEL_TYPES, device, dtype)
    processor = read_image_processor(where)
    return ClipScore(model, load_tokenizer(where, weights), processor["image_mean"], processor["image_std"],
                     batch_size=batch_size)
