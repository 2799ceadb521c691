"""``vpt grpo-step``: one GRPO iteration of a LoRA policy over recorded rollouts, read top to bottom.

Flow-GRPO (Liu et al. 2025, arXiv 2505.05470) with BPGO (arXiv 2511.18919), ViPO and the self-paced curriculum as
options. ``sample-rollouts`` recorded the states every stochastic step starts and ends at and the sampling policy's
log-probs; ``score`` scored the videos. The sections below:

1. **Setup** (:func:`load_step_inputs`): the policy (a checkpoint of any stage, or a new LoRA), the rollouts (checked
   to be this policy's own) and the reward columns, all checked before the step starts.
2. **Rewards → advantages** (:func:`compute_advantages`): the reward expression's columns are combined (fixed
   weights, or the self-paced curriculum's weights), turned into group-relative advantages (Flow-GRPO Eq. 3), then
   BPGO scales each group by its reliability weight (RAS) and CRT replaces the reward or adds an auxiliary term.
   BPGO's per-prompt prior comes from the reference policy's scores, or from a running mean kept in the checkpoint.
3. **Micro-batches** (:class:`RolloutSteps` of :class:`RolloutBatch`): one per (sampling batch of a group, recorded
   step) — the batches the sampler ran, so the first ratios are exactly 1 — over every recorded step, or a seeded
   subset with a timestep fraction < 1.
4. **Loss** (:class:`GrpoLoss`): the policy's velocity at the recorded state gives the step's mean, the recorded
   next state its log-prob; the clipped surrogate (Flow-GRPO Eq. 4; per sample, or per latent position with ViPO's
   advantage maps) plus β·KL to the reference — the same transformer with the adapter disabled, never a copy.
5. **Train and publish** (:func:`grpo_step`): the harness's one run-and-publish path (accumulation, clipping,
   checkpoints in ``OUT.run/``, exact continuation from the previous iteration's optimizer, schedule and RNG state).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vpt.algo.bpgo import (RAS_ALPHA, bayes_group_ras_weights, bayesian_ras_weights, contrastive_rewards,
                           normalise_with, ras_weights, rerange_rewards)
from vpt.algo.curriculum import GatedCurriculum, softmax_curriculum_weights
from vpt.algo.flow_sde import gaussian_log_prob, sde_step_mean_std, state_indices_of
from vpt.algo.grpo import (ADVANTAGE_EPS, AGGREGATIONS, STD_MODES, SurrogateStats, aggregate_rewards,
                           clip_advantages, clipped_surrogate, group_advantages, joint_advantages, kl_to_reference)
from vpt.algo.grpo_guard import GRAD_REWEIGHT_FORMS, grad_reweight, normalised_log_ratio
from vpt.algo.tempflow import noise_step_weights
from vpt.algo.trust_region import kl_trust_region_loss, step_kl
from vpt.algo.vipo import (BLUR_MODES, GRID_ROUNDINGS, NORMALISATIONS, ORIENTATIONS, PCA_MODES, TIME_ALIGNMENTS,
                           VipoMapOptions, advantage_map, per_position_log_prob)
from vpt.distributed import unwrapped
from vpt.errors import VptError
from vpt.models.wan import WanVelocity, wan_dtype
from vpt.train.batch import TensorBatch
from vpt.train.policy import DEFAULT_LORA_TARGETS, policy_source
from vpt.train.run import StageTask, train_stage

CRT_MODES = ("off", "replace", "auxiliary", "rerange")
RAS_FORMS = ("sigmoid", "bayesian", "bayes-group")
TIMESTEP_WEIGHTS = ("none", "tempflow")
TRUST_REGIONS = ("clip", "kl")
GRAD_REWEIGHTS = ("none", *GRAD_REWEIGHT_FORMS)
SELF_PACED_FORMS = ("off", "softmax", "gated")


@dataclass
class GrpoOptions:
    """What one iteration optimises. ``reward``: scores column -> weight, in curriculum order (visual -> motion ->
    semantic) when ``self_paced`` is on (its weights then replace these)."""

    reward: dict[str, float]
    aggregation: str = "sum-then-normalise"
    std: str = "group"
    advantage_eps: float = ADVANTAGE_EPS
    advantage_clip: float = 5.0
    clip_after_transforms: bool = False
    clip_range: float = 1e-3
    kl_beta: float = 0.0
    timestep_fraction: float = 1.0
    timestep_weight: str = "none"
    grad_reweight: str = "none"
    ratio_norm: bool = False
    trust_region: str = "clip"
    kl_max: float = 1e-3
    bpgo: bool = False
    ras: str = "sigmoid"
    ras_alpha: float = RAS_ALPHA
    ras_sharpness: float = 1.0
    prior_std: float = 1.0
    ras_weight_range: tuple[float, float] = (0.5, 1.5)
    prior_column: str | None = None
    prior_momentum: float = 0.9
    crt: str = "off"
    crt_weight: float = 0.5
    crt_lambda: float = 1.0
    crt_max_exponent: float = 5.0
    crt_a: float = 50.0
    crt_temperature: float = 5.0
    crt_clamp: float = 30.0
    vipo: bool = False
    vipo_blur: float = 1.0
    vipo_pca: str = "video"
    vipo_orient: str = "border"
    vipo_blur_mode: str = "replicate"
    vipo_normalise: str = "global"
    vipo_time: str = "ends"
    vipo_grid: str = "round"
    self_paced: str = "off"
    curriculum_thresholds: tuple[float, ...] = ()
    curriculum_beta: float = 0.3
    curriculum_sharpness: float = 10.0
    curriculum_momentum: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`VptError` naming the first invalid option (done on construction)."""
        if not self.reward:
            raise VptError("--reward names no column; give COLUMN or COLUMN=WEIGHT,...")
        choices = (("aggregation", AGGREGATIONS), ("std", STD_MODES), ("crt", CRT_MODES), ("ras", RAS_FORMS),
                   ("self_paced", SELF_PACED_FORMS), ("timestep_weight", TIMESTEP_WEIGHTS),
                   ("grad_reweight", GRAD_REWEIGHTS), ("trust_region", TRUST_REGIONS), ("vipo_pca", PCA_MODES),
                   ("vipo_orient", ORIENTATIONS), ("vipo_blur_mode", BLUR_MODES), ("vipo_normalise", NORMALISATIONS),
                   ("vipo_time", TIME_ALIGNMENTS), ("vipo_grid", GRID_ROUNDINGS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise VptError(f"--{name.replace('_', '-')} {getattr(self, name)}: choose one of {', '.join(allowed)}")
        positive = ("clip_range", "advantage_clip", "prior_std", "curriculum_sharpness", "advantage_eps",
                    "crt_temperature", "crt_clamp", "kl_max")
        for name in positive:
            if not getattr(self, name) > 0:
                raise VptError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not self.kl_beta >= 0 or not self.crt_weight >= 0 or not self.vipo_blur >= 0:
            raise VptError("--kl-beta, --crt-weight and --vipo-blur must be >= 0")
        if not 0 < self.timestep_fraction <= 1:
            raise VptError(f"--timestep-fraction must lie in (0, 1], got {self.timestep_fraction}")
        for name in ("prior_momentum", "curriculum_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise VptError(f"--{name.replace('_', '-')} must lie in [0, 1), got {getattr(self, name)}")
        if self.crt != "off" and not self.bpgo:
            raise VptError("--crt needs --bpgo (CRT contrasts rewards with BPGO's prior)")
        if self.vipo and (self.ratio_norm or self.trust_region == "kl"):
            raise VptError("--ratio-norm and --trust-region kl work on one ratio per sample; ViPO's ratio is per "
                           "latent position: use them without --vipo")
        if self.ratio_norm and self.trust_region == "kl":
            raise VptError("--ratio-norm normalises the ratio for clipping, which --trust-region kl replaces; choose "
                           "one")
        if self.prior_column is not None and not self.bpgo:
            raise VptError("--prior-column is BPGO's prior; add --bpgo")
        low, high = self.ras_weight_range
        if not 0 <= low <= high:
            raise VptError(f"--ras-weight-range {low},{high}: give MIN,MAX with 0 <= MIN <= MAX, e.g. 0.5,1.5")
        if self.crt == "rerange" and self.aggregation != "sum-then-normalise" and len(self.reward) > 1:
            raise VptError("--crt rerange replaces the combined reward; use --aggregation sum-then-normalise")
        dimensions = len(self.reward)
        if self.self_paced != "off" and dimensions < 2:
            raise VptError("--self-paced needs at least two reward columns in curriculum order, e.g. "
                           "--reward brightness,motion,flicker")
        if self.self_paced == "gated" and dimensions != 3:
            raise VptError(f"--self-paced gated needs exactly three reward columns (visual, motion, semantic), got "
                           f"{dimensions}")
        if self.curriculum_thresholds and len(self.curriculum_thresholds) != dimensions:
            raise VptError(f"--curriculum-thresholds gives {len(self.curriculum_thresholds)} values for "
                           f"{dimensions} reward columns; give one per column")

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(self.curriculum_thresholds) or (0.75,) * len(self.reward)

    @property
    def needs_old_means(self) -> bool:
        """The sampling policy's step means are needed (recorded by sample-rollouts --record-means)."""
        return self.ratio_norm or self.trust_region == "kl"

    @property
    def normalise_clip(self) -> float | None:
        """The clip of the z-scored advantages: none yet when the clip comes after BPGO's scale and ViPO's map."""
        return None if self.clip_after_transforms else self.advantage_clip

    @property
    def vipo_map(self) -> VipoMapOptions:
        """ViPO's map construction; reflect borders blur as the release does (scipy's radius ``round(4σ)``)."""
        reflect = self.vipo_blur_mode == "reflect"
        return VipoMapOptions(pca=self.vipo_pca, orient=self.vipo_orient, blur_mode=self.vipo_blur_mode,
                              blur_truncate=4.0 if reflect else 3.0, blur_rounding="round" if reflect else "ceil",
                              normalise=self.vipo_normalise, time_align=self.vipo_time, grid_rounding=self.vipo_grid)


class GrpoState:
    """What carries from one iteration to the next besides weights and optimizer: the iteration number, BPGO's
    running per-prompt priors (per reward column) and the gated curriculum's EMA. Saved in every checkpoint."""

    def __init__(self):
        self.iteration = 0
        self.priors: dict[str, dict[str, float]] = {}
        self.curriculum: dict | None = None

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "priors": {k: dict(v) for k, v in self.priors.items()},
                "curriculum": self.curriculum}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration = int(state.get("iteration", 0))
        self.priors = {str(k): {str(c): float(x) for c, x in v.items()} for k, v in state.get("priors", {}).items()}
        self.curriculum = state.get("curriculum")


# ------------------------------------------------------------------------------ setup: the policy, rollouts and rewards
@dataclass
class StepInputs:
    """Everything one iteration reads, loaded and checked (see :func:`load_step_inputs`)."""

    policy: torch.nn.Module  # the peft-wrapped transformer, adapter trainable
    rollouts: Any  # vpt.rollouts.store.RolloutSet
    rewards: dict[str, torch.Tensor]
    state: GrpoState
    policy_info: dict
    warm_start: Path | None = None
    reference_priors: dict[str, dict[str, float]] | None = None
    prior_source: str = "--prior"
    dinov2: torch.nn.Module | None = None
    row_priors: torch.Tensor | None = None  # [N] BPGO's prior of each rollout, from --prior-column
    judged: dict[str, float] = field(default_factory=dict)  # judge/<column>/mean|std of the rollouts (--judge)


def sde_form_of(row: Mapping[str, Any]) -> str:
    """The SDE form a rollout was sampled with (rollouts v1 predate the column: all flow-grpo)."""
    return row.get("sde_form") or "flow-grpo"


def check_rollouts(rollouts, source: str, model_id: str, policy_digest: str | None) -> None:
    """The rollouts can train this policy: sampled from this generator by this policy (``policy_digest`` None:
    the base generator), with recorded SDE steps and groups of two or more."""
    rows = rollouts.rows
    if not rows:
        raise VptError(f"{source}: holds no rollouts; sample some with sample-rollouts")
    for number, row in enumerate(rows, start=1):
        if row["model_id"] != model_id:
            raise VptError(f"{source}: row {number}: sampled from the generator {row['model_id']}, not {model_id}; "
                           "train on rollouts of the policy's own generator")
        sampled_by = row["policy_id"]
        digest = None if sampled_by == "base" else sampled_by.rpartition("#")[2]
        if digest != policy_digest:
            expected = "the base generator (--init)" if policy_digest is None else f"the policy #{policy_digest}"
            raise VptError(f"{source}: row {number}: sampled by {sampled_by}, not by {expected}; GRPO trains the "
                           "policy that sampled the rollouts (sample-rollouts --policy with this checkpoint)")
        if not row["recorded_steps"]:
            raise VptError(f"{source}: row {number}: no recorded SDE steps (sampled with --noise-level 0?); sample "
                           "with a noise level > 0")
    settings = {(row["noise_level"], sde_form_of(row), row["guidance"]) for row in rows}
    if len(settings) > 1:
        raise VptError(f"{source}: mixes noise levels / SDE forms / guidance scales {sorted(settings)}; sample one "
                       "iteration's rollouts with one setting")
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row["group_id"]] = sizes.get(row["group_id"], 0) + 1
    small = sorted(group for group, size in sizes.items() if size < 2)
    if small:
        raise VptError(f"{source}: group {small[0]!r} has 1 sample ({len(small)} such groups); GRPO compares "
                       "samples of one prompt, sample with --group-size 2 or more")


def load_step_inputs(*, policy: str | None, init: str | None, model: str | None, rollouts: str,
                     scores: Sequence[str], prior: str | None, options: GrpoOptions, vipo_model: str | None = None,
                     lora_rank: int = 8, lora_alpha: float = 16.0,
                     lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS, device: str | None = None,
                     init_lora: str | None = None, command: Sequence[str] | None = None,
                     dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False,
                     judges: Sequence[str] = ()) -> StepInputs:
    """Read and check everything :func:`grpo_step` needs: tables first (cheap, most errors), then the judges, then
    the models.

    ``policy``: a checkpoint of any stage (continue it; GRPO's own state carries over from a grpo-step one) — or
    ``init``: a Wan / zoo directory (start a LoRA policy with ``lora_rank`` / ``lora_alpha`` / ``lora_targets``, or
    as the LoRA ``init_lora``, peft or diffusers layout, whose rollouts ``sample-rollouts --policy INIT_LORA``
    recorded). ``model`` overrides the generator a policy records. ``command``: the command line, for the record
    and the model card. ``dtype``: of the frozen transformer (the LoRA, optimizer, log-probs and loss stay float32;
    sample the rollouts with the same ``--dtype``, so the first ratios are 1); ``gradient_checkpointing``: recompute
    the transformer's activations in the backward pass. ``judges``: held-out reward models (``vpt score -m`` names,
    :mod:`vpt.stages.guard`) that score the rollouts' videos here, before training, and are never optimised.
    """
    from vpt.models.dtypes import dtype_name
    from vpt.io.tables import read_table
    from vpt.io.tensors import load_torch
    from vpt.models.loading import load_dinov2
    from vpt.rollouts.store import load_rollouts
    from vpt.train.checkpoint import TRAINER_STATE

    source = (policy_source(model, policy, init_lora) if policy is not None else
              policy_source(init, None, init_lora, generator_option="--init"))
    wan = source.model
    rollout_set = load_rollouts(rollouts)
    check_rollouts(rollout_set, rollouts, str(wan), source.digest)
    columns = list(options.reward)
    tables = [(name, read_table(name, "scores").to_pylist()) for name in scores]
    rewards = rollout_rewards(rollout_set.rows, tables, columns, rollouts)
    reference = None if prior is None else prior_means(read_table(prior, "scores").to_pylist(), columns, prior)
    if prior is not None and options.prior_column is not None:
        raise VptError("give one BPGO prior: --prior TABLE or --prior-column COLUMN")
    row_priors = None if options.prior_column is None else prior_column(rollout_set.rows, options.prior_column,
                                                                          rollouts)
    if options.needs_old_means:
        missing = next((number for number, row in enumerate(rollout_set.rows, start=1) if not row.get("means_key")),
                       None)
        if missing is not None:
            raise VptError(f"{rollouts}: row {missing}: no recorded step means, which --ratio-norm and --trust-region "
                           "kl need; sample the rollouts with --record-means")
    judged = {}
    if judges:
        from vpt.stages.guard import judge_metrics, judge_scores, load_judges

        files = [rollout_set.directory / row["path"] for row in rollout_set.rows]
        judged = judge_metrics(judge_scores(load_judges(judges, dtype_name(dtype)), files,
                                            [row["prompt"] for row in rollout_set.rows]))

    dinov2 = None
    if options.vipo:
        features = vipo_model or (wan.parent if (wan.parent / "zoo.json").is_file() else None)
        if features is None:
            raise VptError("--vipo needs DINOv2 features: pass --vipo-model DIR (a transformers DINOv2 directory)")
        dinov2 = load_dinov2(features)
    trainable = source.open(lora_targets, lora_rank, lora_alpha, options.seed, device, dtype=dtype,
                            gradient_checkpointing=gradient_checkpointing)
    state = GrpoState()
    warm_start = None
    checkpoint = source.checkpoint
    # another stage's optimizer moments and counters do not carry into GRPO: a new stage starts them afresh
    if checkpoint is not None and source.stage == "grpo":
        if (checkpoint / "extra_state.pt").is_file():
            state.load_state_dict(load_torch(checkpoint / "extra_state.pt"))
        warm_start = checkpoint if (checkpoint / TRAINER_STATE).is_file() else None
    return StepInputs(policy=trainable, rollouts=rollout_set, rewards=rewards, state=state,
                      policy_info={"model": str(wan), "parent": source.parent, **source.describe(),
                                   "rollouts": str(Path(rollouts).resolve()), "dtype": dtype_name(dtype),
                                   "gradient_checkpointing": bool(gradient_checkpointing),
                                   **({"command": [str(token) for token in command]} if command else {})},
                      warm_start=warm_start, reference_priors=reference, prior_source=prior or "--prior",
                      dinov2=dinov2, row_priors=row_priors, judged=judged)


# ------------------------------------------------------------------------------------------ data: rewards -> advantages
def rollout_rewards(rows: Sequence[dict], tables: Sequence[tuple[str, Sequence[dict]]],
                    columns: Sequence[str], rollouts_source: str) -> dict[str, torch.Tensor]:
    """Reward columns ``name -> float64 [N]`` in rollout-row order, each taken from the one scores table that has
    it. Raises :class:`VptError` for a column in no table or in several, a rollout without a score, a failed score
    and a non-finite value."""
    located: dict[str, tuple[str, dict[str, tuple[int, dict]]]] = {}
    indexed = []
    for source, table in tables:
        by_id: dict[str, tuple[int, dict]] = {}
        for number, row in enumerate(table, start=1):
            if row["id"] in by_id:
                raise VptError(f"{source}: row {number}: video id {row['id']!r} is scored twice; score each "
                               "rollout once")
            by_id[row["id"]] = (number, row)
        indexed.append((source, set(table[0]) if table else set(), by_id))
    for column in columns:
        holders = [(source, by_id) for source, names, by_id in indexed if column in names]
        if not holders:
            raise VptError(f"no scores table has a column '{column}' for --reward; tables: "
                           f"{', '.join(source for source, _, _ in indexed)}")
        if len(holders) > 1:
            raise VptError(f"column '{column}' is in both {holders[0][0]} and {holders[1][0]}; name columns that "
                           "only one scores table has (e.g. the dimension columns)")
        located[column] = holders[0]
    rewards: dict[str, torch.Tensor] = {}
    for column, (source, by_id) in located.items():
        missing = [row["id"] for row in rows if row["id"] not in by_id]
        if missing:
            raise VptError(f"{source}: no score for rollout {missing[0]!r} ({len(missing)} of {len(rows)} rollouts "
                           f"of {rollouts_source} unscored); score every video of the rollouts")
        values = []
        for row in rows:
            number, scored = by_id[row["id"]]
            value = scored[column]
            if value is None or not math.isfinite(value):
                why = scored.get("error") or ("missing" if value is None else repr(value))
                raise VptError(f"{source}: row {number}: column '{column}' of rollout {row['id']!r} is not a finite "
                               f"number ({why}); score it again or drop the rollout's group")
            values.append(float(value))
        rewards[column] = torch.tensor(values, dtype=torch.float64)
    return rewards


def prior_column(rows: Sequence[dict], column: str, source: str) -> torch.Tensor:
    """BPGO's per-prompt prior ``[N]`` given with the data: ``column`` of the rollouts table (sample-rollouts carries
    the prompts table's extra columns), one finite value per rollout, the same for every rollout of a group."""
    if rows and column not in rows[0]:
        raise VptError(f"{source}: has no column '{column}' for --prior-column; add it to the prompts table and "
                       "sample again (sample-rollouts carries the prompts' extra columns)")
    by_group: dict[str, float] = {}
    values = []
    for number, row in enumerate(rows, start=1):
        value = row[column]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise VptError(f"{source}: row {number}: column '{column}' is {value!r}, not a finite number; give every "
                           "prompt its prior")
        if by_group.setdefault(row["group_id"], float(value)) != float(value):
            raise VptError(f"{source}: row {number}: column '{column}' differs within group {row['group_id']!r}; "
                           "the prior is one value per prompt")
        values.append(float(value))
    return torch.tensor(values, dtype=torch.float64)


def prior_means(table: Sequence[dict], columns: Sequence[str], source: str) -> dict[str, dict[str, float]]:
    """BPGO's prior from the reference policy's scores: prompt id (else prompt) -> column -> mean value."""
    sums: dict[str, dict[str, list[float]]] = {}
    for number, row in enumerate(table, start=1):
        key = row.get("prompt_id") or row.get("prompt")
        if key is None:
            raise VptError(f"{source}: row {number}: neither prompt_id nor prompt is set; the prior is per prompt")
        for column in columns:
            if column not in row:
                raise VptError(f"{source}: has no column '{column}' for the prior; score the reference samples "
                               "with the same reward models")
            value = row[column]
            if value is not None and math.isfinite(value):
                sums.setdefault(key, {}).setdefault(column, []).append(float(value))
    return {key: {column: sum(values) / len(values) for column, values in by_column.items()}
            for key, by_column in sums.items()}


@dataclass
class Advantages:
    """Per-rollout training signal of one iteration, float64 ``[N]``, and its metrics."""

    advantages: torch.Tensor
    auxiliary: torch.Tensor | None  # CRT's auxiliary advantages (weighted by crt_weight in the loss)
    metrics: dict[str, float] = field(default_factory=dict)


def compute_advantages(rewards: Mapping[str, torch.Tensor], group_ids: Sequence[str], prompt_ids: Sequence[str],
                       options: GrpoOptions, state: GrpoState,
                       reference_priors: Mapping[str, Mapping[str, float]] | None = None,
                       prior_source: str = "--prior", row_priors: torch.Tensor | None = None) -> Advantages:
    """Advantages of the rollouts from their rewards (columns ``name -> [N]``), and BPGO's running priors folded
    into ``state`` (the curriculum's too). ``reference_priors``: prompt id -> column -> mean reward of the
    reference policy; without it the running priors of earlier iterations serve (a prompt seen for the first time
    gets its own group mean, a neutral prior). ``row_priors`` ``[N]``: the prior of each rollout given with the data
    (``--prior-column``), in the units of the combined reward, in place of both."""
    columns = list(options.reward)
    names = sorted(set(group_ids))
    groups = torch.tensor([names.index(g) for g in group_ids])
    matrix = torch.stack([rewards[c] for c in columns], dim=1)  # [N, J]
    metrics: dict[str, float] = {}
    for j, column in enumerate(columns):
        metrics[f"reward/{column}/mean"] = float(matrix[:, j].mean())
        metrics[f"reward/{column}/std"] = float(matrix[:, j].std(unbiased=False))

    if options.self_paced == "softmax":
        weights = softmax_curriculum_weights(matrix, torch.tensor(options.thresholds, dtype=torch.float64),
                                             options.curriculum_beta)
    elif options.self_paced == "gated":
        curriculum = (GatedCurriculum.from_state_dict(state.curriculum) if state.curriculum is not None else
                      GatedCurriculum(thresholds=options.thresholds, sharpness=options.curriculum_sharpness,
                                      decay=options.curriculum_momentum))
        weights = curriculum.update(matrix.mean(dim=0))
        state.curriculum = curriculum.state_dict()
    else:
        weights = torch.tensor([options.reward[c] for c in columns], dtype=torch.float64)
    if options.self_paced != "off":
        metrics.update({f"curriculum/{c}": float(w) for c, w in zip(columns, weights)})
    reward = matrix @ weights
    metrics["reward/mean"] = float(reward.mean())
    metrics["reward/std"] = float(reward.std(unbiased=False))

    prior = None
    if options.bpgo:
        prior = (row_priors if row_priors is not None else
                 _priors(columns, matrix, groups, prompt_ids, state, reference_priors, prior_source) @ weights)
    if options.crt == "rerange":  # the release overwrites the rewards before the z-score
        reward = rerange_rewards(reward, prior, options.crt_a, options.crt_temperature, options.crt_clamp)
        metrics["bpgo/rerange_mean"] = float(reward.mean())

    normalise = {"std": options.std, "eps": options.advantage_eps, "clip": options.normalise_clip}
    if options.self_paced == "off" and len(columns) > 1 and options.crt != "rerange":
        by_column = {c: matrix[:, j] for j, c in enumerate(columns)}
        column_weights = dict(zip(columns, weights.tolist()))
        if options.aggregation == "min-norm":
            joint = joint_advantages(by_column, column_weights, groups, **normalise)
            advantages = joint.combined
            metrics.update({f"advantage/{c}/abs_mean": float(a.abs().mean()) for c, a in joint.per_reward.items()})
        else:
            advantages = aggregate_rewards(by_column, column_weights, groups, options.aggregation, **normalise)
    else:
        advantages = group_advantages(reward, groups, **normalise)
    auxiliary = None

    if options.bpgo:
        count = torch.zeros(len(names), dtype=torch.float64).index_add_(0, groups, torch.ones_like(reward))
        group_means = torch.zeros(len(names), dtype=torch.float64).index_add_(0, groups, reward) / count
        group_priors = torch.zeros(len(names), dtype=torch.float64).index_add_(0, groups, prior) / count
        if options.ras == "bayes-group":
            scale = bayes_group_ras_weights(reward, groups, prior, options.prior_std**2, *options.ras_weight_range,
                                            alpha=options.ras_alpha)
        elif options.ras == "bayesian":
            spread = reward.std(unbiased=False)
            scale = bayesian_ras_weights(group_means, count, group_priors, options.prior_std,
                                         spread if spread > 0 else torch.ones((), dtype=torch.float64))[groups]
        else:
            scale = ras_weights(group_means, group_priors, options.ras_alpha, options.ras_sharpness)[groups]
        if options.crt in ("replace", "auxiliary"):
            transformed = contrastive_rewards(normalise_with(reward, reward), normalise_with(prior, reward),
                                              options.crt_lambda, options.crt_max_exponent)
            crt_advantages = group_advantages(transformed, groups, **normalise)
            if options.crt == "replace":
                advantages = crt_advantages
            else:
                auxiliary = crt_advantages * scale
        advantages = advantages * scale
        metrics.update({"bpgo/weight_mean": float(scale.mean()), "bpgo/weight_min": float(scale.min()),
                        "bpgo/weight_max": float(scale.max()),
                        "bpgo/prior_gap": float((group_means - group_priors).mean())})
        _fold_running_priors(columns, matrix, prompt_ids, state, options.prior_momentum)
    if options.clip_after_transforms and not options.vipo:  # with ViPO the loss clips the dense advantages
        advantages = clip_advantages(advantages, options.advantage_clip)
        auxiliary = None if auxiliary is None else clip_advantages(auxiliary, options.advantage_clip)

    zero = torch.zeros(len(names), dtype=torch.float64).index_add_(0, groups, advantages.abs())
    metrics["advantage/abs_mean"] = float(advantages.abs().mean())
    metrics["groups/zero_advantage"] = float((zero == 0).sum())
    return Advantages(advantages=advantages, auxiliary=auxiliary, metrics=metrics)


def _priors(columns, matrix, groups, prompt_ids, state, reference_priors, prior_source) -> torch.Tensor:
    """Per-rollout prior of every column ``[N, J]``."""
    rows = []
    for i, prompt_id in enumerate(prompt_ids):
        if reference_priors is not None:
            known = reference_priors.get(prompt_id)
            if known is None or any(c not in known for c in columns):
                raise VptError(f"{prior_source}: no scored sample of prompt {prompt_id!r}; score the reference "
                               "policy's samples of every prompt in the rollouts")
            rows.append([known[c] for c in columns])
        elif prompt_id in state.priors:
            rows.append([state.priors[prompt_id][c] for c in columns])
        else:
            members = groups == groups[i]
            rows.append(matrix[members].mean(dim=0).tolist())
    return torch.tensor(rows, dtype=torch.float64)


def _fold_running_priors(columns, matrix, prompt_ids, state: GrpoState, momentum: float) -> None:
    by_prompt: dict[str, list[int]] = {}
    for i, prompt_id in enumerate(prompt_ids):
        by_prompt.setdefault(prompt_id, []).append(i)
    for prompt_id, members in by_prompt.items():
        means = matrix[members].mean(dim=0).tolist()
        old = state.priors.get(prompt_id)
        state.priors[prompt_id] = {c: m if old is None else momentum * old[c] + (1 - momentum) * m
                                   for c, m in zip(columns, means)}


# -------------------------------------------------------------------------------- data: micro-batches of recorded steps
Block = tuple[tuple[int, ...], int]
"""(row indices of one sampling batch of a group, recorded-step position k): one micro-batch."""


def trained_blocks(rows: Sequence[dict], fraction: float, seed: int, iteration: int) -> list[Block]:
    """The micro-batches of an iteration: every recorded step of every sampling batch (the samples of a group that
    went through the transformer together, ``sampling_batch`` of the rollouts table), so the recomputed log-probs of
    the sampling policy equal the stored ones bit for bit (a different batch composition changes the float
    rounding). With ``fraction`` < 1 each group trains a seeded subset of ``max(1, round(fraction·K))`` of its K
    recorded steps, drawn anew every iteration."""
    from vpt.rollouts.sampling import derived_seed

    groups: dict[str, list[int]] = {}
    for r, row in enumerate(rows):
        groups.setdefault(row["group_id"], []).append(r)
    blocks: list[Block] = []
    for group_id, members in groups.items():
        members = sorted(members, key=lambda r: rows[r]["sample_index"])
        first = rows[members[0]]
        count = len(first["recorded_steps"])
        keep = count if fraction >= 1 else max(1, round(fraction * count))
        if keep == count:
            chosen = list(range(count))
        else:
            generator = torch.Generator().manual_seed(derived_seed(seed, iteration, group_id, "timesteps"))
            chosen = sorted(torch.randperm(count, generator=generator)[:keep].tolist())
        size = first.get("sampling_batch") or len(members)
        chunks = [tuple(members[i:i + size]) for i in range(0, len(members), size)]
        blocks.extend((chunk, k) for k in chosen for chunk in chunks)
    return blocks


@dataclass
class RolloutBatch(TensorBatch):
    """b samples of one sampling batch at one recorded SDE step (or several such blocks, concatenated)."""

    x: torch.Tensor  # [b, C, F, h, w] the state the step started at
    x_next: torch.Tensor  # [b, C, F, h, w] the state the sampler moved to
    sigma: torch.Tensor  # [b] σ of the step
    sigma_next: torch.Tensor  # [b] σ after it
    first_next: torch.Tensor  # [b] σ after the schedule's first step (flow_grpo's noise scale)
    old_log_prob: torch.Tensor  # [b] the sampling policy's log-prob of x_next
    advantage: torch.Tensor  # [b]
    embeds: torch.Tensor  # [b, L, D] prompt embeddings
    negative: torch.Tensor | None = None  # [b, L, D] negative-prompt embeddings, with guidance
    auxiliary: torch.Tensor | None = None  # [b] CRT's auxiliary advantages (--crt auxiliary)
    advantage_map: torch.Tensor | None = None  # [b, F, h, w] ViPO's map
    old_log_prob_map: torch.Tensor | None = None  # [b, F, h, w] ViPO: the sampling policy's per-position log-probs
    step_weight: torch.Tensor | None = None  # [b] TempFlow's noise weight of the step (--timestep-weight tempflow)
    old_mean: torch.Tensor | None = None  # [b, C, F, h, w] the sampling policy's step mean (--ratio-norm, DPPO)

    @classmethod
    def concatenate(cls, blocks: Sequence["RolloutBatch"]) -> "RolloutBatch":
        """Blocks to one micro-batch (one block keeps the sampling batch as it was)."""
        if len(blocks) == 1:
            return blocks[0]
        return cls(**{field.name: None if getattr(blocks[0], field.name) is None else
                      torch.cat([getattr(block, field.name) for block in blocks]) for field in fields(cls)})


class RolloutSteps(torch.utils.data.Dataset):
    """One item per :data:`Block`: for its samples ``[b, ...]``, the states around the recorded step, the sigmas,
    the stored log-probs, the text embeddings and the advantage(s) (and ViPO map)."""

    def __init__(self, rollouts, blocks: Sequence[Block], advantages: torch.Tensor,
                 auxiliary: torch.Tensor | None = None, maps: Sequence[torch.Tensor] | None = None,
                 step_weights: bool = False, old_means: bool = False):
        self.rollouts, self.blocks, self.step_weights = rollouts, list(blocks), step_weights
        self.old_means = old_means
        self.advantages = advantages.float()
        self.auxiliary = None if auxiliary is None else auxiliary.float()
        self.maps = maps
        self.old_maps: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def item_weights(self) -> list[int]:
        """The harness weighs each block by its samples: a step's loss is the mean over its (rollout, step)
        pairs, however the blocks fall to processes."""
        return [len(members) for members, _ in self.blocks]

    @property
    def pairs(self) -> int:
        """(rollout, step) pairs over all blocks."""
        return sum(len(members) for members, _ in self.blocks)

    def _sample(self, r: int, k: int) -> dict[str, torch.Tensor]:
        row = self.rollouts.rows[r]
        step = row["recorded_steps"][k]
        positions = state_indices_of(row["recorded_steps"])
        states = self.rollouts.states(row)
        sigmas = torch.tensor(row["sigmas"], dtype=torch.float32)
        embeds, negative = self.rollouts.embeddings(row)
        item = {"x": states[positions.index(step)], "x_next": states[positions.index(step + 1)],
                "sigma": sigmas[step], "sigma_next": sigmas[step + 1], "first_next": sigmas[1],
                "old_log_prob": torch.tensor(row["log_probs"][k], dtype=torch.float32),
                "advantage": self.advantages[r], "embeds": embeds[0]}
        if negative is not None:
            item["negative"] = negative[0]
        if self.auxiliary is not None:
            item["auxiliary"] = self.auxiliary[r]
        if self.maps is not None:
            item["advantage_map"] = self.maps[r]
        if self.step_weights:
            item["step_weight"] = noise_step_weights(sigmas, row["noise_level"], sde_form_of(row))[step]
        if self.old_means:
            item["old_mean"] = self.rollouts.means(row)[k]
        return item

    def __getitem__(self, index: int) -> "RolloutBatch":
        members, k = self.blocks[index]
        block = RolloutBatch.collate([self._sample(r, k) for r in members])
        if self.old_maps is not None:
            block.old_log_prob_map = self.old_maps[index]
        return block


def vipo_maps(rollouts, dinov2, blur_sigma: float, construction: VipoMapOptions = VipoMapOptions()
              ) -> list[torch.Tensor]:
    """ViPO's advantage map ``[F, h, w]`` (latent size) of every rollout, from DINOv2 features of its video, built
    as ``construction`` says (vpt's map or the TeleBoost release's choices)."""
    from vpt.algo.vipo import crop_to_grid, patch_grid
    from vpt.io.video import read_frames
    from vpt.models.dinov2 import dinov2_patch_features

    maps = []
    for row in rollouts.rows:
        latent = rollouts.states(row).shape[-3:]
        frames = read_frames(rollouts.directory / row["path"])
        grid = None
        if construction.grid_rounding == "floor":  # the release's patch convolution drops the remainder
            grid = patch_grid(frames.shape[1], frames.shape[2], dinov2.config.patch_size, "floor")
            frames = crop_to_grid(frames, grid, dinov2.config.patch_size)
        features = dinov2_patch_features(dinov2, frames, grid=grid)
        maps.append(advantage_map(features, tuple(latent), blur_sigma=blur_sigma,
                                  **construction.map_kwargs()).float())
    return maps


# ------------------------------------------------------------------------------------------------ the loss
class GrpoLoss:
    """The harness's ``loss_fn``: clipped surrogate (+ CRT auxiliary term, + β·KL to the adapter-disabled
    reference) of one micro-batch of :class:`RolloutSteps` items. Tracks the extreme ratios of the iteration."""

    def __init__(self, options: GrpoOptions, noise_level: float, guidance: float, dtype: torch.dtype,
                 sde_form: str = "flow-grpo"):
        self.options, self.noise_level, self.guidance, self.dtype = options, float(noise_level), guidance, dtype
        self.sde_form = sde_form
        self.ratio_min, self.ratio_max = math.inf, -math.inf

    def step_mean_std(self, model, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, C, F, h, w]`` and std ``[B, 1, 1, 1, 1]`` of the recorded step under ``model``."""
        x = batch.x
        per_sample = (-1,) + (1,) * (x.dim() - 1)
        sigma, sigma_next, first_next = (value.reshape(per_sample)
                                         for value in (batch.sigma, batch.sigma_next, batch.first_next))
        velocity = WanVelocity(model, batch.embeds, batch.negative, self.guidance, self.dtype)(x, 0, batch.sigma)
        return sde_step_mean_std(x, velocity.float(), sigma, sigma_next, self.noise_level, first_next,
                                 form=self.sde_form)

    def step_loss_weight(self, batch: RolloutBatch) -> torch.Tensor:
        """``[B]``: TempFlow's noise weight of each sample's step (``--timestep-weight tempflow``) times GRPO-Guard's
        gradient reweight ``δ`` (``--grad-reweight``); ones without either."""
        weight = torch.ones_like(batch.advantage)
        if batch.step_weight is not None:
            weight = weight * batch.step_weight
        if self.options.grad_reweight != "none":
            weight = weight * grad_reweight(self.options.grad_reweight, batch.sigma - batch.sigma_next,
                                            eta=self.noise_level, t=batch.sigma)
        return weight

    def log_prob_maps(self, model, batch: RolloutBatch) -> torch.Tensor:
        """Per-latent-position log-probs ``[B, F, h, w]`` of the recorded steps (ViPO's dense ratio)."""
        mean, std = self.step_mean_std(model, batch)
        return per_position_log_prob(batch.x_next, mean, std)

    def __call__(self, model, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        options = self.options
        mean, std = self.step_mean_std(model, batch)
        # a positive per-sample weight of the clipped loss is the same weight on its advantage
        weight = self.step_loss_weight(batch)
        if options.vipo:
            log_prob = per_position_log_prob(batch.x_next, mean, std)
            old = batch.old_log_prob_map
            scale = batch.advantage_map * weight.reshape(-1, 1, 1, 1)
            advantage = batch.advantage.reshape(-1, 1, 1, 1) * scale
            auxiliary = None if batch.auxiliary is None else batch.auxiliary.reshape(-1, 1, 1, 1) * scale
            if options.clip_after_transforms:  # the release clips the dense advantage, element by element
                advantage = clip_advantages(advantage, options.advantage_clip)
                auxiliary = None if auxiliary is None else clip_advantages(auxiliary, options.advantage_clip)
        else:
            log_prob = gaussian_log_prob(batch.x_next, mean, std)
            old = batch.old_log_prob
            advantage = batch.advantage * weight
            auxiliary = None if batch.auxiliary is None else batch.auxiliary * weight
        if options.ratio_norm:  # GRPO-Guard: the ratio with the mean shift's bias taken out
            log_prob = normalised_log_ratio(log_prob - old, mean, batch.old_mean, std.reshape(-1))
            old = torch.zeros_like(log_prob)
        if options.trust_region == "kl":
            kl = step_kl(mean.detach(), batch.old_mean, std.reshape(-1))
            loss, region = kl_trust_region_loss(log_prob, old, advantage, kl, options.kl_max)
            ratio = torch.exp(log_prob - old).detach()
            stats = SurrogateStats(clip_fraction=region.masked_fraction, ratio_mean=region.ratio_mean,
                                   ratio_min=float(ratio.min()), ratio_max=float(ratio.max()))
        else:
            loss, stats = clipped_surrogate(log_prob, old, advantage, options.clip_range)
        metrics: dict[str, Any] = {"policy_loss": loss.detach(), "clip_fraction": stats.clip_fraction,
                                   "ratio_mean": stats.ratio_mean}
        if options.trust_region == "kl":
            metrics.update({"trust_region/masked_fraction": region.masked_fraction, "trust_region/kl": region.kl_mean})
        if options.timestep_weight != "none" or options.grad_reweight != "none":
            metrics["step_weight_mean"] = float(weight.mean())
        if auxiliary is not None:
            crt_loss, _ = clipped_surrogate(log_prob, old, auxiliary, options.clip_range)
            loss = loss + options.crt_weight * crt_loss
            metrics["crt_loss"] = crt_loss.detach()
        if options.kl_beta > 0:
            policy = unwrapped(model)
            with torch.no_grad(), policy.disable_adapter():
                reference_mean, _ = self.step_mean_std(policy, batch)
            kl = kl_to_reference(mean, reference_mean, std.reshape(-1)).mean()
            loss = loss + options.kl_beta * kl
            metrics["kl"] = kl.detach()
        self.ratio_min, self.ratio_max = min(self.ratio_min, stats.ratio_min), max(self.ratio_max, stats.ratio_max)
        return loss, metrics


def old_log_prob_maps(loss: GrpoLoss, policy: torch.nn.Module, dataset: RolloutSteps) -> list[torch.Tensor]:
    """The sampling policy's per-position log-probs ``[b, F, h, w]`` of every block (the policy at this iteration's
    start, which sampled the rollouts: the id check made sure of that); the rollouts store only their means."""
    with torch.no_grad():
        return [loss.log_prob_maps(policy, dataset[index]).clone() for index in range(len(dataset))]


# ------------------------------------------------------------------------------------------------ train and publish
@dataclass
class GrpoResult:
    """What :func:`grpo_step` wrote and measured."""

    checkpoint: Path
    iteration: int
    step: int
    items: int
    metrics: dict[str, float]
    ratio_range: tuple[float, float]


def grpo_step(inputs: StepInputs, options: GrpoOptions, out: str | Path, config, steps_per_iteration: int = 1,
              quiet: bool = False, resume: str | None = None, drift_probes: int = 2) -> GrpoResult:
    """Run one iteration and publish the next policy checkpoint ``out`` (it must not exist) through the harness's
    run-and-publish path (:func:`vpt.train.run.train_stage`: checkpoints in ``OUT.run/``, ``resume`` continues an
    interrupted iteration from one of them).

    ``config``: the harness's :class:`~vpt.train.TrainConfig` for the optimizer, clipping, precision and
    ``save_every``; its data seed, micro-batches (one :data:`Block` each) and blocks per step are set here, so that
    ``steps_per_iteration`` optimizer steps consume every block once, the same steps on any number of processes.
    ``inputs.state`` is updated and saved with every checkpoint. The judges' scores of the rollouts
    (``inputs.judged``) and, after training, the drift from the adapter-disabled reference on the first
    ``drift_probes`` rollouts' final latents join the iteration's figures (:mod:`vpt.stages.guard`).
    """
    from vpt.rollouts.sampling import derived_seed
    from vpt.stages.guard import GuardOptions, adapter_disabled, drift_metrics

    GuardOptions(drift_probes=drift_probes)  # checks it

    if steps_per_iteration < 1:
        raise VptError(f"--steps-per-iteration must be at least 1, got {steps_per_iteration}")
    out = Path(out)
    rollouts, state, policy = inputs.rollouts, inputs.state, inputs.policy
    rows = rollouts.rows
    state.iteration += 1
    advantages = compute_advantages(inputs.rewards, [row["group_id"] for row in rows],
                                    [row["prompt_id"] for row in rows], options, state, inputs.reference_priors,
                                    inputs.prior_source, inputs.row_priors)
    blocks = trained_blocks(rows, options.timestep_fraction, options.seed, state.iteration)
    maps = vipo_maps(rollouts, inputs.dinov2, options.vipo_blur, options.vipo_map) if options.vipo else None
    dataset = RolloutSteps(rollouts, blocks, advantages.advantages, advantages.auxiliary, maps,
                           step_weights=options.timestep_weight == "tempflow", old_means=options.needs_old_means)
    loss = GrpoLoss(options, rows[0]["noise_level"], rows[0]["guidance"], wan_dtype(policy), sde_form_of(rows[0]))
    if options.vipo:
        dataset.old_maps = old_log_prob_maps(loss, policy, dataset)

    config = config.replace(seed=derived_seed(options.seed, state.iteration) % 2**31, batch_size=1,
                            step_examples=math.ceil(len(blocks) / steps_per_iteration), epochs=1,
                            max_steps=None, lr_schedule="constant", log_every=1, eval_every=0, keep_last=1,
                            shuffle=True)
    record = {**inputs.policy_info, "stage": "grpo", "iteration": state.iteration, "grpo": _jsonable(options)}

    probes = drift_probes_of(rollouts, drift_probes, quiet)

    def measured() -> dict[str, float]:
        drift = drift_metrics(policy, lambda: adapter_disabled(policy), probes, wan_dtype(policy))
        return {**advantages.metrics, "items": float(dataset.pairs), "ratio_min": loss.ratio_min,
                "ratio_max": loss.ratio_max, **inputs.judged, **drift}

    task = StageTask(dataset, loss, collate_fn=RolloutBatch.concatenate, extra_state=state,
                     samples=tracked_rollouts(rollouts, inputs.rewards))
    result = train_stage(policy, task, config, out, record, measured, resume=resume, warm_start=inputs.warm_start,
                         iteration=state.iteration, quiet=quiet)
    return GrpoResult(checkpoint=out, iteration=state.iteration, step=result.step, items=dataset.pairs,
                      metrics=result.metrics, ratio_range=(loss.ratio_min, loss.ratio_max))


def drift_probes_of(rollouts, count: int, quiet: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(final latent ``[C, F, h, w]``, prompt embeddings ``[1, L, D]``) of the first ``count`` rollouts; none, with
    a note on stderr, for rollouts written before final latents were recorded."""
    rows = rollouts.rows[:count]
    if any(row.get("final_latents_key") is None for row in rows):
        if not quiet:
            from vpt.distributed import current_processes

            if current_processes().is_main:
                from rich.console import Console

                Console(stderr=True, soft_wrap=True).print(
                    f"note: {rollouts.directory} records no final latents (sampled by an older vpt): no drift/* "
                    "figures this iteration", highlight=False, markup=False)
        return []
    return [(rollouts.final_latent(row), rollouts.embeddings(row)[0]) for row in rows]


def tracked_rollouts(rollouts, rewards: Mapping[str, torch.Tensor]) -> list[tuple[str, Path]]:
    """Up to four of the iteration's rollout videos for the experiment trackers, captioned with the prompt and the
    reward columns."""
    from vpt.stages.guard import TRACKED_SAMPLES

    tracked = []
    for index, row in enumerate(rollouts.rows[:TRACKED_SAMPLES]):
        values = ", ".join(f"{column} {float(reward[index]):.4g}" for column, reward in rewards.items())
        tracked.append((f"{row['prompt']} · {values}", rollouts.directory / row["path"]))
    return tracked


def _jsonable(options: GrpoOptions) -> dict:
    data = asdict(options)
    data["curriculum_thresholds"] = list(options.curriculum_thresholds)
    return data
