"""Several processes started by ``accelerate launch`` (or torchrun): who am I, share a value, wait, leave, and
shard a model over them (FSDP2) when the launch's accelerate config asks for it.

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

    def data_groups(self, context_parallel: int = 1) -> "DataGroups":
        """The data-parallel view of this launch when its processes run each sample in groups of
        ``context_parallel`` consecutive ranks (context parallelism; 1: every process is its own group)."""
        return DataGroups(group=self.rank // context_parallel, groups=self.count // context_parallel,
                          member=self.rank % context_parallel, degree=context_parallel)

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


@dataclass(frozen=True)
class DataGroups:
    """Processes that share each sample (context parallelism) form one data-parallel group: the data is dealt to
    ``groups`` groups, this process is member ``member`` of group ``group``, and every member of a group works on
    the same items (member 0 writes what the group produces)."""

    group: int
    groups: int
    member: int
    degree: int

    def shard(self, items: Sequence[T]) -> list[T]:
        """The items of this process's group: every ``groups``-th item from its group index."""
        return list(items[self.group :: self.groups])

    @property
    def writes(self) -> bool:
        return self.member == 0


def current_processes() -> Processes:
    """The processes of this launch (joins the process group when there are several)."""
    if launched_processes() == 1:
        return Processes()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(rank=state.process_index, count=state.num_processes, _state=state)


def requested_fsdp_version() -> int | None:
    """The FSDP version the launch's accelerate config asks for (``use_fsdp`` / ``fsdp_version`` of an ``accelerate
    launch --config_file``, exported as ``ACCELERATE_USE_FSDP`` / ``FSDP_VERSION``), or None without FSDP."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() not in ("true", "1", "yes"):
        return None
    return int(os.environ.get("FSDP_VERSION", "1"))


def sharded_launch(processes: "Processes", stage: str, can_shard: bool = True) -> bool:
    """Whether ``stage`` runs its models sharded in this launch: an FSDP2 accelerate config and several processes.
    VptError for an FSDP config vpt cannot follow (FSDP1, or a stage that does not shard)."""
    from vpt.errors import VptError

    version = requested_fsdp_version()
    if version is None:
        return False
    if not can_shard:
        raise VptError(f"{stage} does not shard its models, but the accelerate config asks for FSDP; launch it with "
                       "a DDP config (examples/accelerate/ddp.yaml) or none")
    if version != 2:
        raise VptError(f"the accelerate config asks for fsdp_version {version}; vpt shards with FSDP2: set "
                       "fsdp_version: 2 (see examples/accelerate/fsdp2.yaml)")
    return processes.count > 1


def shard_model(model, processes: "Processes"):
    """Shard ``model`` over the launch's processes with FSDP2 (``torch.distributed.fsdp.fully_shard``), in place:
    each module of a wrap class becomes one unit (its parameters all-gathered for its forward and backward, then
    freed), the root holds the rest. Frozen and trainable parameters (a bf16 base and float32 LoRA) share a unit.

    The settings are the accelerate config's (read with accelerate's ``FullyShardedDataParallelPlugin``): the wrap
    classes (``fsdp_transformer_layer_cls_to_wrap``; default: every ``_no_split_modules`` class the model's
    submodules declare, e.g. diffusers' ``WanTransformerBlock``, Qwen2-VL's decoder layers), ``reshard_after_forward``
    and parameter offloading. Accelerate applies FSDP2 only on accelerators; doing it here lets the same code shard
    on CPU processes (gloo) and on GPUs (NCCL). Call it once the weights are loaded: each process then keeps its
    slice. Returns ``model``.
    """
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    plugin = FullyShardedDataParallelPlugin()
    wrap = set(plugin.transformer_cls_names_to_wrap or ())
    if not wrap:
        for module in model.modules():
            wrap.update(getattr(module, "_no_split_modules", None) or ())
    mesh = init_device_mesh(processes.device().split(":")[0], (processes.count,))
    settings = {"mesh": mesh, "reshard_after_forward": plugin.reshard_after_forward}
    if plugin.cpu_offload is not None:
        settings["offload_policy"] = plugin.cpu_offload
    units = [module for module in model.modules() if type(module).__name__ in wrap and module is not model]
    for unit in units + _beside_units(model, units):
        fully_shard(unit, **settings)
    fully_shard(model, **settings)
    return model


def _beside_units(model, units: list) -> list:
    """The other children, holding parameters, of the modules whose block list holds the units (a Wan transformer's
    patch and condition embedders and output projection): units of their own, so that they too are gathered only
    for their own forward and backward — the root's parameters stay gathered from its forward to its backward."""
    unit_ids = {id(unit) for unit in units}
    holders = [module for module in model.modules()
               if any(id(grandchild) in unit_ids for child in module.children() for grandchild in child.children())]
    inside = {id(module) for unit in units for module in unit.modules()}
    beside = []
    for holder in holders:
        for child in holder.children():
            if id(child) in inside or any(id(module) in unit_ids for module in child.modules()):
                continue
            if any(True for _ in child.parameters()):
                beside.append(child)
    return beside


def full_state_dict(model) -> dict:
    """Every parameter and buffer of ``model`` as full CPU tensors by name, gathered from the slices when it is
    sharded (torch distributed checkpoint's ``get_model_state_dict``): every process must call it, in step; the
    main process gets the tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def is_sharded(model) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model` (its parameters are DTensor slices)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unwrapped(model):
    """The model a distributed wrapper holds (DDP keeps it in ``.module``), or ``model`` itself."""
    return getattr(model, "module", model)
