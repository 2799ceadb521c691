"""Image and text embeddings from transformers CLIP / SigLIP / DINO checkpoints, for the learned reward models
(:mod:`vpt.rewards.clip`, :mod:`vpt.rewards.aesthetic`, :mod:`vpt.rewards.consistency`).

Where weights come from (:func:`resolve_source`): ``KIND:SOURCE`` names a local directory or a hub id; a bare
``KIND`` reads the kind's environment variable, then falls back to its default hub id, which transformers'
``from_pretrained`` serves from the local Hugging Face cache. A tiny zoo directory (``vpt zoo tiny DIR``) stands
for its component of that kind. Everything loads with ``from_pretrained`` (safetensors, or ``weights_only`` pickles
as transformers reads them), never with ``trust_remote_code``.

Frame preprocessing is torch-only (torchvision cannot be installed here): frames ``uint8 [T, H, W, 3]`` become
``float32 [T, 3, H, W]`` on the 0..255 scale, are resized with ``torch.nn.functional.interpolate`` (what
torchvision's ``Resize`` calls on tensors), cropped, scaled by 1/255 and normalised with a mean/std.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from vpt.errors import VptError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MODEL_TYPES = ("clip", "siglip")
DINO_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_ZOO_HINT = "build a tiny one with `vpt zoo tiny DIR`"


@dataclass(frozen=True)
class Weights:
    """Where one reward kind's weights come from: ``source`` (a directory or hub id) and how it was chosen."""

    kind: str  # the reward kind, e.g. "clip"
    source: str
    variable: str  # the environment variable a bare name reads
    default: str | None  # the hub id a bare name falls back to (None: the variable is required)
    chosen_by: str  # "source", "variable" or "default"

    @property
    def is_directory(self) -> bool:
        return self.chosen_by == "variable" or Path(self.source).exists() or not _HUB_ID.fullmatch(self.source)


def resolve_source(kind: str, source: str | None, variable: str, default: str | None) -> Weights:
    """The weights ``KIND[:SOURCE]`` names: ``source``, else ``$variable``, else ``default`` (a hub id). A kind
    without a default (``None``) raises a one-line :class:`VptError` naming the variable when neither is given."""
    if source:
        return Weights(kind, source, variable, default, "source")
    if os.environ.get(variable):
        return Weights(kind, os.environ[variable], variable, default, "variable")
    if default is None:
        raise VptError(f"{kind}: no weights given; set {variable} or pass {kind}:DIR")
    return Weights(kind, default, variable, default, "default")


def checkpoint_directory(weights: Weights, what: str, component: str, model_types: Sequence[str]) -> Path:
    """The local directory of ``weights``, checked to hold a transformers ``what`` checkpoint (``config.json``
    naming one of ``model_types``); a zoo directory gives its ``component``. One-line :class:`VptError` otherwise."""
    path = Path(weights.source).expanduser()
    if not path.is_dir():
        reason = "not a directory" if path.exists() else "no such directory"
        raise VptError(f"{path}: not a {what} directory ({reason}); {_ZOO_HINT}")
    if not (path / "config.json").is_file() and (path / "zoo.json").is_file():
        from vpt.models.loading import zoo_component

        path = zoo_component(path, component)
    config = path / "config.json"
    if not config.is_file():
        raise VptError(f"{path}: not a {what} directory (config.json missing); {_ZOO_HINT}")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise VptError(f"{path}: not a {what} directory (config.json unreadable: {_first_line(error)})") from None
    if model_type not in model_types:
        raise VptError(f"{path}: not a {what} directory (config.json names model_type {model_type!r}, expected "
                       f"{' or '.join(map(repr, model_types))})")
    return path


def load_model(weights: Weights, what: str, component: str, model_types: Sequence[str], device: str, dtype: str):
    """``AutoModel.from_pretrained`` of ``weights`` (a checked local directory, or a hub id from the cache or the
    hub) in eval mode on ``device`` without gradients, and the directory or hub id it came from."""
    from transformers import AutoConfig, AutoModel

    from vpt.models.dtypes import weights_dtype
    from vpt.models.loading import quiet_loading

    if weights.is_directory:
        where: str | Path = checkpoint_directory(weights, what, component, model_types)
    else:
        where = weights.source
    try:
        with quiet_loading(), _without_siglip_default_warning():
            config = AutoConfig.from_pretrained(where)
            if config.model_type not in model_types:
                raise VptError(f"{where}: not a {what} checkpoint (model_type {config.model_type!r}, expected "
                               f"{' or '.join(map(repr, model_types))})")
            model = AutoModel.from_pretrained(where, dtype=weights_dtype(dtype))
    except OSError as error:
        raise _unavailable(weights, error) if isinstance(where, str) else VptError(
            f"{where}: cannot load the {what}: {_first_line(error)}") from None
    except (ValueError, KeyError, RuntimeError) as error:
        raise VptError(f"{where}: cannot load the {what}: {_first_line(error)}") from None
    model.to(device).eval()
    model.requires_grad_(False)
    return model, where


def load_tokenizer(where: str | Path, weights: Weights):
    """The checkpoint's own tokenizer (``AutoTokenizer``); a one-line :class:`VptError` when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, TypeError) as error:
        raise VptError(f"{where}: no usable tokenizer ({_first_line(error)}); copy the tokenizer files of the "
                       f"checkpoint's base model into it (PickScore: laion/CLIP-ViT-H-14-laion2B-s32B-b79K)") from None


def read_image_processor(where: str | Path) -> dict:
    """The checkpoint's ``preprocessor_config.json`` (its ``image_mean``, ``image_std``, sizes); a one-line
    :class:`VptError` when it has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(str(where), "preprocessor_config.json")
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise VptError(f"{where}: no preprocessor_config.json ({_first_line(error)}); copy the image processor "
                       "config of the checkpoint's base model into it (PickScore: "
                       "laion/CLIP-ViT-H-14-laion2B-s32B-b79K)") from None


