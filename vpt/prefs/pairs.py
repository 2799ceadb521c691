"""What every source of preference pairs shares: stable pair ids, seeded side balancing, label swapping, paths.

A pair's id hashes its two videos (in either order: their ids, or their paths as the source table writes them,
never absolute paths), its prompt and its source, so it does not depend on the row order of the input, on which
side the preferred clip ends up, on the run, or on where the data directory lies. Balancing puts the preferred clip on
side A or B by a seeded coin per pair (drawn from the pair id, so also order-independent): a model trained on the
pairs cannot learn the position.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vpt.errors import VptError

DIMENSIONS = ("vq", "mq", "ta")
LABEL_COLUMNS = (*DIMENSIONS, "overall")
_SWAPPED_LABEL = {"a": "b", "b": "a", "tie": "tie", "invalid": "invalid", None: None}
_SIDE_COLUMNS = [("path_a", "path_b"), ("id_a", "id_b")] + [(f"{d}_mos_a", f"{d}_mos_b") for d in DIMENSIONS]


def pair_id(video_a: str, video_b: str, prompt: str | None, source: str) -> str:
    """16 hex digits identifying the unordered pair {video_a, video_b} under ``prompt`` from ``source``."""
    first, second = sorted((video_a, video_b))
    text = "\x1f".join((source, first, second, "" if prompt is None else prompt))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def swap_coins(pair_ids: Sequence[str], seed: int) -> np.ndarray:
    """``bool [N]``: whether each pair's sides are swapped; a fair coin per (pair id, seed)."""
    ids = np.array([int(identifier, 16) for identifier in pair_ids], dtype=np.uint64)
    mixed = _splitmix64(ids ^ _splitmix64(np.array([seed & (2**64 - 1)], dtype=np.uint64)))
    return (mixed >> np.uint64(63)).astype(bool)


def swap_sides(row: dict) -> dict:
    """The same pair seen from the other side: A and B columns exchanged, labels a <-> b."""
    swapped = dict(row)
    for left, right in _SIDE_COLUMNS:
        if left in row or right in row:
            swapped[left], swapped[right] = row.get(right), row.get(left)
    for column in LABEL_COLUMNS:
        if column in row:
            swapped[column] = _SWAPPED_LABEL[row[column]]
    return swapped


def balance(rows: list[dict], seed: int) -> list[dict]:
    """``rows`` with each pair's sides swapped by its seeded coin (see :func:`swap_coins`)."""
    coins = swap_coins([row["pair_id"] for row in rows], seed)
    return [swap_sides(row) if coin else row for row, coin in zip(rows, coins)]


def table_paths(relative_to: Path | None) -> Callable[[str | os.PathLike], str]:
    """How video paths are written into a prefs table: relative to the table's directory when it is written to a
    file (the table reads its paths relative to itself), absolute when it goes to stdout. Returns a converter that
    remembers the paths it has seen (a video appears in many pairs)."""
    base = None if relative_to is None else os.path.abspath(relative_to)
    inside = None if base is None else base.rstrip(os.sep) + os.sep

    @functools.cache
    def convert(path: str) -> str:
        absolute = os.path.abspath(path)
        if base is None:
            return absolute
        if absolute.startswith(inside):
            return absolute[len(inside):]
        return os.path.relpath(absolute, base)

    return lambda path: convert(os.fspath(path))


def as_written(rows: list[dict], output: str | os.PathLike | None, seed: int, balanced: bool = True) -> list[dict]:
    """``rows`` as the prefs table ``output`` (None: standard output) holds them: video paths as
    :func:`table_paths` writes them and, when ``balanced``, each pair's sides swapped by its seeded coin."""
    written = table_paths(None if output is None else Path(output).parent)
    rows = [{**row, "path_a": written(row["path_a"]), "path_b": written(row["path_b"])} for row in rows]
    return balance(rows, seed) if balanced else rows


def split_pairs(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training pair indices, held-out pair indices), both sorted; ``round(count * fraction)`` pairs (at least one
    when ``fraction`` > 0) are held out, chosen by ``seed`` alone."""
    if not 0 <= fraction < 1:
        raise VptError(f"--eval-fraction must lie in [0, 1), got {fraction}")
    held = 0 if fraction == 0 else max(1, int(round(count * fraction)))
    if count - held < 1:
        raise VptError(f"{count} pair(s) leave none to train on with eval fraction {fraction}; give more pairs or "
                       "hold out fewer")
    order = np.random.default_rng([int(seed), 0x5EED]).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])
