"""Build a report folder: ``index.html``, ``plots/*.png`` and copies of the gallery's videos under ``videos/``.

Everything is read and checked first (:func:`vpt.report.collect.collect`), then the folder is filled under a hidden
temporary name beside ``out`` and renamed into place, marked as vpt's own so that a later report may replace it.
The same inputs give the same bytes in every file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vpt.errors import VptError
from vpt.report import compare, guard, page, plots
from vpt.report.collect import Inputs, collect

KEY_OPTIONS = {
    "grpo": ("reward", "kl_beta", "clip_range", "bpgo", "vipo", "crt", "self_paced", "timestep_fraction"),
    "dpo": ("dimension", "beta", "decoupled", "reference", "timesteps", "lora"),
    "sft": ("rwr_beta", "lora"),
}
"""The options of each stage's record that the lineage shows (a stage not listed: its first six scalar options)."""


@dataclass
class Report:
    """What :func:`build_report` wrote: the page, and what it found worth a line on stderr."""

    page: Path
    stages: int
    videos: int
    plots: int
    warnings: list[str]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def text_tables(directories: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """(file name, text) of the ``*.txt`` files of each ``--tables`` directory, in name order."""
    found = []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise VptError(f"--tables {directory}: no such directory; give the folder the make table-* targets "
                           "wrote their .txt tables to")
        files = sorted(directory.glob("*.txt"), key=lambda p: p.name)
        if not files:
            raise VptError(f"--tables {directory}: holds no .txt table; give the folder the make table-* targets "
                           "wrote to")
        for file in files:
            try:
                found.append((file.name, file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as error:
                raise VptError(f"--tables {file}: cannot read it ({error}); replace or remove it") from None
    return found


def build_report(runs: Sequence[str | os.PathLike], out: str | os.PathLike, base: str | None = None,
                 title: str | None = None, tables: Sequence[str | os.PathLike] = (), per_prompt: int = 2) -> Report:
    """Read ``runs`` and write the report folder ``out`` (new, or one an earlier report wrote)."""
    from vpt.io.atomic import OWNER_FILE, atomic_directory, check_new_directory

    if per_prompt < 1:
        raise VptError(f"--per-prompt {per_prompt}: must be 1 or more (rows of videos per prompt)")
    target = check_new_directory(out, "--out", owned_ok=True)
    inputs = collect(runs)
    texts = text_tables(tables)
    base_index = compare.stage_index(inputs.stages, base) if inputs.stages or base is not None else None
    scores = compare.video_scores(inputs)
    flags = [(run.name, flag) for run in inputs.runs for flag in guard.run_flags([t.rows for t in run.tables])]
    warnings = [f"{name}: {flag.describe()}" for name, flag in flags]
    with atomic_directory(target, replace=True) as folder:
        (folder / OWNER_FILE).write_text("This directory was created by vpt report; a later report may replace "
                                         "it.\n", encoding="utf-8")
        sections, videos = _gallery(inputs, scores, per_prompt, folder)
        if base_index is not None:
            sections += _win_rates(inputs, base_index, scores)
        sections += _gsb(inputs) + _rewardbench(inputs)
        curves, count = _curves(inputs, folder)
        sections += curves + _lineage(inputs)
        sections += [page.Section(name, f"<pre>{page.escape(text)}</pre>") for name, text in texts]
        subtitle = "Runs: " + ", ".join(run_name(inputs, run) for run in runs)
        document = page.page(title or "vpt report", subtitle, warnings, sections)
        (folder / "index.html").write_text(document, encoding="utf-8")
    return Report(target / "index.html", len(inputs.stages), videos, count, warnings)


def run_name(inputs: Inputs, argument: str | os.PathLike) -> str:
    return inputs.name(Path(argument))


def _caption(values: dict[str, float]) -> list[str]:
    return [f"{column} {page.number(value)}" for column, value in values.items()]


def _gallery(inputs: Inputs, scores, per_prompt: int, folder: Path) -> tuple[list[page.Section], int]:
    """The gallery section, its videos copied under ``folder/videos``; returns the sections and the video count."""
    if not inputs.stages:
        return [], 0
    copied: dict[Path, str] = {}
    rows = []
    for row in compare.gallery_rows(inputs.stages, per_prompt):
        cells = []
        for index, cell in enumerate(row.cells):
            if cell.video is None:
                cells.append(page.VideoCell(None))
                continue
            if cell.video.path not in copied:
                stage = inputs.stages[index]
                name = f"videos/{index:02d}-{_slug(stage.name)}/{stage.videos.index(cell.video):03d}-" \
                       f"{_slug(cell.video.path.name)}"
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cell.video.path, folder / name)
                copied[cell.video.path] = name
            seed = [f"seed {cell.video.seed}"] if cell.other_noise and cell.video.seed is not None else []
            cells.append(page.VideoCell(copied[cell.video.path], [*seed, *_caption(scores.get(cell.video.path, {}))],
                                        cell.other_noise))
        label = "–" if row.seed is None else f"seed {row.seed}"
        rows.append((row.prompt, label, cells))
    note = (f"One row per initial noise (seed), at most {per_prompt} per prompt; a stage without a video of the "
            "row's noise shows another of its videos of the prompt, marked 'other noise'. Captions: the video's "
            "scores from the scores tables.")
    body = page.gallery([stage.name for stage in inputs.stages], rows)
    return [page.Section("Videos", body, note)], len(copied)


def _win_rates(inputs: Inputs, base: int, scores) -> list[page.Section]:
    columns, rates = compare.win_rates(inputs.stages, base, scores)
    if not rates:
        return []
    rows = []
    for stage, by_column in rates.items():
        rows.append([stage, *(f"{by_column[c].percent:.1f} ({by_column[c].pairs})" if c in by_column else "–"
                              for c in columns)])
    note = (f"Percent of videos of the same prompt and initial noise (seed) where the stage scores higher than the "
            f"base '{inputs.stages[base].name}'; a tie counts half a win. In brackets: n pairs.")
    return [page.Section("Win rate against the base", page.table(["stage", *columns], rows), note)]


def _gsb(inputs: Inputs) -> list[page.Section]:
    from vpt.metrics.gsb import counts_by_aspect, gsb_metrics, judgement_counts_by_aspect

    rows = []
    for named in inputs.gsb:
        if named.kind == "gsb":
            counts = {row["aspect"]: [row["good"], row["same"], row["bad"]] for row in named.rows}
        elif named.kind == "gsb_counts":
            counts = counts_by_aspect(named.table, str(named.source))
        else:
            counts = {aspect: [int(v) for v in values]
                      for aspect, values in judgement_counts_by_aspect(named.table, str(named.source), None).items()}
        for aspect, (good, same, bad) in counts.items():
            metrics = gsb_metrics(good, same, bad)
            rows.append([named.name, aspect, good, same, bad, good + same + bad, metrics["margin"],
                         metrics["win_rate"], metrics["preference"]])
    if not rows:
        return []
    header = ["table", "aspect", "G", "S", "B", "N", "(G−B)/N %", "G/(G+B) %", "(G+S/2)/N %"]
    return [page.Section("GSB", page.table(header, rows, numeric_from=2),
                         "Good / same / bad judgements of the model against its baseline.")]


def _rewardbench(inputs: Inputs) -> list[page.Section]:
    rows = [[named.name, row["dimension"], row["score_column"], row["accuracy_with_ties"], row["tie_threshold"],
             row["accuracy_without_ties"], row["pairs"], row["ties"]]
            for named in inputs.rewardbench for row in named.rows]
    if not rows:
        return []
    header = ["table", "dimension", "column", "acc. w/ ties %", "tie threshold", "acc. w/o ties %", "pairs", "ties"]
    return [page.Section("Reward-bench accuracy", page.table(header, rows, numeric_from=3),
                         "With ties: the best accuracy over all labelled pairs when |margin| <= threshold predicts "
                         "a tie; without ties: over the decisive pairs.")]


def _curves(inputs: Inputs, folder: Path) -> tuple[list[page.Section], int]:
    parts, count = [], 0
    for index, run in enumerate(inputs.runs):
        sources = []
        figures, single = plots.figures(run.tables)
        for number, figure in enumerate(figures):
            name = f"plots/{index:02d}-{number:02d}-{_slug(figure.title)}.png"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            plots.save(figure, folder / name)
            sources.append((name, f"{run.name}: {figure.title}"))
        count += len(sources)
        tables = ", ".join(table.checkpoint for table in run.tables)
        listed = [[name, f"{axis} {x}", value] for name, axis, x, value in single]
        points = page.table(["metric", "at", "value"], listed, numeric_from=2) if single else ""
        parts.append(f"<h3>{page.escape(run.name)}</h3><p class=note>metrics of {page.escape(tables)}</p>"
                     + page.images(sources) + points)
    if not parts:
        return [], 0
    note = ("Per-iteration figures (reward, judges, bpgo, curriculum, ...) against the iteration, with ± one std "
            "bands; per-step figures against the global optimizer step; drift against the noise level. Metrics with a "
            "single point are listed below a run's figures.")
    return [page.Section("Curves", "".join(parts), note)], count


def _lineage(inputs: Inputs) -> list[page.Section]:
    if not inputs.checkpoints:
        return []
    by_path = {checkpoint.path: checkpoint.name for checkpoint in inputs.checkpoints}
    rows = []
    for checkpoint in inputs.checkpoints:
        record = checkpoint.record
        stage = record.get("stage", "grpo")
        command = record.get("command")
        rows.append([checkpoint.name, stage, _parent(record.get("parent"), by_path), _plain(record.get("step")),
                     _plain(record.get("iteration")), _options(stage, record.get(stage)),
                     shlex.join(_local(token, inputs.root) for token in command) if isinstance(command, list) else ""])
    header = ["checkpoint", "stage", "parent", "step", "iteration", "key options", "command"]
    return [page.Section("What produced it", page.table(header, rows, numeric_from=99),
                         "From each checkpoint's policy.json; paths are shown relative to the runs' common folder.")]


def _plain(value) -> str:
    return "" if value is None else str(value)


def _parent(parent, by_path: dict[Path, str]) -> str:
    """A parent policy by its name in the report when it is one of the given checkpoints."""
    if not isinstance(parent, str):
        return ""
    path, _, digest = parent.rpartition("#")
    if not path:
        return Path(parent).name if "/" in parent else parent
    resolved = Path(path).resolve()
    return by_path.get(resolved, f"{resolved.name}#{digest}")


def _options(stage: str, options) -> str:
    if not isinstance(options, dict):
        return ""
    names = KEY_OPTIONS.get(stage) or [k for k, v in options.items() if not isinstance(v, (dict, list))][:6]
    return ", ".join(f"{name}={_value(options[name])}" for name in names if name in options)


def _value(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list) and len(value) > 3:
        return f"[{len(value)} values]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _local(token: str, root: Path) -> str:
    """A command word without the local absolute path: relative to the runs' folder, else its last part."""
    token = str(token)
    if not token.startswith("/"):
        return token
    relative = os.path.relpath(token, root)
    return relative if not relative.startswith("..") else f".../{Path(token).name}"
