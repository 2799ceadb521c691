"""Several processes started by ``accelerate launch`` (or torchrun): who am I, share a value, wait, leave.

Outside such a launch there is one process and nothing here imports torch. Inside one, the process group comes from
accelerate's ``PartialState`` (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def launched_processes() -> int:
    """How many processes the launcher started (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Processes:
    """The processes of one launch; a plain run is one process with rank 0."""

    rank: int = 0
    count: int = 1
    _state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> str:
        """This process's accelerator (its GPU under a multi-GPU launch), else ``cpu``; torch only when needed."""
        if self._state is not None:
            return str(self._state.device)
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolve_device(self, requested: str, option: str = "--device") -> str:
        """The device a ``--device`` value names: ``auto`` is :meth:`device`; anything else must be a torch device
        this machine has (VptError naming ``option`` otherwise)."""
        if requested == "auto":
            return self.device()
        import torch

        from vpt.errors import VptError

        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise VptError(f"{option} {requested}: not a device; choose auto, cpu, cuda or cuda:N") from None
        present = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        if device.type == "cuda" and not present:
            raise VptError(f"{option} {requested}: this machine has no such CUDA device; use {option} auto or cpu")
        if device.type not in ("cpu", "cuda"):
            raise VptError(f"{option} {requested}: vpt runs on cpu or cuda; choose auto, cpu, cuda or cuda:N")
        return str(device)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every ``count``-th item from its rank (each item exactly once)."""
        return list(items[self.rank :: self.count])

    def share(self, value: T) -> T:
        """The main process's ``value``, in every process."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def wait(self) -> None:
        """Block until every process gets here."""
        if self.count > 1:
            self._state.wait_for_everyone()

    def leave(self, code: int = 0) -> None:
        """End a launched process once its work is written: flush, then exit hard (multi-process CPU runs can abort
        in interpreter teardown after finishing, which would turn a good run into a failure)."""
        if self.count == 1:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def current_processes() -> Processes:
    """The processes of this launch (joins the process group when there are several)."""
    if launched_processes() == 1:
        return Processes()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(rank=state.process_index, count=state.num_processes, _state=state)


def unwrapped(model):
    """The model a distributed wrapper holds (DDP keeps it in ``.module``), or ``model`` itself."""
    return getattr(model, "module", model)
