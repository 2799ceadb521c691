"""The noisy-latent reward model of Flow-NRG: ``r_φ(x_σ, prompt, σ)`` with one output per reward dimension
(VideoAlign, Liu et al. 2025, arXiv 2501.13918, §3.6).

Scoring pixels during sampling would mean back-propagating through the VAE decoder at every step, so the reward
reads the sampler's noisy latents directly. Its trunk is the generator's own transformer cut after its first ``k``
blocks — patch embedding, time and text conditioning and blocks ``0 .. k-1`` copied with their weights — so it
starts from features that already understand noisy latents at every σ. The trunk is a diffusers
``WanTransformer3DModel`` with ``num_layers = k`` whose output projection (fresh, ``head_channels`` wide per latent
position, still modulated by the timestep like the generator's) feeds the head::

    features = trunk(x_σ, σ·1000, prompt)          [B, head_channels, F, h, w]
    rewards  = Linear(mean_{F,h,w} SiLU(features))  [B, D]

A saved model is a directory::

    latent_reward.json        dimensions, k, head width, the generator it was cut from and the identities of the
                              VAE and text encoder whose latents and embeddings it reads
    trunk/                    the trunk (diffusers save_pretrained: config.json + safetensors)
    head.safetensors          the head's weights

:func:`load_latent_reward` reads it back through ``from_pretrained`` and safetensors (no pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vpt.errors import VptError

CONFIG_FILE = "latent_reward.json"
TRUNK_DIR = "trunk"
HEAD_FILE = "head.safetensors"
KIND = "vpt-latent-reward"
FORMAT_VERSION = 1
DEFAULT_BLOCKS = 4
DEFAULT_HEAD_CHANNELS = 32
TIMESTEP_SCALE = 1000  # Wan's transformer takes σ·1000 as its timestep


class LatentRewardModel(nn.Module):
    """``forward(latents [B, C, F, h, w], sigma [B], prompt_embeds [B, L, D_text]) -> rewards [B, D]`` (float32)."""

    def __init__(self, trunk: nn.Module, dimensions: Sequence[str], info: Mapping[str, Any] | None = None):
        super().__init__()
        if not dimensions or len(set(dimensions)) != len(dimensions):
            raise ValueError(f"dimensions must be distinct names, got {list(dimensions)}")
        self.trunk = trunk
        self.dimensions = tuple(dimensions)
        self.head = nn.Linear(int(trunk.config.out_channels), len(self.dimensions), dtype=torch.float32)
        self.info = dict(info or {})  # the generator and component identities it reads (saved with the model)

    @property
    def blocks(self) -> int:
        return int(self.trunk.config.num_layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.trunk.dtype

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        timestep = (sigma.reshape(-1) * TIMESTEP_SCALE).to(latents.device).expand(latents.shape[0])
        features = self.trunk(hidden_states=latents.to(self.dtype), timestep=timestep,
                              encoder_hidden_states=prompt_embeds.to(self.dtype), return_dict=False)[0]
        pooled = nn.functional.silu(features.float()).mean(dim=(2, 3, 4))  # [B, head_channels]
        return self.head(pooled.to(self.head.weight.dtype)).float()

    def weight_vector(self, weights: Mapping[str, float]) -> torch.Tensor:
        """float32 ``[D]`` of ``weights`` by dimension name (missing dimensions weigh 0); VptError naming an
        unknown dimension."""
        unknown = [name for name in weights if name not in self.dimensions]
        if unknown:
            raise VptError(f"the latent reward model has no dimension {unknown[0]!r}; it scores "
                           f"{', '.join(self.dimensions)}")
        return torch.tensor([float(weights.get(name, 0.0)) for name in self.dimensions], dtype=torch.float32)


def checked_blocks(blocks: int | None, available: int) -> int:
    """The number of blocks to copy: ``blocks`` (default :data:`DEFAULT_BLOCKS`, at most ``available``); VptError
    when the generator has fewer."""
    if blocks is None:
        return min(DEFAULT_BLOCKS, available)
    if not 1 <= blocks <= available:
        raise VptError(f"--blocks {blocks}: the generator's transformer has {available} blocks; choose 1 to "
                       f"{available}")
    return blocks


def cut_generator(transformer: nn.Module, blocks: int | None, dimensions: Sequence[str],
                  head_channels: int = DEFAULT_HEAD_CHANNELS, seed: int = 0,
                  info: Mapping[str, Any] | None = None) -> LatentRewardModel:
    """A new reward model whose trunk copies the patch embedding, conditioning and first ``blocks`` blocks
    (default: :data:`DEFAULT_BLOCKS`, at most all) of the generator's ``transformer`` (left untouched); the output
    projection and the head are initialised from ``seed`` (the global RNG is left as it was). The trunk is float32
    whatever the generator's dtype: it trains (a bfloat16 generator's weights are copied as they are)."""
    from diffusers import WanTransformer3DModel

    blocks = checked_blocks(blocks, int(transformer.config.num_layers))
    if head_channels < 1:
        raise VptError(f"--head-channels must be a positive integer, got {head_channels}")
    config = {key: value for key, value in dict(transformer.config).items() if not key.startswith("_")}
    config.update(num_layers=int(blocks), out_channels=int(head_channels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        trunk = WanTransformer3DModel.from_config(config)
        model = LatentRewardModel(trunk, dimensions, info)
    source = transformer.state_dict()
    copied = {name: tensor for name, tensor in source.items()
              if not name.startswith("proj_out.") and _kept(name, blocks)}
    missing, unexpected = trunk.load_state_dict(copied, strict=False)
    if unexpected or any(not name.startswith("proj_out.") for name in missing):
        raise VptError(f"the generator's transformer does not fit a Wan trunk (missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}); give a diffusers Wan pipeline")
    return model.to(next(transformer.parameters()).device).eval()


def _kept(name: str, blocks: int) -> bool:
    if not name.startswith("blocks."):
        return True
    return int(name.split(".")[1]) < blocks


def save_latent_reward(model: LatentRewardModel, directory: str | os.PathLike,
                       extra: Mapping[str, Any] | None = None,
                       state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write ``model`` into ``directory`` (created; see the module docstring); ``extra`` joins the JSON record.
    ``state``: the model's full state dict when its own parameters are slices of a sharded model
    (:func:`vpt.distributed.full_state_dict`); the trunk is then written as ``save_pretrained`` writes it, its
    config and one safetensors file."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if state is None:
        model.trunk.save_pretrained(directory / TRUNK_DIR, safe_serialization=True)
        head = model.head.state_dict()
    else:
        from diffusers.utils.constants import SAFETENSORS_WEIGHTS_NAME

        model.trunk.save_config(directory / TRUNK_DIR)
        trunk = {name.removeprefix("trunk."): tensor.contiguous() for name, tensor in state.items()
                 if name.startswith("trunk.")}
        save_file(trunk, str(directory / TRUNK_DIR / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
        head = {name.removeprefix("head."): tensor for name, tensor in state.items() if name.startswith("head.")}
    save_file({name: tensor.detach().contiguous() for name, tensor in head.items()}, str(directory / HEAD_FILE))
    record = {"kind": KIND, "version": FORMAT_VERSION, "dimensions": list(model.dimensions), "blocks": model.blocks,
              "head_channels": int(model.trunk.config.out_channels), **model.info, **dict(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_latent_reward_record(directory: str | os.PathLike) -> dict:
    """``latent_reward.json`` of a saved model; VptError when ``directory`` is not one."""
    from vpt.io.jsonfile import read_json_object

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        reason = "no such directory" if not directory.exists() else f"{CONFIG_FILE} missing"
        raise VptError(f"{directory}: not a latent reward model ({reason}); train one with `vpt train-reward "
                       "--kind latent`")
    record = read_json_object(directory / CONFIG_FILE, "the latent reward record",
                              "train the model again with `vpt train-reward --kind latent`")
    if record.get("kind") != KIND:
        raise VptError(f"{directory / CONFIG_FILE}: not a latent reward model record (kind {record.get('kind')!r}); "
                       "train one with `vpt train-reward --kind latent`")
    return record


def load_latent_reward(directory: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> LatentRewardModel:
    """A saved reward model in eval mode, its trunk read with ``WanTransformer3DModel.from_pretrained``."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    from vpt.models.loading import quiet_loading

    directory = Path(directory)
    record = read_latent_reward_record(directory)
    try:
        with quiet_loading():
            trunk = WanTransformer3DModel.from_pretrained(directory / TRUNK_DIR, dtype=dtype, local_files_only=True)
        head = load_file(str(directory / HEAD_FILE))
    except (OSError, ValueError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise VptError(f"{directory}: cannot load the latent reward model: {first}") from None
    info = {key: value for key, value in record.items()
            if key not in ("kind", "version", "dimensions", "blocks", "head_channels")}
    model = LatentRewardModel(trunk, record["dimensions"], info)
    try:
        model.head.load_state_dict(head)
    except RuntimeError as error:
        raise VptError(f"{directory / HEAD_FILE}: does not fit {len(model.dimensions)} dimensions of "
                       f"{trunk.config.out_channels} channels ({str(error).splitlines()[0]}); save the model again")
    return model.to(device).eval()
