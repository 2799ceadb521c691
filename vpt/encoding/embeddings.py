"""How text embeddings are stored, by the rollouts store and the encoded cache alike: without the zero rows the
pipeline pads them with, the padded length and dtype in the file's metadata, so a prompt costs its token count and
is restored exactly."""

from __future__ import annotations

import torch

PROMPT_KEY, NEGATIVE_KEY = "prompt", "negative"
EMBEDS_METADATA = "vpt.embeds"


def trim_padding(embeds: torch.Tensor) -> torch.Tensor:
    """[L, D] without its trailing all-zero rows (the pipeline's padding)."""
    nonzero = torch.nonzero(embeds.abs().sum(dim=1)).flatten()
    return embeds[: int(nonzero[-1]) + 1] if len(nonzero) else embeds[:0]


def restore_padding(trimmed: torch.Tensor, padded_length: int, dtype: torch.dtype) -> torch.Tensor:
    """[max(padded_length, L), D] in ``dtype``: ``trimmed`` [L, D] with the pipeline's zero rows put back."""
    padded = torch.zeros((max(int(padded_length), len(trimmed)), trimmed.shape[1]), dtype=trimmed.dtype)
    padded[: len(trimmed)] = trimmed
    return padded.to(dtype)
