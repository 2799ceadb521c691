"""The data side every flow-matching stage shares (``sft``, ``dpo``, ``train-reward --kind latent``): examples of
clips, checked before any model loads; encoded once into the latent / prompt cache (:mod:`vpt.encoding.cache`); and
items whose noise and σ derive from (seed, epoch, example key), so a resumed run, a run on more processes and DPO's
joint and decoupled steps all see the same noise."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vpt.algo.flow_matching import TIMESTEP_DISTRIBUTIONS, sample_sigmas
from vpt.errors import VptError


@dataclass
class NoiseOptions:
    """How an example is noised: σ from ``timesteps`` (uniform, or logit-normal N(logit_mean, logit_std²) through a
    sigmoid), then the flow ``shift``; the noise and σ of an example derive from (``seed``, epoch, its key)."""

    timesteps: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.timesteps not in TIMESTEP_DISTRIBUTIONS:
            raise VptError(f"--timesteps {self.timesteps}: choose one of {', '.join(TIMESTEP_DISTRIBUTIONS)}")
        for option, value in (("--logit-std", self.logit_std), ("--shift", self.shift)):
            if not (value > 0 and math.isfinite(value)):
                raise VptError(f"{option} {value}: give a finite number > 0")
        if not math.isfinite(self.logit_mean):
            raise VptError(f"--logit-mean {self.logit_mean}: give a finite number")



@dataclass
class Example:
    """One training example before encoding: its clips by role (``latent``; ``chosen`` and ``rejected``; or ``a``
    and ``b``)."""

    key: str
    clips: dict[str, Path]
    prompt: str
    weight: float | None = None
    where: str = ""  # how to name it in messages, e.g. "prefs.parquet: row 3"
    labels: tuple[int, ...] | None = None  # preference label codes per reward dimension (vpt.algo.preference)


@dataclass
class Examples:
    """What a stage trains on, and what was skipped (reported in its metrics)."""

    examples: list[Example]
    counts: dict[str, float] = field(default_factory=dict)



def pair_clips(row: Mapping[str, Any], prefs: str, where: str) -> dict[str, Path]:
    """The files of a prefs row's ``path_a`` and ``path_b`` (relative ones resolve against the table's directory);
    VptError naming ``where`` when one does not exist."""
    from vpt.io.tables import resolve_path

    files = {}
    for column in ("path_a", "path_b"):
        file = resolve_path(row[column], prefs, where)
        if not file.is_file():
            raise VptError(f"{where}: {column} {row[column]} does not exist; fix the path or drop the pair")
        files[column] = file
    return files



def check_clip_sizes(examples: Sequence[Example]) -> tuple[int, int, int]:
    """The one (frames, height, width) of every clip; :class:`VptError` naming the first clip that differs."""
    from vpt.io.video import probe

    sizes: dict[Path, tuple[int, int, int]] = {}

    def size_of(file: Path) -> tuple[int, int, int]:
        if file not in sizes:
            info = probe(file)
            sizes[file] = (info.frames, info.height, info.width)
        return sizes[file]

    expected: tuple[int, int, int] | None = None
    first = ""
    for example in examples:
        found = {role: size_of(file) for role, file in example.clips.items()}
        if len(set(found.values())) > 1:
            described = ", ".join(f"{role} {example.clips[role].name} is {_size_text(size)}"
                                  for role, size in found.items())
            raise VptError(f"{example.where}: the clips have different sizes ({described}); both clips of a pair "
                           "share noise, pass --frames/--height/--width to resample every clip to one size")
        size = next(iter(found.values()))
        if expected is None:
            expected, first = size, example.where
        elif size != expected:
            raise VptError(f"{example.where}: clips are {_size_text(size)}, those of {first} are "
                           f"{_size_text(expected)}; pass --frames/--height/--width to resample every clip to one "
                           "size")
    assert expected is not None
    return expected


def _size_text(size: Sequence[int]) -> str:
    return "×".join(str(n) for n in size)


@dataclass
class EncodedExample:
    """An example after encoding: cache files of its latents by role and of its prompt embedding."""

    key: str
    latents: dict[str, Path]
    prompt: Path
    weight: float | None = None
    labels: tuple[int, ...] | None = None


class LatentItems(torch.utils.data.Dataset):
    """One item per example: its clean latents by role ``[C, F, h, w]``, one noise draw and one σ shared by every
    role (DPO's branches and a reward model's pair get the same noise and timestep), the prompt embedding
    ``[L, D]``, and the weight and preference labels ``[D]`` when the example has them."""

    def __init__(self, examples: Sequence[EncodedExample], noise: NoiseOptions):
        self.examples, self.noise = list(examples), noise
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from vpt.rollouts.sampling import derived_seed
        from vpt.encoding.cache import load_latent, load_prompt_embedding

        example = self.examples[index]
        options = self.noise
        generator = torch.Generator().manual_seed(derived_seed(options.seed, "noise", self.epoch, example.key))
        item = {role: load_latent(file) for role, file in example.latents.items()}
        shape = next(iter(item.values())).shape
        item["noise"] = torch.randn(shape, generator=generator)
        item["sigma"] = sample_sigmas(1, generator, options.timesteps, options.logit_mean, options.logit_std,
                                      options.shift)[0]
        item["embeds"] = load_prompt_embedding(example.prompt)
        if example.weight is not None:
            item["weight"] = torch.tensor(example.weight, dtype=torch.float32)
        if example.labels is not None:
            item["labels"] = torch.tensor(example.labels, dtype=torch.int64)
        return item



def encode_examples(examples: Sequence[Example], pipe, model: Path, cache, size: tuple[int, int, int] | None,
                    quiet: bool = False, known: Mapping[Path, Path] | None = None) -> list[EncodedExample]:
    """Every clip and prompt of ``examples`` encoded into ``cache`` (:class:`~vpt.encoding.cache.EncodedCache`;
    entries already there are read back, not encoded again) with the pipeline ``pipe`` of the generator at
    ``model``; several processes share the work. ``known``: clips whose latent cache file exists already (e.g. the
    recorded final latents of rollouts), not encoded."""
    from rich.console import Console

    from vpt.distributed import current_processes

    processes = current_processes()
    known = dict(known or {})
    files = sorted({file for example in examples for file in example.clips.values() if file not in known})
    prompts = sorted({example.prompt for example in examples})
    vae_id = cache.component_identity(model / "vae")
    text_id = cache.component_identity(model / "text_encoder", model / "tokenizer")
    encoded = [0]

    def count(clips: int) -> None:
        encoded[0] += clips

    latents = dict(zip(files, cache.encode_videos(files, pipe, vae_id, size=size, processes=processes,
                                                  on_progress=count)))
    latents.update(known)
    where = {}
    for example in examples:
        where.setdefault(example.prompt, example.where)
    embeddings = dict(zip(prompts, cache.encode_prompts(prompts, pipe, text_id, processes=processes,
                                                        labels=[where[prompt] for prompt in prompts])))
    if not quiet and processes.is_main:
        recorded = f"; {len(known)} latents recorded by the sampler" if known else ""
        Console(stderr=True, soft_wrap=True).print(f"encoded {encoded[0]} of {len(files)} clips (the rest from "
                                                   f"the cache {cache.root}){recorded}", highlight=False, markup=False)
    return [EncodedExample(key=example.key, latents={role: latents[file] for role, file in example.clips.items()},
                           prompt=embeddings[example.prompt], weight=example.weight, labels=example.labels)
            for example in examples]


def prepare(examples: Examples, model: str | None, policy: str | None, size, cache: str | None,
            lora: Mapping[str, Any], seed: int, quiet: bool, init_lora: str | None = None,
            dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False):
    """(source, trainable policy, encoded examples): the policy and data of a stage, checked and encoded.
    ``init_lora``: a LoRA without ``policy.json`` (peft or diffusers layout) the new policy starts as. The generator
    is loaded in ``dtype`` (the cache keys its encodings by the VAE's and text encoder's dtype); the LoRA trains in
    float32 on it, with ``gradient_checkpointing`` when asked (:meth:`~vpt.train.policy.PolicySource.open`)."""
    return prepare_with_samples(examples, model, policy, size, cache, lora, seed, quiet, init_lora, dtype,
                                gradient_checkpointing)[:3]


def prepare_with_samples(examples: Examples, model: str | None, policy: str | None, size, cache: str | None,
                         lora: Mapping[str, Any], seed: int, quiet: bool, init_lora: str | None = None,
                         dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False,
                         eval_prompts: Sequence[str] = ()):
    """:func:`prepare`, and ``evaluation`` for a stage that samples videos of ``eval_prompts`` (its judges'): (the
    pipeline without its text encoder, the prompts' cached embedding files), None without prompts."""
    from vpt.models.loading import load_wan_pipeline
    from vpt.encoding.cache import EncodedCache
    from vpt.train.policy import policy_source

    source = policy_source(model, policy, init_lora)
    if size is None:
        check_clip_sizes(examples.examples)
    pipe = load_wan_pipeline(source.model, dtype=dtype)
    store = EncodedCache(cache)
    encoded = encode_examples(examples.examples, pipe, source.model, store, size, quiet)
    evaluation = None
    if eval_prompts:
        from vpt.distributed import current_processes

        text_id = store.component_identity(source.model / "text_encoder", source.model / "tokenizer")
        files = store.encode_prompts(list(eval_prompts), pipe, text_id, processes=current_processes(),
                                     labels=[f"evaluation prompt {n}" for n in range(1, len(eval_prompts) + 1)])
        evaluation = (pipe, files)
    transformer = pipe.transformer
    if evaluation is None:
        del pipe  # the text encoder and VAE are done: only the transformer trains
    else:
        pipe.text_encoder = None  # the samples' prompts are encoded: the VAE stays to decode them
    trainable = source.open(lora["targets"], lora["rank"], lora["alpha"], seed, transformer=transformer,
                            gradient_checkpointing=gradient_checkpointing)
    return source, trainable, encoded, evaluation


def precision_record(dtype: torch.dtype, gradient_checkpointing: bool) -> dict:
    """What a stage's record says of how it ran: the frozen weights' dtype and gradient checkpointing."""
    from vpt.models.dtypes import dtype_name

    return {"dtype": dtype_name(dtype), "gradient_checkpointing": bool(gradient_checkpointing)}



def lora_record(lora: Mapping[str, Any], source) -> dict | str:
    """The new adapter's setup, or ``parent`` when the adapter is a parent checkpoint's or an init LoRA's (its own
    config is in the checkpoint)."""
    if source.checkpoint is not None or source.init_lora is not None:
        return "parent"
    return {**lora, "targets": list(lora["targets"])}
