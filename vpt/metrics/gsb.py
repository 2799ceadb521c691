"""GSB human evaluation: Good / Same / Bad judgements of a model X against a baseline, as in BPGO's human study.

With G, S, B the number of judgements where X is better, the same, or worse, and N = G + S + B:

- WinRate = G / (G + B), the share of decisive judgements X wins (NaN when G + B = 0);
- Preference = (G + S/2) / N, a tie counting half a win;
- Margin = (G - B) / N;

all in percent, and all NaN when N = 0. BPGO's example 34/48/18 gives WinRate 65.38, Preference 58.00, Margin 16.00.

Intervals are percentile bootstraps, either over independent judgements (replicate counts drawn from
Multinomial(N, (G, S, B) / N)) or over clusters of judgements (several judgements of one prompt are not independent,
so whole clusters are resampled with replacement).
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from vpt.errors import VptError

METRICS = ("win_rate", "preference", "margin")
ACCEPTED_LABELS = ("G", "S", "B", "good", "same", "bad")
LABEL_CODES = {"g": 0, "good": 0, "s": 1, "same": 1, "b": 2, "bad": 2}
# Bounds the [replicates, K] cluster-weight block of the clustered bootstrap (8 MB of int64).
_WEIGHT_CELLS = 1_000_000


def gsb_metrics(good: int, same: int, bad: int) -> dict[str, float]:
    """WinRate = G/(G+B), Preference = (G + S/2)/N, Margin = (G-B)/N with N = G+S+B, in percent.

    Returns {"win_rate", "preference", "margin"} -> float; win_rate is NaN when G + B = 0, all are NaN when N = 0.
    Raises ValueError unless the counts are non-negative integers.
    """
    counts = _checked_counts(good, same, bad)
    return {metric: float(values[0]) for metric, values in _metrics(counts[None, :].astype(np.float64)).items()}


def bootstrap_interval(
    good: int, same: int, bad: int, replicates: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric for N independent judgements.

    Each replicate draws its counts from Multinomial(N, (G, S, B) / N), all at once: [replicates, 3].
    Returns metric -> (low, high) in percent, the central ``confidence`` range of the replicates; replicates where a
    metric is undefined (G + B = 0 for win_rate) are left out, and an interval with no defined replicate is NaN.
    """
    counts = _checked_counts(good, same, bad)
    _check_bootstrap(replicates, confidence)
    total = int(counts.sum())
    if total == 0:
        return {metric: (float("nan"), float("nan")) for metric in METRICS}
    draws = np.random.default_rng(seed).multinomial(total, counts / total, size=replicates)
    return _intervals(draws, confidence)


