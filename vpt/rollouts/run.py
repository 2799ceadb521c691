"""A whole ``sample-rollouts`` run: prompts -> groups -> one rollouts directory, plain or across processes.

Each process samples every ``count``-th prompt (from its rank) into one shared hidden directory and writes its rows
to a table part; the main process merges the parts in prompt order, writes the shard checksums and renames the
directory to its final name. Prompt embeddings are computed once per prompt.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from vpt.distributed import is_sharded
from vpt.errors import VptError
from vpt.io.atomic import check_new_directory, commit, temporary_sibling
from vpt.io.names import file_stems
from vpt.models.wan import encode_prompts, latent_shape, warn_long_prompts
from vpt.rollouts.sampling import RolloutOptions, Steer, sample_branches, sample_group
from vpt.rollouts.store import TABLE_FILE, write_checksums, write_embeddings, write_group


@dataclass(frozen=True)
class PromptItem:
    prompt_id: str
    prompt: str
    where: str = ""  # the prompt's row, for messages ("prompts.txt: row 3")
    carried: Mapping[str, Any] = field(default_factory=dict)  # the prompts table's extra columns, onto every rollout


def prompt_items(rows: Sequence[dict], source: str) -> list[PromptItem]:
    """Prompts from ``prompts`` table rows (``prompt_id`` defaults to p0000, p0001, ... in table order); their other
    columns (e.g. a BPGO prior) are carried onto the prompt's rollouts."""
    from vpt.io.tables import load_schema

    taken = {f.name for f in load_schema("rollouts").fields}
    items, seen = [], {}
    for number, row in enumerate(rows, start=1):
        prompt_id = row.get("prompt_id") or f"p{number - 1:04d}"
        first = seen.setdefault(prompt_id, number)
        if first != number:
            raise VptError(f"{source}: row {number}: prompt id '{prompt_id}' is already used by row {first}; give "
                           f"every prompt its own id")
        carried = {name: value for name, value in row.items() if name not in ("prompt", "prompt_id", "id")}
        clash = next((name for name in carried if name in taken), None)
        if clash is not None:
            raise VptError(f"{source}: column '{clash}' is also a column of the rollouts table, which carries the "
                           "prompts' other columns; rename it")
        items.append(PromptItem(prompt_id, row["prompt"], f"{source}: row {number}", carried))
    if not items:
        raise VptError(f"{source}: holds no prompt")
    return items


def group_id(options: RolloutOptions, prompt_id: str) -> str:
    return f"{prompt_id}@{options.seed}"


def branch_group_id(options: RolloutOptions, prompt_id: str, root: int, point: int) -> str:
    """The GRPO group of one TempFlow branch point: (prompt row, branch point), as the release groups them."""
    return f"{group_id(options, prompt_id)}#{root}@{point}"


def sample_ids(options: RolloutOptions, prompt_id: str) -> list[str]:
    if options.branch is not None:
        return [f"{branch_group_id(options, prompt_id, root, point)}.{draw}" for root in range(options.group_size)
                for point in options.branch_points() for draw in range(options.branch[1])]
    return [f"{group_id(options, prompt_id)}#{k}" for k in range(options.group_size)]


@dataclass
class RunSummary:
    prompts: int
    videos: int
    directory: Path


def checked_output(out: str | os.PathLike, pipe, options: RolloutOptions, context_parallel: int = 1) -> Path:
    """``out`` as a Path, once the options fit the pipeline (and the video's tokens split over ``context_parallel``
    processes) and ``out`` is a new directory (VptError otherwise)."""
    from vpt.models.parallel import check_token_split

    options.check()
    try:
        _, frames, height, width = latent_shape(pipe, options.frames, options.height, options.width)
    except ValueError as error:
        raise VptError(f"--frames {options.frames} --height {options.height} --width {options.width}: {error}") \
            from None
    check_token_split(pipe.transformer, context_parallel, frames, height, width)
    return check_new_directory(out, "--out")


def padding(pipe, options: RolloutOptions, context_parallel: int,
            steer: Steer | None = None) -> Callable[[PromptItem], None] | None:
    """The ``pad`` of :func:`sample_into` when this launch's processes must run the generator's transformer in step
    (sharded, or ``context_parallel``): sample a prompt's group as ``sample`` would (with ``steer``) and keep
    nothing; None otherwise."""
    if context_parallel == 1 and not is_sharded(pipe.transformer):
        return None

    def pad(item: PromptItem) -> None:
        embeds, negative = encode_prompts(pipe, [item.prompt], options.negative_prompt, options.guidance,
                                          options.max_sequence_length)
        if options.branch is not None:
            sample_branches(pipe, embeds, negative, item.prompt_id, options)
        else:
            sample_group(pipe, embeds, negative, item.prompt_id, options, steer=steer)

    return pad


