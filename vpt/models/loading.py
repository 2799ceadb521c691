"""Loading models: the one place a diffusers Wan pipeline (and ViPO's DINOv2) is read from disk.

Every command that needs a generator calls :func:`load_wan_pipeline`, so the tiny zoo and real checkpoints
(``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` downloaded by the user) go through the same ``from_pretrained`` code.
:func:`load_dinov2` does the same for the frozen DINOv2 feature extractor (the zoo's ``dinov2`` or a real
``facebook/dinov2-*`` directory); its patch features come from :func:`vpt.models.dinov2.dinov2_patch_features`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from vpt.errors import VptError

_HINT = "build one with `vpt zoo tiny DIR`"
WAN_PIPELINE_CLASSES = ("WanPipeline",)


def _resolve_model_directory(path: str | os.PathLike, what: str, component: str, index_name: str, field: str,
                             expected: Sequence[str]) -> Path:
    """``path``, or the ``component`` of the zoo at ``path``, checked to be a ``what`` directory: its
    ``index_name`` JSON names one of ``expected`` in ``field``. One-line :class:`VptError` otherwise."""
    path = Path(path)
    if not path.is_dir():
        reason = "not a directory" if path.exists() else "no such directory"
        raise VptError(f"{path}: not a {what} directory ({reason}); {_HINT}")
    if not (path / index_name).is_file() and (path / "zoo.json").is_file():
        from vpt.models.zoo import zoo_component

        try:
            path = zoo_component(path, component)
        except (VptError, TypeError, AttributeError):
            raise VptError(f"{path}: this zoo has no {component} component (built by an older vpt); "
                           f"rebuild it with `vpt zoo tiny DIR`") from None
    index_file = path / index_name
    if not index_file.is_file():
        raise VptError(f"{path}: not a {what} directory ({index_name} missing); {_HINT}")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise VptError(f"{path}: not a {what} directory ({index_name} unreadable: {first})") from None
    name = index.get(field) if isinstance(index, dict) else None
    if name not in expected:
        raise VptError(f"{path}: not a {what} directory ({index_name} names {field} {name!r}, expected "
                       f"{' or '.join(map(repr, expected))}); {_HINT}")
    return path


def resolve_wan_directory(path: str | os.PathLike) -> Path:
    """The pipeline directory for ``path``: a diffusers Wan pipeline directory, or a zoo directory (its ``wan``).

    Raises :class:`VptError` with a one-line message when ``path`` is neither.
    """
    return _resolve_model_directory(path, "diffusers Wan pipeline", "wan", "model_index.json", "_class_name",
                                    WAN_PIPELINE_CLASSES)


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


def load_wan_transformer(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                         device: str | torch.device | None = None):
    """Only the ``WanTransformer3DModel`` of a Wan pipeline (or zoo) directory: what training updates, without the
    text encoder and VAE (UMT5-XXL alone is ~11 GB at full scale)."""
    from diffusers import WanTransformer3DModel

    directory = resolve_wan_directory(path)
    try:
        with quiet_loading():
            transformer = WanTransformer3DModel.from_pretrained(directory / "transformer", dtype=dtype,
                                                                local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise VptError(f"{directory}: cannot load the Wan transformer: {first}") from None
    if device is not None:
        transformer.to(device)
    return transformer


def policy_digest(path: str | os.PathLike) -> str:
    """Short sha256 of a LoRA policy's adapter weights: what identifies the policy that sampled a rollout."""
    import hashlib

    weights = Path(path) / "adapter_model.safetensors"
    try:
        return hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    except OSError:
        raise VptError(f"{path}: not a LoRA policy checkpoint (adapter_model.safetensors missing); give a "
                       "checkpoint written by grpo-step, dpo or sft") from None


def load_policy(transformer: torch.nn.Module, path: str | os.PathLike) -> tuple[torch.nn.Module, str]:
    """``transformer`` with the LoRA policy at ``path`` (a peft adapter directory, as the training commands write
    it) applied, in eval mode, and the policy's id (its resolved path and a hash of its adapter weights)."""
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
    return policy.eval(), f"{directory.resolve()}#{policy_digest(directory)}"


DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


def resolve_dinov2_directory(path: str | os.PathLike) -> Path:
    """The DINOv2 directory for ``path``: a transformers DINOv2 directory, or a zoo directory (its ``dinov2``).

    Raises :class:`VptError` with a one-line message when ``path`` is neither.
    """
    return _resolve_model_directory(path, "DINOv2 model", "dinov2", "config.json", "model_type", DINOV2_MODEL_TYPES)


def load_dinov2(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a frozen DINOv2 (transformers ``Dinov2Model``, or ``Dinov2WithRegistersModel``) in eval mode, float32,
    on ``device``, without gradients.

    ``path`` is a DINOv2 directory (``config.json`` + weights) or a zoo directory built by ``vpt zoo tiny``.
    Nothing is downloaded. Raises :class:`VptError` when the directory is missing or not a DINOv2 model.
    """
    directory = resolve_dinov2_directory(path)
    model_type = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type == "dinov2_with_registers":
        from transformers import Dinov2WithRegistersModel as model_class
    else:
        from transformers import Dinov2Model as model_class
    try:
        with quiet_loading():
            model = model_class.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise VptError(f"{directory}: cannot load the DINOv2 model: {first}") from None
    model.to(device).eval()
    model.requires_grad_(False)
    return model
