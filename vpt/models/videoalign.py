"""VideoAlign's checkpoint layout: reading it into a :class:`~vpt.models.videoreward.VideoRewardModel` and writing one.

Layout (:func:`export_videoalign` writes it, :func:`load_videoalign` reads it)::

    DIR/model_config.json        data_config, training_args, model_config, peft_lora_config, inference_config
    DIR/checkpoint-<step>/model.pth                   full state dict (peft-wrapped keys when LoRA is on), or
    DIR/checkpoint-<step>/adapter_model.safetensors   LoRA weights (keys without the adapter name) +
    DIR/checkpoint-<step>/non_lora_state_dict.pth     vision tower, merger, embed_tokens, rm_head (peft-wrapped keys)
    DIR/checkpoint-<step>/tokenizer/                  tokenizer (else the base's, with the reward tokens added)
    DIR/base/                    (our exports) the base Qwen2-VL, named by model_config.model_name_or_path = "base"

Its keys use transformers 4.45 module paths (``model.layers.*``, ``model.embed_tokens``, ``model.norm``,
``visual.*``, ``lm_head``, ``rm_head``); :func:`~vpt.models.videoreward.official_to_current_key` /
:func:`~vpt.models.videoreward.current_to_official_key` map them to and from the paths of transformers >= 4.52
(``model.language_model.*``, ``model.visual.*``), and the key maps here add or drop peft's wrapping and the head's
name. ``.pth`` files are read with :func:`vpt.io.tensors.load_torch` (``weights_only=True``). The base model named
by ``model_name_or_path`` must be a local directory (nothing is downloaded): relative to DIR, absolute, or given as
``base=``.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import torch

from vpt.errors import VptError
from vpt.io.atomic import atomic_directory
from vpt.io.jsonfile import read_json_object
from vpt.io.tensors import load_safetensors, load_torch
from vpt.models.qwen_frames import MAX_PIXELS
from vpt.models.videoreward import (
    DEFAULT_LORA_EXCLUDE,
    PROMPT_TEMPLATES,
    VideoRewardConfig,
    VideoRewardModel,
    current_to_official_key,
    is_lora_key,
    load_base_qwen,
    load_reward_tokenizer,
    official_to_current_key,
    resolve_base_directory,
    save_base_qwen,
    videoalign_lora_targets,
)

OFFICIAL_CONFIG = "model_config.json"
PEFT_PREFIX = "base_model.model."


# ---------------------------------------------------------------------------------------------------- key maps

_LORA_PART = r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)"


def _insert_adapter_name(key: str, adapter: str = "default") -> str:
    """``...q_proj.lora_A.weight`` -> ``...q_proj.lora_A.default.weight`` (peft's in-memory key; files omit it)."""
    return re.sub(rf"({_LORA_PART})(?=\.|$)", rf"\1.{adapter}", key, count=1)


def _remove_adapter_name(key: str, adapter: str = "default") -> str:
    """Inverse of :func:`_insert_adapter_name`."""
    return re.sub(rf"({_LORA_PART})\.{re.escape(adapter)}(?=\.|$)", r"\1", key, count=1)


def _official_to_model_key(key: str, lora: bool) -> str:
    """An official state-dict key -> the key in :class:`VideoRewardModel`'s state dict."""
    rest = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    if rest.startswith("rm_head."):
        return "head." + rest[len("rm_head."):]
    return "backbone." + (PEFT_PREFIX if lora else "") + official_to_current_key(rest)


def _model_to_official_key(key: str, lora: bool) -> str:
    prefix = PEFT_PREFIX if lora else ""
    if key.startswith("head."):
        return prefix + "rm_head." + key[len("head."):]
    rest = key[len("backbone."):]
    if lora:
        rest = rest[len(PEFT_PREFIX):]
    return prefix + current_to_official_key(rest)


# ------------------------------------------------------------------------------------------------------ reading


def _tensor_state_dict(path: Path) -> dict:
    """A ``.pth`` state dict: plain tensors only, nothing else."""
    state = load_torch(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VptError(f"{path}: not a state dict of tensors")
    return state


def _checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else None


def _official_checkpoint(directory: Path, step: int | None) -> tuple[Path, Path]:
    """(root with model_config.json, chosen checkpoint-* folder)."""
    if directory.name.startswith("checkpoint-") and not (directory / OFFICIAL_CONFIG).is_file():
        return directory.parent, directory
    complete = []
    for child in directory.iterdir():
        number = _checkpoint_step(child)
        if number is None or not child.is_dir():
            continue
        if (child / "model.pth").is_file() or ((child / "adapter_model.safetensors").is_file()
                                               and (child / "non_lora_state_dict.pth").is_file()):
            complete.append((number, child))
    if not complete:
        raise VptError(f"{directory}: VideoAlign checkpoint has no checkpoint-*/ folder with model.pth or "
                       "adapter_model.safetensors + non_lora_state_dict.pth")
    complete.sort()
    if step is None or step == -1:
        return directory, complete[-1][1]
    for number, child in complete:
        if number == step:
            return directory, child
    raise VptError(f"{directory}: no checkpoint-{step}/ (have: {', '.join(str(n) for n, _ in complete)})")


def _official_settings(root: Path) -> dict:
    """What VideoAlign's ``model_config.json`` says, checked and mapped to our names."""
    file = root / OFFICIAL_CONFIG
    raw = read_json_object(file, "the checkpoint file", "re-export the checkpoint")
    data, model_cfg = raw.get("data_config") or {}, raw.get("model_config") or {}
    peft_cfg, inference = raw.get("peft_lora_config") or {}, raw.get("inference_config")
    if not model_cfg.get("use_special_tokens", False):
        raise VptError(f"{file}: model_config.use_special_tokens is false; only VideoAlign's special-token reward "
                       "models are supported")
    output_dim = int(model_cfg.get("output_dim", 1))
    head = {1: "shared", 3: "per_dim"}.get(output_dim)
    if head is None:
        raise VptError(f"{file}: model_config.output_dim {output_dim} is not supported (need 1 or 3)")
    template = data.get("prompt_template_type", "detailed_special")
    if template not in PROMPT_TEMPLATES:
        raise VptError(f"{file}: data_config.prompt_template_type {template!r} is not supported (need "
                       f"{' or '.join(PROMPT_TEMPLATES)})")
    if inference:
        mean = tuple(float(inference[f"{d}_mean"]) for d in ("VQ", "MQ", "TA"))
        std = tuple(float(inference[f"{d}_std"]) for d in ("VQ", "MQ", "TA"))
    else:  # the official inference leaves rewards unnormalised without an inference_config
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    num_frames = data.get("num_frames")
    config = VideoRewardConfig(
        head=head, position_ids="sequential", norm_mean=mean, norm_std=std,
        fps=float(data.get("fps") or 2.0), num_frames=int(num_frames) if num_frames else None,
        max_pixels=int(data.get("max_frame_pixels") or MAX_PIXELS), prompt_template=template,
    )
    exclude = peft_cfg.get("lora_namespan_exclude")
    if isinstance(exclude, str):
        try:
            exclude = ast.literal_eval(exclude)
        except (ValueError, SyntaxError):
            raise VptError(f"{file}: peft_lora_config.lora_namespan_exclude {exclude!r} is not a list") from None
    exclude = list(exclude or [])
    if not peft_cfg.get("vision_lora", False) and "visual" not in exclude:
        exclude.append("visual")
    lora = None
    if peft_cfg.get("lora_enable", False):
        lora = {"r": int(peft_cfg.get("lora_r", 64)), "alpha": float(peft_cfg.get("lora_alpha", 128)),
                "dropout": float(peft_cfg.get("lora_dropout", 0.05)), "use_rslora": bool(peft_cfg.get("use_rslora")),
                "exclude": exclude, "num_lora_modules": int(peft_cfg.get("num_lora_modules", -1))}
    return {"config": config, "base": model_cfg.get("model_name_or_path"), "lora": lora}


def _official_tokenizer(checkpoint: Path, base_dir: Path):
    for option in (checkpoint / "tokenizer", checkpoint):
        if (option / "tokenizer.json").is_file() or (option / "tokenizer_config.json").is_file():
            return load_reward_tokenizer(option)
    return load_reward_tokenizer(base_dir)


def is_videoalign_directory(directory: Path) -> bool:
    """Whether ``directory`` is a VideoAlign checkpoint: the root (with ``model_config.json``) or one of its
    ``checkpoint-*`` folders."""
    return (directory / OFFICIAL_CONFIG).is_file() or (
        directory.name.startswith("checkpoint-") and (directory.parent / OFFICIAL_CONFIG).is_file())


def load_videoalign(directory: Path, dtype: torch.dtype, base: str | os.PathLike | None = None,
                    step: int | None = None) -> VideoRewardModel:
    """The VideoReward in VideoAlign's layout at ``directory`` (the root or one ``checkpoint-*``; ``step`` picks a
    checkpoint of the root, default the latest), in ``dtype``. ``base``: the base Qwen2-VL directory when
    ``model_config.json``'s reference is not local."""
    root, checkpoint = _official_checkpoint(directory, step)
    settings = _official_settings(root)
    base_dir = Path(base) if base is not None else resolve_base_directory(settings["base"], root)
    tokenizer = _official_tokenizer(checkpoint, base_dir)
    qwen = load_base_qwen(base_dir, dtype, len(tokenizer))
    model = VideoRewardModel(qwen, tokenizer, settings["config"])
    lora = settings["lora"]
    if lora is not None:
        targets = videoalign_lora_targets(model.qwen, lora["exclude"], lora["num_lora_modules"])
        model.enable_lora(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], targets=targets,
                          use_rslora=lora["use_rslora"])
        model.base_path = str(base_dir.resolve())
    full = checkpoint / "model.pth"
    if full.is_file():
        incoming = {_official_to_model_key(k, lora is not None): v for k, v in _tensor_state_dict(full).items()}
        sources = [full]
    else:
        adapter = checkpoint / "adapter_model.safetensors"
        non_lora = checkpoint / "non_lora_state_dict.pth"
        incoming = {_official_to_model_key(k, lora is not None): v for k, v in _tensor_state_dict(non_lora).items()}
        if lora is None:
            raise VptError(f"{root / OFFICIAL_CONFIG}: peft_lora_config.lora_enable is false but {checkpoint.name} "
                           "holds a LoRA adapter")
        incoming.update({_insert_adapter_name(_official_to_model_key(k, True)): v
                         for k, v in load_safetensors(adapter).items()})
        sources = [adapter, non_lora]
    state = model.state_dict()
    unknown = sorted(set(incoming) - set(state))
    if unknown:
        raise VptError(f"{sources[-1]}: {len(unknown)} keys do not fit the model (first: {unknown[0]!r}); "
                       "check model_config.json against the checkpoint")
    if full.is_file():
        missing = sorted(k for k in set(state) - set(incoming) if not k.endswith("lm_head.weight"))
        if missing:
            raise VptError(f"{full}: {len(missing)} model weights missing (first: {missing[0]!r})")
    bad = [k for k, v in incoming.items() if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        raise VptError(f"{sources[-1]}: {bad[0]!r} has shape {tuple(incoming[bad[0]].shape)}, the model needs "
                       f"{tuple(state[bad[0]].shape)}")
    state.update(incoming)
    tied = {k for k in state if k.endswith("lm_head.weight")} if model.qwen.config.tie_word_embeddings else set()
    for key in tied:  # the output layer shares the embedding: load the embedding only
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - tied or unexpected:
        raise VptError(f"{sources[-1]}: does not fit the model (missing {sorted(set(missing) - tied)[:1]}, "
                       f"unexpected {sorted(unexpected)[:1]})")
    return model.to(dtype)


# ------------------------------------------------------------------------------------------------------ writing


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _official_model_config(model: VideoRewardModel, base_name: str, lora: dict | None) -> dict:
    config = model.config
    sampling_frames = config.num_frames
    return {
        "data_config": {
            "meta_data": None, "data_dir": None, "meta_data_test": None,
            "max_frame_pixels": int(config.max_pixels), "num_frames": sampling_frames,
            "fps": None if sampling_frames else float(config.fps),
            "p_shuffle_frames": 0.0, "p_color_jitter": 0.0,
            "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": config.prompt_template,
            "add_noise": False, "sample_type": "uniform", "use_tied_data": True,
        },
        "training_args": {"output_dir": ".", "bf16": False, "fp16": False, "disable_flash_attn2": True,
                          "gradient_checkpointing": False},
        "model_config": {
            "model_name_or_path": base_name, "model_revision": "main", "output_dim": config.output_dim,
            "use_special_tokens": True, "reward_token": "special", "loss_type": "btt",
            "freeze_vision_tower": False, "freeze_llm": False, "tune_merger": True, "torch_dtype": None,
        },
        "peft_lora_config": {
            "lora_enable": lora is not None, "vision_lora": False,
            "lora_r": lora["r"] if lora else 64, "lora_alpha": lora["alpha"] if lora else 128,
            "lora_dropout": lora["dropout"] if lora else 0.05, "lora_target_modules": None,
            "lora_namespan_exclude": list(DEFAULT_LORA_EXCLUDE), "lora_modules_to_save": None,
            "lora_task_type": "CAUSAL_LM", "use_rslora": lora["use_rslora"] if lora else False,
            "num_lora_modules": -1,
        },
        "inference_config": {f"{d}_{kind}": float(stats[i]) for i, d in enumerate(("VQ", "MQ", "TA"))
                             for kind, stats in (("mean", config.norm_mean), ("std", config.norm_std))},
    }


def export_videoalign(model: VideoRewardModel, directory: str | os.PathLike, layout: str = "adapter", step: int = 1,
                      base_name: str = "base") -> Path:
    """Write ``model`` in VideoAlign's layout (atomically): ``model_config.json``, ``base/`` (the base Qwen2-VL and
    tokenizer, referenced as ``model_name_or_path = base_name``) and ``checkpoint-<step>/`` with the tokenizer and
    either ``model.pth`` (``layout="full"``; peft-wrapped keys when the model has LoRA) or
    ``adapter_model.safetensors`` + ``non_lora_state_dict.pth`` (``layout="adapter"``, LoRA models only).

    Keys use transformers 4.45 names, so VideoAlign's own loader (a ``Qwen2VLRewardModelBT`` of that era) reads them.
    The LoRA targets must follow VideoAlign's rule (:func:`videoalign_lora_targets`) for its loader to rebuild them.
    """
    from safetensors.torch import save_file

    if layout not in ("adapter", "full"):
        raise ValueError(f"layout must be 'adapter' or 'full', got {layout!r}")
    if layout == "adapter" and not model.has_lora:
        raise ValueError("the adapter layout needs a model with a LoRA adapter (use layout='full')")
    lora = None
    if model.has_lora:
        peft_config = model.backbone.peft_config["default"]
        targets = sorted(peft_config.target_modules) if not isinstance(peft_config.target_modules, str) else None
        if targets is None or set(targets) != set(videoalign_lora_targets(model.qwen)):
            raise ValueError("the LoRA targets differ from VideoAlign's rule; VideoAlign's loader could not rebuild "
                             "them (enable_lora with the default targets)")
        alpha = float(peft_config.lora_alpha)
        lora = {"r": int(peft_config.r), "alpha": int(alpha) if alpha.is_integer() else alpha,
                "dropout": float(peft_config.lora_dropout), "use_rslora": bool(peft_config.use_rslora)}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    official = {_model_to_official_key(k, lora is not None): v for k, v in state.items()}
    target = Path(directory)
    with atomic_directory(target, replace=True) as temporary:
        _write_json(temporary / OFFICIAL_CONFIG, _official_model_config(model, base_name, lora))
        save_base_qwen(model, temporary / base_name)
        checkpoint = temporary / f"checkpoint-{int(step)}"
        checkpoint.mkdir()
        model.tokenizer.save_pretrained(checkpoint / "tokenizer")
        if layout == "full":
            torch.save(official, checkpoint / "model.pth")
        else:
            adapter = {_remove_adapter_name(k): v for k, v in official.items() if is_lora_key(k)}
            save_file(adapter, str(checkpoint / "adapter_model.safetensors"), metadata={"format": "pt"})
            trained = ("visual.", "model.embed_tokens.", "rm_head.")
            non_lora = {k: v for k, v in official.items()
                        if not is_lora_key(k) and k[len(PEFT_PREFIX):].startswith(trained)}
            torch.save(non_lora, checkpoint / "non_lora_state_dict.pth")
            _write_json(checkpoint / "adapter_config.json", {
                "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
                "r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"], "bias": "none",
                "use_rslora": lora["use_rslora"], "fan_in_fan_out": False, "inference_mode": True,
                "modules_to_save": None, "init_lora_weights": True,
                "target_modules": sorted(current_to_official_key(n) for n in videoalign_lora_targets(model.qwen)),
            })
    return target