def sample_into(out: Path, table: str, schema: str, prompts: Sequence[PromptItem], order: Sequence[str],
                processes, sample: Callable[[Path, PromptItem, str], list[dict]],
                finish: Callable[[Path], None] | None = None,
                pad: Callable[[PromptItem], None] | None = None, context_parallel: int = 1) -> None:
    """Fill the new directory ``out``: each process runs ``sample(directory, prompt, stem)`` (which writes its files
    under ``directory`` and returns its table rows) for its share of ``prompts``, into one hidden directory whose
    ``table`` (rows sorted into ``order`` of their ids) the main process writes, then ``finish(directory)``, before
    renaming it to ``out``. ``pad(prompt)`` (samples a prompt and keeps nothing): for processes that run the
    transformer in step, sharded or ``context_parallel`` — a process left without a prompt in a round samples the
    first one, and the members of a context-parallel group other than the first sample their group's prompts
    alongside it without writing."""
    from vpt.io.tables import gather_parts

    stems = file_stems([item.prompt_id for item in prompts])
    temporary = None
    if processes.is_main:
        temporary = temporary_sibling(out)
        temporary.mkdir(parents=True)
    temporary = Path(processes.share(None if temporary is None else str(temporary)))
    try:
        groups = processes.data_groups(context_parallel)
        mine = groups.shard(range(len(prompts)))
        rounds = -(-len(prompts) // groups.groups) if pad is not None else len(mine)
        with gather_parts(temporary / table, schema, processes, order=order) as part:
            for round_index in range(rounds):
                if round_index >= len(mine):
                    pad(prompts[0])
                elif groups.writes:
                    part.write(sample(temporary, prompts[mine[round_index]], stems[mine[round_index]]))
                else:
                    pad(prompts[mine[round_index]])
        if processes.is_main:
            if finish is not None:
                finish(temporary)
            commit(temporary, out)
        processes.wait()
    finally:
        if processes.is_main:
            shutil.rmtree(temporary, ignore_errors=True)


def sample_rollouts(pipe, prompts: Sequence[PromptItem], options: RolloutOptions, out: str | os.PathLike,
                    processes, policy_id: str, model_id: str,
                    on_step: Callable[[int], None] | None = None, context_parallel: int = 1) -> RunSummary:
    """Sample ``options.group_size`` videos for every prompt into the rollouts directory ``out`` (see
    :mod:`vpt.rollouts.store`). ``processes``: :class:`vpt.distributed.Processes` of this launch;
    ``context_parallel``: the degree the generator's transformer runs with (:func:`open_generator`)."""
    out = checked_output(out, pipe, options, context_parallel)
    order = [sample_id for item in prompts for sample_id in sample_ids(options, item.prompt_id)]
    common = {"policy_id": policy_id, "model_id": model_id, "noise_level": float(options.noise_level),
              "sde_form": options.sde_form,
              "guidance": float(options.guidance), "frames": options.frames, "height": options.height,
              "width": options.width, "fps": float(options.fps),
              "sampling_batch": options.batch_size or options.group_size}

    def sample(directory: Path, item: PromptItem, stem: str) -> list[dict]:
        warn_long_prompts(pipe, [item.prompt], options.max_sequence_length, [item.where or item.prompt_id])
        embeds, negative = encode_prompts(pipe, [item.prompt], options.negative_prompt, options.guidance,
                                          options.max_sequence_length)
        embeds_shard, negative_key = write_embeddings(directory, stem, embeds, negative)
        if options.branch is not None:
            rows = []
            for branch in sample_branches(pipe, embeds, negative, item.prompt_id, options, on_step):
                name = branch_group_id(options, item.prompt_id, branch.root, branch.point)
                where = f"{stem}-{branch.root:03d}-k{branch.point:03d}"
                draws = range(options.branch[1])
                rows += write_group(directory, branch.group, item.prompt, name, where,
                                    [f"{name}.{draw}" for draw in draws], [f"{where}-{draw:03d}" for draw in draws],
                                    embeds_shard, negative_key,
                                    {**item.carried, **common, "sampling_batch": options.branch[1],
                                     "branch_root": branch.root, "branch_point": branch.point}, options.fps)
            return rows
        group = sample_group(pipe, embeds, negative, item.prompt_id, options, on_step)
        return write_group(directory, group, item.prompt, group_id(options, item.prompt_id), stem,
                           sample_ids(options, item.prompt_id), [f"{stem}-{k:03d}" for k in range(options.group_size)],
                           embeds_shard, negative_key, {**item.carried, **common}, options.fps)

    sample_into(out, TABLE_FILE, "rollouts", prompts, order, processes, sample, finish=write_checksums,
                pad=padding(pipe, options, context_parallel), context_parallel=context_parallel)
    return RunSummary(prompts=len(prompts), videos=len(order), directory=out)