class _SiglipDefaultWarning(logging.Filter):
    """Drops transformers' "Model config: bos_token_id must be ... within the vocabulary" warning, which it gives on
    every SigLIP load about its own ``SiglipTextConfig()`` defaults (vocabulary 32000, token ids 49406/49407), not
    about the checkpoint's config."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Model config: ") and "within the vocabulary" in message)


@contextlib.contextmanager
def _without_siglip_default_warning() -> Iterator[None]:
    logger = logging.getLogger("transformers.configuration_utils")
    drop = _SiglipDefaultWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _unavailable(weights: Weights, error: BaseException) -> VptError:
    hint = f"pass {weights.kind}:DIR (or set {weights.variable})"
    return VptError(f"{weights.kind}: {weights.source} is not in the local Hugging Face cache and the hub is "
                    f"unreachable ({_first_line(error)}); download it where you have network and {hint}")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---------------------------------------------------------------------------------------------------- pixels


def frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, H, W]`` on the 0..255 scale."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def resize(pixels: torch.Tensor, size: tuple[int, int], mode: str = "bicubic", antialias: bool = True,
           as_uint8: bool = False) -> torch.Tensor:
    """``pixels`` float ``[T, 3, H, W]`` (0..255) resized to ``size`` = (height, width) as torchvision's tensor
    ``Resize`` does (``interpolate(align_corners=False)``); ``as_uint8`` rounds and clamps to 0..255 as torchvision
    does for uint8 input (VBench resizes uint8 frames). Skipped when the size already matches."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    out = torch.nn.functional.interpolate(pixels, size=tuple(size), mode=mode, align_corners=False,
                                          antialias=antialias)
    return out.round().clamp(0, 255) if as_uint8 else out


def shortest_side(height: int, width: int, side: int) -> tuple[int, int]:
    """The size torchvision's ``Resize(side)`` gives a ``height x width`` image: the shorter side becomes ``side``
    and the longer ``int(side * longer / shorter)`` (truncated, torchvision ``_compute_resized_output_size``)."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def center_crop(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre ``height x width`` of ``[..., H, W]``, offsets ``int(round((H - height) / 2))`` as torchvision's
    ``center_crop`` (the image is never smaller here: it was resized to cover the crop)."""
    top = int(round((pixels.shape[-2] - height) / 2.0))
    left = int(round((pixels.shape[-1] - width) / 2.0))
    return pixels[..., top : top + height, left : left + width]


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(pixels / 255 - mean) / std`` per channel."""
    mean_ = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_ = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean_) / std_


# ------------------------------------------------------------------------------------------------ embeddings


def image_size(model) -> int:
    """The square input side of a CLIP / SigLIP vision tower, or a DINO model's ``image_size``."""
    config = getattr(model.config, "vision_config", model.config)
    size = config.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _batches(pixels: torch.Tensor, batch_size: int):
    for start in range(0, len(pixels), batch_size):
        yield pixels[start : start + batch_size]


def image_embeddings(model, pixels: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """``get_image_features`` (the projected image embedding) of normalised ``pixels`` ``[N, 3, S, S]`` for a CLIP
    or SigLIP model: float64 ``[N, D]`` on the CPU, not normalised."""
    parameter = next(model.parameters())
    with torch.no_grad():
        out = [model.get_image_features(pixel_values=chunk.to(device=parameter.device, dtype=parameter.dtype))
               .pooler_output.double().cpu() for chunk in _batches(pixels, batch_size)]
    return torch.cat(out)


def text_embeddings(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """``get_text_features`` of ``texts``: float64 ``[N, D]`` on the CPU, not normalised. CLIP: padded to the
    longest text with an attention mask (it pools at the end-of-text token); SigLIP: padded to
    ``max_position_embeddings`` and no mask, as it was trained (it pools at the last position)."""
    parameter = next(model.parameters())
    length = int(model.config.text_config.max_position_embeddings)
    if model.config.model_type == "siglip":
        tokens = tokenizer(list(texts), padding="max_length", max_length=length, truncation=True,
                           return_tensors="pt")
        inputs = {"input_ids": tokens["input_ids"]}
    else:
        tokens = tokenizer(list(texts), padding=True, max_length=length, truncation=True, return_tensors="pt")
        inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    with torch.no_grad():
        features = model.get_text_features(**{key: value.to(parameter.device) for key, value in inputs.items()})
    return features.pooler_output.double().cpu()


def dino_cls_features(model, pixels: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """The final-layer-normed CLS token of a DINO ViT (``Dinov2Model``, ``Dinov2WithRegistersModel``, or a
    ``ViTModel`` such as ``facebook/dino-vitb16``) for normalised ``pixels`` of any size: float64 ``[N, D]``.
    This is what ``torch.hub``'s DINO models return from ``forward``, the feature VBench reads."""
    parameter = next(model.parameters())
    extra = {"interpolate_pos_encoding": True} if model.config.model_type == "vit" else {}
    with torch.no_grad():
        out = [model(pixel_values=chunk.to(device=parameter.device, dtype=parameter.dtype), **extra)
               .last_hidden_state[:, 0].double().cpu() for chunk in _batches(pixels, batch_size)]
    return torch.cat(out)
