"""Training the noisy-latent reward model of Flow-NRG (``vpt train-reward --kind latent``) on the shared harness.

Data
    The pairs of one or more ``prefs`` tables with a label (``a``, ``b`` or ``tie``) in at least one of the chosen
    dimensions (default: those of ``vq, mq, ta`` labelled anywhere); other labels count as invalid and are masked
    out of the loss, so a table of brightness pairs labelled only in ``vq`` and one of motion pairs labelled only
    in ``mq`` train one model together.
Latents
    Encoded once into the cache of :mod:`vpt.encoding.cache`. A clip that is a sample of a rollouts directory trains
    on the final latent its sampler recorded (``--clip-latents auto``): the state guidance will see, where the VAE's
    encoding of the decoded, compressed video can lie elsewhere (far elsewhere for a weak VAE). ``encode`` always
    encodes the mp4.
Loss
    Both clips of a pair get the same noise and the same σ (drawn from the run seed, epoch and pair key):
    ``x_σ = (1 − σ)·x0 + σ·ε``; the model scores both at σ and the Bradley–Terry-with-ties loss (or plain BT) of the
    two score vectors trains every dimension at once (VideoAlign §3.6).
Metrics
    Training rows carry ``accuracy`` (decisive labels of the micro-batch ordered right, percent) and ``sigma``;
    evaluation rows carry ``eval/{dim}_accuracy`` (mean over the evaluation noise levels) and
    ``eval/{dim}_accuracy@σ`` per level on the held-out pairs, with noise fixed per pair.
Output (the run directory, as ``train-reward`` for VideoReward)
    ``checkpoint-*/`` and ``metrics.jsonl`` of the harness (what resumes: :func:`vpt.stages.reward.check_run`),
    then the model (:mod:`vpt.models.latent_reward`) and ``reward_training.json`` (split, options, final
    accuracies).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from vpt.algo.flow_matching import noised
from vpt.algo.preference import A_WINS, B_WINS, LABEL_CODES, TIE, bradley_terry_loss, bradley_terry_ties_loss
from vpt.errors import VptError
from vpt.stages.examples import EncodedExample, Example, Examples, LatentItems, NoiseOptions

LABELLED_DIMENSIONS = ("vq", "mq", "ta", "overall")
DEFAULT_DIMENSIONS = ("vq", "mq", "ta")
LOSSES = ("btt", "bt")
CLIP_LATENTS = ("auto", "encode")
SUMMARY_FILE = "reward_training.json"
LEARNING_RATE = 1e-4  # the default: the copied blocks and the new head train together


@dataclass
class LatentRewardOptions:
    """What the latent reward task adds to a :class:`~vpt.train.TrainConfig` and :class:`NoiseOptions`."""

    dimensions: tuple[str, ...] | None = None  # None: the labelled ones of DEFAULT_DIMENSIONS
    loss: str = "btt"
    theta: float = 5.0
    blocks: int | None = None  # None: vpt.models.latent_reward.DEFAULT_BLOCKS (at most the generator's)
    head_channels: int = 32
    eval_fraction: float = 0.1
    eval_sigmas: tuple[float, ...] = (0.2, 0.5, 0.8)
    eval_batch_size: int = 16
    clip_latents: str = "auto"
    dtype: str = "fp32"  # of the generator that encodes the clips and prompts; the model it is cut into trains in fp32
    gradient_checkpointing: bool = False  # the trunk recomputes its blocks' activations in the backward pass

    def __post_init__(self) -> None:
        from vpt.models.dtypes import dtype_name, weights_dtype

        self.dtype = dtype_name(weights_dtype(self.dtype))
        if self.dimensions is not None:
            self.dimensions = tuple(self.dimensions)
            unknown = [name for name in self.dimensions if name not in LABELLED_DIMENSIONS]
            if unknown or not self.dimensions or len(set(self.dimensions)) != len(self.dimensions):
                raise VptError(f"--dims {','.join(self.dimensions)}: name distinct label columns among "
                               f"{', '.join(LABELLED_DIMENSIONS)}")
        self.eval_sigmas = tuple(float(value) for value in self.eval_sigmas)
        if self.loss not in LOSSES:
            raise VptError(f"--loss {self.loss}: a latent reward model trains with {' or '.join(LOSSES)} (pairs, "
                           "not mean opinion scores)")
        if not (self.theta > 1 and math.isfinite(self.theta)):
            raise VptError(f"--theta must be a number > 1 (Rao–Kupper tie parameter), got {self.theta}")
        if not 0 <= self.eval_fraction < 1:
            raise VptError(f"--eval-fraction must lie in [0, 1), got {self.eval_fraction}")
        if not self.eval_sigmas or not all(0 <= value < 1 for value in self.eval_sigmas):
            raise VptError(f"evaluation noise levels must lie in [0, 1), got {list(self.eval_sigmas)}")
        if self.clip_latents not in CLIP_LATENTS:
            raise VptError(f"--clip-latents {self.clip_latents}: choose {' or '.join(CLIP_LATENTS)}")


# ------------------------------------------------------------------------------------------------ examples
def pair_examples(tables: Sequence[str], dimensions: Sequence[str] | None) -> tuple[Examples, tuple[str, ...]]:
    """The pairs of the ``prefs`` tables that carry a usable label (a, b or tie) in one of ``dimensions`` (None:
    the labelled ones among vq, mq, ta), as examples with clips ``a`` / ``b`` and label codes; and the
    dimensions. Pairs without one are skipped and counted."""
    from vpt.io.tables import read_table
    from vpt.stages.examples import pair_clips

    loaded = [(name, read_table(name, "prefs")) for name in tables]
    if dimensions is None:
        dimensions = tuple(name for name in DEFAULT_DIMENSIONS
                           if any(name in table.column_names and any(value in ("a", "b", "tie")
                                                                     for value in table.column(name).to_pylist())
                                  for _, table in loaded))
        if not dimensions:
            raise VptError(f"{', '.join(tables)}: no pair is labelled in vq, mq or ta; label the pairs "
                           "(build-prefs), or name the label columns with --dims")
    examples, skipped = [], 0
    for position, (name, table) in enumerate(loaded):
        for number, row in enumerate(table.to_pylist(), start=1):
            codes = tuple(LABEL_CODES.get(row.get(dimension), LABEL_CODES["invalid"]) for dimension in dimensions)
            if not any(code in (A_WINS, B_WINS, TIE) for code in codes):
                skipped += 1
                continue
            where = f"{name}: row {number}"
            if not row.get("prompt"):
                raise VptError(f"{where}: no prompt; the latent reward model reads the prompt with the latents, "
                               "give one")
            clips = pair_clips(row, name, where)
            key = row["pair_id"] if len(loaded) == 1 else f"{position}:{row['pair_id']}"
            examples.append(Example(key=key, clips={"a": clips["path_a"], "b": clips["path_b"]},
                                    prompt=row["prompt"], where=where, labels=codes))
    if not examples:
        raise VptError(f"{', '.join(tables)}: no pair is labelled a, b or tie in {', '.join(dimensions)}; label "
                       "the pairs, or choose other --dims")
    labels = np.array([example.labels for example in examples])
    counts = {"pairs": float(len(examples)), "skipped_unlabelled": float(skipped)}
    for index, dimension in enumerate(dimensions):
        counts[f"labelled_{dimension}"] = float(np.isin(labels[:, index], (A_WINS, B_WINS, TIE)).sum())
    return Examples(examples, counts), tuple(dimensions)


# ------------------------------------------------------------------------------------------------ the task
def pair_rewards(model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``[B, D]`` of both clips of each pair, noised with the pair's shared noise to its shared σ."""
    a, b, noise, sigma, embeds = batch["a"], batch["b"], batch["noise"], batch["sigma"], batch["embeds"]
    count = a.shape[0]
    rewards = model(noised(torch.cat([a, b]), noise.repeat(2, 1, 1, 1, 1), sigma.repeat(2)), sigma.repeat(2),
                    embeds.repeat(2, 1, 1)).float()
    return rewards[:count], rewards[count:]


