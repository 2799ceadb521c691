"""Loading models: the one place a diffusers Wan pipeline, a LoRA of its transformer (a vpt policy checkpoint, or
any peft or diffusers Wan LoRA: :func:`read_lora`, :func:`open_lora`) and ViPO's DINOv2 are read from disk.

Every command that needs a generator calls :func:`load_wan_pipeline`, so the tiny zoo and real checkpoints
(``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` downloaded by the user) go through the same ``from_pretrained`` code.
:func:`load_dinov2` does the same for the frozen DINOv2 feature extractor (the zoo's ``dinov2`` or a real
``facebook/dinov2-*`` directory); its patch features come from :func:`vpt.models.dinov2.dinov2_patch_features`.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from vpt.errors import VptError

_HINT = "build one with `vpt zoo tiny DIR`"
WAN_PIPELINE_CLASSES = ("WanPipeline",)


def zoo_component(zoo_dir: str | os.PathLike, name: str) -> Path:
    """Path of one component (``wan``, ``dinov2``, ...) of a zoo directory, as its ``zoo.json`` names it."""
    zoo_dir = Path(zoo_dir)
    try:
        index = json.loads((zoo_dir / "zoo.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VptError(f"{zoo_dir}: not a zoo directory (zoo.json missing); {_HINT}") from None
    try:
        return zoo_dir / index["components"][name]["path"]
    except KeyError:
        known = ", ".join(index.get("components", {}))
        raise VptError(f"{zoo_dir}: the zoo has no component {name!r} (it has: {known})") from None


def _resolve_model_directory(path: str | os.PathLike, what: str, component: str, index_name: str, field: str,
                             expected: Sequence[str]) -> Path:
    """``path``, or the ``component`` of the zoo at ``path``, checked to be a ``what`` directory: its
    ``index_name`` JSON names one of ``expected`` in ``field``. One-line :class:`VptError` otherwise."""
    path = Path(path)
    if not path.is_dir():
        reason = "not a directory" if path.exists() else "no such directory"
        raise VptError(f"{path}: not a {what} directory ({reason}); {_HINT}")
    if not (path / index_name).is_file() and (path / "zoo.json").is_file():
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


PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"  # what peft's save_pretrained writes (and flow_grpo, which uses it)
DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
_NO_LORA = (f"not a LoRA policy checkpoint ({PEFT_CONFIG} and {PEFT_WEIGHTS} expected) nor a diffusers LoRA "
            f"({DIFFUSERS_LORA}, or a .safetensors file of one); give a checkpoint written by grpo-step, dpo or sft, "
            "or a peft or diffusers Wan LoRA")


def _lora_files(path: Path) -> tuple[str, Path]:
    """(format, weights file) of the LoRA at ``path``: a peft adapter directory (preferred when a directory holds
    both layouts, as vpt's checkpoints do), a directory with diffusers' LoRA file, or a ``.safetensors`` file."""
    if path.is_dir():
        if (path / PEFT_CONFIG).is_file() and (path / PEFT_WEIGHTS).is_file():
            return "peft", path / PEFT_WEIGHTS
        if (path / DIFFUSERS_LORA).is_file():
            return "diffusers", path / DIFFUSERS_LORA
    elif path.is_file() and path.suffix == ".safetensors":
        return "diffusers", path
    if not path.exists():
        raise VptError(f"{path}: no such file or directory; give a checkpoint written by grpo-step, dpo or sft, or a "
                       "peft or diffusers Wan LoRA")
    raise VptError(f"{path}: {_NO_LORA}")


def policy_digest(path: str | os.PathLike) -> str:
    """Short sha256 of a LoRA policy's adapter weights (the peft weights file, else diffusers'): what identifies the
    policy that sampled a rollout, and the parent a stage's record names."""
    import hashlib

    _, weights = _lora_files(Path(path))
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:12]


