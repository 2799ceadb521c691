"""Flow-matching training stages on the shared harness: SFT and Flow-RWR (``vpt sft``), Flow-DPO (``vpt dpo``).

Both train a LoRA policy of the generator on the clean latents of real clips (SPEC §Flow matching, §Flow-DPO):

1. **Examples** are read and checked first (cheap; most errors): a videos manifest with optional per-row weights or
   Flow-RWR rewards (:func:`sft_examples`), or the labelled pairs of a prefs table (:func:`dpo_examples`); every clip
   must exist, and clips that go through the transformer together must have one size.
2. **Encoding** happens once: clips to latents (VAE) and prompts to embeddings (text encoder), into the cache of
   :mod:`vpt.train.encoded` keyed by content and model identity — never per epoch, and a later run over the same
   clips reads the cache.
3. **Items** (:class:`LatentItems`) read the cached tensors and draw the noise and σ of an example from the run's
   seed, the epoch and the example's key — so a resumed run, a run on more processes and the joint and decoupled
   DPO steps all see the same noise.
4. **Losses**: :class:`FlowMatchingTask` (SFT with weights 1, Flow-RWR with normalised exp(r/β) weights: one code
   path) and :class:`FlowDpoTask` (shared σ and noise for both branches; reference = the starting policy or the
   generator without the adapter; joint or gradient-decoupled backward).
5. :func:`train_stage` runs the harness in ``OUT.run/`` (checkpoints to resume from) and publishes the final policy
   checkpoint ``OUT`` in the layout of :mod:`vpt.train.policy`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from vpt.algo.dpo import BETA_SCHEDULES, decoupled_dpo_backward, dpo_beta, flow_dpo_loss
from vpt.algo.flow_matching import (TIMESTEP_DISTRIBUTIONS, flow_matching_loss, noised, reward_weights,
                                    sample_sigmas, velocity_errors, velocity_target)
from vpt.errors import VptError
from vpt.models.wan import WanVelocity

DIMENSIONS = ("overall", "vq", "mq", "ta")
REFERENCES = ("policy", "base")
RUN_SUFFIX = ".run"
STAGE_FILE = "stage.json"


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
class DpoOptions:
    """Flow-DPO: the label column, β and its schedule, the reference and the backward mode."""

    dimension: str = "overall"
    beta: float = 5000.0
    beta_schedule: str = "constant"
    decoupled: bool = False
    reference: str = "policy"

    def __post_init__(self) -> None:
        if self.dimension not in DIMENSIONS:
            raise VptError(f"--dim {self.dimension}: choose one of {', '.join(DIMENSIONS)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise VptError(f"--beta-schedule {self.beta_schedule}: choose one of {', '.join(BETA_SCHEDULES)}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise VptError(f"--beta must be a positive number, got {self.beta}")
        if self.reference not in REFERENCES:
            raise VptError(f"--reference {self.reference}: choose one of {', '.join(REFERENCES)}")


# ------------------------------------------------------------------------------------------------ examples
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


def dpo_examples(prefs: str, dimension: str) -> Examples:
    """The usable pairs of a ``prefs`` table for the label column ``dimension``: the preferred clip is ``chosen``;
    ties and invalid or missing labels are skipped and counted."""
    from vpt.io.tables import read_table

    table = read_table(prefs, "prefs")
    if dimension not in table.column_names:
        labelled = [name for name in DIMENSIONS if name in table.column_names]
        hint = f"choose --dim among {', '.join(labelled)}" if labelled else "label the pairs first (build-prefs)"
        raise VptError(f"{prefs}: has no '{dimension}' label column; {hint}")
    examples, ties, invalid = [], 0, 0
    for number, row in enumerate(table.to_pylist(), start=1):
        label = row[dimension]
        if label == "tie":
            ties += 1
            continue
        if label not in ("a", "b"):
            invalid += 1
            continue
        where = f"{prefs}: row {number}"
        if not row.get("prompt"):
            raise VptError(f"{where}: no prompt; DPO conditions both clips on the prompt they answer, give one")
        files = pair_clips(row, prefs, where)
        chosen, rejected = ("path_a", "path_b") if label == "a" else ("path_b", "path_a")
        examples.append(Example(key=row["pair_id"], clips={"chosen": files[chosen], "rejected": files[rejected]},
                                prompt=row["prompt"], where=where))
    if not examples:
        raise VptError(f"{prefs}: no pair has a preferred side for --dim {dimension} ({ties} ties, {invalid} "
                       "invalid or unlabelled); DPO needs pairs labelled a or b")
    return Examples(examples, {"pairs": float(len(examples)), "skipped_ties": float(ties),
                               "skipped_invalid": float(invalid)})


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


def sft_examples(data: Sequence[str], prompts: str | None = None, weight_column: str | None = None,
                 rwr_scores: str | None = None, rwr_reward: str = "score", rwr_beta: float = 1.0) -> Examples:
    """The clips of ``data`` (a videos manifest, directory, glob or files; prompts from the manifest or
    ``prompts``), weighted by a manifest column (``weight_column``), by Flow-RWR weights N·softmax(r/β) of the
    reward ``rwr_reward`` in the scores table ``rwr_scores`` (joined on the video id), or not at all (SFT)."""
    from vpt.io.manifest import collect_videos, is_table

    if weight_column is not None and rwr_scores is not None:
        raise VptError("give --weight-column or --rwr-from, not both")
    if rwr_scores is not None and not (rwr_beta > 0 and math.isfinite(rwr_beta)):
        raise VptError(f"--rwr-beta must be a positive number, got {rwr_beta}")
    if weight_column is not None and not (len(data) == 1 and is_table(data[0])):
        raise VptError("--weight-column names a column of a videos manifest; pass --data MANIFEST")
    items = collect_videos(list(data), prompts)
    source = data[0] if len(data) == 1 else "the videos"
    for number, item in enumerate(items, start=1):
        if not item.prompt:
            raise VptError(f"{source}: row {number}: video {item.id} has no prompt; add a prompt column to the "
                           "manifest or pass --prompts")
        if not item.file.is_file():
            raise VptError(f"{source}: row {number}: {item.path} does not exist; fix the path or drop the row")
    weights: list[float] | None = None
    counts: dict[str, float] = {"videos": float(len(items))}
    if weight_column is not None:
        weights = _manifest_weights(data[0], weight_column)
    elif rwr_scores is not None:
        rewards = _rwr_rewards(items, rwr_scores, rwr_reward, source)
        weights = reward_weights(torch.tensor(rewards, dtype=torch.float64), rwr_beta).tolist()
        counts.update({"rwr/reward_mean": sum(rewards) / len(rewards), "rwr/weight_max": max(weights),
                       "rwr/effective_size": sum(weights) ** 2 / sum(w * w for w in weights)})
    examples = [Example(key=item.id, clips={"latent": item.file}, prompt=item.prompt,
                        weight=None if weights is None else float(weights[i]), where=f"{source}: row {i + 1}")
                for i, item in enumerate(items)]
    return Examples(examples, counts)


def _manifest_weights(manifest: str, column: str) -> list[float]:
    from vpt.io.manifest import read_video_table

    table = read_video_table(manifest)
    if column not in table.column_names:
        raise VptError(f"{manifest}: has no column '{column}' for --weight-column; add it or name another")
    weights = []
    for number, value in enumerate(table.column(column).to_pylist(), start=1):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise VptError(f"{manifest}: row {number}: column '{column}' is {value!r}; weights must be finite "
                           "numbers >= 0")
        weights.append(float(value))
    if not any(weights):
        raise VptError(f"{manifest}: column '{column}' is all zeros; at least one clip needs a positive weight")
    return weights


def _rwr_rewards(items, scores: str, reward: str, source: str) -> list[float]:
    from vpt.io.tables import read_table
    from vpt.rewards.expression import parse_reward

    try:
        weights = parse_reward(reward)
    except VptError:  # its message names grpo-step's --reward
        raise VptError(f"--rwr-reward {reward}: expected COLUMN or COLUMN=WEIGHT,... with finite weights and each "
                       "column once (e.g. score or vq=1,ta=2)") from None
    rows = read_table(scores, "scores").to_pylist()
    missing_columns = [column for column in weights if rows and column not in rows[0]]
    if missing_columns:
        raise VptError(f"{scores}: has no column '{missing_columns[0]}' for --rwr-reward; name a scores column")
    by_id = {row["id"]: (number, row) for number, row in enumerate(rows, start=1)}
    rewards = []
    for item in items:
        if item.id not in by_id:
            raise VptError(f"{scores}: no score for video {item.id!r} of {source}; score the same videos "
                           f"(vpt score {source} > {scores})")
        number, row = by_id[item.id]
        total = 0.0
        for column, weight in weights.items():
            value = row[column]
            if value is None or not math.isfinite(value):
                why = row.get("error") or ("missing" if value is None else repr(value))
                raise VptError(f"{scores}: row {number}: column '{column}' of video {item.id!r} is not a finite "
                               f"number ({why}); score it again or drop the video")
            total += weight * value
        rewards.append(total)
    return rewards


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


# ------------------------------------------------------------------------------------------------ items
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
        from vpt.train.encoded import load_latent, load_prompt_embedding

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


# ------------------------------------------------------------------------------------------------ losses
def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP keeps the model in .module


def branch_errors(model, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor:
    """Per-sample velocity errors ``[B]`` of ``model`` on clean latents ``x0 [B, C, F, h, w]`` noised to ``sigma
    [B]`` with ``noise``: mean over elements of (v_θ(x_σ, σ) − (ε − x0))²."""
    velocity = WanVelocity(model, embeds, None, 1.0, dtype)(noised(x0, noise, sigma), 0, sigma)
    return velocity_errors(velocity, velocity_target(x0, noise))


class FlowMatchingTask:
    """The harness's ``loss_fn`` of SFT and Flow-RWR: the (weighted) flow-matching loss of one micro-batch."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        x0, noise, sigma = batch["latent"], batch["noise"], batch["sigma"]
        velocity = WanVelocity(model, batch["embeds"], None, 1.0, self.dtype)(noised(x0, noise, sigma), 0, sigma)
        loss, errors = flow_matching_loss(velocity, velocity_target(x0, noise), batch.get("weight"))
        return loss, {"error": errors.mean().detach(), "sigma": sigma.mean()}


