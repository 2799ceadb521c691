"""Checkpoint files: trainable weights, RNG states, the checkpoint directories of a run, and the metrics log.

Layout of ``OUTPUT_DIR/checkpoint-{step}/`` (written under a hidden temporary name, renamed when complete)::

    trainable.safetensors      every parameter with requires_grad (default save hook; row-masked parameters store
                               only their trained rows as NAME@rows + NAME@row_index)
      or adapter_model.safetensors + adapter_config.json + non_adapter.safetensors   (default for peft models)
    optimizer.pt               optimizer state dict: full tensors keyed by parameter name (whatever the processes)
    scheduler.pt               LR scheduler state dict
    rng_state.pt               python / numpy / torch (/ cuda) RNG states, one entry per process
    extra_state.pt             the task's extra state (only when the task passes one)
    trainer_state.json         step, epoch, step_in_epoch, step_examples, total_steps, num_processes

Every file holds full tensors, written by the main process: a checkpoint of a run sharded over N processes is the
same set of files as one of a single process, and resumes on any number of them.
    config.json                the TrainConfig
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpt.errors import VptError
from vpt.io.atomic import atomic_path
from vpt.train.optim import ROWS_ATTRIBUTE

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
NON_ADAPTER_FILE = "non_adapter.safetensors"
ROWS_SUFFIX, ROW_INDEX_SUFFIX = "@rows", "@row_index"


# ----------------------------------------------------------------------------------------------- trainable weights
def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter with ``requires_grad`` by name (full CPU copies); row-masked ones as their trained rows only.

    On a model sharded by :func:`vpt.distributed.shard_model` each parameter is gathered from its slices: every
    process must call this, in step.
    """
    state = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        value = param.detach()
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        rows = getattr(param, ROWS_ATTRIBUTE, None)
        if rows is None:
            state[name] = value.cpu().contiguous().clone()
        else:
            state[name + ROWS_SUFFIX] = value[rows.to(value.device)].cpu().contiguous()
            state[name + ROW_INDEX_SUFFIX] = rows.cpu().contiguous()
    return state


def load_trainable_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Copy ``state`` (from :func:`trainable_state_dict`) into ``model``; unknown or misshapen entries are errors."""
    params = dict(model.named_parameters())
    where = f"{source}: " if source else ""
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith(ROW_INDEX_SUFFIX):
                continue
            if key.endswith(ROWS_SUFFIX):
                name = key[: -len(ROWS_SUFFIX)]
                index = state.get(name + ROW_INDEX_SUFFIX)
                param = params.get(name)
                if param is None or index is None:
                    raise VptError(f"{where}saved rows {name!r} do not fit this model; resume with the same model")
                param[index.to(param.device)] = value.to(device=param.device, dtype=param.dtype)
                continue
            param = params.get(key)
            if param is None or param.shape != value.shape:
                found = "missing" if param is None else f"shape {tuple(param.shape)}"
                raise VptError(f"{where}saved parameter {key!r} {tuple(value.shape)} does not fit this model "
                               f"({found}); resume with the same model and trainable parameters")
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def save_trainable(model: torch.nn.Module, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Default save hook: ``trainable.safetensors`` with every trainable parameter (``state``: the model's
    :func:`trainable_state_dict`, when the harness has gathered it already)."""
    from safetensors.torch import save_file

    state = trainable_state_dict(model) if state is None else state
    save_file(state, str(Path(directory) / TRAINABLE_FILE), metadata={"format": "pt"})


def load_trainable(model: torch.nn.Module, directory: Path) -> None:
    """Default load hook, the inverse of :func:`save_trainable`."""
    from safetensors.torch import load_file

    path = Path(directory) / TRAINABLE_FILE
    if not path.is_file():
        raise VptError(f"{directory}: {TRAINABLE_FILE} is missing; this checkpoint was written with another save "
                       "hook, resume with the matching load hook")
    load_trainable_state_dict(model, load_file(str(path)), str(path))


