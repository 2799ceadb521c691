"""Typed micro-batches: a stage's batch is a dataclass of tensors with shape comments, not a dict of string keys."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch


class TensorBatch:
    """Base of a stage's batch dataclass: the harness moves a batch to the device by calling its ``.to``
    (accelerate's ``send_to_device``); how many examples it holds the harness knows from its step plan."""

    def to(self, device: Any, non_blocking: bool = False) -> "TensorBatch":
        moved = {field.name: value.to(device, non_blocking=non_blocking)
                 for field in dataclasses.fields(self) if isinstance(value := getattr(self, field.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)

    @classmethod
    def collate(cls, items: Sequence[Mapping[str, torch.Tensor]]) -> "TensorBatch":
        """Items (dicts of this batch's fields; optional ones may be absent) stacked along a new first dimension."""
        names = [field.name for field in dataclasses.fields(cls) if field.name in items[0]]
        return cls(**{name: torch.stack([item[name] for item in items]) for name in names})
