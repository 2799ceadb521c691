"""Reward-bench accuracy: VideoAlign's Table 2 (Liu et al. 2025, "Improving Video Generation with Human Feedback").

``m = s_A - s_B`` per pair, human label ``h`` in {A wins (1), B wins (-1), tie (0)}; other labels are left out.

- Without ties: over the non-tie pairs, a pair is right when ``sign(m)`` matches ``h``; ``m = 0`` counts as wrong.
- With ties (tie calibration, Deutsch et al. 2023): predict a tie when ``|m| <= ε`` and ``sign(m)`` otherwise; sweep
  ε over 0 and every ``|m|`` and report the best accuracy over all pairs (ties included), with the ε that gave it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vpt.errors import VptError


def accuracy_without_ties(margins: np.ndarray, labels: np.ndarray) -> float:
    """Share of decisive pairs whose margin sign matches the label. margins: float [N]; labels: int [N].

    NaN when there is no decisive pair.
    """
    margins, labels = np.asarray(margins, np.float64), np.asarray(labels)
    decisive = (labels == 1) | (labels == -1)
    if not decisive.any():
        return float("nan")
    return float(np.mean(np.sign(margins[decisive]) == labels[decisive]))


def accuracy_with_ties(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best tie-calibrated accuracy over pairs labelled A, B or tie, and the threshold ε that reaches it.

    margins: float [N]; labels: int [N]. O(N log N): pairs sorted by |m|, all thresholds evaluated at once.
    Returns (accuracy, ε); (NaN, NaN) with no usable pair.
    """
    margins, labels = np.asarray(margins, np.float64), np.asarray(labels)
    usable = (labels == 1) | (labels == -1) | (labels == 0)
    margins, labels = margins[usable], labels[usable]
    n = len(margins)
    if n == 0:
        return float("nan"), float("nan")
    magnitude = np.abs(margins)
    order = np.argsort(magnitude, kind="stable")
    magnitude, margins, labels = magnitude[order], margins[order], labels[order]
    sign_right = (np.sign(margins) == labels) & (labels != 0)
    # With ε = magnitude[k], pairs 0..k (and any later pair of equal |m|) are predicted tie.
    ties_right = np.concatenate([[0], np.cumsum(labels == 0)])
    signs_right_after = np.concatenate([np.cumsum(sign_right[::-1])[::-1], [0]])
    last_of_group = np.r_[magnitude[1:] != magnitude[:-1], True]
    candidates = [(float(np.sum(sign_right)) / n, 0.0)] if magnitude[0] > 0 else []
    for k in np.flatnonzero(last_of_group):
        correct = ties_right[k + 1] + signs_right_after[k + 1]
        candidates.append((float(correct) / n, float(magnitude[k])))
    accuracy, epsilon = max(candidates, key=lambda c: (c[0], -c[1]))
    return accuracy, epsilon


LABEL_VALUES = {"A": 1, "B": -1, "same": 0}
DIMENSIONS = {"VQ": "vq", "MQ": "mq", "TA": "ta", "Overall": "overall"}


def benchmark_rows(
    labels: dict[str, list[str | None]], margins: dict[str, list[float]], columns: dict[str, str]
) -> list[dict]:
    """Rows of the ``rewardbench`` table: per dimension, both accuracies (percent) from labels and margins.

    labels: dimension -> annotation labels (A, B, same; anything else is left out); margins: dimension -> s_A - s_B
    per pair; columns: dimension -> the scores column the margins came from.
    """
    rows = []
    for dimension, dimension_labels in labels.items():
        codes = np.array([LABEL_VALUES.get(label, -2) for label in dimension_labels])
        values = np.asarray(margins[dimension], np.float64)
        with_ties, threshold = accuracy_with_ties(values, codes)
        without_ties = accuracy_without_ties(values, codes)
        usable = int(np.sum(codes != -2))
        rows.append({
            "dimension": dimension,
            "score_column": columns[dimension],
            "accuracy_with_ties": None if np.isnan(with_ties) else 100 * with_ties,
            "tie_threshold": None if np.isnan(threshold) else threshold,
            "accuracy_without_ties": None if np.isnan(without_ties) else 100 * without_ties,
            "pairs": usable,
            "ties": int(np.sum(codes == 0)),
        })
    return rows


def score_columns(mapping: Sequence[str]) -> dict[str, str]:
    """Benchmark dimension -> the scores column its margins come from: ``vq, mq, ta, overall`` unless ``mapping``
    (``--map DIM=COLUMN`` values) says otherwise."""
    columns = dict(DIMENSIONS)
    for pair in mapping:
        dimension, _, column = pair.partition("=")
        if dimension not in DIMENSIONS or not column:
            raise VptError(f"--map {pair}: expected DIM=COLUMN with DIM one of {', '.join(DIMENSIONS)}")
        columns[dimension] = column
    return columns


def benchmark_table(bench: str, table, scores, base: Path, columns: Mapping[str, str]) -> list[dict]:
    """Rows of the ``rewardbench`` table for the annotated pairs of ``bench`` (its ``annotations`` table): every
    dimension the table labels is judged by the margins s_A - s_B of its scores column (``columns``). ``scores``: a
    :class:`vpt.io.manifest.ScoreIndex` of the pairs' videos, whose paths are relative to ``base``."""
    pairs = table.to_pylist()
    scored = [(scores.find(pair["path_A"], pair["prompt"], base, f"{bench} row {number}"),
               scores.find(pair["path_B"], pair["prompt"], base, f"{bench} row {number}"))
              for number, pair in enumerate(pairs, start=1)]
    labels, margins = {}, {}
    for dimension, column in columns.items():
        if dimension not in table.column_names:
            continue
        if scored and column not in scored[0][0]:
            raise VptError(f"{scores.source}: has no column '{column}' for {dimension}; choose one with "
                           f"--map {dimension}=COLUMN")
        labels[dimension] = [pair[dimension] for pair in pairs]
        margins[dimension] = [a[column] - b[column] for a, b in scored]
    return benchmark_rows(labels, margins, {dimension: columns[dimension] for dimension in labels})


def pair_accuracies(margins: np.ndarray, labels: np.ndarray, name: str) -> dict[str, float]:
    """``{name}_accuracy`` (decisive pairs) and ``{name}_accuracy_with_ties`` (tie-calibrated), in percent, of
    score margins A − B ``[N]`` against label codes ``[N]``; an undefined one is left out."""
    out = {}
    without = accuracy_without_ties(margins, labels)
    with_ties, _ = accuracy_with_ties(margins, labels)
    if not math.isnan(without):
        out[f"{name}_accuracy"] = 100.0 * without
    if not math.isnan(with_ties):
        out[f"{name}_accuracy_with_ties"] = 100.0 * with_ties
    return out
