"""What a report reads: the declared tables and policy checkpoints under the RUN arguments, classified by the schema
each table names in its metadata.

A RUN is a directory, walked recursively (natural path order; ``*.run`` working directories, ``checkpoint-*``
snapshots, ``cache`` and hidden entries are skipped: they hold no result of their own), or one table file. Tables
of other kinds (prefs, annotations, ...) and files without a schema are passed over; a RUN holding none of the kinds
below is refused, as is one that does not exist or a table that cannot be read — before anything is written. A
file under two arguments (a run and one of its checkpoints) is read once, for the first.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vpt.errors import VptError

VIDEO_KINDS = ("rollouts", "videos")
GSB_KINDS = ("gsb", "gsb_counts", "gsb_judgements")
KINDS = (*VIDEO_KINDS, "scores", "metrics", *GSB_KINDS, "rewardbench")
POLICY_FILE = "policy.json"  # a policy checkpoint's record (vpt.train.policy, which imports torch)
NOT_SCORES = {"score", "seed", "fps", "frames", "height", "width", "sample_index", "step_seed", "branch_root",
              "branch_point", "guidance", "guidance_scale", "noise_level"}
"""Numeric columns of a scores table that are not reward dimensions (``score`` repeats the first dimension)."""

log = logging.getLogger(__name__)


def natural_key(text: str) -> tuple:
    """Sort key that orders ``policy-2`` before ``policy-10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


@dataclass(frozen=True)
class Video:
    """One video of a stage: where its file is, and what aligns it with the other stages' videos."""

    id: str
    prompt: str
    seed: int | None
    path: Path  # resolved file
    written: str  # the path as its table writes it


@dataclass
class Stage:
    """A video source (one rollouts or videos table): a column of the gallery."""

    name: str
    table: Path
    videos: list[Video]


@dataclass
class ScoresTable:
    path: Path
    columns: list[str]  # the numeric dimension columns, in table order
    rows: list[dict]


@dataclass
class MetricsTable:
    """One ``metrics.parquet``; ``checkpoint`` names the directory it sits in (a curve's label)."""

    path: Path
    checkpoint: str
    rows: list[dict]


@dataclass
class Run:
    """All metrics tables under one RUN argument (its curves)."""

    name: str
    tables: list[MetricsTable] = field(default_factory=list)


@dataclass
class Checkpoint:
    name: str
    path: Path
    record: dict


@dataclass
class NamedTable:
    """A GSB or reward-bench table: its kind, its name in the page and its rows."""

    kind: str
    name: str
    rows: list[dict]
    source: Path
    table: object = None  # the pyarrow table (what vpt.metrics.gsb reads judgements from)


@dataclass
class Inputs:
    root: Path  # the common parent of the RUN arguments: names in the page are relative to it
    stages: list[Stage] = field(default_factory=list)
    scores: list[ScoresTable] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    gsb: list[NamedTable] = field(default_factory=list)
    rewardbench: list[NamedTable] = field(default_factory=list)

    def name(self, path: Path) -> str:
        """``path`` relative to the common parent (POSIX spelling)."""
        relative = os.path.relpath(path.resolve(), self.root)
        return Path(relative).as_posix()


def common_parent(paths: Sequence[Path]) -> Path:
    """The deepest directory holding every argument (for a directory argument, the directory above it), so each
    argument keeps at least its own name."""
    return Path(os.path.commonpath([str(path.resolve().parent) for path in paths]))