class Reference:
    """DPO's reference policy without a second copy of the generator: the transformer with the adapter disabled
    (``base``), or — when training continues a parent policy — the adapter at its starting weights, swapped in
    for the reference forward (the adapter is small; the base weights are shared)."""

    def __init__(self, policy: torch.nn.Module, parent_weights: bool):
        self.weights = None if not parent_weights else {
            name: param.detach().clone() for name, param in policy.named_parameters() if param.requires_grad}

    @contextlib.contextmanager
    def active(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The reference (no grad): call only while no graph of the policy is alive (parameters are swapped)."""
        policy = _unwrapped(model)
        if self.weights is None:
            with torch.no_grad(), policy.disable_adapter():
                yield policy
            return
        params = dict(policy.named_parameters())
        with torch.no_grad():
            saved = {name: params[name].detach().clone() for name in self.weights}
            for name, weight in self.weights.items():
                params[name].copy_(weight)
            try:
                yield policy
            finally:
                for name, weight in saved.items():
                    params[name].copy_(weight)


class FlowDpoTask:
    """The harness's ``loss_fn`` of Flow-DPO (``own_backward``): reference errors without grad, then the joint loss
    backward once, or the gradient-decoupled step (one backward pass per branch: only one branch's graph alive)."""

    def __init__(self, options: DpoOptions, reference: Reference, dtype: torch.dtype):
        self.options, self.reference, self.dtype = options, reference, dtype

    def __call__(self, model, batch: Mapping[str, torch.Tensor],
                 backward: Callable[[torch.Tensor], None]) -> tuple[torch.Tensor, dict[str, Any]]:
        options = self.options
        chosen, rejected, noise, sigma = batch["chosen"], batch["rejected"], batch["noise"], batch["sigma"]
        embeds = batch["embeds"]
        beta = dpo_beta(options.beta, sigma, options.beta_schedule)
        # the reference runs in the batch layout of the policy passes it is compared with: an error depends on its
        # batch-mates at float rounding (~1e-7), which beta/2 (thousands) would turn into a non-zero implicit reward
        # of an unchanged policy
        with self.reference.active(model) as reference:
            if options.decoupled:
                reference_chosen, reference_rejected = (
                    branch_errors(reference, batch[branch], noise, sigma, embeds, self.dtype)
                    for branch in ("chosen", "rejected"))
            else:
                reference_chosen, reference_rejected = branch_errors(
                    reference, torch.cat([chosen, rejected]), noise.repeat(2, 1, 1, 1, 1), sigma.repeat(2),
                    embeds.repeat(2, 1, 1), self.dtype).chunk(2)
        if options.decoupled:
            def policy_errors(branch: str) -> torch.Tensor:
                # without grad, skip DDP's forward bookkeeping: no backward follows this call
                runner = model if torch.is_grad_enabled() else _unwrapped(model)
                return branch_errors(runner, batch[branch], noise, sigma, embeds, self.dtype)

            def local_errors(branch: str) -> torch.Tensor:
                # with grad but outside DDP: its gradient is taken with autograd.grad and synchronised later
                return branch_errors(_unwrapped(model), batch[branch], noise, sigma, embeds, self.dtype)

            trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
            loss, stats = decoupled_dpo_backward(policy_errors, reference_chosen, reference_rejected, beta, backward,
                                                 local_errors, trainable)
        else:
            errors = branch_errors(model, torch.cat([chosen, rejected]), noise.repeat(2, 1, 1, 1, 1),
                                   sigma.repeat(2), embeds.repeat(2, 1, 1), self.dtype)
            policy_chosen, policy_rejected = errors.chunk(2)
            loss, stats = flow_dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
            backward(loss)
            loss = loss.detach()
        metrics = {"accuracy": stats.accuracy, "margin": stats.margin, "chosen_reward": stats.chosen_reward,
                   "rejected_reward": stats.rejected_reward, "chosen_error": stats.chosen_error,
                   "rejected_error": stats.rejected_error, "reference_chosen_error": reference_chosen.mean(),
                   "reference_rejected_error": reference_rejected.mean(), "sigma": sigma.mean()}
        return loss, metrics


# ------------------------------------------------------------------------------------------------ the stage
@dataclass
class StageResult:
    """What :func:`train_stage` wrote and measured."""

    checkpoint: Path
    step: int
    metrics: dict[str, float]


def run_directory(out: Path) -> Path:
    """Where a stage writing ``out`` keeps its harness checkpoints until it finishes: ``OUT.run``."""
    return out.with_name(out.name + RUN_SUFFIX)


def check_output(out: Path, resume: str | None) -> Path:
    """``out`` must not exist; an unfinished run of it is continued only when asked, and ``resume`` must hold a
    checkpoint. Returns the run directory."""
    from vpt.io.atomic import check_new_directory, owns
    from vpt.train.checkpoint import TRAINER_STATE, latest_checkpoint

    check_new_directory(out, "--out")
    run = run_directory(out)
    if run.exists() and not owns(run):
        raise VptError(f"{run}: exists and vpt did not create it (the checkpoints of --out {out} go there); move it "
                       "away or choose another --out")
    if resume is None and latest_checkpoint(run) is not None:
        raise VptError(f"{run}: holds an unfinished run of {out}; continue it with --resume {run}, or remove it")
    if resume is not None and not (Path(resume) / TRAINER_STATE).is_file() and latest_checkpoint(resume) is None:
        raise VptError(f"{resume}: holds no checkpoint to resume from; give the OUT.run of an interrupted run, one "
                       "of its checkpoint-N directories, or a finished checkpoint of this stage")
    return run


def _check_same_parent(resume: Path, record: Mapping[str, Any]) -> None:
    """A resumed run must train the same stage of the same policy: its saved record names the generator, the
    parent policy and the stage."""
    from vpt.io.jsonfile import read_json_object
    from vpt.train.policy import POLICY_FILE

    for name in (STAGE_FILE, POLICY_FILE):
        saved_file = (resume if (resume / name).is_file() else resume.parent) / name
        if saved_file.is_file():
            saved = read_json_object(saved_file, "the stage record", "resume from a checkpoint of this stage")
            if saved.get("stage") != record.get("stage"):
                raise VptError(f"{resume}: holds a run of the {saved.get('stage')} stage, not of "
                               f"{record.get('stage')}; --resume continues a run of the same stage, --policy starts "
                               "this stage from a finished checkpoint")
            for key in ("model", "parent"):
                if saved.get(key) != record.get(key):
                    raise VptError(f"{resume}: was trained with {key} {saved.get(key)}, not {record.get(key)}; "
                                   f"resume with the same --model and --policy")
            return


def train_stage(policy: torch.nn.Module, dataset: LatentItems, loss_fn, config, out: Path, record: dict,
                summary: Mapping[str, float], own_backward: bool = False, resume: str | None = None,
                quiet: bool = False) -> StageResult:
    """Train ``policy`` with the harness in ``OUT.run`` and publish the final policy checkpoint ``out``.

    ``record`` (generator, parent, stage, options) becomes ``policy.json``; ``summary`` (example counts) heads
    ``metrics.parquet``. ``resume``: the run directory of an interrupted run, one of its checkpoints, or a finished
    policy checkpoint of the same stage to train on from (bit-identical to not stopping).
    """
    from vpt.distributed import current_processes
    from vpt.io.atomic import claim_directory, remove_owned
    from vpt.train import Trainer
    from vpt.train.checkpoint import latest_checkpoint, load_peft, read_metrics
    from vpt.train.policy import METRICS_TABLE, metrics_rows, publish_policy, save_policy

    out = Path(out)
    run = run_directory(out)  # run_dpo / run_sft checked the output before encoding (check_output)
    if resume is not None:
        _check_same_parent(Path(resume), record)
    processes = current_processes()
    if processes.is_main:
        claim_directory(run, "--out")
        (run / STAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    processes.wait()
    try:
        trainer = Trainer(policy, config.replace(output_dir=str(run)), dataset=dataset, loss_fn=loss_fn,
                          save_model=save_policy, load_model=load_peft, own_backward=own_backward, quiet=quiet)
        result = trainer.train(resume=resume if resume is not None else False)
    except BaseException:
        if processes.is_main and latest_checkpoint(run) is None:  # nothing to resume: leave no run behind
            remove_owned(run)
        raise
    steps = read_metrics(result.metrics_file) if processes.is_main else []
    if processes.is_main:
        table = metrics_rows(1, summary, steps)
        if result.resumed_from is not None and (result.resumed_from / METRICS_TABLE).is_file():
            table = _earlier_steps(result.resumed_from / METRICS_TABLE, steps) + table
        publish_policy(result.checkpoint, out, {**record, "step": result.step}, table)
        remove_owned(run)
    processes.wait()
    last = {k: v for k, v in (steps[-1] if steps else {}).items() if k not in ("step", "epoch")}
    return StageResult(checkpoint=out, step=result.step, metrics={**summary, **last})


def _earlier_steps(table: Path, steps: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The per-step rows of the finished checkpoint a run resumed from, before the steps this run logged: the
    published metrics then cover the whole training, as if it had not stopped."""
    from vpt.io.tables import read_table

    first = min((int(row["step"]) for row in steps), default=None)
    return [row for row in read_table(table, "metrics").to_pylist()
            if row["step"] is not None and (first is None or row["step"] < first)]


def stage_record(stage: str, source, data: str, options: Mapping[str, Any],
                 command: Sequence[str] | None = None) -> dict:
    """``policy.json`` of a stage's output: generator, parent policy (a checkpoint, an init LoRA or ``base``) and
    the lineage behind it, stage, data, options and the command line that ran it (the model card shows it without
    local paths)."""
    return {"model": str(source.model), "parent": source.parent, **source.describe(), "stage": stage,
            "data": str(Path(data).resolve()) if data != "-" else data, stage: dict(options),
            **({"command": [str(token) for token in command]} if command else {})}


def options_dict(*options) -> dict:
    """Dataclass options as one JSON-ready dict."""
    merged: dict = {}
    for option in options:
        merged.update(asdict(option))
    return merged


def encode_examples(examples: Sequence[Example], pipe, model: Path, cache, size: tuple[int, int, int] | None,
                    quiet: bool = False, known: Mapping[Path, Path] | None = None) -> list[EncodedExample]:
    """Every clip and prompt of ``examples`` encoded into ``cache`` (:class:`~vpt.train.encoded.EncodedCache`;
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


def _prepare(examples: Examples, model: str | None, policy: str | None, size, cache: str | None,
             lora: Mapping[str, Any], seed: int, quiet: bool, init_lora: str | None = None):
    """(source, trainable policy, encoded examples): the policy and data of a stage, checked and encoded.
    ``init_lora``: a LoRA without ``policy.json`` (peft or diffusers layout) the new policy starts as."""
    from vpt.models.loading import load_wan_pipeline
    from vpt.train.encoded import EncodedCache
    from vpt.train.policy import policy_source

    source = policy_source(model, policy, init_lora)
    if size is None:
        check_clip_sizes(examples.examples)
    pipe = load_wan_pipeline(source.model)
    encoded = encode_examples(examples.examples, pipe, source.model, EncodedCache(cache), size, quiet)
    transformer = pipe.transformer
    del pipe  # the text encoder and VAE are done: only the transformer trains
    trainable = source.open(lora["targets"], lora["rank"], lora["alpha"], seed, transformer=transformer)
    return source, trainable, encoded


def run_dpo(*, model: str | None, policy: str | None, prefs: str, out: str | os.PathLike, options: DpoOptions,
            noise: NoiseOptions, config, lora_targets: Sequence[str], lora_rank: int = 8, lora_alpha: float = 16.0,
            size: tuple[int, int, int] | None = None, cache: str | None = None, resume: str | None = None,
            quiet: bool = False, init_lora: str | None = None, command: Sequence[str] | None = None) -> StageResult:
    """``vpt dpo``: Flow-DPO of the policy (``policy`` continued, a new LoRA on ``model``, or the LoRA
    ``init_lora`` on ``model``) on the pairs of ``prefs`` labelled in ``options.dimension``; writes the policy
    checkpoint ``out``. ``command``: the command line, for the record and the model card."""
    check_output(Path(out), resume)  # before encoding, which can take long at full scale
    examples = dpo_examples(prefs, options.dimension)
    lora = {"targets": tuple(lora_targets), "rank": lora_rank, "alpha": lora_alpha}
    source, trainable, encoded = _prepare(examples, model, policy, size, cache, lora, noise.seed, quiet, init_lora)
    # the starting policy is the reference: a parent's or an init LoRA's adapter as it starts, swapped in
    reference = Reference(trainable, parent_weights=options.reference == "policy" and source.adapter)
    task = FlowDpoTask(options, reference, next(trainable.parameters()).dtype)
    setup = "parent" if source.init_lora is not None else _lora_record(lora, source)
    record = stage_record("dpo", source, prefs, {**options_dict(options, noise), "lora": setup, "size": size},
                          command)
    return train_stage(trainable, LatentItems(encoded, noise), task, config, Path(out), record,
                       examples.counts, own_backward=True, resume=resume, quiet=quiet)


def run_sft(*, model: str | None, policy: str | None, data: Sequence[str], out: str | os.PathLike,
            noise: NoiseOptions, config, lora_targets: Sequence[str], prompts: str | None = None,
            weight_column: str | None = None, rwr_scores: str | None = None, rwr_reward: str = "score",
            rwr_beta: float = 1.0, lora_rank: int = 8, lora_alpha: float = 16.0,
            size: tuple[int, int, int] | None = None, cache: str | None = None, resume: str | None = None,
            quiet: bool = False, init_lora: str | None = None, command: Sequence[str] | None = None) -> StageResult:
    """``vpt sft``: flow-matching fine-tuning of the policy (``policy`` continued, a new LoRA on ``model``, or the
    LoRA ``init_lora`` on ``model``) on the clips of ``data`` — weights 1 (SFT), a manifest column, or Flow-RWR's
    normalised exp(r/β) of ``rwr_reward`` from ``rwr_scores``; writes ``out``. ``command``: the command line, for the
    record and the model card."""
    check_output(Path(out), resume)  # before encoding, which can take long at full scale
    examples = sft_examples(data, prompts, weight_column, rwr_scores, rwr_reward, rwr_beta)
    lora = {"targets": tuple(lora_targets), "rank": lora_rank, "alpha": lora_alpha}
    source, trainable, encoded = _prepare(examples, model, policy, size, cache, lora, noise.seed, quiet, init_lora)
    weighting = ("rwr" if rwr_scores is not None else "column" if weight_column is not None else "none")
    options = {**options_dict(noise), "weighting": weighting, "weight_column": weight_column,
               "rwr_scores": rwr_scores, "rwr_reward": rwr_reward, "rwr_beta": rwr_beta,
               "lora": "parent" if source.init_lora is not None else _lora_record(lora, source), "size": size}
    return train_stage(trainable, LatentItems(encoded, noise),
                       FlowMatchingTask(next(trainable.parameters()).dtype), config, Path(out),
                       stage_record("sft", source, data[0], options, command), examples.counts, resume=resume,
                       quiet=quiet)


def _lora_record(lora: Mapping[str, Any], source) -> dict | str:
    """The new adapter's setup, or where a continued adapter came from (its own config is in the checkpoint)."""
    return "parent" if source.checkpoint is not None else {**lora, "targets": list(lora["targets"])}
