"""Optimizer and learning-rate schedule built from a :class:`TrainConfig`.

AdamW over the parameters that require gradients, grouped by (learning rate, weight decay). Parameters of which only
some rows train (:func:`vpt.train.lora.train_embedding_rows`) get their own group with ``weight_decay=0`` — AdamW's
decoupled decay would otherwise shrink the frozen rows too — and a step pre-hook applies the same decoupled decay,
``p <- p * (1 - lr * wd)``, to the trained rows only, exactly as AdamW would. With zero gradients the frozen rows then
get an update of exactly zero (Adam's moments stay 0), so they stay bit-identical.
"""

from __future__ import annotations

import fnmatch
import math

import torch

from vpt.errors import VptError
from vpt.train.config import TrainConfig

ROWS_ATTRIBUTE = "vpt_trainable_rows"


def _first_match(name: str, patterns) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


def param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    """The optimizer parameter groups, in a deterministic order (first appearance in ``named_parameters``).

    Each group carries ``names`` (for logs and checkpoints); a pattern of ``param_group_lrs`` or ``no_decay`` that
    matches no trainable parameter is an error (a typo would otherwise silently train with the wrong settings).
    """
    groups: dict[tuple, dict] = {}
    used_lr, used_decay = set(), set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_pattern = _first_match(name, config.param_group_lrs)
        lr = config.learning_rate if lr_pattern is None else config.param_group_lrs[lr_pattern]
        used_lr.add(lr_pattern)
        decay_pattern = _first_match(name, config.no_decay)
        used_decay.add(decay_pattern)
        decay = 0.0 if decay_pattern is not None else config.weight_decay
        rows = getattr(param, ROWS_ATTRIBUTE, None)
        key = (lr, decay, id(param) if rows is not None else None)
        group = groups.get(key)
        if group is None:
            group = {"params": [], "names": [], "lr": lr, "weight_decay": decay}
            if rows is not None:
                group["weight_decay"] = 0.0
                group["row_weight_decay"] = decay
            groups[key] = group
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise VptError("no trainable parameters (every parameter has requires_grad=False); mark some trainable "
                       "(apply_lora / mark_trainable / train_embedding_rows)")
    for pattern in config.param_group_lrs:
        if pattern not in used_lr:
            raise VptError(f"training config: param_group_lrs pattern {pattern!r} matches no trainable parameter; "
                           "fix the pattern (globs over model.named_parameters() names)")
    for pattern in config.no_decay:
        if pattern not in used_decay:
            raise VptError(f"training config: no_decay pattern {pattern!r} matches no trainable parameter; "
                           "fix the pattern (globs over model.named_parameters() names)")
    return list(groups.values())


def _row_decay_pre_hook(optimizer, args, kwargs) -> None:
    """Decoupled weight decay on the trained rows of row-masked parameters (before the update, as AdamW does)."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            decay = group.get("row_weight_decay", 0.0)
            if not decay:
                continue
            for param in group["params"]:
                if param.grad is None:
                    continue
                rows = getattr(param, ROWS_ATTRIBUTE).to(param.device)
                param[rows] = param[rows] * (1.0 - group["lr"] * decay)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, config)``, with the row-decay pre-hook installed."""
    groups = param_groups(model, config)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas, eps=config.eps,
                                  weight_decay=config.weight_decay)
    if any("row_weight_decay" in group for group in groups):
        optimizer.register_step_pre_hook(_row_decay_pre_hook)
    return optimizer


class LrLambda:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based: the update about to be made).

    Warmup ramps linearly over ``warmup`` steps, ``(step + 1) / warmup`` (the first update already moves), then
    ``constant`` stays at 1, ``linear`` / ``cosine`` decay to ``min_ratio`` at ``total``. A plain object (not a
    closure) so the scheduler's state dict round-trips.
    """

    def __init__(self, kind: str, warmup: int, total: int, min_ratio: float = 0.0):
        self.kind, self.warmup, self.total, self.min_ratio = kind, int(warmup), int(total), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "linear":
            factor = 1.0 - progress
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """A ``LambdaLR`` with :class:`LrLambda`; step it once per optimizer step."""
    lam = LrLambda(config.lr_schedule, config.warmup_steps, total_steps, config.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=[lam] * len(optimizer.param_groups))
