"""DINOv2 patch features of decoded frames: ViPO's frozen feature extractor (TeleBoost, arXiv 2602.07595, Stage II).

The model comes from :func:`vpt.models.loading.load_dinov2` (the tiny zoo's ``dinov2`` or a real
``facebook/dinov2-*`` directory). Frames are resized so both sides are whole numbers of patches (DINOv2
interpolates its position embeddings to any grid), normalised with the ImageNet mean/std as DINOv2's own image
processor does, and run without gradients in batches; the CLS token and any register tokens are dropped.
torchvision is not used (it cannot be installed here).
"""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _patch_size(model) -> int:
    size = model.config.patch_size
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square patches are not supported: {tuple(size)}")
        size = size[0]
    return int(size)


def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patch grid ``(h, w)`` for a ``height x width`` frame: each side rounded to the nearest whole number of
    patches, at least one."""
    return max(1, round(height / patch_size)), max(1, round(width / patch_size))


def dinov2_patch_features(model, frames: np.ndarray, batch_size: int = 16,
                          grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Patch features ``[F, h, w, D]`` (float32, CPU) of uint8 RGB frames ``[F, H, W, 3]``.

    Each frame is resized (bilinear, antialiased; skipped when already the right size) to ``(h·p, w·p)`` with
    ``p`` the model's patch size and ``(h, w)`` = ``grid`` or :func:`patch_grid` of the frame size.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count, height, width, _ = frames.shape
    patch = _patch_size(model)
    h, w = grid if grid is not None else patch_grid(height, width, patch)
    if h < 1 or w < 1:
        raise ValueError(f"the patch grid must be at least 1x1, got {h}x{w}")
    parameter = next(model.parameters())
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    chunks = []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size]))
            x = x.permute(0, 3, 1, 2).float().div(255.0)
            if (height, width) != (h * patch, w * patch):
                x = torch.nn.functional.interpolate(x, size=(h * patch, w * patch), mode="bilinear",
                                                    align_corners=False, antialias=True)
            x = (x - mean) / std
            tokens = model(pixel_values=x.to(device=parameter.device, dtype=parameter.dtype)).last_hidden_state
            # [b, prefix + h·w, D]: the CLS token (and any register tokens) come first
            chunks.append(tokens[:, tokens.shape[1] - h * w :].reshape(len(x), h, w, -1).float().cpu())
    if not chunks:
        return torch.zeros(0, h, w, int(model.config.hidden_size))
    return torch.cat(chunks)
