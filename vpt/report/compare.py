"""The stages side by side: each video's scores, the gallery's rows (one initial noise per row) and the win rates
of every stage against the base.

Scores join videos by file: a scores row names its video by path, resolved against the scores table's directory.
A table whose paths do not resolve that way (scored from a manifest elsewhere: its paths are the manifest's) joins
the one video table that holds the same (id, path) pairs, or, where several hold some, the one holding exactly its
pairs; failing both it is left out with a warning, since nothing tells which stage it scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vpt.errors import VptError
from vpt.report.collect import Inputs, Stage, Video

log = logging.getLogger(__name__)


def video_scores(inputs: Inputs) -> dict[Path, dict[str, float]]:
    """Resolved video file -> score column -> value, over every scores table (the first table naming a column
    for a video wins)."""
    from vpt.io.tables import resolve_path

    by_file = {video.path: video for stage in inputs.stages for video in stage.videos}
    found: dict[Path, dict[str, float]] = {}
    for table in inputs.scores:
        matches = []
        for number, row in enumerate(table.rows, start=1):
            file = resolve_path(row["path"], table.path, f"{table.path} row {number}").resolve()
            if file in by_file:
                matches.append((file, row))
        if not matches:
            matches = _matches_by_written_path(table, inputs.stages)
        for file, row in matches:
            values = found.setdefault(file, {})
            for column in table.columns:
                if row.get(column) is not None and column not in values:
                    values[column] = float(row[column])
    return found


def _matches_by_written_path(table, stages: Sequence[Stage]) -> list[tuple[Path, dict]]:
    """Rows of ``table`` joined on (id, path as written) with the one stage whose table holds such pairs."""
    keys = {(row["id"], row["path"]) for row in table.rows}
    holders = [stage for stage in stages if keys & {(video.id, video.written) for video in stage.videos}]
    if not holders:
        log.warning("%s: scores no video of the report; left out", table.path)
        return []
    exact = [stage for stage in holders if keys == {(video.id, video.written) for video in stage.videos}]
    holders = exact if len(exact) == 1 else holders
    if len(holders) > 1:
        log.warning("%s: its paths fit the videos of %s alike; left out (write it beside the videos it scores, or "
                    "with absolute paths)", table.path, ", ".join(stage.name for stage in holders))
        return []
    by_key = {(video.id, video.written): video.path for video in holders[0].videos}
    return [(by_key[(row["id"], row["path"])], row) for row in table.rows if (row["id"], row["path"]) in by_key]


@dataclass(frozen=True)
class Cell:
    """One stage's video in a gallery row; ``other_noise`` when it is not of the row's initial noise."""

    video: Video | None
    other_noise: bool = False


@dataclass(frozen=True)
class GalleryRow:
    prompt: str
    seed: int | None
    cells: tuple[Cell, ...]  # one per stage


def gallery_rows(stages: Sequence[Stage], per_prompt: int) -> list[GalleryRow]:
    """Up to ``per_prompt`` rows per prompt (prompts in order of first appearance), one per initial noise (seeds in
    order of first appearance over the stages). A stage without a video of the row's seed shows its next video of
    the prompt that no row uses, marked as of another noise."""
    prompts: dict[str, list[int | None]] = {}
    for stage in stages:
        for video in stage.videos:
            seeds = prompts.setdefault(video.prompt, [])
            if video.seed is None or video.seed not in seeds:
                seeds.append(video.seed)
    rows = []
    for prompt, seeds in prompts.items():
        chosen = seeds[:per_prompt]
        columns = [_stage_cells([v for v in stage.videos if v.prompt == prompt], chosen) for stage in stages]
        rows += [GalleryRow(prompt, seed, tuple(column[index] for column in columns))
                 for index, seed in enumerate(chosen)]
    return rows


def _stage_cells(videos: list[Video], seeds: list[int | None]) -> list[Cell]:
    """One stage's cells for the rows ``seeds`` of a prompt, from its ``videos`` of that prompt."""
    exact: dict[int, Video] = {}
    for video in videos:
        if video.seed is not None and video.seed in seeds:
            exact.setdefault(video.seed, video)
    used = set(exact.values())
    spare = iter([video for video in videos if video not in used])
    cells = []
    for seed in seeds:
        if seed in exact:
            cells.append(Cell(exact[seed]))
        else:
            video = next(spare, None)
            cells.append(Cell(video, video is not None))
    return cells


def stage_index(stages: Sequence[Stage], base: str | None) -> int:
    """Position of the base stage (``--base NAME``; default the first)."""
    if base is None:
        return 0
    names = [stage.name for stage in stages]
    if base not in names:
        known = ", ".join(names) if names else "none: the runs hold no rollouts or videos table"
        raise VptError(f"--base {base}: names no stage of the report; stages: {known}")
    return names.index(base)


@dataclass(frozen=True)
class WinRate:
    """Wins of a stage over the base on one score column: ties count half; ``pairs`` videos of the same prompt and
    initial noise that both have the column."""

    wins: int
    ties: int
    pairs: int

    @property
    def percent(self) -> float:
        return 100.0 * (self.wins + self.ties / 2) / self.pairs


def win_rates(stages: Sequence[Stage], base: int, scores: dict[Path, dict[str, float]]
              ) -> tuple[list[str], dict[str, dict[str, WinRate]]]:
    """Score columns compared, and stage name -> column -> :class:`WinRate` against stage ``base`` (pairs: the first
    video of each (prompt, seed) in each stage)."""
    def keyed(stage: Stage) -> dict[tuple[str, int], Video]:
        found: dict[tuple[str, int], Video] = {}
        for video in stage.videos:
            if video.seed is not None:
                found.setdefault((video.prompt, video.seed), video)
        return found

    reference = keyed(stages[base])
    columns: list[str] = []
    table: dict[str, dict[str, WinRate]] = {}
    for index, stage in enumerate(stages):
        if index == base:
            continue
        counts: dict[str, list[int]] = {}
        for key, video in keyed(stage).items():
            if key not in reference:
                continue
            mine, theirs = scores.get(video.path, {}), scores.get(reference[key].path, {})
            for column in mine:
                if column in theirs:
                    wins, ties, pairs = counts.setdefault(column, [0, 0, 0])
                    a, b = mine[column], theirs[column]
                    counts[column] = [wins + (a > b), ties + (a == b), pairs + 1]
        if counts:
            table[stage.name] = {column: WinRate(*values) for column, values in counts.items()}
            columns += [column for column in counts if column not in columns]
    return columns, table
