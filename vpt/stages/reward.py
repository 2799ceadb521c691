"""VideoReward training (``vpt train-reward``): a ``prefs`` table + its videos -> a VideoReward checkpoint.

The task plugs into the one harness (:class:`vpt.train.Trainer`); this module only says what a VideoReward example
is, what trains, the loss and the held-out metrics:

Data
    :func:`read_preferences` reads a ``prefs`` table (relative video paths resolve against the table's directory),
    turns the labels ``a / b / tie / invalid`` (null = invalid) of ``vq, mq, ta`` into the codes of
    :mod:`vpt.algo.preference` and decodes every distinct video file **once** with the model's frame rule
    (``VideoRewardConfig.sampling()``: VideoAlign's ~2 fps rule, or a fixed count), keeping the frames in memory.
    :func:`split_pairs` holds out a seeded share of the *pairs* for evaluation.

What trains (:func:`prepare_model`, VideoAlign's recipe)
    A LoRA adapter on the language model (default: every Linear of it, r 64 / alpha 128 / dropout 0.05), the whole
    vision tower with its merger, the reward head, and only the three reward-token rows of the embedding matrix.
    Everything else is frozen. A model that already carries a LoRA adapter (a zoo model, a released VideoAlign
    checkpoint) gets it merged into its base first, so the new adapter trains on top of what it learned.

Loss (per pair and dimension, invalid labels masked, dimensions weighted equally)
    ``btt``: Bradley–Terry with ties (Rao–Kupper, ``theta``, VideoAlign's default), ``bt``: Bradley–Terry (ties
    dropped), ``reg``: mean squared error of each video's raw score to its mean opinion score (the optional
    ``{vq,mq,ta}_mos_{a,b}`` columns of the prefs schema).

Metrics (``metrics.jsonl`` of the harness)
    Training rows carry ``accuracy`` (percent of decisive labels of the logged micro-batches whose score order is
    right); evaluation rows (``eval_every`` and the end) carry ``eval/{dim}_accuracy`` (without ties) and
    ``eval/{dim}_accuracy_with_ties`` (tie-calibrated, :mod:`vpt.metrics.rewardbench`) for ``vq, mq, ta`` and, when
    the table has ``overall`` labels, ``overall`` (sum of the dimensions z-normalised on the held-out videos).

Output (``config.output_dir``)
    The harness's ``checkpoint-*/`` and ``metrics.jsonl`` (:func:`check_run` says what resumes), and at the end
    the trained model in our VideoReward layout (:func:`vpt.models.videoreward_checkpoint.save_videoreward`;
    ``load_videoreward(OUT)`` and ``vpt score --model OUT`` read it) with normalisation statistics measured on the
    held-out split's videos (mean and std of each raw dimension over the distinct (video, prompt) pairs), plus
    ``reward_training.json`` (split, options, final accuracies, statistics). A merged base is stored inside
    (``OUT/base``).
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vpt.algo.preference import (A_WINS, B_WINS, INVALID, LABEL_CODES, bradley_terry_loss,
                                 bradley_terry_ties_loss, regression_loss)
from vpt.errors import VideoReadError, VptError
from vpt.io.atomic import atomic_path
from vpt.io.video import FrameSampling
from vpt.prefs.pairs import split_pairs
from vpt.metrics.rewardbench import pair_accuracies
from vpt.models.videoreward import DIMENSIONS, VideoRewardModel, videoalign_lora_targets
from vpt.models.videoreward_checkpoint import save_videoreward
from vpt.train.config import TrainConfig
from vpt.train.lora import checkpoint_activations, freeze, mark_trainable, train_embedding_rows
from vpt.train.trainer import Trainer, TrainResult, check_run_directory

__all__ = [
    "LABEL_CODES",
    "LOSSES",
    "MOS_COLUMNS",
    "PairEvaluation",
    "PreferenceData",
    "RewardTrainOptions",
    "RewardTrainResult",
    "VideoRewardStart",
    "VideoRewardTask",
    "check_run",
    "evaluate_pairs",
    "prepare_model",
    "read_preferences",
    "split_pairs",
    "start_videoreward",
    "suggested_hyperparameters",
    "train_videoreward",
]

LOSSES = ("btt", "bt", "reg")
MOS_COLUMNS = tuple(f"{dimension}_mos_{side}" for dimension in DIMENSIONS for side in "ab")
MODEL_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw",
                "reward_positions")
SUMMARY_FILE = "reward_training.json"
TRAINED_PATTERNS = ("backbone.*.visual.*", "head.weight")  # vision tower + merger, reward head (besides LoRA, rows)
TINY_HIDDEN = 256  # language models at most this wide get the tiny-model defaults of suggested_hyperparameters


# ------------------------------------------------------------------------------------------------------ options


@dataclass
class RewardTrainOptions:
    """What the VideoReward task adds to a :class:`~vpt.train.TrainConfig`.

    ``frames``: decode this many uniformly spaced frames per video instead of the model's rule (saved with the
    model, so scoring uses it too); ``min_pixels`` / ``max_pixels``: per-frame pixel bounds of the Qwen2-VL resize
    (saved likewise). ``lora_rank`` 0 trains no adapter (the language model stays frozen but for the reward rows);
    ``lora_targets``: names (or name suffixes, e.g. ``q_proj``) of language-model Linears; ``None`` = every one
    (VideoAlign). ``eval_fraction``: share of pairs held out (0 = none; the statistics then come from the training
    videos).
    """

    loss: str = "btt"
    theta: float = 5.0
    eval_fraction: float = 0.1
    frames: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    lora_rank: int = 64
    lora_alpha: float = 128.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None
    eval_batch_size: int = 8
    decode_workers: int = 2
    dtype: str = "fp32"  # of the frozen weights (the language model); what trains is float32 (see prepare_model)
    gradient_checkpointing: bool = False  # Qwen2-VL recomputes its layers' activations in the backward pass

    def __post_init__(self) -> None:
        from vpt.models.dtypes import dtype_name, weights_dtype

        self.dtype = dtype_name(weights_dtype(self.dtype))
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)
        if self.loss not in LOSSES:
            raise VptError(f"--loss {self.loss}: choose one of {', '.join(LOSSES)}")
        if not (self.theta > 1 and math.isfinite(self.theta)):
            raise VptError(f"--theta must be a number > 1 (Rao–Kupper tie parameter), got {self.theta}")
        if not 0 <= self.eval_fraction < 1:
            raise VptError(f"--eval-fraction must lie in [0, 1), got {self.eval_fraction}")
        if self.frames is not None and (int(self.frames) != self.frames or self.frames < 1):
            raise VptError(f"--frames must be a positive integer, got {self.frames}")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise VptError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.lora_rank < 0:
            raise VptError(f"--lora-rank must be 0 (no adapter) or positive, got {self.lora_rank}")
        if not self.lora_alpha > 0:
            raise VptError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise VptError(f"--lora-dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.lora_targets is not None and not self.lora_targets:
            raise VptError("--lora-targets is empty; name language-model Linears (e.g. q_proj,v_proj) or leave "
                           "them out for all of them")
        if self.eval_batch_size < 1 or self.decode_workers < 1:
            raise VptError("eval batch size and decode workers must be positive integers")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets) if self.lora_targets is not None else None
        return data


def suggested_hyperparameters(model: VideoRewardModel) -> dict:
    """Defaults by model size: VideoAlign's recipe (lr 2e-6, LoRA r 64 / alpha 128) for real Qwen2-VL models; for
    tiny language models (hidden size <= 256, the zoo's) a learning rate that learns in a few hundred steps."""
    hidden = int(model.qwen.config.text_config.hidden_size)
    if hidden <= TINY_HIDDEN:
        return {"learning_rate": 1e-3, "lora_rank": 64, "lora_alpha": 128.0, "tiny": True}
    return {"learning_rate": 2e-6, "lora_rank": 64, "lora_alpha": 128.0, "tiny": False}


@dataclass
class VideoRewardStart:
    """The VideoReward to train, the task options and the learning rate its size calls for."""

    model: VideoRewardModel
    options: RewardTrainOptions
    learning_rate: float


def start_videoreward(model_path: str | os.PathLike, *, lora_rank: int | None = None,
                      lora_alpha: float | None = None, lora_dropout: float = 0.05,
                      lora_targets: Sequence[str] | None = None, loss: str = "btt", theta: float = 5.0,
                      eval_fraction: float = 0.1, frames: int | None = None, min_pixels: int | None = None,
                      max_pixels: int | None = None, dtype: str = "fp32",
                      gradient_checkpointing: bool = False) -> VideoRewardStart:
    """Load the VideoReward at ``model_path`` (ours, VideoAlign's or a zoo's) in ``dtype`` (``--dtype``) and settle
    what depends on it: a LoRA rank or alpha of None takes :func:`suggested_hyperparameters`, except that a given
    rank without an alpha gets alpha = 2 x rank; the learning rate is the suggested one."""
    from vpt.models.dtypes import weights_dtype
    from vpt.models.videoreward_checkpoint import load_videoreward

    model = load_videoreward(model_path, dtype=weights_dtype(dtype))
    defaults = suggested_hyperparameters(model)
    rank = defaults["lora_rank"] if lora_rank is None else lora_rank
    alpha = (2.0 * rank if lora_rank is not None else defaults["lora_alpha"]) if lora_alpha is None else lora_alpha
    options = RewardTrainOptions(loss=loss, theta=theta, eval_fraction=eval_fraction, frames=frames,
                                 min_pixels=min_pixels, max_pixels=max_pixels, lora_rank=rank,
                                 lora_alpha=alpha if rank else defaults["lora_alpha"], lora_dropout=lora_dropout,
                                 lora_targets=lora_targets, dtype=dtype, gradient_checkpointing=gradient_checkpointing)
    return VideoRewardStart(model=model, options=options, learning_rate=defaults["learning_rate"])


def check_run(out: str | os.PathLike, resume: bool | str | os.PathLike | None) -> None:
    """Before any work, for both kinds of reward model: ``out`` is a new run directory, or one of vpt's whose run
    ``resume`` continues; ``resume`` is the run directory of an interrupted or finished run (its newest
    checkpoint), or one of its ``checkpoint-N`` — or True, the harness's own "the newest checkpoint in ``out``, if
    there is one"."""
    from vpt.train.checkpoint import METRICS_FILE, check_resume_source, list_checkpoints

    check_run_directory(out, resume)
    if resume is None or isinstance(resume, bool):
        return
    source = Path(resume)
    check_resume_source(source, "the --out directory of an interrupted run, one of its checkpoint-N directories, "
                                "or a finished run of train-reward")
    out = Path(out)
    holds_run = out.is_dir() and (list_checkpoints(out) or (out / METRICS_FILE).exists())
    if holds_run and out.resolve() not in (source.resolve(), source.resolve().parent):
        raise VptError(f"{out}: holds a training run of its own; continue {resume} into a new --out, or resume "
                       f"{out} with --resume {out}")


# ------------------------------------------------------------------------------------------------------- data


@dataclass
class PreferenceData:
    """The pairs of a prefs table with their decoded videos; arrays are indexed by pair (table order)."""

    source: str
    pair_ids: list[str]
    rows: np.ndarray  # int64 [N]: 1-based row numbers in the table
    prompts: list[str]
    video_a: np.ndarray  # int64 [N]: index into files / frames
    video_b: np.ndarray
    labels: np.ndarray  # int64 [N, 3] (vq, mq, ta) in A_WINS, B_WINS, TIE, INVALID
    overall: np.ndarray | None  # int64 [N] or None without an overall column
    mos: np.ndarray | None  # float32 [N, 2, 3]: (A, B) x (vq, mq, ta), NaN where unknown; None without MOS columns
    files: list[Path]
    frames: list[np.ndarray]  # uint8 [T, H, W, 3] per distinct file

    def __len__(self) -> int:
        return len(self.pair_ids)


def _label_codes(values: list, column: str, source: str) -> np.ndarray:
    codes = np.empty(len(values), dtype=np.int64)
    for index, value in enumerate(values):
        code = LABEL_CODES.get(value, INVALID if value is None else None)
        if code is None:  # the schema's enum refuses these already; kept for tables read without it
            raise VptError(f"{source}: row {index + 1}: column '{column}' has {value!r}; expected one of "
                           f"{', '.join(LABEL_CODES)}")
        codes[index] = code
    return codes


def read_preferences(source: str | os.PathLike, sampling: FrameSampling, need_labels: bool = True,
                     need_mos: bool = False, workers: int = 2) -> PreferenceData:
    """Read a prefs table and decode each distinct video once with ``sampling`` (in ``workers`` threads).

    ``need_labels``: the ``vq, mq, ta`` label columns must be present (else missing ones count as invalid);
    ``need_mos``: the six MOS columns must be present. Raises :class:`VptError` with one line for a table that does
    not fit, an empty prompt, or a video that cannot be decoded (naming the file and the first row using it).
    """
    from vpt.io.tables import read_table, resolve_path
    from vpt.io.video import decode

    name = os.fspath(source)
    table = read_table(source, "prefs")
    if table.num_rows == 0:
        raise VptError(f"{name}: the prefs table has no rows; give it at least two pairs")
    columns = set(table.column_names)
    missing = [column for column in DIMENSIONS if column not in columns]
    if missing and need_labels:
        names = ", ".join(f"'{column}'" for column in missing)
        raise VptError(f"{name}: missing label column{'s' if len(missing) > 1 else ''} {names}; train-reward needs "
                       "vq, mq and ta (a, b, tie or invalid per pair)")
    missing_mos = [column for column in MOS_COLUMNS if column not in columns]
    if missing_mos and need_mos:
        raise VptError(f"{name}: loss 'reg' needs mean opinion score columns {', '.join(MOS_COLUMNS)}; missing: "
                       f"{', '.join(missing_mos)} (add them, or train with loss btt or bt)")
    data = table.to_pydict()
    count = table.num_rows
    pair_ids = [str(value) for value in data["pair_id"]]
    prompts = data["prompt"]
    for index, prompt in enumerate(prompts):
        if prompt is None or not str(prompt).strip():
            raise VptError(f"{name}: row {index + 1} (pair '{pair_ids[index]}'): the prompt is empty; VideoReward "
                           "rates text alignment against the prompt, give every pair one")
    labels = np.full((count, len(DIMENSIONS)), INVALID, dtype=np.int64)
    for d, column in enumerate(DIMENSIONS):
        if column in columns:
            labels[:, d] = _label_codes(data[column], column, name)
    overall = _label_codes(data["overall"], "overall", name) if "overall" in columns else None
    mos = None
    if not missing_mos:
        mos = np.full((count, 2, len(DIMENSIONS)), np.nan, dtype=np.float32)
        for d, dimension in enumerate(DIMENSIONS):
            for s, side in enumerate("ab"):
                values = data[f"{dimension}_mos_{side}"]
                mos[:, s, d] = [np.nan if v is None else float(v) for v in values]

    files: list[Path] = []
    first_use: list[tuple[int, str]] = []
    index_of: dict[Path, int] = {}
    video_index = {"a": np.empty(count, dtype=np.int64), "b": np.empty(count, dtype=np.int64)}
    for row in range(count):
        for side in "ab":
            text = data[f"path_{side}"][row]
            path = resolve_path(text, source, f"{source}: row {row + 1}")
            key = Path(os.path.normpath(path))
            if key not in index_of:
                index_of[key] = len(files)
                files.append(key)
                first_use.append((row, f"path_{side}"))
            video_index[side][row] = index_of[key]

    def load(file: Path):
        try:
            return decode(file, sampling).frames
        except VideoReadError as error:
            return error

    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        decoded = list(pool.map(load, files))
    for file, result, (row, column) in zip(files, decoded, first_use):
        if isinstance(result, VideoReadError):
            raise VptError(f"{file}: {result.reason} (prefs row {row + 1}, pair '{pair_ids[row]}', {column} of "
                           f"{name})")
    return PreferenceData(source=name, pair_ids=pair_ids, rows=np.arange(1, count + 1, dtype=np.int64),
                          prompts=[str(p) for p in prompts], video_a=video_index["a"], video_b=video_index["b"],
                          labels=labels, overall=overall, mos=mos, files=files, frames=decoded)


# ------------------------------------------------------------------------------------------------------ model


def _resolve_lora_targets(model: VideoRewardModel, targets: Sequence[str] | None) -> list[str]:
    language = videoalign_lora_targets(model.qwen)  # every Linear of the language model (VideoAlign's rule)
    if targets is None:
        return language
    chosen, unmatched = [], []
    for target in targets:
        found = [name for name in language if name == target or name.endswith("." + target)]
        if not found:
            unmatched.append(target)
        chosen.extend(name for name in found if name not in chosen)
    if unmatched:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name in language})
        raise VptError(f"LoRA target(s) {', '.join(unmatched)} match no Linear of the language model; choose among "
                       f"{', '.join(suffixes)}")
    return chosen


