"""The generator a sampling command samples with (``sample-rollouts``, ``guide``): the Wan pipeline on this process's
device in the chosen dtype, with the LoRA policy applied, and the ids a rollouts or videos table records of it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vpt.errors import VptError


@dataclass(frozen=True)
class Generator:
    """An opened generator: ``pipe`` (a diffusers ``WanPipeline``, eval mode), the pipeline ``directory``,
    ``policy_id`` (``base``, or the LoRA's path and adapter digest) and ``model_id`` (the directory, resolved)."""

    pipe: Any
    directory: Path
    policy_id: str
    model_id: str


def placement(device: str, dtype: str, processes) -> tuple[str, torch.dtype]:
    """The device (``auto``: this process's GPU when there is one) and weights dtype that ``--device`` and
    ``--dtype`` name (:func:`vpt.models.loading.weights_dtype`); VptError naming the option for anything else."""
    from vpt.models.dtypes import weights_dtype

    return processes.resolve_device(device), weights_dtype(dtype)


def open_generator(model: str | os.PathLike, policy: str | os.PathLike | None, device: str,
                   dtype: torch.dtype, processes=None, context_parallel: int = 1) -> Generator:
    """Load the Wan pipeline ``model`` (a pipeline or zoo directory) on ``device`` in ``dtype``, with the LoRA
    ``policy`` (a policy checkpoint of any stage, or any peft or diffusers Wan LoRA) on its transformer, sharded
    over ``processes`` (:class:`vpt.distributed.Processes`) when the launch's accelerate config asks for FSDP2, or
    run with ``context_parallel`` (:func:`vpt.models.parallel.enable_context_parallel`)."""
    from vpt.distributed import current_processes, shard_model, sharded_launch
    from vpt.models.loading import load_policy, load_wan_pipeline, resolve_wan_directory
    from vpt.models.parallel import enable_context_parallel

    directory = resolve_wan_directory(model)
    pipe = load_wan_pipeline(directory, dtype=dtype, device=device)
    policy_id = "base"
    if policy is not None:
        pipe.transformer, policy_id = load_policy(pipe.transformer, policy)
    processes = processes or current_processes()
    if sharded_launch(processes, "sampling"):
        if context_parallel > 1:
            raise VptError(f"--context-parallel {context_parallel} with an FSDP config: vpt runs context parallelism "
                           "over whole transformers; launch it with a DDP config (examples/accelerate/ddp.yaml)")
        pipe.transformer = shard_model(pipe.transformer, processes)
    enable_context_parallel(pipe.transformer, context_parallel, processes)
    return Generator(pipe=pipe, directory=directory, policy_id=policy_id, model_id=str(directory.resolve()))
