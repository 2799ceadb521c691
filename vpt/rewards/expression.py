"""Reward expressions: which scores columns make the reward, with which weights (``overall``, ``vq=1,ta=2``)."""

from __future__ import annotations

import math

from vpt.errors import VptError


def parse_reward(spec: str) -> dict[str, float]:
    """``"overall"`` -> {"overall": 1.0}; ``"vq=1,mq=0.5"`` -> weights per column."""
    weights: dict[str, float] = {}
    for part in (piece.strip() for piece in spec.split(",")):
        if not part:
            continue
        column, sep, weight = part.partition("=")
        column = column.strip()
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            value = math.nan
        if not column or not math.isfinite(value) or column in weights:
            raise VptError(f"--reward {spec}: expected COLUMN or COLUMN=WEIGHT,... with finite weights and each "
                           f"column once (e.g. overall or vq=1,ta=2)")
        weights[column] = value
    if not weights:
        raise VptError("--reward is empty; name a scores column (e.g. score or overall)")
    return weights