def prepare_model(model: VideoRewardModel, options: RewardTrainOptions, seed: int = 0) -> VideoRewardModel:
    """Set what trains (in place; returns the model): merge an existing adapter, freeze everything, add a fresh
    LoRA adapter on the language model (initialised from ``seed``, global RNG untouched), and train the vision
    tower + merger, the head and the three reward-token embedding rows. What trains is float32 on a model loaded in
    bfloat16 (:func:`_trainable_in_float32`); ``options.gradient_checkpointing`` switches Qwen2-VL's on."""
    if model.has_lora:
        model.merge_lora()
    freeze(model)
    if options.lora_rank > 0:
        targets = _resolve_lora_targets(model, options.lora_targets)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model.enable_lora(r=options.lora_rank, alpha=options.lora_alpha, dropout=options.lora_dropout,
                              targets=targets)
    mark_trainable(model, TRAINED_PATTERNS)
    train_embedding_rows(model.qwen.get_input_embeddings(), model.reward_token_ids)
    _trainable_in_float32(model)
    if options.gradient_checkpointing:
        checkpoint_activations(model.qwen)
    return model


def _trainable_in_float32(model: VideoRewardModel) -> None:
    """Every trainable parameter in float32 (the LoRA matrices are already: peft's ``autocast_adapter_dtype``), the
    frozen language model staying in its loaded dtype: AdamW's small updates vanish in bfloat16's 8-bit mantissa.
    The parameters keep their identity (gradient masks and ties stay). The embedding matrix trains three rows, so it
    becomes float32 whole, and its output is cast back to the language model's dtype for the layers it feeds; the
    vision tower's output is cast by Qwen2-VL itself, and the head casts its input."""
    embedding = model.qwen.get_input_embeddings()
    language_dtype = embedding.weight.dtype
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if language_dtype != torch.float32:
        embedding.register_forward_hook(lambda module, inputs, output: output.to(language_dtype))