@dataclass
class LoraWeights:
    """A LoRA of the Wan transformer read from disk, in peft's terms: ``config`` and ``state_dict`` (keys as
    ``PeftModel.state_dict`` names them, ``base_model.model.blocks.0.attn1.to_q.lora_A.weight``)."""

    path: Path
    format: str  # "peft" or "diffusers"
    config: Any  # peft.LoraConfig
    state_dict: dict
    alpha_source: str  # where lora_alpha came from
    digest: str

    @property
    def id(self) -> str:
        """What a rollout records as the policy that sampled it, and a stage as its parent."""
        return f"{self.path.resolve()}#{self.digest}"

    def record(self) -> dict:
        """The LoRA's setup for ``policy.json``: format, rank, alpha (and where it came from), targets."""
        config = self.config
        targets = config.target_modules
        info = {"format": self.format, "digest": self.digest, "rank": config.r, "alpha": config.lora_alpha,
                "alpha_source": self.alpha_source,
                "targets": [targets] if isinstance(targets, str) else sorted(targets),
                "modules": sum(1 for key in self.state_dict if ".lora_A." in key)}
        for name in ("rank_pattern", "alpha_pattern"):
            if getattr(config, name, None):
                info[name] = dict(sorted(getattr(config, name).items()))
        return info


def read_lora(path: str | os.PathLike) -> LoraWeights:
    """The LoRA at ``path``: a peft adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``, as
    peft, flow_grpo and vpt's checkpoints save it), or a diffusers Wan LoRA (a directory with
    ``pytorch_lora_weights.safetensors``, or a ``.safetensors`` file) in any layout diffusers'
    ``WanPipeline.lora_state_dict`` converts. A diffusers LoRA's config is inferred as diffusers' own
    ``load_lora_adapter`` does: from its saved adapter metadata, or from the weights (rank from the ``lora_B`` shapes,
    alpha = rank, targets = the modules the weights name)."""
    import hashlib

    from peft import LoraConfig, PeftConfig
    from peft.utils import load_peft_weights

    path = Path(path)
    kind, weights = _lora_files(path)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    if kind == "peft":
        try:
            config = PeftConfig.from_pretrained(str(path))
            state = load_peft_weights(str(path), device="cpu")
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise VptError(f"{path}: cannot read the peft adapter ({_first_line(error)})") from None
        if not isinstance(config, LoraConfig):
            raise VptError(f"{path}: a peft {config.peft_type} adapter, not a LoRA; give a LoRA adapter")
        return LoraWeights(path, kind, config, state, "adapter_config.json", digest)
    return _read_diffusers_lora(path, weights, digest)


