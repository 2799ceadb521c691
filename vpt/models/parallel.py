"""Context parallelism for long videos: the ``degree`` processes of one group run ONE sample through the Wan
transformer together, each holding ``1/degree`` of its latent tokens.

diffusers' ``ModelMixin.enable_parallelism`` with ``ContextParallelConfig(ulysses_degree=degree)`` hooks
``WanTransformer3DModel._cp_plan`` onto the model: the hidden states entering ``blocks.0`` and the RoPE tables are
cut into ``degree`` equal chunks along the token axis (``EquipartitionSharder.shard``), each attention exchanges
tokens for heads with an all-to-all (``TemplatedUlyssesAttention``: every process attends over ALL tokens with
``heads/degree`` of the heads), and ``proj_out``'s output is all-gathered, so every process of the group returns the
whole velocity ``(B, C, F, H, W)``. The text tokens are not split (each process keeps all of them).

What this asks of the caller:

- The processes of a group must feed the SAME inputs (latents, timestep, prompt embeddings). Groups are consecutive
  ranks: process ``r`` is member ``r % degree`` of group ``r // degree`` (the ``(data, ring, ulysses)`` mesh below).
- Gradients are per-token shares: the backward of the gather hands each process only its own tokens' part, so a
  parameter's gradient summed over the group is the sample's gradient (checked on a LoRA: summed = single-process
  within 3.5e-7 relative). DDP's mean over all processes is therefore ``1/degree`` of the mean over samples.
- Call it AFTER peft has wrapped the transformer: a hook on ``proj_out`` gathers the output of the module it sits on,
  and a LoRA added later on ``proj_out`` would add its un-gathered delta (peft fails with "The size of tensor a (48)
  must match the size of tensor b (24) at non-singleton dimension 1").

diffusers (0.42) cannot do this on CPU: ``ModelMixin._resolve_parallel_config`` picks each process's device as
``rank % torch.accelerator.device_count()``, which raises ZeroDivisionError without an accelerator. The rest of the
machinery (gloo's all-to-all, the native attention backend, the hooks) works on CPU: done by hand there, the
velocities match a single process exactly and the summed LoRA gradients within 3.5e-7.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vpt.distributed import Processes
from vpt.errors import VptError

if TYPE_CHECKING:
    import torch

OPTION = "--context-parallel"


def _base(transformer: torch.nn.Module) -> torch.nn.Module:
    """The diffusers model under a peft wrapper (``PeftModel.get_base_model``), or ``transformer`` itself."""
    get_base = getattr(transformer, "get_base_model", None)
    return get_base() if callable(get_base) else transformer


def _spoken(choices: list[int]) -> str:
    words = [str(choice) for choice in choices]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def context_parallel_choices(heads: int, processes: int) -> list[int]:
    """The degrees that divide both the attention heads (Ulysses gives each process ``heads/degree`` of them) and
    the process count (the processes form ``processes/degree`` whole groups)."""
    return [degree for degree in range(1, min(heads, processes) + 1) if heads % degree == 0 and processes % degree == 0]


def check_context_parallel(transformer: torch.nn.Module, degree: int, processes: int, option: str = OPTION) -> None:
    """VptError naming ``option`` unless ``degree`` (1 = off) divides the transformer's attention heads
    (``config.num_attention_heads``) and the number of ``processes``."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise VptError(f"{option} {degree}: must be a whole number of processes, at least 1 (1 = off)")
    heads = int(_base(transformer).config.num_attention_heads)
    choices = context_parallel_choices(heads, processes)
    if degree not in choices:
        noun = "process" if processes == 1 else "processes"
        raise VptError(f"{option} {degree}: must divide the transformer's {heads} attention heads and the {processes} "
                       f"{noun}; choose {_spoken(choices)}")


def check_token_split(transformer: torch.nn.Module, degree: int, latent_frames: int, latent_height: int,
                      latent_width: int, option: str = OPTION) -> None:
    """VptError naming ``option`` unless a latent video of ``latent_frames x latent_height x latent_width`` makes a
    token count that splits into ``degree`` equal parts (diffusers' ``EquipartitionSharder.shard`` asserts it
    mid-forward). Tokens = ``(F/p_t) * (H/p_h) * (W/p_w)`` with ``config.patch_size = (p_t, p_h, p_w)``."""
    p_t, p_h, p_w = _base(transformer).config.patch_size
    grid = (latent_frames // p_t, latent_height // p_h, latent_width // p_w)
    tokens = grid[0] * grid[1] * grid[2]
    if tokens % degree:
        raise VptError(f"{option} {degree}: the video's {tokens} latent tokens ({grid[0]} x {grid[1]} x {grid[2]} "
                       f"patches) do not split into {degree} equal parts; choose frames or a size whose token count "
                       f"{degree} divides")


def enable_context_parallel(transformer: torch.nn.Module, degree: int, processes: Processes,
                            option: str = OPTION) -> None:
    """Run ``transformer`` (a diffusers ``WanTransformer3DModel``, or the peft model wrapping one) with Ulysses
    context parallelism of ``degree`` over the ``processes`` of this launch; ``degree`` 1 leaves it as it is.

    Call once, after LoRA is applied and before any distributed wrapper (DDP); the process group must exist
    (:func:`vpt.distributed.current_processes`). Groups are consecutive ranks on a ``(data, ring, ulysses)`` =
    ``(count/degree, 1, degree)`` device mesh (diffusers ``ContextParallelConfig(mesh=...)``: its mesh must name
    "ring" and "ulysses"). Inputs keep their full shapes: latents ``(B, C, F, H, W)``, timestep ``(B,)``, text
    ``(B, L, text_dim)``; the output is the full velocity on every process of a group.
    """
    check_context_parallel(transformer, degree, processes.count, option)
    if degree == 1:
        return
    import torch

    if not torch.cuda.is_available():
        raise VptError(f"{option} {degree} needs CUDA GPUs (diffusers' context parallelism places each process on "
                       "an accelerator and fails without one, on CPU); run without it on CPU")
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cuda", (processes.count // degree, 1, degree), mesh_dim_names=("data", "ring", "ulysses"))
    _base(transformer).enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree, mesh=mesh))
