"""The training configuration: one dataclass, validated on construction, written as JSON into every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpt.errors import VptError
from vpt.io.jsonfile import read_json_object
from vpt.train.trackers import REPORT_TO

SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISION = ("no", "bf16")

# Fields that fix the data order / the meaning of a saved data position: a resumed run must use the same values.
RESUME_LOCKED = ("seed", "shuffle")  # and the examples per optimizer step, which the trainer checks
# The command-line option of every field a training command sets, so a message names what the user typed.
OPTION_OF = {"learning_rate": "--lr", "batch_size": "--batch-size", "gradient_accumulation_steps": "--grad-accum",
             "max_steps": "--max-steps", "epochs": "--epochs", "warmup_steps": "--warmup-steps",
             "lr_schedule": "--lr-schedule", "weight_decay": "--weight-decay", "max_grad_norm": "--max-grad-norm",
             "mixed_precision": "--mixed-precision", "save_every": "--save-every", "log_every": "--log-every",
             "eval_every": "--eval-every", "seed": "--seed", "context_parallel": "--context-parallel",
             "report_to": "--report-to"}


@dataclass
class TrainConfig:
    """Everything the harness needs besides the task.

    ``batch_size`` is examples per micro-batch *per process*; one optimizer step sees ``batch_size x
    gradient_accumulation_steps x processes`` examples, or ``step_examples`` when set (a stage that fixes the step
    itself, whatever the processes; see :mod:`vpt.train.plan` for how a step's examples are dealt out, exactly the
    same gradient on any number of processes); with ``context_parallel`` N, groups of N processes share each
    micro-batch (each holding 1/N of its tokens), so "processes" counts groups. ``max_steps`` counts optimizer
    steps; with ``epochs`` too, training stops at whichever comes first (at least one is required).
    ``param_group_lrs`` maps glob patterns over parameter names (as ``model.named_parameters()`` gives them, e.g.
    ``"*.lora_*"``) to a learning rate; the first matching pattern wins, the rest use ``learning_rate``.
    ``no_decay`` lists glob patterns of parameters without weight decay (e.g. ``"*.bias"``). ``eval_every`` /
    ``save_every`` of ``None`` or 0 mean "only at the end"; ``keep_last`` of ``None`` or 0 keeps every checkpoint;
    ``max_grad_norm`` of ``None`` or 0 turns clipping off (the gradient norm is still measured and logged).
    ``report_to``: an experiment tracker that also gets every logged row (:mod:`vpt.train.trackers`).
    """

    output_dir: str = "runs/train"
    seed: int = 0
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    param_group_lrs: dict[str, float] = field(default_factory=dict)
    no_decay: tuple[str, ...] = ()
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    step_examples: int | None = None
    context_parallel: int = 1
    max_steps: int | None = None
    epochs: int | None = None
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    keep_last: int | None = 3
    shuffle: bool = True
    num_workers: int = 0
    find_unused_parameters: bool = False
    report_to: str = "none"

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives lists
        self.no_decay = tuple(self.no_decay)
        self.param_group_lrs = {str(k): float(v) for k, v in dict(self.param_group_lrs).items()}
        self.output_dir = str(self.output_dir)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`VptError` naming the first invalid field and the accepted values."""

        def bad(name: str, expected: str) -> VptError:
            if name in OPTION_OF:
                return VptError(f"{OPTION_OF[name]} {getattr(self, name)!r} is invalid; expected {expected}")
            return VptError(f"training config: {name}={getattr(self, name)!r} is invalid; expected {expected}")

        if self.max_steps is None and self.epochs is None:
            raise VptError("neither --max-steps nor --epochs is set; set at least one of them")
        for name in ("max_steps", "epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(name, "a positive integer")
        if self.step_examples is not None and (not isinstance(self.step_examples, int) or self.step_examples < 1):
            raise bad("step_examples", "a positive integer (or None)")
        for name in ("batch_size", "gradient_accumulation_steps", "log_every", "context_parallel"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in ("eval_every", "save_every", "keep_last"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise bad(name, "an integer >= 0 (0: only at the end)" if name != "keep_last" else
                          "an integer >= 0 (0: keep all)")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise bad("warmup_steps", "an integer >= 0")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise bad("num_workers", "a non-negative integer")
        if self.lr_schedule not in SCHEDULES:
            raise bad("lr_schedule", " | ".join(SCHEDULES))
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", " | ".join(MIXED_PRECISION))
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise bad("learning_rate", "a finite number > 0")
        if any(not (lr >= 0 and math.isfinite(lr)) for lr in self.param_group_lrs.values()):
            raise bad("param_group_lrs", "non-negative learning rates")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise bad("weight_decay", "a finite number >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "a number in [0, 1]")
        if self.report_to not in REPORT_TO:
            raise bad("report_to", " | ".join(REPORT_TO))
        if self.max_grad_norm is not None and not self.max_grad_norm >= 0:
            raise bad("max_grad_norm", "a number >= 0 (0: no clipping)")

    @property
    def clipping(self) -> bool:
        return bool(self.max_grad_norm)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        data["no_decay"] = list(self.no_decay)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VptError(f"training config: unknown field(s) {', '.join(unknown)}; known fields: "
                           f"{', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_json_object(path, "the training config", "pass a JSON object file"))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