# ------------------------------------------------------------------------------------------------- evaluation


@dataclass
class PairEvaluation:
    """Held-out result: raw scores per pair, accuracies (percent) and per-dimension statistics of the raw scores."""

    scores_a: np.ndarray  # float64 [N, 3]
    scores_b: np.ndarray
    metrics: dict[str, float]  # {dim}_accuracy, {dim}_accuracy_with_ties (percent; absent when undefined)
    norm_mean: tuple[float, float, float]
    norm_std: tuple[float, float, float]
    videos: int  # distinct (video, prompt) pairs scored

    def accuracy_rows(self) -> list[tuple]:
        """``(dimension, accuracy without ties, with ties, norm mean, norm std)`` of vq, mq, ta and overall, those
        with an accuracy; None where undefined (overall has no statistics of its own)."""
        rows = []
        for index, dimension in enumerate((*DIMENSIONS, "overall")):
            accuracies = [self.metrics.get(f"{dimension}_accuracy{kind}") for kind in ("", "_with_ties")]
            if accuracies != [None, None]:
                own = index < len(DIMENSIONS)
                rows.append((dimension, *accuracies, *((self.norm_mean[index], self.norm_std[index]) if own
                                                       else (None, None))))
        return rows


def evaluate_pairs(model: VideoRewardModel, data: PreferenceData, indices: Sequence[int] | np.ndarray,
                   batch_size: int = 8) -> PairEvaluation:
    """Score the distinct (video, prompt) pairs of ``indices`` once each (no gradients) and measure accuracy."""
    indices = np.asarray(indices, dtype=np.int64)
    keys: dict[tuple[int, str], int] = {}
    for i in indices:
        for video in (data.video_a[i], data.video_b[i]):
            keys.setdefault((int(video), data.prompts[i]), len(keys))
    ordered = list(keys)
    if ordered:
        was_training = model.training
        model.eval()
        try:
            raw = model.raw_scores([data.frames[v] for v, _ in ordered], [p for _, p in ordered],
                                   batch_size=batch_size).double().numpy()
        finally:
            model.train(was_training)
    else:
        raw = np.zeros((0, len(DIMENSIONS)))
    at_a = np.array([keys[(int(data.video_a[i]), data.prompts[i])] for i in indices], dtype=np.int64)
    at_b = np.array([keys[(int(data.video_b[i]), data.prompts[i])] for i in indices], dtype=np.int64)
    scores_a, scores_b = raw[at_a], raw[at_b]
    margins = scores_a - scores_b
    mean = raw.mean(axis=0) if len(raw) else np.zeros(len(DIMENSIONS))
    std = raw.std(axis=0) if len(raw) > 1 else np.ones(len(DIMENSIONS))
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    metrics: dict[str, float] = {}
    for d, dimension in enumerate(DIMENSIONS):
        metrics.update(pair_accuracies(margins[:, d], data.labels[indices, d], dimension))
    if data.overall is not None:
        metrics.update(pair_accuracies((margins / std).sum(axis=1), data.overall[indices], "overall"))
    return PairEvaluation(scores_a=scores_a, scores_b=scores_b, metrics=metrics,
                          norm_mean=tuple(float(v) for v in mean), norm_std=tuple(float(v) for v in std),
                          videos=len(ordered))