def _read_diffusers_lora(path: Path, weights: Path, digest: str) -> LoraWeights:
    from diffusers import WanPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import get_peft_kwargs
    from peft import LoraConfig

    prefix = "transformer."  # what WanPipeline.load_lora_weights loads into the transformer
    try:
        with quiet_loading():
            state, metadata = WanPipeline.lora_state_dict(
                str(weights), return_lora_metadata=True, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise VptError(f"{path}: cannot read the diffusers LoRA ({_first_line(error)})") from None
    foreign = sorted(key for key in state if not key.startswith(prefix))
    state = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    if not state or foreign:
        what = f"weights outside the transformer ({foreign[0]}, ...)" if foreign else "no LoRA weights"
        raise VptError(f"{path}: not a Wan transformer LoRA ({what}); give a LoRA of the Wan transformer")
    if any(".lokr_" in key for key in state):
        raise VptError(f"{path}: a LoKr adapter, not a LoRA; give a LoRA adapter")
    if "lora_A" not in next(iter(state)):
        state = convert_unet_state_dict_to_peft(state)
    metadata = {key.removeprefix(prefix): value for key, value in (metadata or {}).items()
                if key.startswith(prefix)} or None
    if metadata is not None:
        kwargs, alpha_source = metadata, "the adapter metadata (lora_adapter_metadata)"
    else:
        ranks = {f"^{key}": value.shape[1] for key, value in state.items() if "lora_B" in key and value.ndim > 1}
        if not ranks:
            raise VptError(f"{path}: not a Wan transformer LoRA (no lora_B weights); give a LoRA of the transformer")
        kwargs = get_peft_kwargs(ranks, network_alpha_dict=None, peft_state_dict=state)
        alpha_source = "the rank: none saved (diffusers' convention)"
    try:
        config = LoraConfig(**kwargs)
    except (TypeError, ValueError) as error:
        raise VptError(f"{path}: unusable LoRA adapter metadata ({_first_line(error)})") from None
    state = {f"base_model.model.{key}": value for key, value in state.items()}
    return LoraWeights(path, "diffusers", config, state, alpha_source, digest)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def open_lora(transformer: torch.nn.Module, lora: LoraWeights, trainable: bool,
              generator: str | os.PathLike | None = None) -> torch.nn.Module:
    """``transformer`` wrapped as a ``PeftModel`` with ``lora`` loaded (adapter ``default``): trainable, or frozen
    for sampling. Every LoRA weight must land on a module of the transformer with its shape, and every injected
    LoRA module must get weights: otherwise a one-line :class:`VptError` ("does not fit the generator")."""
    import copy

    from peft import get_peft_model, set_peft_model_state_dict

    config = copy.deepcopy(lora.config)
    config.inference_mode = not trainable
    config.base_model_name_or_path = None  # get_peft_model records the transformer's own (none): no rename warning
    where = f" {generator}" if generator is not None else ""

    def unfit(reason: str) -> VptError:
        return VptError(f"{lora.path}: this LoRA does not fit the generator{where} ({reason}); use the generator it "
                        "was trained on")

    modules = dict(transformer.named_modules())
    lacking = sorted({key.removeprefix("base_model.model.").split(".lora_")[0] for key in lora.state_dict
                      if ".lora_" in key} - set(modules))
    if lacking:
        raise unfit(f"it adapts {len(lacking)} module{'s' if len(lacking) > 1 else ''} the transformer lacks: "
                    f"{lacking[0]}{', ...' if len(lacking) > 1 else ''}")
    with torch.random.fork_rng(devices=[]):  # the LoRA's own weights replace peft's random initialisation
        try:
            model = get_peft_model(transformer, config)
            result = set_peft_model_state_dict(model, lora.state_dict)
        except (ValueError, RuntimeError, KeyError) as error:
            lines = [line.strip() for line in str(error).splitlines()]
            raise unfit(next((line.rstrip(".") for line in lines if line.startswith("size mismatch")),
                             _first_line(error))) from None
    unexpected = [key for key in getattr(result, "unexpected_keys", []) or [] if ".lora_" in key]
    missing = [key for key in getattr(result, "missing_keys", []) or [] if ".lora_" in key]
    if unexpected:
        raise unfit(f"{len(unexpected)} weights for modules it lacks, e.g. {unexpected[0]}")
    if missing:
        raise unfit(f"no weights for {len(missing)} LoRA parameters, e.g. {missing[0]}")
    return model


def load_policy(transformer: torch.nn.Module, path: str | os.PathLike) -> tuple[torch.nn.Module, str]:
    """``transformer`` with the LoRA policy at ``path`` applied (a policy checkpoint of any stage, or any peft or
    diffusers Wan LoRA: see :func:`read_lora`), in eval mode, and the policy's id (its resolved path and a hash of
    its adapter weights)."""
    lora = read_lora(path)
    return open_lora(transformer, lora, trainable=False).eval(), lora.id


def generator_name(directory: str | os.PathLike) -> str:
    """How a model card names the generator at ``directory``, without a local path: the hub id its
    ``model_index.json`` records (``_name_or_path``) or the hub cache it lies in (``models--ORG--NAME``), else the
    directory's base name."""
    import re

    directory = Path(directory)
    try:
        index = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        index = {}
    recorded = index.get("_name_or_path") if isinstance(index, dict) else None
    hub_id = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
    if isinstance(recorded, str) and hub_id.fullmatch(recorded) and not Path(recorded).exists():
        return recorded
    for part in reversed(directory.parts):
        cached = re.fullmatch(r"models--([^/]+?)--([^/]+)", part)
        if cached:
            return f"{cached[1]}/{cached[2]}"
    return directory.name


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
