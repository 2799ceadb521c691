"""``aesthetic``: the LAION improved aesthetic predictor, per frame and averaged over the video.

Definition (christophschuhmann/improved-aesthetic-predictor, ``simple_inference.py``: ``MLP`` and the
``normalized(image_features)`` it feeds; the head ``sac+logos+ava1-l14-linearMSE.pth`` was trained on CLIP ViT-L/14
embeddings to predict a 1..10 rating)::

    e_t = get_image_features(frame_t) / ||.||_2        CLIP's projected image embedding, L2-normalised
    a_t = W7 (W6 (W4 (W2 (W0 e_t + b0) + b2) + b4) + b6) + b7     the MLP head; its dropouts are off at inference
    aesthetic = mean_t a_t                              over 8 uniformly spaced frames

The head has no activations: ``layers.0`` Linear(D, 1024), Dropout, ``layers.2`` Linear(1024, 128), Dropout,
``layers.4`` Linear(128, 64), Dropout, ``layers.6`` Linear(64, 16), ``layers.7`` Linear(16, 1).

Frames: ``FrameSampling(mode="count", count=8)``; VBench's ``aesthetic_quality`` averages the same predictor over
frames. Each frame gets CLIP's own preprocessing, as ``clip.load``'s ``preprocess`` gave the predictor's training
images: the shorter side resized to the checkpoint's ``size.shortest_edge`` (224) with antialiased bicubic
interpolation on float pixels (PIL's bicubic resize, which ``clip.load`` uses, antialiases too), a centre crop of
``crop_size`` (224 x 224), 1/255 and the checkpoint's ``image_mean`` / ``image_std``.

Directory layout (``aesthetic:DIR`` or ``$VPT_AESTHETIC_DIR``): a transformers CLIP checkpoint (``config.json``,
weights, ``preprocessor_config.json``; ``openai/clip-vit-large-patch14`` for the released head) with the head file
added: ``sac+logos+ava1-l14-linearMSE.pth`` as released (a torch state dict, read with ``weights_only=True``) or
``sac+logos+ava1-l14-linearMSE.safetensors`` with the same keys. No hub repository holds both, so a bare
``aesthetic`` needs the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vpt.errors import VptError
from vpt.io.video import DecodedVideo, FrameSampling
from vpt.rewards.model import RewardModel

NAME = "aesthetic"
DIMENSION = "aesthetic"
FRAMES = 8
VARIABLE = "VPT_AESTHETIC_DIR"
HEAD_FILES = ("sac+logos+ava1-l14-linearMSE.safetensors", "sac+logos+ava1-l14-linearMSE.pth")
HEAD_LAYERS = (0, 2, 4, 6, 7)  # the Linear layers' indices in the released nn.Sequential
HEAD_SOURCE = "github.com/christophschuhmann/improved-aesthetic-predictor"


def aesthetic_head(state: dict, path: str | Path = "the head"):
    """The released MLP's ``layers`` as an ``nn.Sequential`` with the same indices (Dropout at 1, 3, 5) from its
    state dict; a one-line :class:`VptError` when ``state`` does not have that layout."""
    import torch

    expected = {f"layers.{i}.{part}" for i in HEAD_LAYERS for part in ("weight", "bias")}
    if not isinstance(state, dict) or set(state) != expected:
        found = sorted(state)[:3] if isinstance(state, dict) else type(state).__name__
        raise VptError(f"{path}: not the LAION aesthetic head (expected keys layers.{{0,2,4,6,7}}.weight/bias, "
                       f"found {found})")
    shapes = [tuple(state[f"layers.{i}.weight"].shape) for i in HEAD_LAYERS]  # (out, in) each
    if any(inner[1] != outer[0] for outer, inner in zip(shapes, shapes[1:])) or shapes[-1][0] != 1:
        raise VptError(f"{path}: the aesthetic head's layers do not chain to one output (weight shapes {shapes})")
    layers = []
    for index in range(max(HEAD_LAYERS) + 1):
        if index in HEAD_LAYERS:
            out_features, in_features = state[f"layers.{index}.weight"].shape
            layers.append(torch.nn.Linear(in_features, out_features))
        else:
            layers.append(torch.nn.Dropout(0.0))  # inactive at inference whatever its training rate
    head = torch.nn.Sequential(*layers)
    head.load_state_dict({key.removeprefix("layers."): value for key, value in state.items()})
    return head.eval().requires_grad_(False)


def read_head(directory: Path):
    """The head file of an aesthetic directory (module notes), as :func:`aesthetic_head`."""
    from vpt.io.tensors import load_safetensors, load_torch

    for name in HEAD_FILES:
        path = directory / name
        if path.is_file():
            state = load_safetensors(path) if name.endswith(".safetensors") else load_torch(path)
            return aesthetic_head(state, path)
    raise VptError(f"{directory}: no aesthetic head ({HEAD_FILES[1]} or {HEAD_FILES[0]} missing); download "
                   f"{HEAD_FILES[1]} from {HEAD_SOURCE} into it")


class AestheticScore(RewardModel):
    """The LAION aesthetic predictor's mean over frames (module notes)."""

    name = NAME
    dimensions = (DIMENSION,)
    primary = DIMENSION
    sampling = FrameSampling(mode="count", count=FRAMES)
    needs_prompt = False

    def __init__(self, model, head, processor: dict, batch_size: int = 4):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.head = head.double()  # a few thousand multiply-adds per frame: float64 costs nothing
        self.image_mean = tuple(float(v) for v in processor["image_mean"])
        self.image_std = tuple(float(v) for v in processor["image_std"])
        # the openai/* CLIP configs write plain ints ("size": 224, "crop_size": 224); newer ones write dicts
        size, crop = processor.get("size", 224), processor.get("crop_size", 224)
        self.side = int(size["shortest_edge"] if isinstance(size, dict) else size)
        self.crop = (int(crop["height"]), int(crop["width"])) if isinstance(crop, dict) else (int(crop), int(crop))
        self.batch_size = int(batch_size)

    def pixels(self, frames: np.ndarray):
        """Normalised pixel values ``float32 [T, 3, crop, crop]`` of uint8 frames (module notes)."""
        from vpt.models.clip_features import center_crop, frames_tensor, normalise, resize, shortest_side

        pixels = frames_tensor(frames)
        pixels = resize(pixels, shortest_side(*pixels.shape[-2:], self.side))
        return normalise(center_crop(pixels, *self.crop), self.image_mean, self.image_std)

    def frame_scores(self, frames: np.ndarray) -> np.ndarray:
        """The head's rating of each frame: float64 ``[T]``."""
        import torch

        from vpt.models.clip_features import image_embeddings

        embeddings = image_embeddings(self.model, self.pixels(frames), batch_size=self.batch_size * FRAMES)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            return self.head(embeddings)[:, 0].numpy()

    def score(self, videos: Sequence[DecodedVideo], prompts: Sequence[str | None]) -> dict[str, np.ndarray]:
        return {DIMENSION: np.array([self.frame_scores(video.frames).mean() for video in videos], np.float64)}


def load_aesthetic(source: str | None, *, device: str = "cpu", batch_size: int = 4,
                   dtype: str = "fp32") -> AestheticScore:
    """The ``aesthetic`` reward from the directory ``source`` or ``$VPT_AESTHETIC_DIR`` names (module notes)."""
    from vpt.models.clip_features import CLIP_MODEL_TYPES, load_model, read_image_processor, resolve_source

    weights = resolve_source(NAME, source, VARIABLE, None)
    if not weights.is_directory:
        raise VptError(f"aesthetic: {weights.source} is not a local directory; give a CLIP checkpoint directory "
                       f"holding the head {HEAD_FILES[1]} (from {HEAD_SOURCE})")
    model, where = load_model(weights, "CLIP checkpoint", "aesthetic", CLIP_MODEL_TYPES[:1], device, dtype)
    head = read_head(Path(where))
    return AestheticScore(model, head, read_image_processor(where), batch_size=batch_size)
