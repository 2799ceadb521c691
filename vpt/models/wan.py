"""The pieces of diffusers' ``WanPipeline`` that sampling and training call one by one: prompt encoding, the
velocity with classifier-free guidance, the flow-matching schedule, initial noise and decoding.

They do what ``WanPipeline.__call__`` does, operation for operation, so a sampler loop written over them (see
:func:`vpt.algo.flow_sde.sample_flow`) reproduces the pipeline's output exactly at noise level 0.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)
NUM_TRAIN_TIMESTEPS = 1000
MAX_SEQUENCE_LENGTH = 512  # WanPipeline's default text length


def schedule_shift(scheduler_config: dict, shift: float | None = None) -> float:
    """The timestep shift a schedule uses: ``shift``, else the pipeline scheduler's (``shift``, or ``flow_shift`` of
    the UniPC scheduler the Wan 2.1 releases ship), else 1."""
    if shift is None:
        shift = scheduler_config.get("shift", scheduler_config.get("flow_shift", 1.0))
    return float(shift)


def schedule_sigmas(scheduler_config: dict, steps: int, shift: float | None = None) -> torch.Tensor:
    """The flow-matching sigmas [steps + 1] (float32, 1 -> 0) that ``FlowMatchEulerDiscreteScheduler`` uses for
    ``steps`` steps; ``shift`` defaults to the pipeline scheduler's (``shift``, or ``flow_shift`` of the UniPC
    scheduler the Wan 2.1 releases ship)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=scheduler_config.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS),
        shift=schedule_shift(scheduler_config, shift))
    scheduler.set_timesteps(steps)
    return scheduler.sigmas.to(torch.float32)


