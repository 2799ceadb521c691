"""Reward-hacking guard: flag a run whose optimised reward rises while a held-out judge's score falls.

The metric rows it reads (``metrics`` tables, step null):

* GRPO, iteration k: ``reward/mean`` (the optimised reward of the rollouts iteration k trained on) and
  ``judge/<col>/mean``, ``judge/<col>/std`` over the same rollouts.
* DPO: ``judge/<col>/start_mean``, ``judge/<col>/start_std`` (the starting policy's evaluation samples) and
  ``judge/<col>/mean``, ``judge/<col>/std`` (the trained policy's).

The rule. A fall counts when it is larger than one standard error of one iteration's judge mean,
``SE = std / sqrt(n)``, with ``std`` the judge's std (averaged over the run's iterations) and ``n`` the samples per
iteration, read from the iteration's ``judge/<col>/n`` or ``judge/n`` row (the videos the stage judged; averaged
likewise); without one, ``n = 1``, so the bar is the judge's std itself (cautious: only a fall as large as
the spread of single samples is flagged).

* GRPO: least-squares slopes over iterations of ``reward/mean`` and of the judge's mean (at least two iterations
  of each); flagged when the reward's slope is above 0 and the judge's fitted fall over its iterations,
  ``-slope * (last - first iteration)``, exceeds SE.
* DPO (one checkpoint's table): flagged when ``start_mean - mean`` exceeds SE (``std`` the trained policy's, else
  the start's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

@dataclass(frozen=True)
class Flag:
    """One judge that fell while the reward rose (GRPO) or below its start (DPO)."""

    judge: str
    fall: float  # the judge's fitted fall over the run (GRPO) or start_mean - mean (DPO)
    bar: float  # one standard error of an iteration's judge mean
    reward_slope: float | None  # per iteration; None for DPO

    def describe(self) -> str:
        if self.reward_slope is None:
            return (f"judge '{self.judge}' ended {self.fall:.4g} below the starting policy's (more than one standard "
                    f"error, {self.bar:.4g})")
        return (f"reward/mean rose ({self.reward_slope:+.4g} per iteration) while judge '{self.judge}' fell "
                f"{self.fall:.4g} over the run (more than one standard error of an iteration's mean, {self.bar:.4g})")


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` against ``xs`` (at least two distinct xs)."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
            / sum((x - mean_x) ** 2 for x in xs))


def _per_iteration(rows: Sequence[dict]) -> dict[str, dict[int, float]]:
    """name -> iteration -> value of the rows with step null (the first row of a pair wins)."""
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["step"] is None and row["value"] is not None and math.isfinite(row["value"]):
            series.setdefault(row["name"], {}).setdefault(row["iteration"], row["value"])
    return series


def _judges(series: dict[str, dict[int, float]]) -> list[str]:
    return sorted({name[len("judge/"):-len("/mean")] for name in series
                   if name.startswith("judge/") and name.endswith("/mean") and not name.endswith("/start_mean")})


def _bar(series: dict[str, dict[int, float]], judge: str, iterations: Sequence[int], std_name: str) -> float | None:
    """One standard error of an iteration's judge mean (see the module docstring); None without a std."""
    stds = [series.get(std_name, {}).get(k) for k in iterations]
    stds = [value for value in stds if value is not None]
    if not stds:
        return None
    counts = []
    for k in iterations:
        for name in (f"judge/{judge}/n", "judge/n"):
            if series.get(name, {}).get(k):
                counts.append(series[name][k])
                break
    n = sum(counts) / len(counts) if counts else 1.0
    return (sum(stds) / len(stds)) / math.sqrt(n)


def grpo_flags(rows: Sequence[dict]) -> list[Flag]:
    """The GRPO rule over a run's metric rows (several iterations' tables concatenated)."""
    series = _per_iteration(rows)
    reward = series.get("reward/mean", {})
    if len(reward) < 2:
        return []
    reward_slope = slope(list(reward), list(reward.values()))
    if reward_slope <= 0:
        return []
    flags = []
    for judge in _judges(series):
        means = series[f"judge/{judge}/mean"]
        iterations = sorted(means)
        if len(iterations) < 2:
            continue
        fall = -slope(iterations, [means[k] for k in iterations]) * (iterations[-1] - iterations[0])
        bar = _bar(series, judge, iterations, f"judge/{judge}/std")
        if bar is not None and fall > bar:
            flags.append(Flag(judge, fall, bar, reward_slope))
    return flags


def dpo_flags(rows: Sequence[dict]) -> list[Flag]:
    """The DPO rule over one checkpoint's metric rows."""
    series = _per_iteration(rows)
    flags = []
    for judge in _judges(series):
        start = series.get(f"judge/{judge}/start_mean")
        if not start:
            continue
        iteration = max(series[f"judge/{judge}/mean"])
        fall = start[max(start)] - series[f"judge/{judge}/mean"][iteration]
        std_name = f"judge/{judge}/std" if f"judge/{judge}/std" in series else f"judge/{judge}/start_std"
        bar = _bar(series, judge, [iteration], std_name)
        if bar is not None and fall > bar:
            flags.append(Flag(judge, fall, bar, None))
    return flags


def run_flags(tables: Sequence[Sequence[dict]]) -> list[Flag]:
    """Flags of one run: the DPO rule per table that has a starting judge, the GRPO rule over all the others."""
    flags, grpo_rows = [], []
    for rows in tables:
        if any(row["name"].endswith("/start_mean") and row["name"].startswith("judge/") for row in rows):
            flags += dpo_flags(rows)
        else:
            grpo_rows += rows
    return flags + grpo_flags(grpo_rows)
