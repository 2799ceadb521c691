"""The reward-hacking guard of the policy stages (``grpo-step``, ``dpo``; drift also ``sft``): held-out judges, and
the drift from the reference by noise level. Neither enters a loss, an advantage or anything optimised; both are
measured outside the training's random streams, so a run trains to the same bytes with or without them.

- **Judges** (``--judge MODEL``): reward models named and loaded as ``vpt score -m`` names and loads them, scored on
  the stage's evaluation samples (grpo-step: the iteration's rollouts; dpo: ODE samples of the starting and the
  trained policy). Metrics ``judge/<column>/mean`` and ``judge/<column>/std`` (population std) for every column the
  judges write; dpo adds ``judge/<column>/start_mean`` and ``start_std`` of the starting policy's samples. A reward
  the policy learned to hack rises while the judges stay put or fall.
- **Drift** (``--drift-probes N``): :func:`vpt.algo.drift.drift_by_noise_level` of the trained policy against the
  stage's reference on up to N latents the stage already holds, at :data:`~vpt.algo.drift.DRIFT_SIGMAS`: metrics
  ``drift/<σ:.2f>``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import torch

from vpt.algo.drift import DRIFT_SIGMAS, drift_by_noise_level
from vpt.errors import VptError

DRIFT_SEED = 0  # one seed for every run: any two checkpoints are measured at the same points
EVAL_PROMPTS = 4  # dpo without --eval-prompts: the first prompts of the pairs
EVAL_DIRECTORY = "eval-samples"  # under the run directory OUT.run/
TRACKED_SAMPLES = 4  # videos handed to the experiment trackers


@dataclass
class GuardOptions:
    """``judges``: reward model names (``vpt score -m``); ``drift_probes``: latents the drift is measured on (0:
    off); dpo's evaluation samples: ``eval_prompts`` (a prompts file; None: the pairs' first prompts),
    ``eval_samples`` per prompt and ``eval_steps`` ODE steps."""

    judges: tuple[str, ...] = ()
    drift_probes: int = 2
    eval_prompts: str | None = None
    eval_samples: int = 2
    eval_steps: int = 8

    def __post_init__(self) -> None:
        self.judges = tuple(self.judges)
        if self.drift_probes < 0:
            raise VptError(f"--drift-probes {self.drift_probes}: give the number of latents to measure the drift on "
                           "(0: off)")
        if self.eval_samples < 1:
            raise VptError(f"--eval-samples {self.eval_samples}: give at least 1 sample per evaluation prompt")
        if self.eval_steps < 2:
            raise VptError(f"--eval-steps {self.eval_steps}: give at least 2 sampler steps")
        if self.eval_prompts is not None and not self.judges:
            raise VptError("--eval-prompts are the prompts the judges score samples of; add --judge MODEL")


# ------------------------------------------------------------------------------------------------ judges
def load_judges(names: Sequence[str], dtype: str = "fp32") -> list:
    """The reward models ``names`` name, loaded by :func:`vpt.rewards.registry.load_reward_models` as ``vpt score``
    loads them (``dtype``: a learned model's weights); VptError naming ``--judge`` for a bad name or two judges that
    write one column."""
    from vpt.rewards.registry import load_reward_models

    try:
        models = load_reward_models(list(names), dtype=dtype)
    except VptError as error:
        raise VptError(f"--judge: {error}") from None
    columns: dict[str, str] = {}
    for model in models:
        for column in model.dimensions:
            if column in columns:
                raise VptError(f"--judge: {columns[column]} and {model.name} both write the column '{column}'; "
                               "name each judge once")
            columns[column] = model.name
    return models


def judge_scores(models: Sequence, files: Sequence[Path], prompts: Sequence[str | None]) -> dict[str, list[float]]:
    """Every judge's columns over the videos ``files`` (with their ``prompts``), scored by the engine of ``vpt
    score`` (its default batch and decoding): ``column -> values`` in file order. VptError when a judge cannot
    score a video."""
    from vpt.io.manifest import VideoItem
    from vpt.rewards.engine import output_columns, score_videos
    from vpt.train.checkpoint import isolated_rng

    items = [VideoItem(id=str(index), path=str(file), file=Path(file), prompt=prompt)
             for index, (file, prompt) in enumerate(zip(files, prompts))]
    columns = output_columns(models)
    with isolated_rng():
        rows = [row for batch in score_videos(items, models, strict=True) for row in batch]
    failed = next((row for row in rows if row["error"] is not None), None)
    if failed is not None:
        raise VptError(f"--judge: {failed['path']}: {failed['error']}; check the judge (a reward server must be up)")
    return {column: [float(row[column]) for row in rows] for column in columns}


def judge_metrics(scores: dict[str, list[float]], prefix: str = "") -> dict[str, float]:
    """``judge/<column>/<prefix>mean`` and ``<prefix>std`` (population std, as ``vpt score`` summarises), and the
    number of videos judged, ``judge/<prefix>n`` (the report's bar for a falling judge is a standard error)."""
    metrics = {f"judge/{prefix}n": float(len(next(iter(scores.values()))))} if scores else {}
    for column, values in scores.items():
        mean = math.fsum(values) / len(values)
        metrics[f"judge/{column}/{prefix}mean"] = mean
        metrics[f"judge/{column}/{prefix}std"] = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    return metrics


def eval_prompts(source: str | None, prompts: Sequence[str]) -> list[str]:
    """The evaluation prompts: those of the prompts file ``source`` (``sample-rollouts --prompts``' format), else the
    first :data:`EVAL_PROMPTS` distinct ones of ``prompts`` (the stage's, in order)."""
    from vpt.io.tables import read_prompts
    from vpt.rollouts.run import prompt_items

    if source is None:
        return list(dict.fromkeys(prompts))[:EVAL_PROMPTS]
    if not Path(source).is_file():
        raise VptError(f"--eval-prompts {source}: no such file; give a prompts file (one prompt per line, or a "
                       "prompts table)")
    try:
        return [item.prompt for item in prompt_items(read_prompts(source).to_pylist(), source)]
    except VptError as error:
        raise VptError(f"--eval-prompts {error}") from None


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode (no dropout, e.g. an init LoRA's), each submodule's mode restored afterwards."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for child, mode in modes:
            child.train(mode)


class EvalSampler:
    """dpo's evaluation samples: ``samples`` ODE samples (guidance 1, ``steps`` steps) per prompt at one clip
    ``size``, the initial noises from (``seed``, prompt index, sample index) as :func:`vpt.testing.flow_eval.
    sample_videos` draws them — the starting and the trained policy start from the same noises, sample for sample.
    ``pipe``: the generator's pipeline (its VAE decodes; the text encoder is not needed); ``embeddings``: the
    prompts' cached embedding files."""

    def __init__(self, pipe, prompts: Sequence[str], embeddings: Sequence[Path], samples: int, steps: int,
                 size: tuple[int, int, int], seed: int):
        from vpt.models.wan import latent_shape
        from vpt.rollouts.sampling import RolloutOptions

        frames, height, width = size
        self.pipe, self.prompts, self.embeddings = pipe, list(prompts), list(embeddings)
        self.options = RolloutOptions(group_size=samples, steps=steps, noise_level=0.0, guidance=1.0, frames=frames,
                                      height=height, width=width, seed=seed)
        try:
            latent_shape(pipe, frames, height, width)
        except ValueError as error:
            raise VptError(f"evaluation samples at {frames}x{height}x{width}: {error}; pass --frames/--height/"
                           "--width") from None

    def sample(self, policy: torch.nn.Module) -> list:
        """uint8 videos ``[T, H, W, 3]`` of ``policy``, prompt-major."""
        from vpt.distributed import current_processes, unwrapped
        from vpt.encoding.cache import load_prompt_embedding
        from vpt.rollouts.sampling import sample_group
        from vpt.train.checkpoint import isolated_rng

        module = unwrapped(policy)
        device = next(module.parameters()).device
        if device.type == "cpu":  # before training the policy is where it loaded; sample on the accelerator
            device = torch.device(current_processes().device())
            module.to(device)
        self.pipe.transformer = module
        self.pipe.vae.to(device)
        videos = []
        with isolated_rng(), evaluating(module):
            for index, file in enumerate(self.embeddings):
                embeds = load_prompt_embedding(file)[None].to(device)
                videos.extend(sample_group(self.pipe, embeds, None, f"eval-{index}", self.options).videos)
        return videos

    def write(self, videos: Sequence, directory: Path, tag: str) -> list[tuple[str, Path]]:
        """Write ``videos`` (of :meth:`sample`) as ``directory/TAG-pPP-sSS.mp4``; (caption, path) of each."""
        from vpt.io.video import write_video

        written = []
        for number, video in enumerate(videos):
            prompt, sample = divmod(number, self.options.group_size)
            path = directory / f"{tag}-p{prompt:02d}-s{sample:02d}.mp4"
            write_video(path, video, fps=self.options.fps)
            written.append((f"{tag} · {self.prompts[prompt]} · sample {sample}", path))
        return written


# ------------------------------------------------------------------------------------------------ drift
def drift_metrics(policy: torch.nn.Module, reference: Callable[[], ContextManager[torch.nn.Module]],
                  probes: Sequence[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> dict[str, float]:
    """``drift/<σ:.2f>`` of ``policy`` against ``reference()`` (a context giving the reference module, e.g. the
    policy with its adapter disabled) on ``probes``: (clean latent ``[C, F, h, w]``, prompt embeddings ``[1, L,
    D]``) each, conditional velocities (guidance 1). Nothing without probes."""
    from vpt.distributed import unwrapped
    from vpt.models.wan import WanVelocity
    from vpt.train.checkpoint import isolated_rng

    if not probes:
        return {}
    module = unwrapped(policy)
    device = next(module.parameters()).device
    x0 = torch.stack([latent for latent, _ in probes]).float().to(device)

    def bound(embeds: torch.Tensor):
        def velocity(x: torch.Tensor, index: int, sigma: torch.Tensor) -> torch.Tensor:
            with reference() as kept:
                return WanVelocity(kept, embeds.to(device), None, 1.0, dtype)(x, index, sigma)
        return velocity

    with isolated_rng(), evaluating(module):
        moved = [WanVelocity(module, embeds.to(device), None, 1.0, dtype) for _, embeds in probes]
        drift = drift_by_noise_level(moved, [bound(embeds) for _, embeds in probes], x0, DRIFT_SEED, DRIFT_SIGMAS)
    return {f"drift/{sigma:.2f}": value for sigma, value in drift.items()}


@contextlib.contextmanager
def adapter_disabled(policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The generator under a LoRA policy: the same transformer with the adapter disabled (grpo-step's KL reference,
    sft's starting point), no grad."""
    from vpt.distributed import unwrapped

    module = unwrapped(policy)
    with torch.no_grad(), module.disable_adapter():
        yield module
