"""How far a flow-trained LoRA policy (``vpt sft``, ``vpt dpo``) moved from a reference, measured two ways.

- **Paired rewards** (:func:`compare_samples`): ODE samples of the policy and of the reference (another policy
  checkpoint, or the bare generator) from the same prompts and the same initial noises, scored by one function.
  Pairing removes the sample-to-sample spread that would swamp a small shift in a comparison of two means; the win
  rate is the share of pairs where the policy's sample scores higher (VideoAlign's win rate against a baseline).
- **Velocity drift** (:func:`module_drift`, computed by :mod:`vpt.algo.drift`): ``‖v_θ(x_σ) − v_ref(x_σ)‖²``
  (mean over elements) on clean clip latents noised into a band of σ — where along the trajectory the policy
  departs from the reference. VideoAlign's argument against Diffusion-DPO's β_t = β(1 − σ)²: it barely constrains
  the high-noise steps.

Library code for the learning tests and ``benchmarks/table_dpo_beta.py``; nothing here prints.
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

Checkpoint = str | os.PathLike | None
"""A policy checkpoint directory, or None for the generator itself."""


def toy_sampling(frames: int = 9, height: int = 32, width: int = 32, steps: int = 8) -> RolloutOptions:
    """Deterministic sampling (ODE, no guidance) at the toy world's clip size."""
    return RolloutOptions(group_size=1, steps=steps, noise_level=0.0, guidance=1.0, frames=frames, height=height,
                          width=width)


def load_transformer(model: str | os.PathLike, checkpoint: Checkpoint) -> torch.nn.Module:
    """The generator's transformer with the LoRA policy at ``checkpoint`` applied (None: without), in eval mode."""
    from vpt.models.loading import load_policy, load_wan_transformer

    transformer = load_wan_transformer(model).eval()
    return transformer if checkpoint is None else load_policy(transformer, checkpoint)[0]


def sample_videos(pipe, prompts: Sequence[str], samples: int, seed: int, sampling: RolloutOptions) -> list[np.ndarray]:
    """``samples`` ODE samples per prompt by ``pipe.transformer``, uint8 ``[T, H, W, 3]`` each, prompt-major. The
    initial noises depend on (``seed``, prompt index, sample index) only, so two transformers sampled with the same
    arguments start from the same noises."""
    from vpt.models.wan import encode_prompts
    from vpt.rollouts.sampling import sample_group

    options = dataclasses.replace(sampling, group_size=samples, noise_level=0.0, seed=seed)
    videos = []
    for index, prompt in enumerate(prompts):
        embeds, negative = encode_prompts(pipe, [prompt], options.negative_prompt, options.guidance)
        videos.extend(sample_group(pipe, embeds, negative, f"eval-{index}", options).videos)
    return videos


def sample_scores(pipe, prompts: Sequence[str], samples: int, seed: int, score: Callable[[np.ndarray], float],
                  sampling: RolloutOptions) -> np.ndarray:
    """``score`` of :func:`sample_videos`, float64 ``[len(prompts) · samples]`` prompt-major."""
    return np.asarray([float(score(video)) for video in sample_videos(pipe, prompts, samples, seed, sampling)],
                      dtype=np.float64)


@dataclass
class PairedScores:
    """Scores of policy and reference samples; pair ``i`` comes from the same prompt and initial noise."""

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


def compare_samples(model: str | os.PathLike, policy: Checkpoint, reference: Checkpoint, prompts: Sequence[str],
                    samples: int, seed: int, score: Callable[[np.ndarray], float],
                    sampling: RolloutOptions | None = None) -> PairedScores:
    """:func:`sample_scores` of the generator ``model`` under the ``policy`` and under the ``reference``, from the
    same prompts and initial noises (``sampling`` defaults to :func:`toy_sampling`)."""
    from vpt.models.loading import load_wan_pipeline

    sampling = sampling or toy_sampling()
    pipe = load_wan_pipeline(model)
    scores = {}
    for name, checkpoint in (("reference", reference), ("policy", policy)):
        pipe.transformer = load_transformer(model, checkpoint)
        scores[name] = sample_scores(pipe, prompts, samples, seed, score, sampling)
    return PairedScores(**scores)


def encode_clips(model: str | os.PathLike, videos: np.ndarray,
                 prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean latents ``[N, C, F, h, w]``, prompt embeddings ``[N, L, D]``) of uint8 clips ``[N, T, H, W, 3]`` and
    their prompts, encoded by the generator ``model``'s VAE and text encoder as training encodes them."""
    from vpt.models.loading import load_wan_pipeline
    from vpt.models.wan import encode_prompts, encode_videos

    pipe = load_wan_pipeline(model)
    embeds, _ = encode_prompts(pipe, list(prompts))
    return encode_videos(pipe, videos), embeds


def module_drift(policy: torch.nn.Module, reference: torch.nn.Module, latents: torch.Tensor, embeds: torch.Tensor,
                 band: tuple[float, float], draws: int, seed: int) -> float:
    """:func:`vpt.algo.drift.band_drift` of two transformers on ``latents`` with their ``embeds``: σ uniform in
    ``band`` (σ = 1 pure noise), ``draws`` noise levels per latent, noises and σ from ``seed`` alone, so every
    policy is measured at the same points."""
    from vpt.algo.drift import band_drift
    from vpt.models.wan import WanVelocity

    embeds = embeds.repeat(draws, 1, 1)
    moved, kept = (WanVelocity(module, embeds, dtype=latents.dtype) for module in (policy, reference))
    return band_drift(moved, kept, latents, band, draws, seed)