# ------------------------------------------------------------------------------------------------------- task


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, indices: np.ndarray):
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> int:
        return self.indices[item]


class VideoRewardTask:
    """The harness callables of VideoReward training over ``data``: dataset, collate, loss, evaluation."""

    def __init__(self, model: VideoRewardModel, data: PreferenceData, train_indices, eval_indices,
                 options: RewardTrainOptions):
        self.model, self.data, self.options = model, data, options
        self.train_indices = np.asarray(train_indices, dtype=np.int64)
        self.eval_indices = np.asarray(eval_indices, dtype=np.int64)
        self.dataset = _Pairs(self.train_indices)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """A batch of B pairs: the model inputs of the 2B videos (all A videos, then all B videos, each with the
        pair's prompt), ``labels`` [B, 3] and, for the regression loss, ``mos`` [B, 2, 3]."""
        data, index = self.data, np.asarray(indices, dtype=np.int64)
        videos = [data.frames[v] for v in data.video_a[index]] + [data.frames[v] for v in data.video_b[index]]
        prompts = [data.prompts[i] for i in index] * 2
        batch = {"labels": torch.from_numpy(data.labels[index].copy())}  # first: the harness counts examples by it
        if self.options.loss == "reg":
            batch["mos"] = torch.from_numpy(data.mos[index].copy())
        batch.update(self.model.processor(videos, prompts).model_inputs())
        return batch

    def loss_fn(self, model, batch) -> tuple[torch.Tensor, dict]:
        labels = batch["labels"]
        scores = model(**{name: batch[name] for name in MODEL_INPUTS}).float()
        count = labels.shape[0]
        scores_a, scores_b = scores[:count], scores[count:]
        if self.options.loss == "btt":
            loss = bradley_terry_ties_loss(scores_a, scores_b, labels, self.options.theta)
        elif self.options.loss == "bt":
            loss = bradley_terry_loss(scores_a, scores_b, labels)
        else:
            mos = batch["mos"].to(scores.dtype)
            loss = regression_loss(torch.cat([scores_a, scores_b]), torch.cat([mos[:, 0], mos[:, 1]]))
        metrics = {}
        decisive = (labels == A_WINS) | (labels == B_WINS)
        if bool(decisive.any()):
            right = (torch.sign(scores_a - scores_b).detach() == labels.to(scores.dtype)) & decisive
            metrics["accuracy"] = 100.0 * right.sum().double() / decisive.sum().double()
        return loss, metrics

    def eval_fn(self, model) -> dict[str, float]:
        return evaluate_pairs(model, self.data, self.eval_indices, self.options.eval_batch_size).metrics


