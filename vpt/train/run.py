"""The one run-and-publish path of every policy stage (``sft``, ``dpo``, ``grpo-step``): the harness trains in
``OUT.run/`` (checkpoints to resume from), then the final policy checkpoint ``OUT`` is published in the layout of
:mod:`vpt.train.policy` and the run directory removed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from vpt.errors import VptError

RUN_SUFFIX = ".run"
STAGE_FILE = "stage.json"


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
    from vpt.train.checkpoint import check_resume_source, latest_checkpoint

    check_new_directory(out, "--out")
    run = run_directory(out)
    if run.exists() and not owns(run):
        raise VptError(f"{run}: exists and vpt did not create it (the checkpoints of --out {out} go there); move it "
                       "away or choose another --out")
    if resume is None and latest_checkpoint(run) is not None:
        raise VptError(f"{run}: holds an unfinished run of {out}; continue it with --resume {run}, or remove it")
    if resume is not None:
        check_resume_source(resume, "the OUT.run of an interrupted run, one of its checkpoint-N directories, or a "
                                    "finished checkpoint of this stage")
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


@dataclass
class StageTask:
    """What a stage hands the harness: its dataset, ``loss_fn`` (see :class:`~vpt.train.Trainer`) and optional
    ``collate_fn``; ``own_backward`` when the loss back-propagates itself; ``extra_state`` (``state_dict`` /
    ``load_state_dict``) saved with every checkpoint; ``samples``: a few of the stage's sample videos as (caption,
    mp4 path), or a function giving them once training and the summary are done, logged to the experiment trackers
    (``--report-to``) before the run directory is removed."""

    dataset: torch.utils.data.Dataset
    loss_fn: Callable
    collate_fn: Callable | None = None
    own_backward: bool = False
    extra_state: Any = None
    samples: Sequence[tuple[str, Path]] | Callable[[], Sequence[tuple[str, Path]]] = ()


def train_stage(policy: torch.nn.Module, task: StageTask, config, out: Path, record: dict,
                summary: Mapping[str, float] | Callable[[], Mapping[str, float]], resume: str | None = None,
                warm_start: Path | None = None, iteration: int = 1, quiet: bool = False) -> StageResult:
    """Train ``policy`` on ``task`` with the harness in ``OUT.run`` and publish the final policy checkpoint ``out``.

    ``record`` (generator, parent, stage, options) becomes ``policy.json``; ``summary`` (example counts, or a
    function giving what the task measured once training ends) heads ``metrics.parquet``, under ``iteration``.
    ``resume``: the run directory of an interrupted run, one of its checkpoints, or a finished policy checkpoint of
    the same stage to train on from (bit-identical to not stopping). ``warm_start``: a checkpoint of the previous
    on-policy iteration whose optimizer, schedule and RNG state carry over (ignored when resuming, whose checkpoint
    already holds them).
    """
    from vpt.distributed import current_processes
    from vpt.io.atomic import claim_directory, remove_owned
    from vpt.train.trainer import Trainer
    from vpt.train.checkpoint import latest_checkpoint, load_peft, read_metrics
    from vpt.train.policy import METRICS_TABLE, metrics_rows, publish_policy, save_policy
    from vpt.train.trackers import LOGS_DIRECTORY

    out = Path(out)
    run = check_output(out, resume)
    if resume is not None:
        _check_same_parent(Path(resume), record)
    processes = current_processes()
    try:  # a stop that comes as soon as the run directory exists must not leave it behind either
        if processes.is_main:
            claim_directory(run, "--out")
            (run / STAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        processes.wait()
        trainer = Trainer(policy, config.replace(output_dir=str(run)), dataset=task.dataset, loss_fn=task.loss_fn,
                          collate_fn=task.collate_fn, save_model=save_policy, load_model=load_peft,
                          own_backward=task.own_backward, extra_state=task.extra_state, quiet=quiet)
        result = trainer.train(resume=resume if resume is not None else False,
                               warm_start=warm_start if resume is None else None, keep_tracking=True)
    except BaseException:
        if processes.is_main and latest_checkpoint(run) is None:  # nothing to resume: leave no run behind
            remove_owned(run)
        raise
    try:
        measured = dict(summary() if callable(summary) else summary)
        trainer.tracking.log(measured, result.step)
        trainer.tracking.videos(task.samples() if callable(task.samples) else task.samples, result.step)
    finally:
        trainer.tracking.end()
    steps = read_metrics(result.metrics_file) if processes.is_main else []
    if processes.is_main:
        table = metrics_rows(iteration, measured, steps)
        if result.resumed_from is not None and (result.resumed_from / METRICS_TABLE).is_file():
            table = _earlier_steps(result.resumed_from / METRICS_TABLE, steps) + table
        publish_policy(result.checkpoint, out, {**record, "step": result.step}, table,
                       logs=run / LOGS_DIRECTORY)
        remove_owned(run)
    processes.wait()
    last = {k: v for k, v in (steps[-1] if steps else {}).items() if k not in ("step", "epoch")}
    return StageResult(checkpoint=out, step=result.step, metrics={**measured, **last})


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