def _skipped(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or name == "cache" or name.endswith(".run") or name.startswith("checkpoint-")


def _walk(directory: Path) -> list[Path]:
    """Files under ``directory`` in natural path order, pruned as the module docstring says."""
    found = []
    for entry in sorted(directory.iterdir(), key=lambda p: natural_key(p.name)):
        if _skipped(entry):
            continue
        if entry.is_dir():
            found.extend(_walk(entry))
        elif entry.is_file():
            found.append(entry)
    return found


def _kind(path: Path) -> str | None:
    """The schema a Parquet file names (None when it names none); a file that cannot be read stops the report."""
    from vpt.io.tables import declared_schema

    if not path.name.endswith(".parquet"):
        return None
    try:
        return declared_schema(path)
    except VptError as error:
        raise VptError(f"{error}; replace or remove it, or name the run's other tables") from None


def _read(path: Path, kind: str):
    from vpt.io.tables import read_table

    try:
        return read_table(path, kind)
    except VptError as error:
        raise VptError(f"{error}; replace or remove it, or name the run's other tables") from None


def collect(arguments: Sequence[str | os.PathLike]) -> Inputs:
    """Read and classify everything under ``arguments`` (see the module docstring)."""
    paths = [Path(argument) for argument in arguments]
    for path in paths:
        if not path.exists():
            raise VptError(f"{path}: no such file or directory; name a run directory or a table")
    inputs = Inputs(root=common_parent(paths))
    read: dict[Path, int] = {}  # a file two arguments hold (a run and one of its checkpoints) counts once
    for argument in paths:
        files = _walk(argument) if argument.is_dir() else [argument]
        run = Run(inputs.name(argument))
        found = 0
        for path in files:
            resolved = path.resolve()
            if resolved not in read:
                read[resolved] = _add(inputs, run, path)
            found += read[resolved]
        if not found:
            raise VptError(f"{argument}: holds no table a report shows ({', '.join(KINDS)}) and no {POLICY_FILE}; "
                           "name a run directory or one of these tables")
        if run.tables:
            inputs.runs.append(run)
    return inputs


def _add(inputs: Inputs, run: Run, path: Path) -> int:
    """File ``path`` into ``inputs`` by its kind; returns 1 when it is one the report uses."""
    if path.name == POLICY_FILE:
        from vpt.io.jsonfile import read_json_object

        record = read_json_object(path, "the policy record", "replace it, or name the run's tables instead")
        inputs.checkpoints.append(Checkpoint(inputs.name(path.parent), path.parent.resolve(), record))
        return 1
    kind = _kind(path)
    if kind not in KINDS:
        return 0
    if kind in VIDEO_KINDS:
        inputs.stages.append(_stage(inputs, path, kind))
    elif kind == "scores":
        table = _read(path, kind)
        columns = [f.name for f in table.schema if _numeric(f.type) and f.name not in NOT_SCORES]
        if not columns and "score" in table.column_names:
            columns = ["score"]
        inputs.scores.append(ScoresTable(path, columns, table.to_pylist()))
    elif kind == "metrics":
        run.tables.append(MetricsTable(path, inputs.name(path.parent), _read(path, kind).to_pylist()))
    else:
        table = _read(path, kind)
        named = NamedTable(kind, inputs.name(path), table.to_pylist(), path, table)
        (inputs.rewardbench if kind == "rewardbench" else inputs.gsb).append(named)
    return 1


def _numeric(data_type) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(data_type) or pa.types.is_integer(data_type)


def _stage(inputs: Inputs, path: Path, kind: str) -> Stage:
    """The videos of one rollouts / videos table; files that are missing are left out with a warning."""
    from vpt.io.manifest import read_video_table
    from vpt.io.tables import resolve_path

    try:
        table = read_video_table(path)
    except VptError as error:
        raise VptError(f"{error}; replace or remove it, or name the run's other tables") from None
    videos, missing = [], []
    for number, row in enumerate(table.to_pylist(), start=1):
        file = resolve_path(row["path"], path, f"{path} row {number}").resolve()
        if not file.is_file():
            missing.append(row["path"])
            continue
        videos.append(Video(row["id"], row.get("prompt") or "", row.get("seed"), file, row["path"]))
    if missing:
        log.warning("%s: %d video file(s) missing (the first: %s); left out of the gallery", path, len(missing),
                    missing[0])
    siblings = [p for p in path.parent.glob("*.parquet") if p != path and not p.name.startswith(".")]
    named = path.parent if not any(_kind(p) in VIDEO_KINDS for p in siblings) else path.with_suffix("")
    name = inputs.name(named)
    return Stage(name if name != "." else path.stem, path, videos)
