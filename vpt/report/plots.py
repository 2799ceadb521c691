"""A run's curves as PNG files: its metric rows grouped into small figures by family.

* Per-iteration rows (step null) are drawn against the iteration: each ``<family>/.../mean`` with its ``.../std``
  as a band (``reward/...``, ``judge/...``), every other name of a family (``bpgo/*``, ``curriculum/*``, ...) as a
  line of its family's figure. A DPO judge's ``start_mean`` is drawn at iteration 0, the start of its line.
* Per-step rows are drawn against the global step, grouped as :data:`STEP_GROUPS` says; a name with a ``/`` joins
  its family, any other name gets a small figure of its own.
* A family with one point only (a single iteration or step) is listed in a table rather than drawn.
* ``drift/<sigma>`` rows make one figure of drift against the noise level σ, one line per checkpoint.

The files are byte-for-byte reproducible: Agg canvas, no software or date metadata, fixed sizes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vpt.report.collect import MetricsTable

STEP_GROUPS = {
    "loss": ("loss", "policy_loss", "kl_loss"),
    "denoising error": ("error", "chosen_error", "rejected_error", "reference_chosen_error",
                        "reference_rejected_error"),
    "DPO implicit reward": ("chosen_reward", "rejected_reward"),
    "ratio": ("ratio_mean", "ratio_min", "ratio_max"),
}
ITERATION_GROUPS = {"ratio": ("ratio_min", "ratio_max", "ratio_mean")}
DRIFT = "drift/"


@dataclass
class Line:
    label: str
    xs: list[float]
    ys: list[float]
    spread: list[float] | None = None  # a ± band (a std)


@dataclass
class Figure:
    title: str
    xlabel: str
    lines: list[Line] = field(default_factory=list)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _series(tables: Sequence[MetricsTable], per_step: bool) -> dict[str, dict[int, float]]:
    """name -> x -> value (x the step, or the iteration of step-null rows); the first table naming a point wins."""
    series: dict[str, dict[int, float]] = {}
    for table in tables:
        for row in table.rows:
            if (row["step"] is not None) != per_step or row["name"].startswith(DRIFT) or not _finite(row["value"]):
                continue
            x = row["step"] if per_step else row["iteration"]
            series.setdefault(row["name"], {}).setdefault(x, row["value"])
    return series


def _family(name: str, groups: dict[str, tuple[str, ...]]) -> str:
    if name.endswith("/n"):
        return "samples"  # a sample count (judge/n) is not on its family's scale
    if "/" in name:
        return name.split("/")[0]
    return next((group for group, members in groups.items() if name in members), name)


def _lines(names: list[str], series: dict[str, dict[int, float]], family: str) -> list[Line]:
    lines = []
    for name in names:
        if name.endswith(("/std", "/start_mean", "/start_std")) and name.rsplit("/", 1)[0] + "/mean" in series:
            continue  # drawn with its mean
        points = dict(series[name])
        spread = None
        stem = name.rsplit("/", 1)[0]
        if name.endswith("/mean"):
            start, start_std = series.get(f"{stem}/start_mean", {}), series.get(f"{stem}/start_std", {})
            if start:
                points = {0: start[min(start)], **points}
            std = {**({0: start_std[min(start_std)]} if start_std else {}), **series.get(f"{stem}/std", {})}
            if std:
                spread = [std.get(x, 0.0) for x in sorted(points)]
        label = name[len(family) + 1:] if name.startswith(family + "/") else name
        label = label[:-len("/mean")] if label.endswith("/mean") else label
        xs = sorted(points)
        lines.append(Line(label or name, xs, [points[x] for x in xs], spread))
    return lines


def figures(tables: Sequence[MetricsTable]) -> tuple[list[Figure], list[tuple[str, str, int, float]]]:
    """The figures of one run (its metrics tables), in a fixed order: per-iteration families, per-step families,
    then drift; and the metrics of families with one point only (name, x label, x, value), a table's worth."""
    found, single = [], []
    for per_step, groups, xlabel in ((False, ITERATION_GROUPS, "iteration"), (True, STEP_GROUPS, "step")):
        series = _series(tables, per_step)
        families: dict[str, list[str]] = {}
        for name in series:
            families.setdefault(_family(name, groups), []).append(name)
        for family, names in families.items():
            lines = _lines(names, series, family)
            if any(len(line.xs) > 1 for line in lines):
                found.append(Figure(family, xlabel, lines))
            else:
                single += [(name, xlabel, x, value) for name in names for x, value in series[name].items()]
    drift = Figure("drift from the reference", "noise level σ")
    for table in tables:
        points = sorted((float(row["name"][len(DRIFT):]), row["value"]) for row in table.rows
                        if row["name"].startswith(DRIFT) and _finite(row["value"])
                        and re.fullmatch(r"[0-9.]+", row["name"][len(DRIFT):]))
        if points:
            drift.lines.append(Line(table.checkpoint, [p[0] for p in points], [p[1] for p in points]))
    if drift.lines:
        found.append(drift)
    return found, single


def save(figure: Figure, path: Path) -> None:
    """Draw ``figure`` into the PNG file ``path`` (same figure, same bytes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    canvas_figure = MplFigure(figsize=(4.2, 2.8), dpi=100, layout="constrained")
    FigureCanvasAgg(canvas_figure)
    axes = canvas_figure.add_subplot()
    for line in figure.lines:
        drawn = axes.plot(line.xs, line.ys, marker="o", markersize=3, linewidth=1.2, label=line.label)[0]
        if line.spread is not None:
            low = [y - s for y, s in zip(line.ys, line.spread)]
            high = [y + s for y, s in zip(line.ys, line.spread)]
            axes.fill_between(line.xs, low, high, color=drawn.get_color(), alpha=0.2, linewidth=0)
    axes.set_title(figure.title, fontsize=10)
    axes.set_xlabel(figure.xlabel, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(True, alpha=0.3)
    if figure.xlabel != "noise level σ":
        axes.xaxis.get_major_locator().set_params(integer=True)
    if len(figure.lines) > 1 or figure.lines[0].label != figure.title:
        axes.legend(fontsize=7, frameon=False)
    canvas_figure.savefig(path, format="png", metadata={"Software": None})
