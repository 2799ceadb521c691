"""``vpt guide``: Flow-NRG sampling — the ``sample-rollouts`` sampler with its velocity steered by a noisy-latent
reward model (:mod:`vpt.algo.guidance`), into a directory of mp4s and one ``videos`` table.

Seeds follow :mod:`vpt.rollouts.sampling` (run seed, prompt id, sample index), so the videos of ``guide`` and of
``sample-rollouts`` with the same prompts, seed and sampler options start from the same noise, and at scale 0 they
are the same videos. Each row records the guidance (scale, weights, reward model) and the reward model's scores of
the final latent, so a table of guided videos says how it was made.

::

    OUT/videos.parquet     one row per video (schema ``videos``)
    OUT/videos/<id>.mp4
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from vpt.algo.guidance import RewardGuidedVelocity
from vpt.errors import VptError
from vpt.rollouts.run import PromptItem, RunSummary, checked_output, group_id, padding, sample_ids, sample_into
from vpt.rollouts.sampling import RolloutOptions, sample_group

TABLE_FILE = "videos.parquet"
VIDEOS_DIR = "videos"


@dataclass(frozen=True)
class GuidanceSettings:
    """What steers the sampler: the reward model (its directory, for the record), dimension weights and scale w."""

    weights: Mapping[str, float]
    scale: float
    reward_path: str

    def check(self, dimensions: Sequence[str]) -> None:
        if not math.isfinite(self.scale) or self.scale < 0:
            raise VptError(f"--scale must be a finite number >= 0, got {self.scale}")
        unknown = [name for name in self.weights if name not in dimensions]
        if unknown:
            raise VptError(f"--weights names {unknown[0]!r}, but the latent reward model scores "
                           f"{', '.join(dimensions)}; weight those")

    def describe(self, dimensions: Sequence[str]) -> str:
        """Every dimension's weight, in the model's order: ``vq=0.1,mq=0.1,ta=0.8``."""
        return ",".join(f"{name}={float(self.weights.get(name, 0.0)):g}" for name in dimensions)


def check_reward_fits(reward_model, model_dir: Path, cache=None) -> None:
    """The reward model must read the latents of this generator's VAE and the embeddings of its text encoder:
    VptError naming the component that differs."""
    from vpt.encoding.cache import EncodedCache

    store = cache or EncodedCache()
    for key, directories, what in (("vae_id", (model_dir / "vae",), "VAE (its latents)"),
                                   ("text_encoder_id", (model_dir / "text_encoder", model_dir / "tokenizer"),
                                    "text encoder (its prompt embeddings)")):
        expected = reward_model.info.get(key)
        if expected is not None and store.component_identity(*directories) != expected:
            raise VptError(f"the latent reward model was trained on another {what} than the generator "
                           f"{model_dir} has; train one on this generator (vpt train-reward --kind latent --model "
                           f"{model_dir})")


def reward_steer(reward_model, weights: torch.Tensor, scale: float):
    """A :data:`~vpt.rollouts.sampling.Steer` adding Flow-NRG guidance of ``reward_model`` to a velocity."""
    def steer(velocity, prompt_embeds: torch.Tensor):
        return RewardGuidedVelocity(velocity, lambda x, sigma: reward_model(x, sigma, prompt_embeds), weights, scale)

    return steer


def guide_videos(pipe, prompts: Sequence[PromptItem], options: RolloutOptions, reward_model,
                 guidance: GuidanceSettings, out: str | os.PathLike, processes, policy_id: str, model_id: str,
                 on_step: Callable[[int], None] | None = None, context_parallel: int = 1) -> RunSummary:
    """Sample ``options.group_size`` guided videos per prompt into ``out`` (see the module docstring);
    ``context_parallel``: the degree the generator's transformer runs with."""
    from vpt.io.video import write_video
    from vpt.models.wan import encode_prompts, warn_long_prompts

    guidance.check(reward_model.dimensions)
    out = checked_output(out, pipe, options, context_parallel)
    weights = reward_model.weight_vector(guidance.weights)
    steer = reward_steer(reward_model, weights, guidance.scale)
    order = [sample_id for item in prompts for sample_id in sample_ids(options, item.prompt_id)]
    common = {"fps": float(options.fps), "frames": options.frames, "height": options.height, "width": options.width,
              "guidance_scale": float(guidance.scale), "guidance_weights": guidance.describe(reward_model.dimensions),
              "reward_model": guidance.reward_path, "policy_id": policy_id, "model_id": model_id,
              "cfg_scale": float(options.guidance), "steps": options.steps, "noise_level": float(options.noise_level)}
    final = torch.zeros(1)

    def sample(directory: Path, item: PromptItem, stem: str) -> list[dict]:
        warn_long_prompts(pipe, [item.prompt], options.max_sequence_length, [item.where or item.prompt_id])
        embeds, negative = encode_prompts(pipe, [item.prompt], options.negative_prompt, options.guidance,
                                          options.max_sequence_length)
        group = sample_group(pipe, embeds, negative, item.prompt_id, options, on_step, steer=steer)
        with torch.no_grad():
            latents = group.latents.to(embeds.device)
            rewards = reward_model(latents, final.expand(len(latents)), embeds.expand(len(latents), -1, -1)).cpu()
        rows = []
        for k, sample_id in enumerate(sample_ids(options, item.prompt_id)):
            path = f"{VIDEOS_DIR}/{stem}-{k:03d}.mp4"
            write_video(directory / path, group.videos[k], options.fps)
            rows.append({"id": sample_id, "path": path, "prompt": item.prompt, "prompt_id": item.prompt_id,
                         "group_id": group_id(options, item.prompt_id), "seed": group.seeds[k], **common,
                         **{f"nrg_{name}": float(rewards[k, d]) for d, name in enumerate(reward_model.dimensions)}})
        return rows

    sample_into(out, TABLE_FILE, "videos", prompts, order, processes, sample,
                pad=padding(pipe, options, context_parallel, steer), context_parallel=context_parallel)
    return RunSummary(prompts=len(prompts), videos=len(order), directory=out)

