"""Tiny tasks for the harness tests (and the 2-process script): synthetic regression, a tiny MLP with dropout."""

from __future__ import annotations

import random

import numpy as np
import torch


class Regression(torch.utils.data.Dataset):
    """``n`` examples of y = x @ w + 0.5 (+ small noise), x in R^4, fixed by ``seed``; items carry their index."""

    def __init__(self, n: int = 20, seed: int = 0, dim: int = 4):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=generator)
        w = torch.randn(dim, 1, generator=generator)
        self.y = self.x @ w + 0.5 + 0.01 * torch.randn(n, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "y": self.y[index], "index": torch.tensor(index)}


def linear(seed: int = 0, dim: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(dim, 1)


def mlp(seed: int = 0, dim: int = 4, dropout: float = 0.2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(16, 1))


def mse_loss(model, batch):
    prediction = model(batch["x"])
    loss = torch.nn.functional.mse_loss(prediction, batch["y"])
    return loss, {"mae": (prediction - batch["y"]).abs().mean()}


def noisy_mse_loss(model, batch):
    """Uses the torch (dropout), numpy and python RNGs, so an exact resume must restore all three."""
    noise = torch.from_numpy(np.random.standard_normal(tuple(batch["x"].shape)).astype(np.float32))
    scale = 0.05 + 0.05 * random.random()
    prediction = model(batch["x"] + scale * noise)
    loss = torch.nn.functional.mse_loss(prediction, batch["y"])
    return loss, {"scale": scale}


class Interrupt(Exception):
    pass


def interrupt_after(loss_fn, calls: int):
    """``loss_fn`` that raises :class:`Interrupt` on call number ``calls`` (0-based): a killed run."""
    seen = {"n": 0}

    def wrapped(model, batch):
        if seen["n"] == calls:
            raise Interrupt
        seen["n"] += 1
        return loss_fn(model, batch)

    return wrapped


class Block(torch.nn.Module):
    """A frozen base layer with a small trainable correction beside it (a LoRA in miniature)."""

    def __init__(self, dim: int):
        super().__init__()
        self.base = torch.nn.Linear(dim, dim)
        self.base.requires_grad_(False)
        self.down = torch.nn.Linear(dim, 2, bias=False)
        self.up = torch.nn.Linear(2, dim, bias=False)

    def forward(self, x):
        return x + torch.tanh(self.base(x)) + self.up(self.down(x))


class BlockModel(torch.nn.Module):
    """Blocks then a trainable head; ``_no_split_modules`` names the unit FSDP shards by, as diffusers models do."""

    _no_split_modules = ["Block"]

    def __init__(self, dim: int = 4, depth: int = 2):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = torch.nn.Linear(dim, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def block_model(seed: int = 0, dim: int = 4) -> BlockModel:
    torch.manual_seed(seed)
    return BlockModel(dim)
