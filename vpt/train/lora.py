"""What trains: LoRA adapters (peft), whole parameters by name pattern, and single rows of an embedding matrix.

Typical reward-model setup (VideoAlign): ``model = apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], 64,
128)``, then ``mark_trainable(model, ["*.visual.*"])`` for the vision tower and
``train_embedding_rows(embedding, new_token_ids)`` for the three added reward tokens.
"""

from __future__ import annotations

import math

import fnmatch
from typing import Iterable, Sequence

import torch

from vpt.errors import VptError
from vpt.train.optim import ROWS_ATTRIBUTE


def apply_lora(model: torch.nn.Module, targets: Sequence[str] | str, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, modules_to_save: Sequence[str] | None = None, **lora_options):
    """Wrap ``model`` with peft LoRA adapters on the modules named by ``targets`` and return the ``PeftModel``.

    ``targets`` are peft ``target_modules`` (module-name suffixes such as ``"q_proj"``, or one regex string);
    ``modules_to_save`` are modules trained fully (peft keeps a trainable copy). Every other parameter is frozen.
    Extra keyword arguments go to ``peft.LoraConfig`` (e.g. ``bias="lora_only"``).
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise VptError(f"--lora-rank {rank}: give a positive integer")
    if not math.isfinite(alpha) or alpha <= 0:
        raise VptError(f"--lora-alpha {alpha}: give a positive number")
    targets = targets if isinstance(targets, str) else list(targets)
    config = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=targets,
                        modules_to_save=list(modules_to_save) if modules_to_save else None, **lora_options)
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VptError(f"LoRA targets {targets!r} do not fit the model ({first}); name Linear/Conv/Embedding "
                       "modules that exist (see model.named_modules())") from None


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (without importing peft when it is not loaded)."""
    import sys

    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Gradient checkpointing through the model's own mechanism: each block's activations are recomputed in the
    backward pass instead of kept. diffusers models (the Wan transformer, the latent reward model's trunk):
    ``ModelMixin.enable_gradient_checkpointing``; transformers models (Qwen2-VL): ``activation_checkpointing_enable``
    (``gradient_checkpointing_enable`` before transformers 5). Both run ``torch.utils.checkpoint`` non-reentrant
    (``use_reentrant=False``): the parameters inside a block get gradients although its frozen inputs need none, and
    the recomputation replays the forward's RNG state (``preserve_rng_state``), so dropout draws the same masks and
    the gradients equal those without checkpointing. A peft model's base model is switched."""
    base = model.get_base_model() if is_peft_model(model) else model
    if hasattr(base, "enable_gradient_checkpointing"):
        base.enable_gradient_checkpointing()
    else:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def freeze(model: torch.nn.Module) -> None:
    """``requires_grad=False`` on every parameter."""
    for param in model.parameters():
        param.requires_grad_(False)


def mark_trainable(model: torch.nn.Module, patterns: Iterable[str]) -> list[str]:
    """Make every parameter whose name matches one of the glob ``patterns`` fully trainable; returns their names.

    Names are those of ``model.named_parameters()`` (for a peft model they start with ``base_model.model.``, so
    patterns usually begin with ``*``). A pattern that matches nothing raises :class:`VptError`.
    """
    patterns = list(patterns)
    matched, used = [], set()
    for name, param in model.named_parameters():
        for pattern in patterns:
            if fnmatch.fnmatchcase(name, pattern):
                param.requires_grad_(True)
                matched.append(name)
                used.add(pattern)
                break
    for pattern in patterns:
        if pattern not in used:
            raise VptError(f"trainable pattern {pattern!r} matches no parameter; patterns are globs over "
                           "model.named_parameters() names (e.g. '*.visual.*')")
    return matched


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; for row-masked parameters only the trained rows count."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            rows = getattr(param, ROWS_ATTRIBUTE, None)
            trainable += param.numel() if rows is None else int(rows.numel()) * param[0].numel()
    return trainable, total


class TrainedRows:
    """Handle returned by :func:`train_embedding_rows`; ``remove()`` undoes the gradient mask."""

    def __init__(self, param: torch.nn.Parameter, rows: torch.Tensor, hook):
        self.param, self.rows, self._hook = param, rows, hook

    def remove(self) -> None:
        self._hook.remove()
        if hasattr(self.param, ROWS_ATTRIBUTE):
            delattr(self.param, ROWS_ATTRIBUTE)


def train_embedding_rows(embedding: torch.nn.Module | torch.nn.Parameter, rows: Iterable[int]) -> TrainedRows:
    """Train only ``rows`` of an embedding matrix (e.g. the three added reward tokens); the other rows stay frozen.

    ``embedding`` is an ``nn.Embedding`` (or any module with a 2-D ``weight``) or the weight parameter itself. The
    weight gets ``requires_grad=True`` and a gradient hook that zeroes the gradient of every other row, so clipping
    and the logged gradient norm see only the trained rows. The harness's optimizer (:func:`vpt.train.optim.
    build_optimizer`) recognises the parameter and applies weight decay to the trained rows only, so the frozen rows
    stay bit-identical through training. For a peft model whose embedding is in ``modules_to_save``, pass the
    trainable copy (``...embed_tokens.modules_to_save.default``), not the original.
    """
    param = embedding if isinstance(embedding, torch.nn.Parameter) else getattr(embedding, "weight", None)
    if not isinstance(param, torch.nn.Parameter) or param.dim() != 2:
        raise VptError("train_embedding_rows needs an nn.Embedding (or a 2-D weight parameter)")
    index = torch.as_tensor(sorted(set(int(r) for r in rows)), dtype=torch.long)
    if index.numel() == 0:
        raise VptError("train_embedding_rows: no rows given; pass the token ids to train")
    if index.min() < 0 or index.max() >= param.shape[0]:
        raise VptError(f"train_embedding_rows: rows must lie in [0, {param.shape[0]}); got {index.tolist()}")
    if hasattr(param, ROWS_ATTRIBUTE):
        raise VptError("train_embedding_rows: this parameter already has trained rows; call it once with all rows")
    frozen = torch.ones(param.shape[0], 1, dtype=torch.bool, device=param.device)
    frozen[index] = False

    def _mask_gradient(grad: torch.Tensor) -> torch.Tensor:
        if grad.is_sparse:
            grad = grad.to_dense()
        return grad.masked_fill(frozen.to(grad.device), 0)  # masked_fill, not a product: no NaN leaks through

    param.requires_grad_(True)
    setattr(param, ROWS_ATTRIBUTE, index)
    hook = param.register_hook(_mask_gradient)
    return TrainedRows(param, index, hook)