def save_peft(model: torch.nn.Module, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Save hook for peft models: ``save_pretrained`` (adapter + ``modules_to_save``) plus ``non_adapter.safetensors``
    for trainable parameters peft does not save (e.g. parameters made trainable by pattern, embedding rows).
    ``state``: the model's :func:`trainable_state_dict` when the harness has gathered it (from a sharded model)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory = Path(directory)
    state = trainable_state_dict(model) if state is None else state
    model.save_pretrained(str(directory), state_dict=state)
    covered = {id(tensor) for tensor in get_peft_model_state_dict(model, state_dict=state).values()}
    rest = {name: tensor for name, tensor in state.items() if id(tensor) not in covered}
    if rest:
        save_file(rest, str(directory / NON_ADAPTER_FILE), metadata={"format": "pt"})


def load_peft(model: torch.nn.Module, directory: Path) -> None:
    """Load hook, the inverse of :func:`save_peft` (adapter name ``default``)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(directory)
    adapter = directory / "adapter_model.safetensors"
    if not adapter.is_file():
        raise VptError(f"{directory}: adapter_model.safetensors is missing; this checkpoint was not written by "
                       "save_peft, resume with the matching load hook")
    result = set_peft_model_state_dict(model, load_file(str(adapter)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise VptError(f"{adapter}: adapter weights {unexpected[:3]} do not fit this model; resume with the same "
                       "LoRA targets")
    if (directory / NON_ADAPTER_FILE).is_file():
        load_trainable_state_dict(model, load_file(str(directory / NON_ADAPTER_FILE)), str(directory))


# ------------------------------------------------------------------------------------------------------ optimizer
def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with full tensors keyed by parameter name (torch distributed checkpoint's
    ``get_optimizer_state_dict``, full and on the CPU): the same file from a sharded or a plain model, on any
    process count. Every process must call it, in step; the main process gets the state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load :func:`optimizer_state`'s output (every process reads the whole file and keeps its slice), or the
    ``optimizer.state_dict()`` (keyed by parameter position) that checkpoints of earlier vpt versions hold."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if all(isinstance(key, int) for key in state.get("state", {})):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


# ----------------------------------------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as plain types and tensors (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class isolated_rng:
    """Context manager: whatever runs inside leaves the python / numpy / torch RNG states as it found them."""

    def __enter__(self):
        self._state = rng_state()
        return self

    def __exit__(self, *exc):
        set_rng_state(self._state)
        return False


# ------------------------------------------------------------------------------------------ checkpoint directories
def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as (step, path), oldest first."""
    output_dir = Path(output_dir)
    found = []
    if output_dir.is_dir():
        for entry in output_dir.iterdir():
            match = CHECKPOINT_PATTERN.match(entry.name)
            if match and (entry / TRAINER_STATE).is_file():
                found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def check_resume_source(resume: str | os.PathLike, give: str) -> None:
    """``resume`` must be a checkpoint or a run directory holding one; the VptError says what to ``give`` instead."""
    if not (Path(resume) / TRAINER_STATE).is_file() and latest_checkpoint(resume) is None:
        raise VptError(f"{resume}: holds no checkpoint to resume from; give {give}")


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (none when ``keep_last`` is 0/None); returns the deleted."""
    import shutil

    if not keep_last:
        return []
    doomed = [path for _, path in list_checkpoints(output_dir)[:-keep_last]]
    for path in doomed:
        # Rename first so a crash mid-delete never leaves a half checkpoint under a checkpoint-* name.
        trash = path.with_name(f".{path.name}.deleting")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / TRAINER_STATE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VptError(f"{checkpoint}: not a training checkpoint ({TRAINER_STATE} unreadable: {error}); pass a "
                       "checkpoint-STEP directory written by the harness") from None


# ---------------------------------------------------------------------------------------------------- metrics log
METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, after_step: int) -> int:
    """Drop rows with ``step > after_step`` (and a torn last line) from a metrics log; returns the rows kept."""
    if not path.is_file():
        return 0
    kept, changed = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            changed = True
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= after_step:
            kept.append(line)
        else:
            changed = True
    if changed:
        with atomic_path(path) as temporary:
            temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return len(kept)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