def encode_prompts(pipe, prompts: Sequence[str], negative_prompt: str = "", guidance: float = 1.0,
                   max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings [P, L, D] of ``prompts`` (and of the negative prompt, [P, L, D], when ``guidance`` > 1),
    in the transformer's dtype, computed by the pipeline's own ``encode_prompt``. A prompt longer than
    ``max_sequence_length`` tokens is cut there (:func:`warn_long_prompts` tells the user)."""
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(
            prompt=list(prompts), negative_prompt=[negative_prompt] * len(prompts),
            do_classifier_free_guidance=guidance > 1.0, num_videos_per_prompt=1,
            max_sequence_length=max_sequence_length, device=pipe.transformer.device)
    dtype = pipe.transformer.dtype
    return positive.to(dtype), None if negative is None else negative.to(dtype)


def warn_long_prompts(pipe, prompts: Sequence[str], max_sequence_length: int,
                      labels: Sequence[str] | None = None) -> None:
    """Log a warning for each prompt the text encoder would cut at ``max_sequence_length`` tokens, named by its
    ``labels`` entry (e.g. ``prompts.txt: row 3``; default: the prompt's beginning)."""
    for index, prompt in enumerate(prompts):
        tokens = len(pipe.tokenizer(prompt, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
        if tokens > max_sequence_length:
            label = labels[index] if labels is not None else f"prompt {prompt[:40]!r}"
            logger.warning("%s: the prompt is %d tokens long; the text encoder reads its first %d and ignores the "
                           "rest (shorten it)", label, tokens, max_sequence_length)


def latent_shape(pipe, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(channels, latent frames, latent height, latent width) of one video; raises ValueError for sizes the
    pipeline would silently round."""
    temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    patch = pipe.transformer.config.patch_size
    if frames < 1 or (frames - 1) % temporal:
        raise ValueError(f"frames must be 1 + a multiple of {temporal} (e.g. {temporal + 1}, {4 * temporal + 1}), "
                         f"got {frames}")
    for name, size, multiple in (("height", height, spatial * patch[1]), ("width", width, spatial * patch[2])):
        if size < multiple or size % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple}, got {size}")
    return (pipe.transformer.config.in_channels, (frames - 1) // temporal + 1, height // spatial, width // spatial)


def initial_noise(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Standard normal float32 latents [1, C, F, H, W] drawn as ``WanPipeline.prepare_latents`` draws them."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor((1, *shape), generator=generator, device=torch.device("cpu"), dtype=torch.float32)


def wan_dtype(transformer: torch.nn.Module) -> torch.dtype:
    """The dtype a Wan transformer computes in, wrapped (peft, DDP) or not: its patch embedding's. Loaded in
    bfloat16, diffusers keeps the time embedding, norms and modulation tables in float32
    (``WanTransformer3DModel._keep_in_fp32_modules``), so its first parameter does not tell."""
    return next(parameter.dtype for name, parameter in transformer.named_parameters()
                if name.endswith("patch_embedding.weight"))


class WanVelocity:
    """``v(x, i, σ)`` of a Wan transformer for fixed text embeddings, with classifier-free guidance
    ``v = v_uncond + w·(v_cond − v_uncond)`` when ``guidance`` > 1 (as WanPipeline)."""

    def __init__(self, transformer, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None = None,
                 guidance: float = 1.0, dtype: torch.dtype | None = None):
        if guidance > 1.0 and negative_embeds is None:
            raise ValueError("guidance > 1 needs the negative prompt's embeddings")
        self.transformer = transformer  # may be wrapped (peft, DDP): then pass its ``dtype``
        self.prompt_embeds = prompt_embeds  # [B, L, D]
        self.negative_embeds = negative_embeds  # [B, L, D] or None
        self.guidance = float(guidance)
        self.dtype = wan_dtype(transformer) if dtype is None else dtype

    def __call__(self, x: torch.Tensor, index: int, sigma: torch.Tensor) -> torch.Tensor:
        """The velocity, float32 ``[B, C, F, h, w]``. ``sigma``: a scalar tensor, or one σ per sample ``[B]``
        (training batches mix steps). The latents and the embeddings go in as the transformer's dtype (embeddings
        stored by a run in another dtype too). A bfloat16 transformer's output is cast up before anything combines
        it: the sampler's SDE mean and GRPO's recomputation of it then round alike (a 0-dim σ times a bf16 tensor
        stays bf16, so leaving the cast to the caller would round one of them in bf16)."""
        model_input = x.to(self.dtype)
        timestep = (sigma * NUM_TRAIN_TIMESTEPS).to(x.device).reshape(-1).expand(x.shape[0])
        velocity = self.transformer(hidden_states=model_input, timestep=timestep,
                                    encoder_hidden_states=self.prompt_embeds.to(self.dtype),
                                    return_dict=False)[0].float()
        if self.guidance > 1.0:
            unconditional = self.transformer(hidden_states=model_input, timestep=timestep,
                                             encoder_hidden_states=self.negative_embeds.to(self.dtype),
                                             return_dict=False)[0].float()
            velocity = unconditional + self.guidance * (velocity - unconditional)
        return velocity


def _latent_normalisation(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latent mean and 1/std ``[1, C, 1, 1, 1]`` on ``like``'s device and dtype, as
    WanPipeline normalises latents."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, inverse_std


def decode_latents(pipe, latents: torch.Tensor) -> np.ndarray:
    """Float videos [B, T, H, W, 3] in [0, 1] from latents [B, C, F, h, w], as WanPipeline decodes them."""
    vae = pipe.vae
    latents = latents.to(vae.device, dtype=vae.dtype)
    mean, inverse_std = _latent_normalisation(vae, latents)
    with torch.no_grad():
        video = vae.decode(latents / inverse_std + mean, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="np")


def encode_videos(pipe, videos: np.ndarray) -> torch.Tensor:
    """Latents float32 [B, C, F, h, w] (on the CPU) of uint8 videos [B, T, H, W, 3]: the inverse of
    :func:`decode_latents`, preprocessed and normalised as diffusers' Wan video-to-video pipelines do. Raises
    ValueError for sizes the pipeline cannot take (see :func:`latent_shape`)."""
    if not isinstance(videos, np.ndarray) or videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be a uint8 array [B, T, H, W, 3], got "
                         f"{getattr(videos, 'dtype', type(videos).__name__)} {getattr(videos, 'shape', '')}")
    _, frames, height, width, _ = videos.shape
    latent_shape(pipe, frames, height, width)
    vae = pipe.vae
    # the processor expects [0, 1] floats (it maps them to [-1, 1]); at the clip's own size it does not resample
    pixels = pipe.video_processor.preprocess_video(videos.astype(np.float32) / 255.0, height=height, width=width)
    with torch.no_grad():
        # the posterior's mean, not a sample: a clip always gets the same latent, so it can be cached and a training
        # run reproduced from the cache
        latents = vae.encode(pixels.to(vae.device, dtype=vae.dtype)).latent_dist.mode().float()
    # in float32 (what callers cache and train on), whatever the VAE's dtype; decode_latents undoes it
    mean, inverse_std = _latent_normalisation(vae, latents)
    return ((latents - mean) * inverse_std).cpu()


def to_uint8(videos: np.ndarray) -> np.ndarray:
    """[0, 1] float videos -> uint8 (rounded), ready for :func:`vpt.io.video.write_video`."""
    return np.clip(np.round(videos * 255.0), 0, 255).astype(np.uint8)
