"""Our VideoReward checkpoint layout, and :func:`load_videoreward`, which reads any VideoReward directory.

Layout (:func:`save_videoreward` writes it)::

    DIR/vpt_videoreward.json     format, config (head, positions, norm stats, frame rule, pixel bounds), weights kind
    DIR/tokenizer/               tokenizer with the reward tokens
    DIR/head.safetensors         {"weight": [1 or 3, hidden]}
    DIR/backbone/                kind "full": Qwen2-VL save_pretrained (config.json + model.safetensors)
    DIR/adapter/                 kind "lora": peft adapter (adapter_config.json + adapter_model.safetensors)
    DIR/non_lora.safetensors     kind "lora": vision tower + merger (``model.visual.*``), reward-token embedding rows
    DIR/base/                    kind "lora", optional: the base Qwen2-VL (else an absolute path in the json)

:func:`load_videoreward` reads this layout, VideoAlign's (:mod:`vpt.models.videoalign`) and a zoo directory (its
``videoreward`` component).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from vpt.errors import VptError
from vpt.io.atomic import atomic_directory
from vpt.io.jsonfile import read_json_object
from vpt.io.tensors import load_safetensors
from vpt.models.loading import quiet_loading
from vpt.models.videoalign import OFFICIAL_CONFIG, is_videoalign_directory, load_videoalign
from vpt.models.videoreward import (
    REWARD_TOKENS,
    VideoRewardConfig,
    VideoRewardModel,
    is_lora_key,
    load_base_qwen,
    load_reward_tokenizer,
    resolve_base_directory,
    save_base_qwen,
)

CONFIG_FILE = "vpt_videoreward.json"
FORMAT_NAME = "vpt-videoreward"
FORMAT_VERSION = 1
_HINT = "build one with `vpt zoo tiny DIR`"


# ------------------------------------------------------------------------------------------------------- saving


def _non_lora_tensors(model: VideoRewardModel) -> dict[str, torch.Tensor]:
    qwen = model.qwen
    tensors = {}
    for key, value in qwen.model.visual.state_dict().items():
        tensors["model.visual." + key.replace(".base_layer.", ".")] = value
    tensors = {k: v for k, v in tensors.items() if not is_lora_key(k)}
    rows = qwen.get_input_embeddings().weight[list(model.reward_token_ids)]
    tensors["reward_token_embeddings"] = rows
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_videoreward(model: VideoRewardModel, directory: str | os.PathLike, save_base: bool | None = None) -> Path:
    """Save in our layout (see the module docstring), atomically (the directory appears complete or not at all).

    A LoRA model stores its adapter, the non-LoRA trained weights (vision tower + merger, reward-token embedding
    rows, head) and where its base lives: ``model.base_path`` (absolute), or a copy in ``DIR/base`` when
    ``save_base`` is true, the model has no known base path, or the base path lies inside ``directory``.
    """
    from safetensors.torch import save_file

    target = Path(directory)
    base_path = Path(model.base_path).resolve() if model.base_path else None
    inside = base_path is not None and target.resolve() in (base_path, *base_path.parents)
    write_base = model.has_lora and (bool(save_base) or base_path is None or inside)
    with atomic_directory(target, replace=True) as temporary:
        model.tokenizer.save_pretrained(temporary / "tokenizer")
        save_file({"weight": model.head.weight.detach().contiguous().cpu()}, str(temporary / "head.safetensors"),
                  metadata={"format": "pt"})
        if model.has_lora:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.backbone.save_pretrained(temporary / "adapter")
            (temporary / "adapter" / "README.md").unlink(missing_ok=True)
            save_file(_non_lora_tensors(model), str(temporary / "non_lora.safetensors"), metadata={"format": "pt"})
            if write_base:
                save_base_qwen(model, temporary / "base")
                base_entry = "base"
            else:
                base_entry = str(base_path)
            weights = {"kind": "lora", "base": base_entry, "adapter": "adapter", "non_lora": "non_lora.safetensors"}
        else:
            with quiet_loading():
                model.qwen.save_pretrained(temporary / "backbone")
            weights = {"kind": "full", "backbone": "backbone"}
        record = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(),
            "weights": weights,
            "head": "head.safetensors",
            "tokenizer": "tokenizer",
            "reward_tokens": dict(zip(REWARD_TOKENS, model.reward_token_ids)),
            "vocab_size": int(model.qwen.get_input_embeddings().weight.shape[0]),
        }
        (temporary / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if model.has_lora and write_base:
        model.base_path = str((target / "base").resolve())
    return target


# ------------------------------------------------------------------------------------------------------ loading


def _load_ours(directory: Path, dtype: torch.dtype, base: str | os.PathLike | None) -> VideoRewardModel:
    meta = read_json_object(directory / CONFIG_FILE, "the checkpoint file", "re-export the checkpoint")
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise VptError(f"{directory / CONFIG_FILE}: format {meta.get('format')!r} version "
                       f"{meta.get('format_version')!r} is not {FORMAT_NAME} v{FORMAT_VERSION}; re-save it")
    try:
        config = VideoRewardConfig.from_dict(meta.get("config", {}))
    except (TypeError, ValueError) as error:
        raise VptError(f"{directory / CONFIG_FILE}: bad config ({error})") from None
    tokenizer = load_reward_tokenizer(directory / meta.get("tokenizer", "tokenizer"))
    weights = meta.get("weights", {})
    kind = weights.get("kind")
    head = load_safetensors(directory / meta.get("head", "head.safetensors"))
    if kind == "full":
        qwen = load_base_qwen(directory / weights.get("backbone", "backbone"), dtype, None)
        model = VideoRewardModel(qwen, tokenizer, config)
    elif kind == "lora":
        from peft import PeftModel

        base_dir = Path(base) if base is not None else resolve_base_directory(weights.get("base"), directory)
        qwen = load_base_qwen(base_dir, dtype, int(meta.get("vocab_size", len(tokenizer))))
        non_lora = load_safetensors(directory / weights.get("non_lora", "non_lora.safetensors"))
        rows = non_lora.pop("reward_token_embeddings", None)
        visual = {k[len("model.visual."):]: v for k, v in non_lora.items() if k.startswith("model.visual.")}
        _load_into(qwen.model.visual, visual, directory / weights.get("non_lora", "non_lora.safetensors"))
        model = VideoRewardModel(qwen, tokenizer, config)
        if rows is not None:
            with torch.no_grad():
                embedding = qwen.get_input_embeddings().weight
                embedding[list(model.reward_token_ids)] = rows.to(embedding.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.backbone = PeftModel.from_pretrained(qwen, directory / weights.get("adapter", "adapter"),
                                                       is_trainable=False)
        model.base_path = str(base_dir.resolve())
    else:
        raise VptError(f"{directory / CONFIG_FILE}: unknown weights kind {kind!r} (expected 'full' or 'lora')")
    with torch.no_grad():
        weight = head.get("weight")
        if weight is None or tuple(weight.shape) != tuple(model.head.weight.shape):
            raise VptError(f"{directory / meta.get('head', 'head.safetensors')}: head weight missing or of the "
                           f"wrong shape (need {tuple(model.head.weight.shape)})")
        model.head.weight.copy_(weight)
    return model.to(dtype).eval()


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        reason = first[1].strip() if len(first) > 1 else first[0]
        raise VptError(f"{source}: does not fit the model ({reason})") from None


def load_videoreward(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     base: str | os.PathLike | None = None, step: int | None = None) -> VideoRewardModel:
    """Load a VideoReward in eval mode: our layout, VideoAlign's (``model.pth`` or adapter + non-LoRA), or a zoo.

    ``path``: a directory with ``vpt_videoreward.json``; a VideoAlign directory (``model_config.json`` and
    ``checkpoint-*/``; ``step`` picks a checkpoint, default the latest) or one of its ``checkpoint-*`` folders; or a
    zoo directory (its ``videoreward`` component). ``base``: the base Qwen2-VL directory when the checkpoint's own
    reference is not local. Raises :class:`VptError` with a one-line message for anything else.
    """
    directory = Path(path)
    if not directory.is_dir():
        reason = "not a directory" if directory.exists() else "no such directory"
        raise VptError(f"{directory}: not a VideoReward checkpoint ({reason}); {_HINT}")
    if (directory / "zoo.json").is_file() and (directory / "videoreward" / CONFIG_FILE).is_file():
        directory = directory / "videoreward"
    if (directory / CONFIG_FILE).is_file():
        model = _load_ours(directory, dtype, base)
    elif is_videoalign_directory(directory):
        model = load_videoalign(directory, dtype, base, step)
    else:
        raise VptError(f"{directory}: not a VideoReward checkpoint (neither {CONFIG_FILE} nor VideoAlign's "
                       f"{OFFICIAL_CONFIG} found); {_HINT}")
    return model.to(device).eval()