def clustered_bootstrap_interval(
    cluster_counts: np.ndarray, replicates: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric when judgements come in clusters (e.g. several per prompt).

    cluster_counts: int [K, 3], the (G, S, B) counts of each cluster. Each replicate draws K clusters with
    replacement: its counts are weights @ cluster_counts, with weights [K] ~ Multinomial(K, 1/K each) telling how
    often each cluster was drawn. Replicates are drawn in chunks so the weight block stays under ~8 MB for any K.
    Returns metric -> (low, high) in percent, as :func:`bootstrap_interval` does.
    """
    cluster_counts = _checked_count_matrix(cluster_counts)
    _check_bootstrap(replicates, confidence)
    clusters = len(cluster_counts)
    if clusters == 0 or cluster_counts.sum() == 0:
        return {metric: (float("nan"), float("nan")) for metric in METRICS}
    rng = np.random.default_rng(seed)
    chunk = max(1, min(replicates, _WEIGHT_CELLS // clusters))
    draws = np.empty((replicates, 3), np.int64)
    for start in range(0, replicates, chunk):
        size = min(chunk, replicates - start)
        weights = rng.multinomial(clusters, np.full(clusters, 1 / clusters), size=size)
        draws[start:start + size] = weights @ cluster_counts
    return _intervals(draws, confidence)


def parse_judgements(labels: Sequence[object]) -> np.ndarray:
    """Codes int64 [N] of a judgements column: 0 good, 1 same, 2 bad.

    Accepts G, S, B, good, same, bad in any case, surrounding spaces ignored. Raises ValueError naming the 1-based row
    and the value of the first label it does not know, and listing the accepted labels.
    """
    codes = np.empty(len(labels), np.int64)
    for row, label in enumerate(labels, start=1):
        code = LABEL_CODES.get(label.strip().lower()) if isinstance(label, str) else None
        if code is None:
            raise ValueError(
                f"row {row}: unknown judgement {label!r}; accepted labels: {', '.join(ACCEPTED_LABELS)} (any case)"
            )
        codes[row - 1] = code
    return codes


def count_judgements(codes: np.ndarray, clusters: Sequence[Hashable] | None = None) -> np.ndarray:
    """(G, S, B) counts of judgement codes [N] (see :func:`parse_judgements`).

    Without clusters: int64 [3]. With clusters (one key per judgement, [N]): int64 [K, 3], one row per distinct key
    in order of first appearance, ready for :func:`clustered_bootstrap_interval`.
    """
    codes = np.asarray(codes, np.int64)
    if clusters is None:
        return np.bincount(codes, minlength=3)
    index: dict[Hashable, int] = {}
    rows = np.array([index.setdefault(key, len(index)) for key in clusters], np.int64)
    counts = np.zeros((len(index), 3), np.int64)
    np.add.at(counts, (rows, codes), 1)
    return counts


def counts_by_aspect(table, source: str) -> dict[str, list[int]]:
    """Aspect -> [G, S, B] of a ``gsb_counts`` table read from ``source``: counts of 0 or more, one row per
    aspect."""
    groups = {}
    for number, row in enumerate(table.to_pylist(), start=1):
        for column in ("good", "same", "bad"):
            if row[column] < 0:
                raise VptError(f"{source}: row {number}: column '{column}' is {row[column]}; counts must be 0 or more")
        if row["aspect"] in groups:
            raise VptError(f"{source}: row {number}: aspect '{row['aspect']}' appears twice; give one row per aspect")
        groups[row["aspect"]] = [row["good"], row["same"], row["bad"]]
    return groups


def judgement_counts_by_aspect(table, source: str, cluster_by: str | None) -> dict[str, np.ndarray]:
    """Aspect (``overall`` without an aspect column) -> counts [3] of a ``gsb_judgements`` table read from
    ``source``, or per-cluster counts [K, 3] with ``cluster_by``, a column every judgement has a value in."""
    if cluster_by is not None and cluster_by not in table.column_names:
        raise VptError(f"{source}: has no column '{cluster_by}' to cluster by; its columns are "
                       f"{', '.join(table.column_names)}")
    try:
        codes = parse_judgements(table.column("judgement").to_pylist())
    except ValueError as error:
        raise VptError(f"{source}: {error}") from None
    aspects = (table.column("aspect").to_pylist() if "aspect" in table.column_names
               else ["overall"] * table.num_rows)
    clusters = table.column(cluster_by).to_pylist() if cluster_by is not None else None
    if clusters is not None and None in clusters:
        raise VptError(f"{source}: row {clusters.index(None) + 1}: column '{cluster_by}' is empty; "
                       f"every judgement needs a cluster")
    members: dict[str, list[int]] = {}
    for index, name in enumerate(aspects):
        members.setdefault(name, []).append(index)
    return {name: count_judgements(codes[rows], None if clusters is None else [clusters[i] for i in rows])
            for name, rows in members.items()}


def gsb_row(aspect: str, counts: np.ndarray, replicates: int, confidence: float, seed: int) -> dict:
    """One row of the ``gsb`` table: counts, the three metrics and their bootstrap intervals (percent; None for NaN).

    counts: int [3] (G, S, B) of independent judgements, or int [K, 3] per-cluster counts, which switches to the
    clustered bootstrap and fills ``clusters`` with K.
    """
    counts = np.asarray(counts)
    clustered = counts.ndim == 2
    good, same, bad = (counts.sum(axis=0) if clustered else counts).tolist()
    point = gsb_metrics(good, same, bad)
    if clustered:
        intervals = clustered_bootstrap_interval(counts, replicates, confidence, seed)
    else:
        intervals = bootstrap_interval(good, same, bad, replicates, confidence, seed)
    row = {"aspect": aspect, "good": good, "same": same, "bad": bad, "total": good + same + bad}
    for metric in METRICS:
        low, high = intervals[metric]
        row[metric] = _nullable(point[metric])
        row[f"{metric}_low"], row[f"{metric}_high"] = _nullable(low), _nullable(high)
    row.update(bootstrap=replicates, confidence=confidence, clusters=len(counts) if clustered else None)
    return row


def _metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """The three metrics in percent for float64 counts [R, 3] -> each [R], NaN where undefined."""
    good, same, bad = counts.T
    total = good + same + bad
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "win_rate": 100 * good / (good + bad),
            "preference": 100 * (good + same / 2) / total,
            "margin": 100 * (good - bad) / total,
        }


def _intervals(draws: np.ndarray, confidence: float) -> dict[str, tuple[float, float]]:
    """Central ``confidence`` percentile range of each metric over replicate counts [R, 3], NaN replicates left out."""
    tail = (1 - confidence) / 2
    intervals = {}
    for metric, values in _metrics(draws.astype(np.float64)).items():
        defined = values[~np.isnan(values)]
        if defined.size == 0:
            intervals[metric] = (float("nan"), float("nan"))
        else:
            low, high = np.quantile(defined, [tail, 1 - tail])
            intervals[metric] = (float(low), float(high))
    return intervals


def _checked_counts(good: int, same: int, bad: int) -> np.ndarray:
    for name, value in (("good", good), ("same", same), ("bad", bad)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} is {value!r}; GSB counts must be integers of 0 or more")
    return np.array([good, same, bad], np.int64)


def _checked_count_matrix(cluster_counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(cluster_counts)
    if counts.ndim != 2 or counts.shape[1] != 3:
        raise ValueError(f"cluster counts have shape {counts.shape}; expected [K, 3] (G, S, B per cluster)")
    if counts.size and (counts.dtype.kind not in "iu" or counts.min() < 0):
        raise ValueError("cluster counts must be integers of 0 or more")
    return counts.astype(np.int64)


def _check_bootstrap(replicates: int, confidence: float) -> None:
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise ValueError(f"replicates is {replicates!r}; the bootstrap needs at least 1")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is {confidence!r}; it must lie strictly between 0 and 1")


def _nullable(value: float) -> float | None:
    return None if np.isnan(value) else value
