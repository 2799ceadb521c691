"""How far a flow-trained LoRA policy (``vpt sft``, ``vpt dpo``) moved from its reference, measured two ways.

- **Paired rewards** (:func:`paired_scores`): ODE samples of the policy and of the reference (the same transformer
  with the adapter disabled) from the same prompts and the same initial noises, scored by one function. Pairing
  removes the sample-to-sample spread that would swamp a small shift in a comparison of two means; the win rate is
  the share of pairs where the policy's sample scores higher (VideoAlign's win rate against a baseline).
- **Velocity drift** (:func:`velocity_drift`): ``‖v_θ(x_σ) − v_ref(x_σ)‖²`` (mean over elements) on clean clip
  latents noised into bands of σ — where along the trajectory the policy departs from the reference. VideoAlign's
  argument against Diffusion-DPO's β_t = β(1 − σ)²: it barely constrains high-noise steps, so the policy drifts
  there most.

Both take a pipeline whose transformer is a peft policy (:func:`load_policy_pipeline`); nothing here prints.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from vpt.rollouts.sampling import RolloutOptions

HIGH_NOISE = (0.7, 1.0)
LOW_NOISE = (0.0, 0.3)


def toy_sampling(frames: int = 9, height: int = 32, width: int = 32, steps: int = 8) -> RolloutOptions:
    """Deterministic sampling (ODE, no guidance) at the toy world's clip size."""
    return RolloutOptions(group_size=1, steps=steps, noise_level=0.0, guidance=1.0, frames=frames, height=height,
                          width=width)


def load_policy_pipeline(model: str | os.PathLike, checkpoint: str | os.PathLike):
    """The generator's pipeline with the LoRA policy at ``checkpoint`` as its transformer (eval mode)."""
    from vpt.models.loading import load_policy, load_wan_pipeline

    pipe = load_wan_pipeline(model)
    pipe.transformer, _ = load_policy(pipe.transformer, checkpoint)
    return pipe


def sample_scores(pipe, prompts: Sequence[str], samples: int, seed: int, score: Callable[[np.ndarray], float],
                  sampling: RolloutOptions) -> np.ndarray:
    """``score`` of ``samples`` ODE samples per prompt, float64 ``[len(prompts) · samples]`` prompt-major; the
    initial noises are a function of (``seed``, prompt index, sample index) only, so two transformers sampled with
    the same arguments start from the same noises."""
    from vpt.models.wan import encode_prompts
    from vpt.rollouts.sampling import sample_group

    options = dataclasses.replace(sampling, group_size=samples, noise_level=0.0, seed=seed)
    values = []
    for index, prompt in enumerate(prompts):
        embeds, negative = encode_prompts(pipe, [prompt], options.negative_prompt, options.guidance)
        group = sample_group(pipe, embeds, negative, f"eval-{index}", options)
        values.extend(float(score(video)) for video in group.videos)
    return np.asarray(values, dtype=np.float64)


@dataclass
class PairedScores:
    """Scores of policy and reference samples, pair ``i`` from the same prompt and initial noise."""

    policy: np.ndarray
    reference: np.ndarray

    @property
    def gain(self) -> float:
        """Mean of policy − reference over the pairs."""
        return float(np.mean(self.policy - self.reference))

    @property
    def win_rate(self) -> float:
        """Share of pairs where the policy's sample scores strictly higher."""
        return float(np.mean(self.policy > self.reference))

    def describe(self) -> str:
        return (f"reference {np.mean(self.reference):.4f} -> policy {np.mean(self.policy):.4f} "
                f"(gain {self.gain:+.4f}, win rate {self.win_rate:.2f}, n={len(self.policy)})")


def paired_scores(pipe, prompts: Sequence[str], samples: int, seed: int, score: Callable[[np.ndarray], float],
                  sampling: RolloutOptions) -> PairedScores:
    """:func:`sample_scores` of the policy ``pipe.transformer`` and of its reference (the adapter disabled)."""
    policy = sample_scores(pipe, prompts, samples, seed, score, sampling)
    with pipe.transformer.disable_adapter():
        reference = sample_scores(pipe, prompts, samples, seed, score, sampling)
    return PairedScores(policy=policy, reference=reference)


def encode_clips(pipe, videos: np.ndarray, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean latents ``[N, C, F, h, w]``, prompt embeddings ``[N, L, D]``) of uint8 clips ``[N, T, H, W, 3]`` and
    their prompts, encoded as training encodes them."""
    from vpt.models.wan import encode_prompts, encode_videos

    embeds, _ = encode_prompts(pipe, list(prompts))
    return encode_videos(pipe, videos), embeds


def velocity_drift(policy: torch.nn.Module, latents: torch.Tensor, embeds: torch.Tensor,
                   band: tuple[float, float], draws: int, seed: int) -> float:
    """Mean over elements of ``(v_θ − v_ref)²`` on ``latents`` (with their ``embeds``) noised to ``draws`` noise
    levels each, σ uniform in ``band`` (σ = 1 pure noise); the reference is ``policy`` with its adapter disabled.
    The noises and σ derive from ``seed`` alone, so every policy is measured at the same points."""
    from vpt.algo.flow_matching import SIGMA_EPS, noised
    from vpt.models.wan import WanVelocity

    low, high = band
    generator = torch.Generator().manual_seed(seed)
    latents = latents.repeat(draws, 1, 1, 1, 1)
    embeds = embeds.repeat(draws, 1, 1)
    noise = torch.randn(latents.shape, generator=generator)
    sigma = (low + (high - low) * torch.rand(latents.shape[0], generator=generator)).clamp(SIGMA_EPS, 1 - SIGMA_EPS)
    x = noised(latents, noise, sigma)
    with torch.no_grad():
        moved = WanVelocity(policy, embeds, dtype=latents.dtype)(x, 0, sigma)
        with policy.disable_adapter():
            reference = WanVelocity(policy, embeds, dtype=latents.dtype)(x, 0, sigma)
    return float(((moved.double() - reference.double()) ** 2).mean())
