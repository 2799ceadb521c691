"""The training loop: accelerate, accumulation, clipping, logging, evaluation, checkpoints and exact resume.

See :mod:`vpt.train` for how a training command plugs in.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset, Sampler

from vpt.distributed import current_processes, unwrapped
from vpt.errors import VptError
from vpt.io.atomic import atomic_directory, check_new_directory, claim_directory
from vpt.io.tensors import load_torch
import vpt.train.checkpoint as ckpt
from vpt.train.config import RESUME_LOCKED, TrainConfig
from vpt.train.lora import is_peft_model
from vpt.train.optim import ROWS_ATTRIBUTE, LrLambda, build_optimizer, build_scheduler
from vpt.train.plan import StepPlan
from vpt.train.trackers import LOGS_DIRECTORY, Tracking

WALL_CLOCK_METRICS = ("examples_per_s",)  # logged rows that measure the machine rather than the training

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, Mapping[str, Any]]"]
EvalFn = Callable[[torch.nn.Module], Mapping[str, Any]]
SaveHook = Callable[[torch.nn.Module, Path, "dict[str, torch.Tensor]"], None]  # model, directory, trainable weights
LoadHook = Callable[[torch.nn.Module, Path], None]


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


class EpochSampler(Sampler[int]):
    """Dataset indices in an order fixed by ``(seed, epoch)`` alone: the same on every process and in every run,
    without consuming a global RNG when an epoch starts (:class:`vpt.train.plan.StepPlan` deals it out)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = int(size), int(seed), bool(shuffle), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> list[int]:
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return list(range(self.size))
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0])
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.size


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` returns."""

    step: int                      # optimizer steps done (in total, across resumes)
    epoch: float                   # epochs done (fractional)
    metrics: dict[str, Any]        # the last row written to metrics.jsonl (train + eval/ metrics)
    checkpoint: Path | None        # the newest checkpoint (the final one)
    output_dir: Path
    metrics_file: Path
    resumed_from: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train, eval, save


def finish_distributed(exit_code: int = 0) -> None:
    """End a command run under ``accelerate launch`` with several processes: wait for the others, flush, exit hard.

    Multi-process CPU (gloo) runs sometimes abort in interpreter teardown after finishing, which would turn a good
    run into a failed one; call this as the last thing in a command's entry point. With one process it returns.
    """
    processes = current_processes()
    processes.wait()
    processes.leave(exit_code)


def check_run_directory(output_dir: str | os.PathLike, resume: bool | str | os.PathLike | None) -> None:
    """The harness's output directory must be new or one vpt created (:func:`vpt.io.atomic.claim_directory`), and
    a run already in it is continued only when ``resume`` asks for it. Cheap: commands call it before their long
    preparation."""
    out = check_new_directory(output_dir, "--out", owned_ok=True)
    if (resume is False or resume is None) and (ckpt.list_checkpoints(out) or (out / ckpt.METRICS_FILE).exists()):
        raise VptError(f"{out}: already holds a training run (checkpoints or {ckpt.METRICS_FILE}); resume it "
                       "(--resume), or choose a new output directory")


def _make_accelerator(config: TrainConfig):
    """The run's accelerator; its trackers (``config.report_to``) log into ``OUTPUT_DIR/logs``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # AcceleratorState / GradientState are process-wide singletons that refuse a second configuration; one harness
    # run owns them (the process group in PartialState is kept).
    AcceleratorState._reset_state()
    GradientState._reset_state()
    tracking = config.report_to != "none"
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        log_with=config.report_to if tracking else None,
        project_dir=str(Path(config.output_dir) / LOGS_DIRECTORY) if tracking else None,
    )


class _Reporter:
    """Progress on stderr: a rich progress bar on a terminal, one line per logged row otherwise; nothing when quiet."""

    def __init__(self, enabled: bool, total: int, start: int):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total = total
        self.enabled = enabled
        self.progress = None
        if enabled and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
            self.task = self.progress.add_task("train", total=total, completed=start, info="")
            self.progress.start()

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def step(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def row(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        shown = [f"{key} {_fmt(value)}" for key, value in row.items() if key not in ("step", "epoch", "time")]
        if self.progress is not None:
            self.progress.update(self.task, info="  ".join(shown[:4]))
        else:
            self.note(f"step {row['step']}/{self.total}  " + "  ".join(shown))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _scalar(value: Any, name: str) -> torch.Tensor:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise TypeError(f"metric {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(())
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    raise TypeError(f"metric {name!r} must be a number or a scalar tensor, got {type(value).__name__}")


class Trainer:
    """Train ``model`` on a task given as callables; see :mod:`vpt.train` for the contract.

    ``loss_fn(model, batch) -> (loss, metrics)``: the mean loss of one micro-batch (a scalar tensor with grad) and
    scalar metrics to average into the log. ``model`` is the prepared model (DDP-wrapped or FSDP2-sharded, launched):
    call it (``model(...)``) rather than its methods so gradients synchronise. ``dataset`` is map-style;
    ``collate_fn`` builds a batch from a list of items (torch's default when None). ``eval_fn(model) -> metrics``
    runs on every process (in eval mode, under no_grad, without disturbing the training RNG) every ``eval_every``
    steps and at the end; the main process's metrics are logged with an ``eval/`` prefix. ``save_model(model,
    directory, weights)`` / ``load_model(model, directory)`` write / restore the trainable weights of a checkpoint
    (``weights``: the full trainable tensors by name, gathered from every process when the model is sharded;
    defaults: :func:`~vpt.train.checkpoint.save_peft` / ``load_peft`` for peft models,
    :func:`~vpt.train.checkpoint.save_trainable` / ``load_trainable`` otherwise); a ``save_model`` without
    ``load_model`` is an export, and the harness then also writes its own ``trainable.safetensors`` to resume from.
    ``extra_state`` (``state_dict()`` / ``load_state_dict()``, plain types and tensors) is saved and restored with
    each checkpoint, e.g. a curriculum.

    ``own_backward``: the task back-propagates itself, one or more times per micro-batch (gradient-decoupled DPO runs
    one backward pass per branch): ``loss_fn(model, batch, backward)`` calls ``backward(tensor)`` (the
    accelerator's, scaled for the micro-batch's share of the step) and returns the detached loss for the log. A
    dataset with a ``set_epoch(epoch)`` method is told each epoch before its items are read (per-epoch noise drawn
    from item keys); one with ``item_weights()`` (one positive number per item) weighs its items by them in each
    step's mean (e.g. GRPO's blocks by their samples). How a step's examples are dealt to processes:
    :mod:`vpt.train.plan`.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, *, dataset: Dataset, loss_fn: LossFn,
                 collate_fn: Callable[[list], Any] | None = None, eval_fn: EvalFn | None = None,
                 save_model: SaveHook | None = None, load_model: LoadHook | None = None,
                 extra_state: Stateful | None = None, own_backward: bool = False, quiet: bool = False):
        if not isinstance(config, TrainConfig):
            raise TypeError("config must be a TrainConfig")
        self.config = config
        self.model = model
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.collate_fn = collate_fn
        self.eval_fn = eval_fn
        self.extra_state = extra_state
        self.own_backward = own_backward
        self.quiet = quiet
        peft = is_peft_model(model)
        self.export_model = save_model
        if save_model is None:
            self.save_model, self.load_model = (ckpt.save_peft, ckpt.load_peft) if peft else \
                (ckpt.save_trainable, ckpt.load_trainable)
        elif load_model is None:
            self.save_model, self.load_model = ckpt.save_trainable, ckpt.load_trainable
        else:
            self.save_model, self.load_model, self.export_model = save_model, load_model, None
        self.accelerator = _make_accelerator(config)
        self.tracking = Tracking(self.accelerator, config.report_to, Path(config.output_dir))
        self.optimizer = None
        self.scheduler = None
        self._trained = False
        self.output_dir = Path(config.output_dir)
        self.metrics_file = self.output_dir / ckpt.METRICS_FILE

    # ------------------------------------------------------------------------------------------------ resume
    def _resolve_resume(self, resume: bool | str | os.PathLike) -> Path | None:
        out = self.output_dir
        check_run_directory(out, resume)
        if resume is False or resume is None:
            return None
        if resume is True:
            return ckpt.latest_checkpoint(out)
        path = Path(resume)
        if (path / ckpt.TRAINER_STATE).is_file():
            return path
        latest = ckpt.latest_checkpoint(path)
        if latest is None:
            raise VptError(f"{path}: no checkpoint to resume from (neither a checkpoint-STEP directory nor a run "
                           "directory holding one); pass resume=True to start fresh when none exists")
        return latest

    def _check_resumable(self, checkpoint: Path, state: dict[str, Any], step_examples: int) -> None:
        saved_examples = state.get("step_examples")
        if saved_examples is not None and saved_examples != step_examples:
            raise VptError(f"{checkpoint}: was trained with {saved_examples} examples per optimizer step (--batch-size "
                           f"x --grad-accum x processes), now {step_examples}; resume with the same product (e.g. "
                           "twice the --grad-accum on half the processes)")
        if saved_examples is None and state.get("num_processes") != self.accelerator.num_processes:
            raise VptError(f"{checkpoint}: written by an older vpt on {state.get('num_processes')} process(es); "
                           "resume it with the same number of processes")
        saved_path = checkpoint / "config.json"
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise VptError(f"{saved_path}: unreadable ({error}); resume from a complete checkpoint") from None
        for name in RESUME_LOCKED:
            if name in saved and saved[name] != getattr(self.config, name):
                raise VptError(f"{checkpoint}: was trained with {name}={saved[name]!r}, now {name}="
                               f"{getattr(self.config, name)!r}; resume with the same {name} (it fixes the data "
                               "order) or start a new run")

    # ------------------------------------------------------------------------------------------------ train
    def train(self, resume: bool | str | os.PathLike = False, warm_start: str | os.PathLike | None = None,
              keep_tracking: bool = False) -> TrainResult:
        """Run until ``max_steps`` / ``epochs``; ``resume=True`` continues from the newest checkpoint in the output
        directory (or starts fresh when there is none), a path continues from that checkpoint (or run directory).

        Resumed training is bit-identical to an uninterrupted run on the same hardware and process count, provided
        the task's randomness comes from the global RNGs inside ``loss_fn`` (restored) or from item indices — not
        from global RNGs inside ``dataset.__getitem__`` / ``collate_fn`` (batches are prefetched one ahead). A
        checkpoint resumes under another process count too (same examples per optimizer step): the same steps on
        the same examples, equal up to float rounding.

        ``warm_start``: a checkpoint of an earlier run on *other data* (one on-policy RL iteration after another):
        its weights, optimizer moments, schedule position and RNG states carry over and the step count continues
        from it, while the data position starts fresh; ``max_steps`` / ``epochs`` then count this run's steps. The
        extra state is the task's to restore (it usually shapes the data). Needs a constant schedule (warmup
        allowed), because the length of the whole chain of runs is unknown.

        ``keep_tracking``: leave the experiment trackers open for the caller's own figures (``self.tracking``),
        which it then ends; otherwise they end with training.
        """
        try:
            result = self._train(resume, warm_start)
        except BaseException:
            self.tracking.end()
            raise
        if not keep_tracking:
            self.tracking.end()
        return result

    def _train(self, resume: bool | str | os.PathLike, warm_start: str | os.PathLike | None) -> TrainResult:
        if self._trained:
            raise RuntimeError("Trainer.train() runs once per Trainer; build a new Trainer to train again")
        self._trained = True
        acc, cfg = self.accelerator, self.config
        if cfg.context_parallel > 1:
            from vpt.models.parallel import check_context_parallel

            check_context_parallel(self.model, cfg.context_parallel, acc.num_processes)
        groups = current_processes().data_groups(cfg.context_parallel)
        step_examples = cfg.step_examples or cfg.batch_size * cfg.gradient_accumulation_steps * groups.groups
        checkpoint = self._resolve_resume(resume)
        state = ckpt.read_trainer_state(checkpoint) if checkpoint is not None else None
        start = None if warm_start is None else Path(warm_start)
        if state is not None:
            if start is not None:
                raise VptError(f"{self.output_dir}: holds a run to resume, and a warm start was given too; resume "
                               "it or start the warm-started run in an empty output directory")
            self._check_resumable(checkpoint, state, step_examples)
            self.load_model(self.model, checkpoint)
            if self.extra_state is not None and (checkpoint / "extra_state.pt").is_file():
                self.extra_state.load_state_dict(load_torch(checkpoint / "extra_state.pt"))
        start_state = None
        if start is not None:
            start_state = ckpt.read_trainer_state(start)
            if cfg.lr_schedule != "constant":
                raise VptError(f"lr_schedule {cfg.lr_schedule!r} cannot continue across warm-started runs (their "
                               "total length is unknown); use a constant schedule, with warmup if needed")
            self.load_model(self.model, start)

        size = len(self.dataset)
        if size == 0:
            raise VptError("the training dataset is empty; give it at least one example")
        weights = self.dataset.item_weights() if hasattr(self.dataset, "item_weights") else None
        plan = StepPlan(size, cfg.batch_size, step_examples, groups.groups, groups.group, weights)
        # data-parallel averaging divides by every process, but the members of a context-parallel group each hold
        # only their tokens' share of one micro-batch's gradient
        share = float(groups.degree)
        sampler = EpochSampler(size, cfg.seed, cfg.shuffle)
        model = self._distribute(self.model)
        optimizer = build_optimizer(model, cfg)
        steps_per_epoch = plan.steps_per_epoch
        limits = [n for n in (cfg.max_steps, cfg.epochs and cfg.epochs * steps_per_epoch) if n]
        offset = start_state["step"] if start_state is not None else 0
        total = offset + min(limits)
        scheduler = build_scheduler(optimizer, cfg, total)
        self.optimizer, self.scheduler = optimizer, scheduler
        params = [p for p in model.parameters() if p.requires_grad]

        if state is not None:
            self._load_optimizer_and_schedule(checkpoint, model, optimizer, scheduler, total)
            ckpt.set_rng_state(_own_rng_state(load_torch(checkpoint / "rng_state.pt"), acc.process_index))
            step, epoch = state["step"], state["epoch"]
            step_in_epoch = state.get("step_in_epoch")
            if step_in_epoch is None:  # written by an older vpt: micro-batches per process
                step_in_epoch = state["batch_in_epoch"] // cfg.gradient_accumulation_steps
        elif start_state is not None:
            self._load_optimizer_and_schedule(start, model, optimizer, scheduler, total)
            ckpt.set_rng_state(_own_rng_state(load_torch(start / "rng_state.pt"), acc.process_index))
            step, epoch, step_in_epoch = offset, 0, 0
        else:
            ckpt.seed_everything(cfg.seed + groups.group)  # a group's members draw alike
            step, epoch, step_in_epoch = 0, 0, 0

        main = acc.is_main_process
        if main:
            claim_directory(self.output_dir)
            ckpt.truncate_metrics(self.metrics_file, step)
        acc.wait_for_everyone()
        self.tracking.start(cfg.to_dict())
        reporter = _Reporter(main and not self.quiet, total, step)
        if checkpoint is not None:
            reporter.note(f"resuming from {checkpoint} (step {step}/{total})")

        timings = {"train": 0.0, "eval": 0.0, "save": 0.0}
        window = _Window()
        last_row: dict[str, Any] = {}
        last_checkpoint = checkpoint
        saved_step = step if checkpoint is not None else None
        grad_norm = torch.zeros(())
        lrs: list[float] = [group["lr"] for group in optimizer.param_groups]
        model.train()
        while step < total:
            sampler.set_epoch(epoch)
            if hasattr(self.dataset, "set_epoch"):  # items that draw per-epoch randomness (noise, timesteps)
                self.dataset.set_epoch(epoch)
            order = sampler.order()
            steps = [plan.step(order, s) for s in range(step_in_epoch, min(steps_per_epoch,
                                                                           step_in_epoch + total - step))]
            micro_batches = [micro for step_plan in steps for micro in step_plan]
            loader = DataLoader(self.dataset, batch_sampler=[list(micro.indices) for micro in micro_batches],
                                collate_fn=self.collate_fn, num_workers=cfg.num_workers,
                                generator=torch.Generator().manual_seed(cfg.seed))  # not the global RNG
            batches = iter(loader)
            mark = time.perf_counter()
            for step_plan in steps:
                for position, micro in enumerate(step_plan):
                    batch = send_to_device(next(batches), acc.device)
                    with _gradient_sync(model, position == len(step_plan) - 1), self._precision(model):
                        if self.own_backward:
                            loss, metrics = self.loss_fn(model, batch, _scaled_backward(acc, micro.scale * share))
                        else:
                            loss, metrics = self.loss_fn(model, batch)
                        if not torch.is_tensor(loss) or loss.numel() != 1:
                            raise TypeError("loss_fn must return (scalar loss tensor, metrics dict)")
                        if not self.own_backward:
                            acc.backward(loss * (micro.scale * share))
                    if micro.examples:
                        window.add(loss, metrics or {}, micro.examples, micro.weight)
                grad_norm = _clip(params, cfg.max_grad_norm if cfg.clipping else None)
                lrs = [group["lr"] for group in optimizer.param_groups]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                now = time.perf_counter()
                window.seconds += now - mark
                timings["train"] += now - mark
                step += 1
                step_in_epoch += 1
                if step_in_epoch >= steps_per_epoch:
                    epoch, step_in_epoch = epoch + 1, 0
                final = step >= total
                row: dict[str, Any] = {}
                if step % cfg.log_every == 0 or final:
                    reduced = window.reduce(acc)
                    if not math.isfinite(reduced["loss"]):
                        raise VptError(f"the training loss is not finite at step {step} ({reduced['loss']}); "
                                       "lower --lr or check the data")
                    row["loss"] = reduced.pop("loss")
                    row["lr"] = lrs[0]
                    row.update({f"lr/group{i}": lr for i, lr in enumerate(lrs) if i and lr != lrs[0]})
                    row["grad_norm"] = float(grad_norm)
                    row.update(reduced)  # examples_per_s, then the task's metrics
                    window = _Window()
                if self.eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or final):
                    began = time.perf_counter()
                    row.update({f"eval/{key}": value for key, value in self._evaluate(model).items()})
                    timings["eval"] += time.perf_counter() - began
                if row:
                    row = {"step": step, "epoch": round(epoch + step_in_epoch / steps_per_epoch, 6), **row}
                    last_row = row
                    if main:
                        with open(self.metrics_file, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(row) + "\n")
                    self.tracking.log(row, step)
                    reporter.row(row)
                reporter.step(step)
                if (cfg.save_every and step % cfg.save_every == 0) or final:
                    began = time.perf_counter()
                    last_checkpoint = self._save(model, step, epoch, step_in_epoch, step_examples, total)
                    saved_step = step
                    timings["save"] += time.perf_counter() - began
                mark = time.perf_counter()
        reporter.close()
        if saved_step != step:  # e.g. resumed from a checkpoint at or past the end: nothing new to save
            last_checkpoint = self._save(model, step, epoch, step_in_epoch, step_examples, total)
        acc.wait_for_everyone()
        if not last_row and self.metrics_file.is_file():  # nothing left to train: report the last logged row
            rows = ckpt.read_metrics(self.metrics_file)
            last_row = rows[-1] if rows else {}
        return TrainResult(step=step, epoch=round(epoch + step_in_epoch / steps_per_epoch, 6), metrics=last_row,
                           checkpoint=last_checkpoint, output_dir=self.output_dir, metrics_file=self.metrics_file,
                           resumed_from=checkpoint, timings=timings)

    # ------------------------------------------------------------------------------------------------ helpers
    def _distribute(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this launch trains it: sharded with FSDP2 when the accelerate config asks for it, else
        (several processes) wrapped for data-parallel gradient averaging, else itself."""
        from vpt.distributed import shard_model, sharded_launch

        processes = current_processes()
        device = self.accelerator.device
        if self.config.context_parallel > 1:
            from vpt.models.parallel import enable_context_parallel

            if sharded_launch(processes, "training"):
                raise VptError(f"--context-parallel {self.config.context_parallel} with an FSDP config: vpt runs "
                               "context parallelism over data-parallel groups; launch it with a DDP config "
                               "(examples/accelerate/ddp.yaml)")
            enable_context_parallel(unwrapped(model).to(device), self.config.context_parallel, processes)
        if sharded_launch(processes, "training"):
            if any(hasattr(param, ROWS_ATTRIBUTE) for param in model.parameters()):
                raise VptError("this model trains embedding rows (train-reward's reward tokens), which FSDP2 sharding "
                               "cannot keep apart from the frozen rows; launch it with a DDP config "
                               "(examples/accelerate/ddp.yaml)")
            return shard_model(model.to(device), processes)
        model = model.to(device)
        if processes.count == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=self.config.find_unused_parameters)

    def _precision(self, model: torch.nn.Module):
        """The forward's precision: with ``mixed_precision="bf16"``, autocast, and a peft model's LoRA layers fed
        their bf16 inputs as they are (peft would first copy every targeted layer's input to the float32 of the
        LoRA weights, a second activation to keep for the backward; autocast computes in bf16 either way)."""
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(self.accelerator.autocast())
        if self.config.mixed_precision == "bf16" and is_peft_model(unwrapped(model)):
            from peft.helpers import disable_input_dtype_casting

            stack.enter_context(disable_input_dtype_casting(unwrapped(model)))
        return stack

    def _load_optimizer_and_schedule(self, checkpoint: Path, model, optimizer, scheduler, total: int) -> None:
        """Restore optimizer moments and the schedule position; hyperparameters (learning rates, weight decay,
        betas, schedule shape, total steps) come from the current config, so a resumed run may change them. With an
        unchanged config the result is exactly the saved state. The optimizer file holds full tensors keyed by
        parameter name, so a checkpoint of any process count (sharded or not) loads into any other."""
        cfg = self.config
        fresh = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
        saved = load_torch(checkpoint / "optimizer.pt")
        saved_names = [group.get("names") for group in saved.get("param_groups", [])]
        if saved_names != [group["names"] for group in fresh]:
            raise VptError(f"{checkpoint}: the optimizer was saved for other trainable parameters or parameter "
                           "groups; resume with the same model, LoRA setup, param_group_lrs and no_decay")
        ckpt.load_optimizer_state(model, optimizer, saved)
        for group, hyper in zip(optimizer.param_groups, fresh):
            group.update(hyper)
        scheduler.load_state_dict(load_torch(checkpoint / "scheduler.pt"))
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        scheduler.lr_lambdas = [LrLambda(cfg.lr_schedule, cfg.warmup_steps, total, cfg.min_lr_ratio)] * len(
            optimizer.param_groups)
        for group, base, lam in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * lam(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def _evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), ckpt.isolated_rng(), self._precision(model):
                result = self.eval_fn(unwrapped(model))
        finally:
            model.train(was_training)
        if not isinstance(result, Mapping):
            raise TypeError("eval_fn must return a dict of scalar metrics")
        return {str(key): float(_scalar(value, key)) for key, value in result.items()}

    def _save(self, model, step: int, epoch: int, step_in_epoch: int, step_examples: int, total: int) -> Path:
        """Write ``checkpoint-{step}``: every process takes part in gathering the full trainable weights and
        optimizer state (slices, when sharded), the main process writes them, one set of files whatever the
        process count."""
        acc, cfg = self.accelerator, self.config
        target = self.output_dir / f"checkpoint-{step}"
        with ckpt.isolated_rng():
            states = [ckpt.rng_state()]
            if acc.num_processes > 1:
                from accelerate.utils import gather_object

                states = gather_object(states)
            inner = unwrapped(model)
            weights = ckpt.trainable_state_dict(inner)
            optimizer_state = ckpt.optimizer_state(model, self.optimizer)
            if acc.is_main_process:
                trainer_state = {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                                 "step_examples": step_examples, "total_steps": total,
                                 "num_processes": acc.num_processes}
                with atomic_directory(target, replace=True) as temporary:
                    self.save_model(inner, temporary, weights)
                    if self.export_model is not None:
                        self.export_model(inner, temporary, weights)
                    torch.save(optimizer_state, temporary / "optimizer.pt")
                    torch.save(self.scheduler.state_dict(), temporary / "scheduler.pt")
                    torch.save(states, temporary / "rng_state.pt")
                    if self.extra_state is not None:
                        torch.save(self.extra_state.state_dict(), temporary / "extra_state.pt")
                    (temporary / "config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")
                    (temporary / ckpt.TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n",
                                                                encoding="utf-8")
                ckpt.prune_checkpoints(self.output_dir, cfg.keep_last)
        acc.wait_for_everyone()
        return target


def _own_rng_state(states: list, rank: int) -> dict:
    """This process's saved RNG state; a run resumed on more processes than wrote it reuses the first ones'."""
    return states[rank % len(states)]


def _gradient_sync(model: torch.nn.Module, last: bool):
    """Average gradients over the processes on the last micro-batch of a step only (data-parallel ``no_sync``);
    FSDP reduces every backward (that is what keeps unsharded gradients from piling up)."""
    import contextlib

    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def _scaled_backward(acc, scale: float) -> Callable[[torch.Tensor], None]:
    """The ``backward`` a task that back-propagates itself calls: the accelerator's, with the micro-batch's
    scale."""

    def backward(tensor: torch.Tensor) -> None:
        acc.backward(tensor * scale)

    return backward


def _clip(params: list[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The gradients' global norm (over every process's slice when sharded), after clipping them to ``max_norm``
    (None: measured only)."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm is None:
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class _Window:
    """Sums of loss, metrics, examples and time since the last logged step (this process)."""

    def __init__(self):
        self.loss = torch.zeros((), dtype=torch.float64)
        self.weight = 0.0
        self.examples = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.seconds = 0.0

    def add(self, loss: torch.Tensor, metrics: Mapping[str, Any], examples: int, weight: float) -> None:
        """One micro-batch of ``examples`` real examples of total ``weight``; its mean ``loss`` counts by weight,
        its metrics once each."""
        self.loss = self.loss.to(loss.device) + loss.detach().reshape(()).double() * weight
        self.weight += weight
        self.examples += examples
        for key, value in metrics.items():
            value = _scalar(value, key).double()
            previous = self.sums.get(key)
            self.sums[key] = value if previous is None else previous.to(value.device) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def reduce(self, acc) -> dict[str, float]:
        """The weighted mean loss and the metrics' means over micro-batches of every process; examples/s over all
        processes (collective when several)."""
        keys = sorted(self.sums)
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            keys = sorted({key for keys_of_one in gather_object([keys]) for key in keys_of_one})
        device = acc.device
        values = [self.loss.to(device), torch.tensor(self.weight, dtype=torch.float64, device=device),
                  torch.tensor(float(self.examples), dtype=torch.float64, device=device),
                  torch.tensor(self.seconds, dtype=torch.float64, device=device)]
        for key in keys:
            values.append(self.sums[key].to(device) if key in self.sums else
                          torch.zeros((), dtype=torch.float64, device=device))
            values.append(torch.tensor(float(self.counts.get(key, 0)), dtype=torch.float64, device=device))
        packed = torch.stack(values)
        if acc.num_processes > 1:
            packed = acc.reduce(packed, reduction="sum")
        packed = packed.tolist()
        loss, weight, examples, seconds = packed[:4]
        seconds /= acc.num_processes  # processes run side by side: their mean wall time
        row = {"loss": loss / weight if weight else float("nan"),
               "examples_per_s": examples / seconds if seconds > 0 else 0.0}
        for i, key in enumerate(keys):
            total, count = packed[4 + 2 * i], packed[5 + 2 * i]
            row[key] = total / count if count else float("nan")
        return row
