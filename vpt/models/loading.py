"""Loading generators: the one place a diffusers Wan pipeline is read from disk.

Every command that needs a generator calls :func:`load_wan_pipeline`, so the tiny zoo and real checkpoints
(``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` downloaded by the user) go through the same ``from_pretrained`` code.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from vpt.errors import VptError

_HINT = "build one with `vpt zoo tiny DIR`"
WAN_PIPELINE_CLASSES = ("WanPipeline",)


def resolve_wan_directory(path: str | os.PathLike) -> Path:
    """The pipeline directory for ``path``: a diffusers Wan pipeline directory, or a zoo directory (its ``wan``).

    Raises :class:`VptError` with a one-line message when ``path`` is neither.
    """
    path = Path(path)
    if not path.is_dir():
        reason = "not a directory" if path.exists() else "no such directory"
        raise VptError(f"{path}: not a diffusers Wan pipeline directory ({reason}); {_HINT}")
    if not (path / "model_index.json").is_file() and (path / "zoo.json").is_file():
        if (path / "wan" / "model_index.json").is_file():
            return path / "wan"
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise VptError(f"{path}: not a diffusers Wan pipeline directory (model_index.json missing); {_HINT}")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VptError(f"{path}: not a diffusers Wan pipeline directory (model_index.json unreadable: {error})") from None
    name = index.get("_class_name") if isinstance(index, dict) else None
    if name not in WAN_PIPELINE_CLASSES:
        raise VptError(
            f"{path}: not a diffusers Wan pipeline directory (model_index.json names {name!r}, "
            f"expected {' or '.join(WAN_PIPELINE_CLASSES)}); {_HINT}"
        )
    return path


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bars from diffusers / transformers while loading (restored afterwards)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = []
    for module in (diffusers_logging, transformers_logging):
        states.append((module, module.is_progress_bar_enabled()))
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, enabled in states:
            if enabled:
                module.enable_progress_bar()


def load_wan_pipeline(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load a diffusers ``WanPipeline`` (text-to-video) from a local directory, in eval mode, on ``device``.

    ``path`` is a pipeline directory (``model_index.json`` inside) or a zoo directory built by ``vpt zoo tiny``.
    Nothing is downloaded. Raises :class:`VptError` when the directory is missing or not a Wan pipeline.
    """
    from diffusers import WanPipeline

    directory = resolve_wan_directory(path)
    try:
        with quiet_loading():
            pipe = WanPipeline.from_pretrained(directory, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise VptError(f"{directory}: cannot load the Wan pipeline: {first}") from None
    pipe.to(device)
    for name in ("transformer", "transformer_2", "text_encoder", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_policy(transformer: torch.nn.Module, path: str | os.PathLike) -> tuple[torch.nn.Module, str]:
    """``transformer`` with the LoRA policy at ``path`` (a peft adapter directory, as the training commands write
    it) applied, in eval mode, and the policy's id (its resolved path and a hash of its adapter weights)."""
    import hashlib

    from peft import PeftModel

    directory = Path(path)
    weights = directory / "adapter_model.safetensors"
    if not (directory / "adapter_config.json").is_file() or not weights.is_file():
        raise VptError(f"{directory}: not a LoRA policy checkpoint (adapter_config.json and "
                       f"adapter_model.safetensors expected); give a checkpoint written by grpo-step, dpo or sft")
    try:
        policy = PeftModel.from_pretrained(transformer, str(directory), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as error:
        raise VptError(f"{directory}: this LoRA policy does not fit the generator ({str(error).splitlines()[0]}); "
                       f"use the generator it was trained on") from None
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return policy.eval(), f"{directory.resolve()}#{digest}"