# ---------------------------------------------------------------------------------------------------- training


@dataclass
class RewardTrainResult:
    """What :func:`train_videoreward` returns."""

    train: TrainResult
    model: VideoRewardModel
    output_dir: Path
    evaluation: PairEvaluation | None  # final held-out evaluation (main process; None elsewhere)
    train_pairs: int
    eval_pairs: int
    videos: int  # distinct video files decoded
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decode, train, finish

    @property
    def accuracies(self) -> dict[str, float]:
        return dict(self.evaluation.metrics) if self.evaluation is not None else {}


def _save_final(model: VideoRewardModel, out: Path) -> None:
    """Write the model in our layout into ``out`` beside the run's checkpoints (``vpt_videoreward.json``, what
    marks a VideoReward directory, moved in last)."""
    from vpt.io.atomic import publish_into
    from vpt.models.videoreward_checkpoint import CONFIG_FILE

    publish_into(out, lambda directory: save_videoreward(model, directory), CONFIG_FILE)
    if model.has_lora:
        model.base_path = str((out / "base").resolve())


def train_videoreward(model: VideoRewardModel, prefs: str | os.PathLike, config: TrainConfig,
                      options: RewardTrainOptions = RewardTrainOptions(),
                      resume: bool | str | os.PathLike | None = None, quiet: bool = False) -> RewardTrainResult:
    """Train ``model`` (in place) on the pairs of ``prefs``; write checkpoints, metrics and the final model (with
    held-out normalisation statistics) to ``config.output_dir``. See the module docstring.

    The held-out split and the new adapter's initialisation follow ``config.seed``; ``resume`` (see
    :func:`check_run`) continues where that run stopped and ends bit-identical to an uninterrupted run (same
    hardware).
    """
    out = Path(config.output_dir)
    check_run(out, resume)  # before the videos are decoded
    began = time.perf_counter()
    changes = {}
    if options.frames is not None:
        changes["num_frames"] = int(options.frames)
    if options.min_pixels is not None or options.max_pixels is not None:
        low = options.min_pixels if options.min_pixels is not None else model.config.min_pixels
        high = options.max_pixels if options.max_pixels is not None else model.config.max_pixels
        if low > high:
            raise VptError(f"min pixels {low} exceed max pixels {high}; give min pixels <= max pixels")
        changes.update(min_pixels=int(low), max_pixels=int(high))
    if changes:
        model.with_config(**changes)
    data = read_preferences(prefs, model.sampling, need_labels=options.loss != "reg",
                            need_mos=options.loss == "reg", workers=options.decode_workers)
    train_indices, eval_indices = split_pairs(len(data), options.eval_fraction, config.seed)
    decoded = time.perf_counter()
    prepare_model(model, options, seed=config.seed)
    task = VideoRewardTask(model, data, train_indices, eval_indices, options)
    trainer = Trainer(model, config, dataset=task.dataset, loss_fn=task.loss_fn, collate_fn=task.collate,
                      eval_fn=task.eval_fn if len(eval_indices) else None, quiet=quiet)
    result = trainer.train(resume=resume)
    trained = time.perf_counter()

    evaluation = None
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        with torch.no_grad():
            evaluation = evaluate_pairs(model, data, eval_indices if len(eval_indices) else train_indices,
                                        options.eval_batch_size)
        model.with_config(norm_mean=evaluation.norm_mean, norm_std=evaluation.norm_std)
        _save_final(model.eval(), out)
        summary = {
            "prefs": str(Path(data.source).resolve()) if data.source != "-" else "-",
            "pairs": len(data), "train_pairs": len(train_indices), "eval_pairs": len(eval_indices),
            "videos": len(data.files), "steps": result.step, "seed": config.seed,
            "statistics_from": "eval" if len(eval_indices) else "train",
            "norm_mean": list(evaluation.norm_mean), "norm_std": list(evaluation.norm_std),
            "accuracy": evaluation.metrics, "options": options.to_dict(),
            "eval_pair_ids": [data.pair_ids[i] for i in eval_indices],
        }
        with atomic_path(out / SUMMARY_FILE) as temporary:
            temporary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()
    finished = time.perf_counter()
    return RewardTrainResult(train=result, model=model, output_dir=out, evaluation=evaluation,
                             train_pairs=len(train_indices), eval_pairs=len(eval_indices), videos=len(data.files),
                             timings={"decode": decoded - began, "train": trained - decoded,
                                      "finish": finished - trained})