class LatentRewardTask:
    """The harness's ``loss_fn``: BTT (or BT) of a micro-batch of noised pairs, all dimensions at once."""

    def __init__(self, options: LatentRewardOptions):
        self.options = options

    def __call__(self, model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        labels = batch["labels"]
        rewards_a, rewards_b = pair_rewards(model, batch)
        if self.options.loss == "btt":
            loss = bradley_terry_ties_loss(rewards_a, rewards_b, labels, self.options.theta)
        else:
            loss = bradley_terry_loss(rewards_a, rewards_b, labels)
        metrics = {"sigma": batch["sigma"].mean()}
        decisive = (labels == A_WINS) | (labels == B_WINS)
        if bool(decisive.any()):
            right = (torch.sign(rewards_a - rewards_b).detach() == labels.to(rewards_a.dtype)) & decisive
            metrics["accuracy"] = 100.0 * right.sum().double() / decisive.sum().double()
        return loss, metrics


class HeldOutPairs:
    """Held-out pairs at fixed noise levels, each with noise fixed by (seed, pair key): every evaluation of a run
    (and of a resumed run) measures the same points."""

    def __init__(self, examples: Sequence[EncodedExample], dimensions: Sequence[str], options: LatentRewardOptions,
                 seed: int):
        self.examples, self.dimensions, self.options, self.seed = list(examples), tuple(dimensions), options, seed

    def margins(self, model, sigma: float) -> np.ndarray:
        """Reward margins A − B ``[N, D]`` (float64) of every held-out pair at noise level ``sigma``."""
        from torch.utils.data import default_collate

        items = LatentItems(self.examples, NoiseOptions(seed=self.seed))
        out = []
        for start in range(0, len(items), self.options.eval_batch_size):
            batch = default_collate([items[i] for i in range(start, min(start + self.options.eval_batch_size,
                                                                          len(items)))])
            batch["sigma"] = torch.full_like(batch["sigma"], sigma)
            with torch.no_grad():
                rewards_a, rewards_b = pair_rewards(model, batch)
            out.append((rewards_a - rewards_b).double().numpy())
        return np.concatenate(out)

    def __call__(self, model) -> dict[str, float]:
        from vpt.metrics.rewardbench import pair_accuracies

        labels = np.array([example.labels for example in self.examples])
        levels: dict[str, list[float]] = {}
        metrics: dict[str, float] = {}
        for sigma in self.options.eval_sigmas:
            margins = self.margins(model, sigma)
            for index, dimension in enumerate(self.dimensions):
                found = pair_accuracies(margins[:, index], labels[:, index], dimension)
                if f"{dimension}_accuracy" in found:
                    metrics[f"{dimension}_accuracy@{sigma:g}"] = found[f"{dimension}_accuracy"]
                    levels.setdefault(dimension, []).append(found[f"{dimension}_accuracy"])
        for dimension, values in levels.items():
            metrics[f"{dimension}_accuracy"] = float(np.mean(values))
        return metrics


# ------------------------------------------------------------------------------------------------ training
@dataclass
class LatentRewardResult:
    """What :func:`train_latent_reward` wrote and measured."""

    output_dir: Path
    step: int
    dimensions: tuple[str, ...]
    train_pairs: int
    eval_pairs: int
    recorded_clips: int  # clips whose sampler-recorded latent was used
    accuracy: dict[str, float] = field(default_factory=dict)  # final held-out (or training) accuracies

    def accuracy_rows(self, sigmas: Sequence[float]) -> list[tuple]:
        """``(dimension, accuracy at each of sigmas, mean)`` per dimension, percent; None where undefined."""
        return [(dimension, *(self.accuracy.get(f"{dimension}_accuracy@{sigma:g}") for sigma in sigmas),
                 self.accuracy.get(f"{dimension}_accuracy")) for dimension in self.dimensions]


def train_latent_reward(model: str | os.PathLike, prefs: Sequence[str], config, options: LatentRewardOptions,
                        noise: NoiseOptions, size: tuple[int, int, int] | None = None, cache: str | None = None,
                        resume: bool | str | os.PathLike | None = None, quiet: bool = False) -> LatentRewardResult:
    """Cut a reward model from the generator at ``model`` and train it on the pairs of ``prefs``; write
    checkpoints, metrics and the final model into ``config.output_dir``. See the module docstring. ``resume``
    continues where that run stopped (see :func:`vpt.stages.reward.check_run`), bit-identical to not stopping."""
    from vpt.distributed import current_processes, full_state_dict, is_sharded
    from vpt.io.atomic import atomic_path, publish_into
    from vpt.models.latent_reward import CONFIG_FILE, checked_blocks, cut_generator, save_latent_reward
    from vpt.models.dtypes import weights_dtype
    from vpt.models.loading import load_wan_pipeline, resolve_wan_directory
    from vpt.train import Trainer
    from vpt.train.lora import checkpoint_activations
    from vpt.encoding.cache import EncodedCache
    from vpt.rollouts.store import cache_recorded_latents
    from vpt.stages.reward import check_run
    from vpt.stages.examples import check_clip_sizes, encode_examples
    from vpt.prefs.pairs import split_pairs

    out = Path(config.output_dir)
    check_run(out, resume)  # before the clips are encoded
    examples, dimensions = pair_examples(prefs, options.dimensions)
    if size is None:
        check_clip_sizes(examples.examples)
    generator = resolve_wan_directory(model)
    pipe = load_wan_pipeline(generator, dtype=weights_dtype(options.dtype))
    checked_blocks(options.blocks, int(pipe.transformer.config.num_layers))  # before the long encoding
    store = EncodedCache(cache)
    vae_id = store.component_identity(generator / "vae")
    text_id = store.component_identity(generator / "text_encoder", generator / "tokenizer")
    known = {}
    if options.clip_latents == "auto":
        files = sorted({file for example in examples.examples for file in example.clips.values()})
        known = cache_recorded_latents(store, files, vae_id, size, processes=current_processes())
    encoded = encode_examples(examples.examples, pipe, generator, store, size, quiet, known=known)
    info = {"generator": str(generator.resolve()), "vae_id": vae_id, "text_encoder_id": text_id}
    reward_model = cut_generator(pipe.transformer, options.blocks, dimensions, options.head_channels, config.seed,
                                 info).train()
    del pipe
    if options.gradient_checkpointing:
        checkpoint_activations(reward_model.trunk)
    train_indices, eval_indices = split_pairs(len(encoded), options.eval_fraction, config.seed)
    held_out = HeldOutPairs([encoded[i] for i in (eval_indices if len(eval_indices) else train_indices)],
                            dimensions, options, config.seed)
    trainer = Trainer(reward_model, config, dataset=LatentItems([encoded[i] for i in train_indices], noise),
                      loss_fn=LatentRewardTask(options), eval_fn=held_out if len(eval_indices) else None,
                      quiet=quiet)
    result = trainer.train(resume=resume)
    processes = current_processes()
    accuracy: dict[str, float] = {}
    sharded = is_sharded(reward_model)  # then every process takes part in its forward passes and its gathering
    state = full_state_dict(reward_model) if sharded else None
    if processes.is_main or sharded:
        reward_model.eval()
        accuracy = held_out(reward_model)
    if processes.is_main:
        summary = {"prefs": [str(Path(name).resolve()) if name != "-" else name for name in prefs],
                   **examples.counts, "train_pairs": len(train_indices), "eval_pairs": len(eval_indices),
                   "accuracy_from": "eval" if len(eval_indices) else "train", "steps": result.step,
                   "seed": config.seed, "recorded_clips": len(known), "dimensions": list(dimensions),
                   "accuracy": accuracy, "options": {**asdict(options), **asdict(noise)}, "size": size,
                   "eval_pair_ids": [encoded[i].key for i in eval_indices]}
        publish_into(out, lambda directory: save_latent_reward(reward_model, directory, state=state), CONFIG_FILE)
        with atomic_path(out / SUMMARY_FILE) as temporary:
            temporary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    processes.wait()
    return LatentRewardResult(output_dir=out, step=result.step, dimensions=dimensions,
                              train_pairs=len(train_indices), eval_pairs=len(eval_indices),
                              recorded_clips=len(known), accuracy=accuracy)
